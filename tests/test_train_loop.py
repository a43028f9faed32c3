"""Unit tests of the training loop's parts: config, sampler, schedule, EMA, accumulation,
gradient checkpointing, precision and launcher parsing."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from osplab.train import distributed
from osplab.train import toy as toy_module
from osplab.train.checkpoint import latest_checkpoint
from osplab.train.config import TrainConfig
from osplab.train.ema import EMA
from osplab.train.loop import autocast_dtype, train
from osplab.train.optim import lr_factor
from osplab.train.run import DEFAULT_CONF, load_configs
from osplab.train.sampler import ShardedBatchSampler
from osplab.train.state import seed_everything
from osplab.train.testing import read_checkpoint, read_curve, tiny_toy, tiny_train
from osplab.train.toy import build_toy_task, toy_flops_per_sample


def test_default_yaml_is_a_complete_config() -> None:
    cfg, toy = load_configs(DEFAULT_CONF, ["train.steps=7", "toy.hidden=5"])
    assert cfg.steps == 7 and toy.hidden == 5 and isinstance(cfg.betas, tuple)
    with pytest.raises(KeyError, match="train.warmup"):
        load_configs(DEFAULT_CONF, ["train.warmup=3"])  # typo of warmup_steps: refused


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    values = tiny_train(tmp_path).to_dict()
    with pytest.raises(ValueError, match=r"unknown keys \['stepz'\], missing keys \['steps'\]"):
        TrainConfig.from_dict({**{k: v for k, v in values.items() if k != "steps"}, "stepz": 1})
    with pytest.raises(ValueError, match="train.precision='fp16'"):
        TrainConfig.from_dict({**values, "precision": "fp16"})
    cfg = TrainConfig.from_dict({**values, "global_batch": 24, "micro_batch": 4})
    assert cfg.grad_accum(1) == 6 and cfg.grad_accum(3) == 2
    with pytest.raises(ValueError, match=r"global_batch=24 is not divisible .* world_size=4 = 16"):
        cfg.grad_accum(4)


def _rank_batches(sampler_args: dict, world: int, start: int, n_global: int) -> list[list[int]]:
    """Per global batch: the concatenation of all ranks' micro-batches."""
    out = [[] for _ in range(n_global)]
    for rank in range(world):
        s = ShardedBatchSampler(rank=rank, world_size=world, **sampler_args)
        s.start = start
        it = iter(s)
        accum = sampler_args["global_batch"] // (sampler_args["micro_batch"] * world)
        for b in range(n_global):
            for _ in range(accum):
                micro = next(it)
                assert len(micro) == sampler_args["micro_batch"]
                out[b].extend(micro)
    return out


def test_sampler_shards_resumes_and_ignores_world_size() -> None:
    args = dict(num_samples=50, global_batch=8, micro_batch=2, seed=3)  # 6 batches per epoch
    one = _rank_batches(args, world=1, start=0, n_global=14)  # crosses two epoch boundaries
    four = _rank_batches(args, world=4, start=0, n_global=14)
    assert one == four  # same samples per step whatever the number of processes
    for b in range(14):
        assert len(set(four[b])) == 8  # ranks disjoint, no repeats inside a batch
    epoch0 = sorted(i for b in one[:6] for i in b)
    assert len(set(epoch0)) == 48 and set(epoch0) <= set(range(50))  # 2 dropped per epoch
    assert one[:6] != one[6:12]  # a new permutation each epoch
    assert _rank_batches(args, world=2, start=9, n_global=5) == one[9:]  # resume at batch 9
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardedBatchSampler(4, 0, 1, 8, 2, 0)


def test_lr_schedule(tmp_path: Path) -> None:
    cfg = tiny_train(tmp_path, steps=11, warmup_steps=2, lr_schedule="cosine", final_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(cfg.steps)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[-1] == pytest.approx(0.1)
    assert factors[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    const = tiny_train(tmp_path, steps=11, warmup_steps=4, lr_schedule="constant")
    assert [lr_factor(s, const) for s in (0, 3, 10)] == [0.25, 1.0, 1.0]


def test_ema_matches_closed_form() -> None:
    lin = torch.nn.Linear(3, 1)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = EMA(lin, decay=0.9)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            lin.weight.fill_(value)
        ema.update(lin)
    expected = ((0.0 * 0.9 + 0.1 * 1.0) * 0.9 + 0.1 * 2.0) * 0.9 + 0.1 * 3.0
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 3), expected))
    assert torch.equal(ema.state_dict(lin)["bias"], ema.shadow["bias"])


def _train(tmp_path: Path, name: str, monkeypatch, toy=None, **changes) -> tuple[dict, Path]:
    monkeypatch.chdir(tmp_path)  # dvclive looks at the repo of the working directory
    seed_everything(0)
    out = train(tiny_train(tmp_path / name, **changes), build_toy_task(toy or tiny_toy()))
    return out, tmp_path / name


