"""A crash-consistent dvclive run directory.

dvclive writes its files in place: it appends TSV rows (`plots/metrics/**.tsv`) and rewrites the
summary (`metrics.json`) and `params.yaml` on every step. A run killed while it logs can leave a
half TSV row, an empty or half summary, or a half params file, and `Live(resume=True)` then stops
with a JSONDecodeError or a YAML error on every later attempt. Two defences:

- `AtomicLive` writes the summary and the params through `osplab.io` (temporary file, fsync,
  rename), so from now on they are always whole.
- `repair_live_dir`, called before every resume, truncates the TSV files to the rows at or
  before the checkpoint step, rebuilds the summary from those rows (what dvclive's summary holds:
  the newest value of each metric, plus `step`), and drops a params file it cannot read, with a
  warning naming it (the run logs its params again at start).

This module imports dvclive at import time; the training loop imports it only on rank 0.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from dvclive import Live
from dvclive.plots import NumpyEncoder
from dvclive.serialize import get_yaml, load_yaml
from ruamel.yaml.representer import RepresenterError

from osplab.io import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

METRICS_SUBDIR = Path("plots") / "metrics"


class AtomicLive(Live):
    """dvclive's `Live` with the summary and params files written atomically.

    The two overrides do what dvclive 3.49's `make_summary` / `_dump_params` do (same content,
    same JSON layout), only through a temporary file and a rename.
    """

    def make_summary(self) -> None:
        if self._step is not None:
            self.summary["step"] = self.step
        text = json.dumps(self.summary, indent=4, cls=NumpyEncoder) + "\n"
        atomic_write_text(self.metrics_file, text)

    def _dump_params(self) -> None:
        try:
            with atomic_path(self.params_file) as tmp, open(tmp, "w", encoding="utf-8") as f:
                get_yaml().dump(self._params, f)
        except RepresenterError as exc:
            from dvclive.error import InvalidParameterTypeError

            raise InvalidParameterTypeError(exc.args[0]) from exc


def truncate_after(live_dir: Path, step: int) -> None:
    """Drop metric rows with step > `step` (logged after the checkpoint a resumed run restarts
    from), and any half-written line a kill may have left. Rewrites files atomically."""
    plots = Path(live_dir) / METRICS_SUBDIR
    if not plots.is_dir():
        return
    for tsv in sorted(plots.rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        kept = [lines[0]]
        for line in lines[1:]:
            fields = line.split("\t")
            if len(fields) == 2 and fields[0].isdigit() and int(fields[0]) <= step:
                kept.append(line)
        atomic_write_text(tsv, "\n".join(kept) + "\n")


def _summary_value(text: str) -> float | str:
    """A TSV value as dvclive's summary holds it: a float, or the string of a NaN/inf."""
    value = float(text)
    return value if math.isfinite(value) else text


def summary_from_rows(live_dir: Path, step: int) -> dict[str, Any]:
    """dvclive's summary rebuilt from the TSV rows: the newest value of every metric, nested
    by the metric name's path parts (`train/loss` -> {"train": {"loss": x}}), plus `step`."""
    plots = Path(live_dir) / METRICS_SUBDIR
    summary: dict[str, Any] = {}
    for tsv in sorted(plots.rglob("*.tsv")) if plots.is_dir() else []:
        rows = tsv.read_text().splitlines()[1:]
        if not rows:
            continue
        node = summary
        *parents, leaf = tsv.relative_to(plots).with_suffix("").parts
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _summary_value(rows[-1].split("\t")[1])
    summary["step"] = step
    return summary


def _params_readable(path: Path) -> bool:
    try:
        return isinstance(load_yaml(path), dict)
    except Exception:  # noqa: BLE001 - any parse failure means the file is damaged
        return False


def repair_live_dir(live_dir: Path, step: int) -> None:
    """Make `live_dir` a consistent record of a run resumed at `step` (see the module doc)."""
    live_dir = Path(live_dir)
    truncate_after(live_dir, step)
    summary = live_dir / "metrics.json"
    if summary.exists():
        try:
            json.loads(summary.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s was damaged (a kill while it was written?): rebuilt from the metric "
                        "rows up to step %d", summary, step)
    atomic_write_json(summary, summary_from_rows(live_dir, step))
    params = live_dir / "params.yaml"
    if params.exists() and not _params_readable(params):
        log.warning("%s was damaged (a kill while it was written?): removed; the resumed run "
                    "logs its params again", params)
        params.unlink()
