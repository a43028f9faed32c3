"""The length ablation's measures and verdicts (osplab/ablations/length.py); the notebook runs under nbval."""

import json

import numpy as np
import pytest

from osplab.ablations.length import Row, border_ratio, claims, flicker_ratio, write_report


def moving_square(frames: int, jump_every: int | None = None) -> np.ndarray:
    """A bright square moving 1 px per frame; with jump_every it also jumps 6 px at every such border."""
    clip = np.zeros((frames, 32, 32, 3), np.uint8)
    x = 2
    for t in range(frames):
        if jump_every and t > 0 and t % jump_every == 0:
            x += 6
        clip[t, 10:18, x % 24:x % 24 + 8] = 255
        x += 1
    return clip


def test_border_ratio_sees_jumps_at_latent_borders_only():
    smooth = [moving_square(16) for _ in range(3)]
    jumpy = [moving_square(16, jump_every=4) for _ in range(3)]
    assert border_ratio(smooth, 4) == pytest.approx(1.0, abs=0.25)
    assert border_ratio(jumpy, 4) > 2.0
    assert np.isnan(border_ratio([moving_square(3)], 4))  # no border inside 3 frames


def test_flicker_ratio_is_relative_to_real_clips_of_any_length():
    real = [moving_square(16), moving_square(24)]
    assert flicker_ratio(real, real) == pytest.approx(1.0)
    assert flicker_ratio([moving_square(16, jump_every=4)], real) > 1.0
    with pytest.raises(ValueError, match="no frame-to-frame change"):
        flicker_ratio(real, [np.zeros((4, 8, 8, 3), np.uint8)])


def row(frames, fvd, acc=0.5, trained=True, half=20.0, reused=""):
    lo, hi = (None, None) if fvd is None else (fvd - half, fvd + half)
    return Row(frames, frames // 4, trained, 64, fvd, lo, hi, acc, acc, acc, acc, 1.2, 1.1, 0.5, reused)


def test_verdicts_against_the_window_length():
    rows = [row(8, None, 0.45), row(16, 500, reused="sample@rf"), row(32, 510), row(40, 700, trained=False)]
    same, unseen = claims(rows)
    assert same["holds"] and unseen["holds"]
    rows = [row(8, None, 0.30), row(16, 500, reused="sample@rf"), row(32, 510), row(40, 505, trained=False)]
    same, unseen = claims(rows)
    assert not same["holds"] and "worse: 8 frames" in same["evidence"]  # 0.30 < 0.8 x 0.5
    assert not unseen["holds"]
    assert claims([row(8, None)]) == []  # nothing with an FVD to compare against


def test_report_files(tmp_path):
    paths = write_report([row(8, None), row(16, 500), row(40, 650, trained=False)], tmp_path, ["n"])
    md = paths["md"].read_text()
    assert "| 40 | 10 | **no** | 650 [630, 670]" in md and "| 8 | 2 | yes | - |" in md
    assert paths["png"].stat().st_size > 0 and paths["csv"].read_text().startswith("frames,latent_frames")
    metrics = json.loads(paths["json"].read_text())  # what `dvc metrics show` / `dvc exp show` read
    assert metrics["frames_40"]["fvd"] == 650 and metrics["frames_8"]["fvd"] is None
