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


def _eval_key(key: str) -> str:
    return f"eval.{key}"


def check_eval_settings(cfg: Mapping[str, Any], name: Callable[[str], str] = _eval_key) -> None:
    """Raise ValueError on the first bad or missing `eval` setting; see the module doc."""
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise checks.SettingError(f"eval settings: missing keys {missing}; see conf/eval/default.yaml")
    if cfg["num_clips"] is not None:
        checks.integer(name("num_clips"), cfg["num_clips"], 2)
    checks.integer(name("frames"), cfg["frames"], I3D_MIN_FRAMES)
    checks.integer(name("stride"), cfg["stride"], 1)
    checks.integer(name("resolution"), cfg["resolution"], *I3D_RESOLUTION)
    checks.choice(name("resize"), cfg["resize"], RESIZE)
    checks.choice(name("covariance"), cfg["covariance"], COVARIANCE)
    checks.integer(name("bootstrap_rounds"), cfg["bootstrap_rounds"], 0)
    checks.integer(name("batch_size"), cfg["batch_size"], 1)
    checks.integer(name("seed"), cfg["seed"], 0)
    if not isinstance(cfg["real_split"], str) or not cfg["real_split"]:
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
