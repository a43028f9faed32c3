"""The training loop shared by every model: `train(cfg, task) -> final metrics`.

One optimizer step = `accum` micro-steps per rank (gradient all-reduce only on the last one),
then: global loss and grad norm -> non-finite guard -> clip -> AdamW -> EMA -> LR schedule.
Checkpoints are taken only between optimizer steps, so a resumed run restarts at an accumulation
boundary with the same weights, moments, EMA, schedule, RNG states and data position, and repeats
the uninterrupted run bit for bit (on CPU; on GPU with train.deterministic=true as far as the
kernels allow).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, ContextManager, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from osplab import hardware

from .checkpoint import Checkpointer, latest_checkpoint, read_json
from .config import TrainConfig
from .distributed import DistEnv, all_reduce_mean, gradient_sync, init_distributed, unwrap, wrap_model
from .ema import EMA
from .monitor import Monitor
from .optim import build_optimizer, build_scheduler
from .sampler import ShardedBatchSampler
from .state import restore_rng, seed_everything
from .task import Task

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Raised after train.max_nonfinite consecutive steps with a non-finite loss or grad norm."""


_warned_emulated: set[str] = set()


def autocast_dtype(precision: str, device: torch.device, key: str = "train.precision") -> torch.dtype | None:
    """bf16 autocast where it is wanted and supported; None means plain fp32.

    auto: bf16 on CUDA GPUs that support it, fp32 elsewhere (CPU bf16 only when asked for).
    bf16 on a CPU: bf16 where the CPU has native bf16 (`osplab.hardware`); elsewhere fp32, with a
    warning (once per `key`), since emulated bf16 is 40-80x slower than fp32 there (AVX2, measured) and
    the configs ask for bf16 for speed. `key` is the setting the messages name (a sampler passes
    `diffusion.sample.precision`).
    """
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if precision == "bf16":
            raise RuntimeError(f"{key}=bf16 but {torch.cuda.get_device_name()} has no "
                               f"bf16 support; use {key}=fp32 or auto")
        return None
    if precision != "bf16":
        return None
    if hardware.cpu_has_native_bf16():
        return torch.bfloat16
    if key not in _warned_emulated:
        _warned_emulated.add(key)
        message = (f"{key}=bf16, but this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16 "
                   f"(AVX512_BF16 or AMX), where autocast would emulate it, 40-80x slower than fp32: running in "
                   f"fp32 instead (numbers differ from a bf16 machine's in the low digits). Set {key}=fp32 "
                   f"to silence this.")
        log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return None