def test_grad_accumulation_equals_large_batch(tmp_path: Path, monkeypatch) -> None:
    toy = tiny_toy(dropout=0.0)
    _, big = _train(tmp_path, "big", monkeypatch, toy, micro_batch=16, steps=6)
    _, acc = _train(tmp_path, "acc", monkeypatch, toy, micro_batch=2, steps=6)  # 8 micro-steps
    a, b = read_curve(big), read_curve(acc)
    assert list(a) == list(range(1, 7))
    assert a[1] != a[6]  # it trains
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5)


def test_gradient_checkpointing_is_exact(tmp_path: Path, monkeypatch) -> None:
    # Dropout on: checkpoint() must replay the same masks in the recompute.
    calls = []
    real = toy_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(toy_module, "checkpoint", counting)
    _, plain = _train(tmp_path, "plain", monkeypatch, steps=4)
    assert not calls
    _, ckpt = _train(tmp_path, "ckpt", monkeypatch, steps=4, grad_checkpointing=True)
    assert len(calls) == 4 * 4 * 2  # steps x micro-steps x blocks
    wa = read_checkpoint(latest_checkpoint(plain / "checkpoints"))["model"]
    wb = read_checkpoint(latest_checkpoint(ckpt / "checkpoints"))["model"]
    for key in wa:
        assert torch.equal(wb[key], wa[key]), key
    assert read_curve(plain) == read_curve(ckpt)


def test_bf16_autocast_on_cpu_when_asked(tmp_path: Path, monkeypatch) -> None:
    """On a CPU with native bf16 (forced here, so the test means the same on every machine)."""
    import osplab.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    out32, _ = _train(tmp_path, "fp32", monkeypatch, steps=3)
    out16, _ = _train(tmp_path, "bf16", monkeypatch, steps=3, precision="bf16")
    assert math.isfinite(out16["train/loss"])
    assert out16["train/loss"] != out32["train/loss"]  # autocast really changed the numerics
    assert out16["train/loss"] == pytest.approx(out32["train/loss"], rel=0.05)


def test_bf16_on_a_cpu_without_native_bf16_runs_fp32_and_says_so(tmp_path: Path, monkeypatch) -> None:
    """Emulated bf16 is 40-80x slower than fp32 (AVX2): the loop runs fp32, warns once, and trains like fp32."""
    import osplab.hardware as hardware
    import osplab.train.loop as loop

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(loop, "_warned_emulated", set())
    cpu = torch.device("cpu")
    with pytest.warns(RuntimeWarning, match=r"train.precision=bf16, but this CPU .* has no native bf16"):
        assert autocast_dtype("bf16", cpu) is None
    assert autocast_dtype("auto", cpu) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per setting: no second warning
        assert autocast_dtype("bf16", cpu) is None
    with pytest.warns(RuntimeWarning, match="diffusion.sample.precision=bf16"):  # another setting warns on its own
        autocast_dtype("bf16", cpu, "diffusion.sample.precision")
    out32, _ = _train(tmp_path, "fp32", monkeypatch, steps=3)
    out16, _ = _train(tmp_path, "bf16", monkeypatch, steps=3, precision="bf16")
    assert out16["train/loss"] == out32["train/loss"]  # the same fp32 numerics


def test_resuming_in_another_precision_warns(tmp_path: Path, monkeypatch, caplog) -> None:
    """A bf16 run resumed on a CPU without native bf16 continues in fp32, and the log says so."""
    import logging

    import osplab.hardware as hardware
    import osplab.train.loop as loop

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    _train(tmp_path, "run", monkeypatch, steps=4, precision="bf16")  # one checkpoint, at step 4
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("*/state.json")).read_text())
    assert state["autocast"] == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(loop, "_warned_emulated", {"train.precision"})
    with caplog.at_level(logging.WARNING, logger="osplab.train.loop"):
        _train(tmp_path, "run", monkeypatch, steps=6, precision="bf16")
    assert "was trained in bf16, this machine runs fp32" in caplog.text


def test_logged_metrics_and_throughput(tmp_path: Path, monkeypatch) -> None:
    toy = tiny_toy()
    out, run = _train(tmp_path, "run", monkeypatch, toy, steps=4, log_every=2)
    expected = {"step", "train/loss", "train/lr", "train/grad_norm", "train/mae",
                "perf/samples_per_s", "perf/gflops_per_s", "perf/gflops_per_s_per_device",
                "train/nonfinite_steps", "resumed_from_step", "train_seconds"}
    assert set(out) == expected
    assert out["perf/gflops_per_s"] == pytest.approx(
        out["perf/samples_per_s"] * toy_flops_per_sample(toy) / 1e9)
    assert sorted(read_curve(run, "train/lr")) == [2, 4]
    # Rerunning a finished run is a no-op that returns the same metrics (and says it resumed at the end).
    again, _ = _train(tmp_path, "run", monkeypatch, toy, steps=4, log_every=2)
    timing = ("resumed_from_step", "train_seconds")
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in out.items() if k not in timing}
    assert out["resumed_from_step"] == 0 and again["resumed_from_step"] == 4
    assert again["train_seconds"] == pytest.approx(out["train_seconds"], abs=0.5)


