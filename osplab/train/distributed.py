"""Process-group setup, device choice and model wrapping (DDP or FSDP2).

Launchers and where the ranks come from:
- `torchrun` (single or multi node): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
- SLURM with one task per GPU (e.g. the Hydra submitit launcher, conf/hydra/launcher/slurm.yaml):
  SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the master is the first host of SLURM_JOB_NODELIST.
- plain `python`: one process, no process group at all.
The backend follows the device: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank among world_size processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and draws the progress bar."""
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """First host name of a SLURM node list: 'gpu[03-05,9],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.group(1), m.group(3)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _launcher_ranks(env: dict[str, str]) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun or SLURM variables; (0, 1, 0) otherwise.

    For SLURM this also fills MASTER_ADDR / MASTER_PORT when the job did not set them, so that
    init_process_group's env:// rendezvous works with one SLURM task per rank.
    """
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        os.environ.setdefault("MASTER_ADDR", first_host(env["SLURM_JOB_NODELIST"]))
        # A port derived from the job id lets two jobs share a node without clashing.
        os.environ.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def _pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_distributed() -> DistEnv:
    """Join the process group the launcher describes (idempotent); no group for plain python.

    Under torchrun a group is created even for one process, so DDP/FSDP code paths are the same.

    CUBLAS_WORKSPACE_CONFIG is set before CUDA starts so deterministic cuBLAS is possible.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
        return DistEnv(dist.get_rank(), dist.get_world_size(), local, _pick_device(local))
    launched = "RANK" in os.environ  # torchrun, even with one process (FSDP needs a group)
    rank, world, local = _launcher_ranks(dict(os.environ))
    device = _pick_device(local)
    if world > 1 or launched:
        backend = "nccl" if device.type == "cuda" else "gloo"
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(rank), str(world)
        os.environ["LOCAL_RANK"] = str(local)
        dist.init_process_group(backend, rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
    return DistEnv(rank, world, local, device)


def setup_logging(env: DistEnv) -> None:
    """Log INFO (resumes, warnings) on the main rank and WARNING elsewhere, each line tagged with its rank."""
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING,
                        format=f"[rank {env.rank}] %(levelname)s %(name)s: %(message)s")


def cleanup_distributed() -> None:
    """Leave the process group (call once at the end of the entry point)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (in place on a copy); identity in a single process. Non-finite survives."""
    if not (dist.is_available() and dist.is_initialized()):
        return x
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """One JSON-able object per rank, gathered on every rank (used for RNG states)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place, so it is returned as is)."""
    return model.module if isinstance(model, DDP) else model


def shard_like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `ref`: same device and dtype, and sharded the same way if ref is a
    DTensor (FSDP2 parameter or optimizer moment). Collective in that case."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    full = full.to(device=ref.device, dtype=ref.dtype)
    if isinstance(ref, DTensor):
        return distribute_tensor(full, ref.device_mesh, ref.placements)
    return full


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap_model(model: nn.Module, env: DistEnv, fsdp: bool,
               shard_units: Callable[[nn.Module], Iterable[nn.Module]] | None = None) -> nn.Module:
    """Move to env.device and wrap: nothing (1 process), DDP, or FSDP2 (`fully_shard`).

    With FSDP each module from `shard_units(model)` (e.g. the transformer blocks) becomes its own
    shard group, then the root; without shard_units only the root is sharded.
    """
    model = model.to(env.device)
    if fsdp:
        if not env.distributed:
            raise RuntimeError(
                "train.fsdp=true needs a process group: launch with torchrun "
                "(`torchrun --nproc_per_node=N -m ...`, N may be 1) or set train.fsdp=false"
            )
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(env.device.type, (env.world_size,))
        for unit in (shard_units(model) if shard_units else ()):
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    if env.distributed:
        return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    return model


def gradient_sync(model: nn.Module, enabled: bool) -> ContextManager:
    """Skip the gradient all-reduce on all but the last micro-step of an accumulation."""
    if isinstance(model, DDP):
        return nullcontext() if enabled else model.no_sync()
    if is_fsdp(model):
        model.set_requires_gradient_sync(enabled)
    return nullcontext()
