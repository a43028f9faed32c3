"""The sampling-steps ablation's logic (osplab/ablations/sampling_steps.py); the notebook itself runs
under nbval on its smoke parameters."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from osplab.ablations.sampling_steps import Point, Row, claims, grid_points, reusable_store, write_report
from osplab.config import compose
from osplab.data.store import write_store


def row(objective, sampler, steps, fvd, half=20.0, acc=0.5):
    p = Point(objective, sampler, steps)
    lo, hi = (None, None) if half is None else (fvd - half, fvd + half)
    return Row(objective, sampler, steps, p.nfe, fvd, lo, hi, 64, acc, acc, acc, acc, 1.0, "")


def test_points_count_function_evaluations_and_refuse_bad_settings():
    pts = grid_points({"rf": {"euler": [2, 50], "heun": [10]}, "ddpm": {"ddim": [25]}})
    assert [(p.label, p.steps, p.nfe) for p in pts] == [("rf euler", 2, 2), ("rf euler", 50, 50),
                                                        ("rf heun", 10, 20), ("ddpm ddim", 25, 25)]
    with pytest.raises(ValueError, match="has no sampler"):
        Point("rf", "ddim", 10)
    with pytest.raises(ValueError, match="objective"):
        Point("gan", "euler", 10)
    with pytest.raises(ValueError, match="steps"):
        Point("ddpm", "ancestral", 0)


def test_claim_holds_when_rf_matches_1000_step_ddpm_early_and_few_step_ddpm_is_worse():
    rows = [row("rf", "euler", 10, 900), row("rf", "euler", 50, 510), row("rf", "heun", 25, 505),
            row("ddpm", "ancestral", 100, 700), row("ddpm", "ancestral", 1000, 500), row("ddpm", "ddim", 25, 800)]
    verdicts = {c["claim"]: c for c in claims(rows)}
    euler = next(c for k, c in verdicts.items() if k.startswith("rf euler"))
    assert euler["holds"] and "fewest NFE that match" in euler["evidence"] and ": 50 (" in euler["evidence"]
    heun = next(c for k, c in verdicts.items() if k.startswith("rf heun"))
    assert heun["holds"] and ": 50 (" in heun["evidence"]  # 25 Heun steps = 50 NFE
    ddpm = next(c for k, c in verdicts.items() if k.startswith("DDPM"))
    assert ddpm["holds"] and "ancestral 100 steps" in ddpm["evidence"]


def test_claim_fails_when_rf_needs_more_than_100_nfe_or_few_step_ddpm_is_as_good():
    rows = [row("rf", "euler", 50, 700), row("rf", "euler", 200, 505),
            row("ddpm", "ancestral", 100, 515), row("ddpm", "ancestral", 1000, 500)]
    verdicts = claims(rows)
    assert [c["holds"] for c in verdicts] == [False, False]
    assert ": 200 (" in verdicts[0]["evidence"]
    assert "inside the spread" in verdicts[1]["evidence"]
    assert claims([row("rf", "euler", 50, 700)]) == []  # no DDPM reference: no verdict


def test_points_without_a_spread_compare_by_value(tmp_path):
    rows = [row("rf", "euler", 5, 400, half=None), row("ddpm", "ancestral", 1000, 500, half=None)]
    assert claims(rows)[0]["holds"]
    paths = write_report(rows, tmp_path, ["a note"])
    md = paths["md"].read_text()
    assert "400 (no spread)" in md and "- a note" in md
    assert paths["csv"].read_text().splitlines()[0].startswith("objective,sampler,steps,nfe,fvd")
    assert paths["png"].stat().st_size > 0


def test_only_a_store_made_with_the_same_settings_is_reused(tmp_path):
    cfg = compose(["profile=smoke", f"diffusion.samples={tmp_path}"])
    made = OmegaConf.to_container(cfg.diffusion.sample, resolve=True)
    clip = np.zeros((16, 24, 32, 3), np.uint8)
    write_store(tmp_path / "rf", [("sample", clip, {"id": "a", "caption": "x"})], 8, {"sample": made})
    stage = Point("rf", str(cfg.diffusion.sample.rf_sampler), int(cfg.diffusion.sample.rf_steps))
    clips = int(made["clips"])
    assert reusable_store(cfg, stage, clips) == str(tmp_path / "rf")
    assert reusable_store(cfg, Point("rf", "euler", stage.steps + 1), clips) is None  # other steps
    assert reusable_store(cfg, stage, clips - 1) is None                             # other clip count
    assert reusable_store(cfg, Point("ddpm", "ancestral", int(cfg.diffusion.sample.ddpm_steps)), clips) is None
    other = compose(["profile=smoke", f"diffusion.samples={tmp_path}", "diffusion.sample.cfg=1.5"])
    assert reusable_store(other, stage, clips) is None                              # other guidance
