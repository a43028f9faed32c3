"""TrainConfig: the loop's settings, read from conf/train/default.yaml (the one source of values).

Every field is required here on purpose: defaults live in YAML, tests pass explicit tiny values.
`from_dict` rejects unknown or missing keys with a message naming them, so a typo in a Hydra
override (`train.warmup=...` instead of `train.warmup_steps=...`) fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (see conf/train/default.yaml for meaning and values)."""

    steps: int  # optimizer steps in the whole run
    global_batch: int  # samples per optimizer step, summed over ranks and micro-steps
    micro_batch: int  # samples per forward/backward on one rank
    lr: float  # peak learning rate (after warm-up)
    lr_schedule: str  # "constant" | "cosine" after the linear warm-up
    final_lr_ratio: float  # cosine ends at lr * final_lr_ratio
    warmup_steps: int  # linear warm-up from 0 to lr
    weight_decay: float  # AdamW decoupled weight decay (matrices only, not biases/norms)
    betas: tuple[float, float]  # AdamW betas
    adam_eps: float  # AdamW epsilon
    grad_clip: float  # max global L2 norm of the gradient; 0 disables clipping
    ema_decay: float  # EMA of weights: ema = decay * ema + (1 - decay) * weights, per step
    precision: str  # "auto" | "fp32" | "bf16"
    checkpoint_every: int  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int  # keep the newest K checkpoints
    log_every: int  # steps between dvclive rows
    max_nonfinite: int  # abort after this many consecutive non-finite steps
    grad_checkpointing: bool  # recompute activations in backward (model must expose the flag)
    fsdp: bool  # shard the model with FSDP2 (fully_shard) instead of DDP
    num_workers: int  # DataLoader worker processes per rank
    seed: int  # seeds data order, dropout and model init
    deterministic: bool  # torch.use_deterministic_algorithms + cuDNN deterministic
    num_threads: int  # torch intra-op threads; 0 keeps torch's choice (OMP_NUM_THREADS)
    out_dir: str  # run folder: checkpoints/, live/ (dvclive)
    nproc_per_node: int  # launcher setting read by dvc.yaml (torchrun --nproc_per_node)
    nnodes: int  # launcher setting read by dvc.yaml (torchrun --nnodes)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a plain mapping (e.g. `OmegaConf.to_container(cfg.train)`)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        missing = [n for n in names if n not in values]
        if unknown or missing:
            raise ValueError(
                f"train config: unknown keys {unknown}, missing keys {missing}; "
                "valid keys are those of conf/train/default.yaml"
            )
        kwargs = dict(values)
        kwargs["betas"] = tuple(float(b) for b in kwargs["betas"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (betas as a list)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def grad_accum(self, world_size: int) -> int:
        """Micro-steps per optimizer step on each rank: global_batch / (micro_batch * world_size)."""
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step:
            raise ValueError(
                f"train.global_batch={self.global_batch} is not divisible by "
                f"train.micro_batch={self.micro_batch} x world_size={world_size} = {per_step}; "
                "pick a global batch that is a multiple of micro_batch * number of processes"
            )
        return self.global_batch // per_step

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.out_dir) / "checkpoints"

    @property
    def live_dir(self) -> Path:
        return Path(self.out_dir) / "live"


def _validate(cfg: TrainConfig) -> None:
    """Range checks with messages that name the key and the fix."""
    positive = ("steps", "global_batch", "micro_batch", "checkpoint_every", "keep_checkpoints",
                "log_every", "max_nonfinite", "nproc_per_node", "nnodes")
    for name in positive:
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"train.{name}={getattr(cfg, name)} must be >= 1")
    for name in ("warmup_steps", "num_workers", "num_threads"):
        if int(getattr(cfg, name)) < 0:
            raise ValueError(f"train.{name}={getattr(cfg, name)} must be >= 0")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"train.precision={cfg.precision!r}; choose one of {PRECISIONS}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule={cfg.lr_schedule!r}; choose one of {LR_SCHEDULES}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay={cfg.ema_decay} must be in [0, 1)")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise ValueError(f"train.betas={cfg.betas} must be two numbers in [0, 1)")
    if cfg.lr <= 0 or cfg.grad_clip < 0 or cfg.weight_decay < 0 or cfg.adam_eps <= 0:
        raise ValueError(
            f"train.lr={cfg.lr}, grad_clip={cfg.grad_clip}, weight_decay={cfg.weight_decay}, "
            f"adam_eps={cfg.adam_eps}: lr and adam_eps must be > 0, the others >= 0"
        )
    if not 0.0 <= cfg.final_lr_ratio <= 1.0:
        raise ValueError(f"train.final_lr_ratio={cfg.final_lr_ratio} must be in [0, 1]")
