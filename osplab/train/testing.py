"""Helpers for tests of the training loop and of the models that plug into it: complete tiny
configs (explicit values, no defaults in Python), toy-run launchers, TSV and checkpoint readers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import safetensors.torch

from .config import TrainConfig
from .toy import ToyConfig

REPO = Path(__file__).resolve().parents[2]


def tiny_train(out_dir: Path, **changes) -> TrainConfig:
    """A complete TrainConfig with explicit tiny values (no defaults in Python)."""
    values = dict(
        steps=12, global_batch=16, micro_batch=4, lr=1e-3, lr_schedule="cosine",
        final_lr_ratio=0.1, warmup_steps=3, weight_decay=0.01, betas=[0.9, 0.99], adam_eps=1e-8,
        grad_clip=1.0, ema_decay=0.9, precision="fp32", checkpoint_every=4, keep_checkpoints=2,
        log_every=1, max_nonfinite=3, grad_checkpointing=False, fsdp=False, num_workers=0,
        seed=0, deterministic=True, num_threads=1, out_dir=str(out_dir), nproc_per_node=1,
        nnodes=1,
    )
    values.update(changes)
    return TrainConfig.from_dict(values)


def tiny_toy(**changes) -> ToyConfig:
    values = dict(n_samples=256, dim_in=8, hidden=32, depth=2, dim_out=2, dropout=0.1,
                  noise=0.05, data_seed=7)
    values.update(changes)
    return ToyConfig(**values)


def run_env() -> dict[str, str]:
    """Environment for child processes: repo importable, one thread, no inherited ranks."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def toy_command(overrides: list[str], nproc: int = 1) -> list[str]:
    """`python -m osplab.train.run ...`, or through torchrun with `nproc` processes."""
    if nproc == 1:
        return [sys.executable, "-m", "osplab.train.run", *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "osplab.train.run", *overrides]


RUN_TIMEOUT = 900.0  # seconds; a hang guard, not a speed check


def run_toy(overrides: list[str], cwd: Path, nproc: int = 1,
            timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Run the toy entry point to completion in `cwd` (use a temporary directory: dvclive
    inspects the git/DVC repo of its working directory).

    The timeout only catches a hung run: a 2-process run of tests/test_ddp.py took ~30 s (measured
    with other jobs on the 2 cores) and can take several times that on a busier machine, where the
    former 120 s limit was exceeded."""
    proc = subprocess.run(toy_command(overrides, nproc), env=run_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"run failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def read_curve(out_dir: Path, metric: str = "train/loss") -> dict[int, float]:
    """step -> value from the dvclive TSV of one metric."""
    tsv = Path(out_dir) / "live" / "plots" / "metrics" / f"{metric}.tsv"
    rows = tsv.read_text().splitlines()[1:]
    return {int(s): float(v) for s, v in (r.split("\t") for r in rows)}


def read_checkpoint(path: Path) -> dict[str, dict]:
    """{'model'|'ema'|'optimizer': {name: tensor}} of one checkpoint directory."""
    return {name: safetensors.torch.load_file(str(path / f"{name}.safetensors"))
            for name in ("model", "ema", "optimizer")}
