"""Non-finite guard: a NaN/inf loss or gradient norm is reported with its step, the update is
skipped (weights, moments and EMA untouched), and N in a row abort with a clear error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from osplab.train.checkpoint import latest_checkpoint
from osplab.train.loop import NonFiniteError, train
from osplab.train.state import seed_everything
from osplab.train.testing import read_checkpoint, read_curve, tiny_toy, tiny_train
from osplab.train.toy import build_toy_task, toy_loss

ACCUM = 4  # tiny_train: global_batch 16 / micro_batch 4


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss with a non-finite grad."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def _task(bad_steps: set[int], kind: str):
    """Toy task whose loss (kind='loss') or gradient (kind='grad') is non-finite at `bad_steps`
    (1-based optimizer steps), on the first micro-step only."""
    seed_everything(0)
    task = build_toy_task(tiny_toy())
    calls = [0]

    def loss(model, batch):
        step, micro = divmod(calls[0], ACCUM)
        calls[0] += 1
        if step + 1 in bad_steps and micro == 0:
            x, y = batch
            if kind == "loss":
                value, metrics = toy_loss(model, batch)
                return value * float("nan"), metrics
            pred = _InfGrad.apply(model(x))
            return torch.nn.functional.mse_loss(pred, y), {"mae": (pred - y).abs().mean()}
        return toy_loss(model, batch)

    task.loss = loss
    return task


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_step_is_skipped_and_reported(kind: str, tmp_path: Path, monkeypatch,
                                                caplog) -> None:
    monkeypatch.chdir(tmp_path)  # dvclive looks at the repo of the working directory
    cfg = dict(lr_schedule="constant", checkpoint_every=100)
    short = train(tiny_train(tmp_path / "two", steps=2, **cfg), _task(set(), kind))
    with caplog.at_level(logging.WARNING, logger="osplab.train"):
        out = train(tiny_train(tmp_path / "three", steps=3, **cfg), _task({3}, kind))
    assert short["train/nonfinite_steps"] == 0 and out["train/nonfinite_steps"] == 1
    report = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(report) == 1 and report[0].startswith("step 3:") and "skipped" in report[0]
    assert ("loss=nan" in report[0]) == (kind == "loss")
    # Step 3 changed nothing: weights, EMA and Adam moments equal those after 2 steps.
    a = read_checkpoint(latest_checkpoint(tmp_path / "two" / "checkpoints"))
    b = read_checkpoint(latest_checkpoint(tmp_path / "three" / "checkpoints"))
    for part in ("model", "ema", "optimizer"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}/{key}"
    assert sorted(read_curve(tmp_path / "three", "train/nonfinite_steps").items()) == [
        (1, 0.0), (2, 0.0), (3, 1.0)]


def test_isolated_nonfinite_steps_do_not_abort(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = train(tiny_train(tmp_path / "run", steps=8, max_nonfinite=2), _task({2, 4, 6}, "loss"))
    assert out["train/nonfinite_steps"] == 3
    assert torch.isfinite(torch.tensor(out["train/loss"]))


def test_consecutive_nonfinite_steps_abort(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tiny_train(tmp_path / "run", steps=12, max_nonfinite=3, checkpoint_every=2)
    with pytest.raises(NonFiniteError, match=r"3 consecutive non-finite steps \(steps 5\.\.7") as e:
        train(cfg, _task(set(range(5, 13)), "loss"))
    assert "train.max_nonfinite" in str(e.value)
    # No checkpoint after the abort; the newest one is usable for a resume.
    assert latest_checkpoint(cfg.checkpoint_dir).name == "step_00000006"
