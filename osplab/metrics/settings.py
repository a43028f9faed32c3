"""Checks of the `eval` settings (conf/eval/default.yaml) before any clip is read or I3D runs.

`check_eval_settings(cfg)` raises a one-line ValueError naming the key (`eval.batch_size=0 is
not allowed; allowed: an integer >= 1`); `name` maps a key to what the user typed (the FVD CLI
names its flags, `--batch-size`). Limits come from the I3D itself: it needs >= 9 frames (two
temporal positions before its (2, 7, 7) average pool) and frames of 193..224 pixels (7 x 7
positions after 32x spatial striding with 'SAME' padding: ceil(R / 32) = 7).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from osplab import checks

RESIZE = ("tf1", "pytorch")
COVARIANCE = ("unbiased", "biased")
I3D_MIN_FRAMES = 9
I3D_RESOLUTION = (193, 224)
REQUIRED = ("num_clips", "frames", "stride", "resolution", "resize", "covariance", "bootstrap_rounds",
            "batch_size", "seed", "real_split")
# What the real side alone (the `eval_real` stage: clips -> I3D features) reads; the FVD statistics
# settings (covariance, bootstrap_rounds) are not among them, so they are not required there either.
REAL_SIDE = ("num_clips", "frames", "stride", "resolution", "resize", "batch_size", "seed", "real_split")


def _eval_key(key: str) -> str:
    return f"eval.{key}"


def check_eval_settings(cfg: Mapping[str, Any], name: Callable[[str], str] = _eval_key,
                        required: tuple[str, ...] = REQUIRED) -> None:
    """Raise ValueError on the first bad or missing `eval` setting; see the module doc. `required`: the keys
    the caller reads (REQUIRED for FVD, REAL_SIDE for the real features alone); only those are checked."""
    missing = [k for k in required if k not in cfg]
    if missing:
        raise checks.SettingError(f"eval settings: missing keys {missing}; see conf/eval/default.yaml")
    rules = {
        "num_clips": lambda v: v is None or checks.integer(name("num_clips"), v, 2),
        "frames": lambda v: checks.integer(name("frames"), v, I3D_MIN_FRAMES),
        "stride": lambda v: checks.integer(name("stride"), v, 1),
        "resolution": lambda v: checks.integer(name("resolution"), v, *I3D_RESOLUTION),
        "resize": lambda v: checks.choice(name("resize"), v, RESIZE),
        "covariance": lambda v: checks.choice(name("covariance"), v, COVARIANCE),
        "bootstrap_rounds": lambda v: checks.integer(name("bootstrap_rounds"), v, 0),
        "batch_size": lambda v: checks.integer(name("batch_size"), v, 1),
        "seed": lambda v: checks.integer(name("seed"), v, 0),
    }
    for key in (k for k in REQUIRED if k in required and k in rules):  # in REQUIRED's order, as before
        rules[key](cfg[key])
    if "real_split" in required and (not isinstance(cfg["real_split"], str) or not cfg["real_split"]):
        raise checks.SettingError(
            f"{name('real_split')}={cfg['real_split']!r} is not allowed; allowed: a non-empty name")
    if cfg.get("device") is not None and not isinstance(cfg["device"], str):
        raise checks.SettingError(f"{name('device')}={cfg['device']!r} is not allowed; allowed: null, 'cpu' or 'cuda'")
    if "compile" in cfg:
        checks.boolean(name("compile"), cfg["compile"])
    if "ssim" in cfg:
        ssim = cfg["ssim"]
        checks.integer(name("ssim.window"), ssim["window"], 1)
        for key in ("sigma", "k1", "k2"):
            checks.number(name(f"ssim.{key}"), ssim[key], 0.0, low_open=True)
