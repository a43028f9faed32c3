"""Checks for settings where they enter (config dataclasses, CLI flags): one-line SettingErrors.

Every message names the key as the user would type it (`train.steps`, `--batch-size`), the value
that was given and what is allowed, e.g. "train.steps='abc' is not an integer; allowed: an
integer >= 1". Hydra passes override strings through unconverted (`train.steps=abc` arrives as
the string 'abc'), so types are checked here too, not only ranges. The helpers return the value
converted to the plain python type (int, float, bool) so callers can store the result.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any, Iterable, Mapping


class SettingError(ValueError):
    """A setting that cannot be used; the one-line message names the key, the value and what is allowed.

    Entry points print it as one `error:` line (no traceback); it is a ValueError for callers that
    catch those."""


def _fail(key: str, value: Any, allowed: str) -> SettingError:
    return SettingError(f"{key}={value!r} is not allowed; allowed: {allowed}")


def integer(key: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (not a bool, not 2.5 or '3') within [minimum, maximum]."""
    lo = "" if minimum is None else f" >= {minimum}"
    hi = "" if maximum is None else f" <= {maximum}"
    allowed = f"an integer{lo}{' and' if lo and hi else ''}{hi}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(key, value, allowed)
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _fail(key, value, allowed)
    return value


def number(key: str, value: Any, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (int or float, not a bool or a string) in the interval given."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    allowed = "a finite number" + (" " + " and ".join(parts) if parts else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _fail(key, value, allowed)
    x = float(value)
    if (low is not None and (x < low or (low_open and x == low))) or \
            (high is not None and (x > high or (high_open and x == high))):
        raise _fail(key, value, allowed)
    return x


def probability(key: str, value: Any) -> float:
    """A number in [0, 1]."""
    return number(key, value, 0.0, 1.0)


def boolean(key: str, value: Any) -> bool:
    """true or false (a YAML/Hydra boolean; 'yes', 1 and 'false' strings are refused)."""
    if not isinstance(value, bool):
        raise _fail(key, value, "true or false")
    return value


def choice(key: str, value: Any, options: Iterable[Any]) -> Any:
    """One of `options`."""
    options = tuple(options)
    if value not in options or isinstance(value, bool) != any(isinstance(o, bool) for o in options):
        raise _fail(key, value, "one of " + ", ".join(repr(o) for o in options))
    return value


def sequence(key: str, value: Any, length: int | None = None, min_length: int = 0) -> list:
    """A sequence (list, tuple, OmegaConf ListConfig; not a string) of exactly `length` or at least
    `min_length` items, returned as a list."""
    n = length if length is not None else min_length
    allowed = f"a list of {'exactly' if length is not None else 'at least'} {n} item{'s' if n != 1 else ''}"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _fail(key, value, allowed)
    if (length is not None and len(value) != length) or len(value) < min_length:
        raise _fail(key, value, allowed)
    return list(value)


def integers(key: str, value: Any, minimum: int | None = None, length: int | None = None,
             min_length: int = 1) -> list[int]:
    """A list of ints, each checked by `integer` (the key names the position: `key[1]`)."""
    items = sequence(key, value, length, min_length)
    return [integer(f"{key}[{i}]", v, minimum) for i, v in enumerate(items)]


def known_keys(prefix: str, values: Mapping[str, Any], cls: type) -> dict:
    """`values` as a dict after checking it has exactly the fields of dataclass `cls` (names listed)."""
    if not isinstance(values, Mapping):
        raise SettingError(f"{prefix}={values!r} is not allowed; allowed: a mapping of settings")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    required = [f.name for f in dataclasses.fields(cls)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    unknown = sorted(set(values) - set(names))
    missing = [n for n in required if n not in values]
    if unknown or missing:
        raise SettingError(
            f"{prefix}: unknown keys {unknown}, missing keys {missing}; allowed keys: {', '.join(names)}")
    return dict(values)