def test_toy_flops_per_sample_counts_linear_layers() -> None:
    toy = tiny_toy()  # 8 -> 32, 2 x (32 -> 32), 32 -> 2
    model = build_toy_task(toy).model
    macs = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert toy_flops_per_sample(toy) == 6 * macs


def test_launcher_env_parsing(monkeypatch) -> None:
    assert distributed.first_host("gpu[03-05,9],cpu1") == "gpu03"
    assert distributed.first_host("node7") == "node7"
    assert distributed._launcher_ranks({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (3, 8, 1)
    assert distributed._launcher_ranks({}) == (0, 1, 0)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
             "SLURM_JOB_NODELIST": "a100-[12-13]", "SLURM_JOB_ID": "123456"}
    assert distributed._launcher_ranks(slurm) == (5, 8, 1)
    assert os.environ["MASTER_ADDR"] == "a100-12" and os.environ["MASTER_PORT"] == str(20000 + 123456 % 20000)


def test_fsdp_without_process_group_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(RuntimeError, match="train.fsdp=true needs a process group"):
        _train(tmp_path, "fsdp", monkeypatch, steps=1, fsdp=True)


def test_sampler_order_is_numpy_pcg64() -> None:
    """The data order is a documented function of (seed, epoch), independent of torch."""
    s = ShardedBatchSampler(10, 0, 1, 5, 5, seed=11)
    expected = np.random.Generator(np.random.PCG64([11, 1])).permutation(10)
    assert s.epoch_order(1).tolist() == expected.tolist()


def test_resume_refuses_changed_settings(tmp_path: Path, monkeypatch) -> None:
    _train(tmp_path, "run", monkeypatch, steps=2)
    with pytest.raises(ValueError, match=r"different settings \(lr: 0.001 -> 0.002\); delete"):
        _train(tmp_path, "run", monkeypatch, steps=4, lr=2e-3)
    out, _ = _train(tmp_path, "run", monkeypatch, steps=4, log_every=2)  # allowed: extend, cadence
    assert out["step"] == 4


def test_task_evaluate_is_logged_at_checkpoints_and_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    """The evaluation hook runs in eval mode without gradients at checkpoint steps, lands on those
    rows, and leaves the training run bitwise as it would be without it."""
    toy = tiny_toy()  # dropout on: eval mode must be restored to train mode afterwards
    _, plain = _train(tmp_path, "plain", monkeypatch, toy, steps=6, log_every=1, checkpoint_every=3)
    seen = []

    def evaluate(model):
        seen.append((model.training, torch.is_grad_enabled()))
        x = torch.linspace(-1, 1, 8 * toy.dim_in).view(8, toy.dim_in)
        return {"val/out_mean": model(x).mean()}

    monkeypatch.chdir(tmp_path)
    seed_everything(0)
    task = build_toy_task(toy)
    task.evaluate = evaluate
    out = train(tiny_train(tmp_path / "eval", steps=6, log_every=1, checkpoint_every=3), task)
    assert seen == [(False, False), (False, False)]  # steps 3 and 6, eval mode, no grad
    assert sorted(read_curve(tmp_path / "eval", "val/out_mean")) == [3, 6]
    assert "val/out_mean" in out
    assert read_curve(plain) == read_curve(tmp_path / "eval")
    wa = read_checkpoint(latest_checkpoint(plain / "checkpoints"))["model"]
    wb = read_checkpoint(latest_checkpoint(tmp_path / "eval" / "checkpoints"))["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_seconds_add_up_over_a_resume(tmp_path: Path, monkeypatch) -> None:
    """A resumed run reports the training time of the whole run, not only of its own process."""
    first, run = _train(tmp_path, "run", monkeypatch, steps=2)
    assert first["resumed_from_step"] == 0 and first["train_seconds"] > 0
    saved = json.loads((latest_checkpoint(run / "checkpoints") / "state.json").read_text())["train_seconds"]
    assert saved == pytest.approx(first["train_seconds"], abs=0.5)  # the checkpoint is written just before the end
    second, _ = _train(tmp_path, "run", monkeypatch, steps=4)
    assert second["resumed_from_step"] == 2
    assert second["train_seconds"] > saved
    final = json.loads((latest_checkpoint(run / "checkpoints") / "state.json").read_text())
    assert final["step"] == 4 and final["train_seconds"] > saved
