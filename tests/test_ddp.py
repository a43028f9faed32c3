"""2-process gloo DDP (and FSDP2) on CPU follow the same loss curve as 1 process with the same
global batch; gradient all-reduce happens once per optimizer step, not once per micro-step."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from osplab.train import loop
from osplab.train.checkpoint import latest_checkpoint
from osplab.train.state import seed_everything
from osplab.train.testing import read_checkpoint, read_curve, run_toy, tiny_toy, tiny_train
from osplab.train.toy import build_toy_task

# dropout 0: ranks draw different dropout masks, so only a dropout-free model can match exactly.
ARGS = ["train.global_batch=16", "train.micro_batch=4", "train.log_every=1",
        "train.checkpoint_every=4", "train.lr=1e-3", "train.lr_schedule=constant",
        "train.warmup_steps=2", "train.ema_decay=0.9", "train.weight_decay=0.01",
        "train.grad_clip=1.0", "train.num_workers=0", "train.num_threads=1",
        "train.precision=fp32", "toy.dropout=0", "toy.hidden=32", "toy.n_samples=256"]
STEPS = 12


def _assert_same_run(ref: Path, other: Path, first_step: int = 1) -> None:
    for metric in ("train/loss", "train/grad_norm", "train/mae"):
        a, b = read_curve(ref, metric), read_curve(other, metric)
        assert sorted(b) == list(range(first_step, STEPS + 1)), metric
        for step in b:
            assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-7), (metric, step)
    wa = read_checkpoint(latest_checkpoint(ref / "checkpoints"))
    wb = read_checkpoint(latest_checkpoint(other / "checkpoints"))
    for part in ("model", "ema", "optimizer"):
        assert wa[part].keys() == wb[part].keys()
        for key in wa[part]:
            torch.testing.assert_close(wb[part][key], wa[part][key], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, 4 micro-steps of 4 samples per optimizer step."""
    root = tmp_path_factory.mktemp("single")
    run_toy(ARGS + [f"train.steps={STEPS}", f"train.out_dir={root / 'run'}"], cwd=root)
    return root / "run"


def test_ddp_matches_single_process(single: Path, tmp_path: Path) -> None:
    ddp = tmp_path / "ddp"  # 2 processes x 2 micro-steps x 4 samples
    proc = run_toy(ARGS + [f"train.steps={STEPS}", f"train.out_dir={ddp}"], cwd=tmp_path, nproc=2)
    assert '"step": 12.0' in proc.stdout
    _assert_same_run(single, ddp)


def test_fsdp_resumes_a_single_process_checkpoint(single: Path, tmp_path: Path) -> None:
    """FSDP2 over 2 processes continues the 1-process run from its step-8 checkpoint (loading
    shards it, saving gathers it) and ends where the 1-process run ended."""
    fsdp = tmp_path / "fsdp"
    shutil.copytree(single / "checkpoints" / "step_00000008", fsdp / "checkpoints" / "step_00000008")
    proc = run_toy(ARGS + [f"train.steps={STEPS}", f"train.out_dir={fsdp}", "train.fsdp=true"],
                   cwd=tmp_path, nproc=2)
    assert "at step 8" in proc.stderr
    assert "RNG streams are reseeded" in proc.stderr  # 1 -> 2 processes: said out loud
    _assert_same_run(single, fsdp, first_step=9)


def _count_allreduces(tmp_path: Path, micro_batch: int) -> int:
    """All-reduce calls of DDP during one optimizer step (global batch 16)."""
    cfg = tiny_train(tmp_path, micro_batch=micro_batch)
    seed_everything(0)
    run = loop._build(cfg, build_toy_task(tiny_toy()), loop.init_distributed())
    assert isinstance(run.model, torch.nn.parallel.DistributedDataParallel)
    calls = []

    def hook(state, bucket):  # counts, then does what a 1-rank all-reduce would: nothing
        calls.append(bucket.index())
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    run.model.register_comm_hook(None, hook)
    batches = iter(loop._loader(run, 0))
    loop._micro_steps(run, batches)
    assert all(p.grad is not None for p in run.model.parameters())
    return len(calls)


def test_no_sync_on_all_but_last_micro_step(tmp_path: Path) -> None:
    # FileStore rendezvous: no TCP port to pick (bind-close-reuse races with other processes)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        one_micro_step = _count_allreduces(tmp_path / "a", micro_batch=16)  # accum 1
        four_micro_steps = _count_allreduces(tmp_path / "b", micro_batch=4)  # accum 4
    finally:
        dist.destroy_process_group()
    assert one_micro_step >= 1
    assert four_micro_steps == one_micro_step