def configure_torch(cfg: TrainConfig, device: torch.device) -> None:
    """Thread count and deterministic kernels (both needed for bitwise-repeatable runs).

    The thread count matters on CPU too: GEMM reductions split differently with more threads, so
    a resumed run must use the same number (measured: the toy loss differs in the 8th digit
    between 1 and 2 threads). torch.use_deterministic_algorithms is applied on CUDA only: the
    CPU kernels used here are already deterministic, and the call imports torch._inductor
    (~3 s per process on this machine).
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if device.type == "cuda":
        torch.use_deterministic_algorithms(cfg.deterministic)
        torch.backends.cudnn.deterministic = cfg.deterministic
        torch.backends.cudnn.benchmark = not cfg.deterministic


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors inside nested dicts/lists/tuples to `device`."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


@dataclass
class _Run:
    """Everything one optimizer step touches."""

    cfg: TrainConfig
    task: Task
    env: DistEnv
    model: nn.Module  # wrapped (DDP/FSDP) or plain
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: EMA
    ckpt: Checkpointer
    accum: int
    amp_dtype: torch.dtype | None

    def autocast(self) -> ContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)


def _build(cfg: TrainConfig, task: Task, env: DistEnv) -> _Run:
    accum = cfg.grad_accum(env.world_size)
    if hasattr(task.model, "gradient_checkpointing"):
        task.model.gradient_checkpointing = cfg.grad_checkpointing
    elif cfg.grad_checkpointing:
        raise ValueError(f"{type(task.model).__name__} has no `gradient_checkpointing` flag; "
                         "set train.grad_checkpointing=false")
    task.model.train()  # dropout etc. on; the task may hand over a model left in eval mode
    model = wrap_model(task.model, env, cfg.fsdp, task.shard_units)
    optimizer = build_optimizer(model, cfg)
    return _Run(cfg, task, env, model, optimizer, build_scheduler(optimizer, cfg),
                EMA(unwrap(model), cfg.ema_decay),
                Checkpointer(cfg.checkpoint_dir, cfg.keep_checkpoints, env), accum,
                autocast_dtype(cfg.precision, env.device))


# Settings that may change when a run is resumed: length, cadence, parallelism, performance.
RESUMABLE_CHANGES = ("steps", "out_dir", "checkpoint_every", "keep_checkpoints", "log_every",
                     "num_workers", "nproc_per_node", "nnodes", "max_nonfinite", "fsdp",
                     "grad_checkpointing", "num_threads", "deterministic")


def _check_resumable(path: Any, cfg: TrainConfig, saved: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint written with different optimisation settings: that would
    silently mix two experiments (e.g. `dvc exp run -S train.lr=...` over old checkpoints)."""
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise ValueError(f"{path} was written with different settings ({diff}); delete "
                         f"{cfg.checkpoint_dir} to start afresh, or set train.out_dir elsewhere")
    if saved["steps"] != cfg.steps and cfg.lr_schedule == "cosine":
        log.warning("train.steps changed %d -> %d: the cosine schedule is stretched from here on",
                    saved["steps"], cfg.steps)


def _resume(run: _Run) -> dict[str, Any]:
    """Load the newest checkpoint if any (returns its JSON state), else seed a fresh run."""
    cfg, env = run.cfg, run.env
    path = latest_checkpoint(cfg.checkpoint_dir)
    if path is None:
        seed_everything(cfg.seed, env.rank)
        return {"step": 0}
    _check_resumable(path, cfg, read_json(path / "state.json")["config"])
    state = run.ckpt.load(path, run.model, run.ema, run.optimizer, run.scheduler)
    if state["world_size"] == env.world_size:
        restore_rng(state["rng"][env.rank])
    else:  # RNG streams are per rank and cannot be remapped: reseed deterministically
        seed_everything(cfg.seed, env.rank, state["step"])
        if env.is_main:
            log.warning("%s was written by %d processes, this run has %d: the data order is "
                        "kept but RNG streams are reseeded", path, state["world_size"],
                        env.world_size)
    saved_amp, amp = state.get("autocast"), _autocast_name(run.amp_dtype)
    if env.is_main and saved_amp is not None and saved_amp != amp:  # e.g. bf16 on one CPU, fp32 on another
        log.warning("%s was trained in %s, this machine runs %s (osplab.hardware): the resumed run is not bitwise "
                    "the uninterrupted one", path, saved_amp, amp)
    if env.is_main:
        log.info("resumed from %s at step %d", path, state["step"])
    return state


def _autocast_name(dtype: torch.dtype | None) -> str:
    """What the steps really ran in: 'bf16' (autocast) or 'fp32' (kept in checkpoints, checked on resume)."""
    return "fp32" if dtype is None else {torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def _loader(run: _Run, start: int) -> DataLoader:
    """DataLoader over the task's batch sampler, positioned at global batch `start`."""
    cfg, task, env = run.cfg, run.task, run.env
    make = task.batch_sampler or partial(ShardedBatchSampler, len(task.dataset))
    sampler = make(env.rank, env.world_size, cfg.global_batch, cfg.micro_batch, cfg.seed)
    sampler.start = start
    # An explicit generator: otherwise creating the iterator draws a worker seed from the global
    # torch RNG, which a resumed run would draw at a different point of its RNG stream.
    return DataLoader(task.dataset, batch_sampler=sampler, collate_fn=task.collate,
                      num_workers=cfg.num_workers, pin_memory=env.device.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.seed))


