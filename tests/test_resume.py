"""Exact resume: kill -9 a toy run after a checkpoint, rerun the same command, and the final
weights, EMA and optimizer state are bitwise equal to an uninterrupted run of the same length.
Also when the kill damaged the files dvclive writes in place (its summary and params)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from osplab.train.checkpoint import latest_checkpoint, list_checkpoints
from osplab.train.testing import read_checkpoint, read_curve, run_env, run_toy, toy_command

STEPS = 60
ARGS = [
    f"train.steps={STEPS}", "train.global_batch=16", "train.micro_batch=4",  # 4 micro-steps
    "train.checkpoint_every=10", "train.keep_checkpoints=2", "train.log_every=5",
    "train.lr=1e-3", "train.lr_schedule=cosine", "train.warmup_steps=5", "train.ema_decay=0.9",
    "train.weight_decay=0.01", "train.grad_clip=0.5", "train.precision=fp32",
    "train.num_threads=1", "train.seed=3",
    "toy.n_samples=200", "toy.dropout=0.2", "toy.hidden=64", "toy.depth=3",  # 200 % 16 != 0:
]                                                          # crosses epochs with a dropped tail


def _kill_after_checkpoint(out_dir: Path, min_step: int, delay: float) -> int:
    """Start a run, SIGKILL it `delay` s after checkpoint `min_step` appears; returns the newest
    checkpoint step left behind."""
    ckpts = out_dir / "checkpoints"
    proc = subprocess.Popen(toy_command(ARGS + [f"train.out_dir={out_dir}", "train.num_workers=0"]),
                            env=run_env(), cwd=out_dir.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            newest = latest_checkpoint(ckpts)
            if newest is not None and int(newest.name.split("_")[1]) >= min_step:
                break
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return int(latest_checkpoint(ckpts).name.split("_")[1])


def test_kill9_and_resume_is_bitwise_exact(tmp_path: Path) -> None:
    rnd = random.Random()  # random kill point; printed so a failure can be replayed
    min_step, delay = rnd.choice([10, 20, 30]), rnd.uniform(0.0, 0.05)
    print(f"kill after checkpoint {min_step} + {delay:.3f} s")

    full = tmp_path / "uninterrupted"
    run_toy(ARGS + [f"train.out_dir={full}", "train.num_workers=0"], cwd=tmp_path)

    resumed = tmp_path / "killed"
    left = _kill_after_checkpoint(resumed, min_step, delay)
    assert min_step <= left < STEPS
    # Resume with DataLoader worker processes: data must not depend on who loads it.
    proc = run_toy(ARGS + [f"train.out_dir={resumed}", "train.num_workers=2"], cwd=tmp_path)
    assert f"resumed from {resumed / 'checkpoints'}" in proc.stderr

    _assert_same_final_state(full, resumed)


def _assert_same_final_state(full: Path, resumed: Path) -> None:
    """Final checkpoints byte-identical, same RNG/schedule/data state, same logged curve."""
    a, b = latest_checkpoint(full / "checkpoints"), latest_checkpoint(resumed / "checkpoints")
    assert a.name == b.name == f"step_{STEPS:08d}"
    ta, tb = read_checkpoint(a), read_checkpoint(b)
    for part in ("model", "ema", "optimizer"):
        assert ta[part].keys() == tb[part].keys()
        for key in ta[part]:
            assert torch.equal(ta[part][key], tb[part][key]), f"{part}/{key} differs"
        # and byte-identical files
        assert (a / f"{part}.safetensors").read_bytes() == (b / f"{part}.safetensors").read_bytes()
    sa, sb = json.loads((a / "state.json").read_text()), json.loads((b / "state.json").read_text())
    for key in ("rng", "scheduler", "optimizer", "data", "nonfinite"):
        assert sa[key] == sb[key], key
    # The logged loss curve is the same too (rows logged after the kill point were replaced).
    assert read_curve(full) == read_curve(resumed)
    assert sorted(read_curve(full)) == list(range(5, STEPS + 1, 5))
    # The EMA really differs from the weights (so comparing it is not vacuous).
    assert not torch.equal(ta["ema"]["out.weight"], ta["model"]["out.weight"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    run_toy(ARGS + [f"train.out_dir={root / 'run'}", "train.num_workers=0"], cwd=root)
    return root / "run"


def _half(text: str) -> str:
    return text[: len(text) // 2]


# What a kill while dvclive rewrites a file in place leaves behind.
DAMAGE = {
    "empty summary": ("metrics.json", lambda text: ""),
    "half summary": ("metrics.json", _half),
    "half params": ("params.yaml", _half),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_survives_damaged_log_files(tmp_path: Path, uninterrupted: Path, damage: str) -> None:
    """Deterministic replay of a kill while logging: the run got to step 60 on disk, but only
    checkpoint 30 survived (newer ones are removed), and a dvclive file is half-written."""
    run = tmp_path / "run"
    run_toy(ARGS + [f"train.out_dir={run}", "train.num_workers=0", "train.keep_checkpoints=10"],
            cwd=tmp_path)
    for ckpt in list_checkpoints(run / "checkpoints"):
        if int(ckpt.name.split("_")[1]) > 30:
            shutil.rmtree(ckpt)
    (run / "checkpoints" / "latest").write_text("step_00000030\n")
    name, damaged = DAMAGE[damage]
    target = run / "live" / name
    target.write_text(damaged(target.read_text()))

    proc = run_toy(ARGS + [f"train.out_dir={run}", "train.num_workers=0"], cwd=tmp_path)
    assert f"resumed from {run / 'checkpoints' / 'step_00000030'}" in proc.stderr
    assert f"{target} was damaged" in proc.stderr
    _assert_same_final_state(uninterrupted, run)
    # The summary is whole again and says what the uninterrupted run's says (timings aside).
    sa = json.loads((uninterrupted / "live" / "metrics.json").read_text())
    sb = json.loads((run / "live" / "metrics.json").read_text())
    assert sa["step"] == sb["step"] == STEPS
    assert sa["train"] == sb["train"]