def _micro_steps(run: _Run, batches: Iterator[Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward/backward over `accum` micro-batches; returns the loss and metrics averaged over
    micro-steps and ranks (0-dim tensors). Gradients end up summed / accum, averaged over ranks."""
    device = run.env.device
    sums: dict[str, torch.Tensor] = {}
    loss_sum = torch.zeros((), device=device)
    for i in range(run.accum):
        batch = to_device(next(batches), device)
        with gradient_sync(run.model, enabled=i == run.accum - 1):
            with run.autocast():
                loss, metrics = run.task.loss(run.model, batch)
            (loss / run.accum).backward()
        loss_sum += loss.detach().float()
        for k, v in metrics.items():
            v = torch.as_tensor(v, dtype=torch.float32, device=device).detach()
            sums[k] = sums[k] + v if k in sums else v
    keys = sorted(sums)
    stats = all_reduce_mean(torch.stack([loss_sum, *(sums[k] for k in keys)]) / run.accum)
    return stats[0], dict(zip(keys, stats[1:]))


def _clip(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global L2 grad norm (before clipping); clips when max_norm > 0. Same value on all ranks."""
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf,
                                          foreach=True)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


class _Window:
    """Sums between two log rows; means over the steps whose values were finite."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.finite_steps, self.steps, self.seconds = 0, 0, 0.0

    def add(self, values: dict[str, float] | None, seconds: float) -> None:
        self.steps += 1
        self.seconds += seconds
        if values is not None:
            self.finite_steps += 1
            for k, v in values.items():
                self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict[str, float]:
        return {k: v / self.finite_steps for k, v in self.sums.items()}


def _optimizer_step(run: _Run, step: int, loss: torch.Tensor, norm: torch.Tensor,
                    nonfinite: dict[str, int]) -> bool:
    """Apply the update unless loss or grad norm is non-finite; returns whether it was applied.

    A skipped step still consumes its data and advances the LR schedule (both are functions of
    the step number), but leaves weights, moments and EMA untouched.
    """
    if bool(torch.isfinite(loss)) and bool(torch.isfinite(norm)):
        run.optimizer.step()
        run.ema.update(unwrap(run.model))
        nonfinite["consecutive"] = 0
        return True
    nonfinite["consecutive"] += 1
    nonfinite["total"] += 1
    limit = run.cfg.max_nonfinite
    if run.env.is_main:
        log.warning("step %d: non-finite loss=%s grad_norm=%s; optimizer step skipped "
                    "(%d in a row, abort at train.max_nonfinite=%d)",
                    step, float(loss), float(norm), nonfinite["consecutive"], limit)
    if nonfinite["consecutive"] >= limit:
        raise NonFiniteError(
            f"{limit} consecutive non-finite steps (steps {step - limit + 1}..{step}, last "
            f"loss={float(loss)}, grad_norm={float(norm)}): aborted. Lower train.lr, check the "
            f"data, or raise train.max_nonfinite; the newest checkpoint in "
            f"{run.cfg.checkpoint_dir} is from before the failure")
    return False


def _log_row(run: _Run, window: _Window, nonfinite: dict[str, int]) -> dict[str, float]:
    """Metrics of one dvclive row: window means, throughput, skipped-step count."""
    cfg, world = run.cfg, run.env.world_size
    samples_per_s = window.steps * cfg.global_batch / max(window.seconds, 1e-9)
    gflops = samples_per_s * run.task.flops_per_sample / 1e9
    row = window.means()
    row.update({"perf/samples_per_s": samples_per_s, "perf/gflops_per_s": gflops,
                "perf/gflops_per_s_per_device": gflops / world,
                "train/nonfinite_steps": float(nonfinite["total"])})
    return row


def _evaluate(run: _Run) -> dict[str, float]:
    """The task's evaluation (e.g. a validation loss), in eval mode without gradients; {} if none."""
    if run.task.evaluate is None:
        return {}
    model = run.model
    model.eval()
    try:
        with torch.no_grad(), run.autocast():
            return {k: float(v) for k, v in run.task.evaluate(model).items()}
    finally:
        model.train()


def _run_steps(run: _Run, batches: Iterator[Any], state: dict[str, Any],
               monitor: Monitor) -> tuple[dict[str, float], float]:
    """Optimizer steps from state['step'] to cfg.steps, with logging and checkpoints.

    Returns the last logged row and the run's training seconds: wall time of the steps, evaluations
    and checkpoints of this process plus those of the interrupted runs it resumed (kept in every
    checkpoint), so a resumed run still reports what the whole training cost.
    """
    cfg = run.cfg
    started, earlier = time.perf_counter(), float(state.get("train_seconds", 0.0))
    nonfinite = dict(state.get("nonfinite", {"consecutive": 0, "total": 0}))
    row: dict[str, float] = dict(state.get("metrics", {}))
    window = _Window()
    for done in range(state["step"] + 1, cfg.steps + 1):  # `done` = steps finished after this one
        t0 = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        loss, metrics = _micro_steps(run, batches)
        norm = _clip(run.model, cfg.grad_clip)
        ok = _optimizer_step(run, done, loss, norm, nonfinite)
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        values = {"train/loss": float(loss), "train/lr": lr, "train/grad_norm": float(norm),
                  **{f"train/{k}": float(v) for k, v in metrics.items()}} if ok else None
        window.add(values, time.perf_counter() - t0)
        monitor.advance()
        checkpoint = done % cfg.checkpoint_every == 0 or done == cfg.steps
        evaluated = _evaluate(run) if checkpoint else {}
        if done % cfg.log_every == 0 or done == cfg.steps or evaluated:
            row = {**_log_row(run, window, nonfinite), **evaluated}
            monitor.log(done, row)
            window = _Window()
        if checkpoint:
            extra = {"data": {"global_batch": done}, "nonfinite": nonfinite,
                     "config": cfg.to_dict(), "metrics": row, "autocast": _autocast_name(run.amp_dtype),
                     "train_seconds": earlier + time.perf_counter() - started}
            run.ckpt.save(done, run.model, run.ema, run.optimizer, run.scheduler, extra)
    return row, earlier + time.perf_counter() - started


def train(cfg: TrainConfig, task: Task) -> dict[str, float]:
    """Train `task` for cfg.steps optimizer steps, resuming from cfg.out_dir if a checkpoint
    exists. Returns the last logged metrics (same keys as the dvclive plots) plus 'step',
    'resumed_from_step' (0 for a fresh run) and 'train_seconds' (wall seconds of training over
    this run and the interrupted runs it continued; a process's own time undercounts a resumed run).

    Works in a plain process or under torchrun/SLURM (one process per device); the process group
    is created here if the launcher describes one. The caller seeds and builds the model first
    (e.g. `seed_everything(cfg.seed)`), so every rank starts from identical weights.
    """
    env = init_distributed()
    configure_torch(cfg, env.device)
    run = _build(cfg, task, env)
    state = _resume(run)
    params = {**cfg.to_dict(), "world_size": env.world_size, "grad_accum": run.accum,
              "flops_per_sample": task.flops_per_sample,
              "n_params": sum(p.numel() for p in unwrap(run.model).parameters())}
    monitor = Monitor(cfg.live_dir, env.is_main, cfg.steps, state["step"], params)
    loader = _loader(run, state.get("data", {}).get("global_batch", state["step"]))
    batches = iter(loader)
    try:
        row, seconds = _run_steps(run, batches, state, monitor)
    finally:
        del batches  # shuts DataLoader workers down
        monitor.close()  # also on errors: ends the progress bar and the dvclive run
    return {"step": float(cfg.steps), **row, "resumed_from_step": float(state["step"]), "train_seconds": seconds}
