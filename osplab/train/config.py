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

from osplab import checks

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
    def from_dict(cls, values: Mapping[str, Any], prefix: str = "train") -> "TrainConfig":
        """Build from a plain mapping (e.g. `OmegaConf.to_container(cfg.train)`).

        `prefix` is the config key the values came from (`train_vqvae` for the VQVAE stage), so an
        error names the key the user typed. Unknown, missing or ill-typed keys raise ValueError."""
        return cls(**_checked(checks.known_keys(prefix, values, cls), prefix))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (betas as a list)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def grad_accum(self, world_size: int) -> int:
        """Micro-steps per optimizer step on each rank: global_batch / (micro_batch * world_size)."""
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step:
            raise checks.SettingError(
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


INTS = {"steps": 1, "global_batch": 1, "micro_batch": 1, "checkpoint_every": 1, "keep_checkpoints": 1,
        "log_every": 1, "max_nonfinite": 1, "nproc_per_node": 1, "nnodes": 1,
        "warmup_steps": 0, "num_workers": 0, "num_threads": 0, "seed": 0}  # name -> minimum
BOOLS = ("deterministic", "grad_checkpointing", "fsdp")


def _validate(cfg: TrainConfig, prefix: str = "train") -> None:
    """Type and range checks naming the key (`train.steps='abc' is not allowed; allowed: ...`).

    Values are stored back as plain int/float/bool/tuple (frozen dataclass: object.__setattr__)."""
    for name, value in _checked(dataclasses.asdict(cfg), prefix).items():
        object.__setattr__(cfg, name, value)


def _checked(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The settings with types and ranges checked; raises ValueError naming `prefix.key`."""
    out = dict(values)
    for name, minimum in INTS.items():
        out[name] = checks.integer(f"{prefix}.{name}", values[name], minimum)
    for name in BOOLS:
        out[name] = checks.boolean(f"{prefix}.{name}", values[name])
    checks.choice(f"{prefix}.precision", values["precision"], PRECISIONS)
    checks.choice(f"{prefix}.lr_schedule", values["lr_schedule"], LR_SCHEDULES)
    for name in ("lr", "adam_eps"):
        out[name] = checks.number(f"{prefix}.{name}", values[name], 0.0, low_open=True)
    for name in ("grad_clip", "weight_decay"):
        out[name] = checks.number(f"{prefix}.{name}", values[name], 0.0)
    out["ema_decay"] = checks.number(f"{prefix}.ema_decay", values["ema_decay"], 0.0, 1.0, high_open=True)
    out["final_lr_ratio"] = checks.probability(f"{prefix}.final_lr_ratio", values["final_lr_ratio"])
    betas = checks.sequence(f"{prefix}.betas", values["betas"], length=2)
    out["betas"] = tuple(checks.number(f"{prefix}.betas[{i}]", b, 0.0, 1.0, high_open=True)
                         for i, b in enumerate(betas))
    if not isinstance(values["out_dir"], str) or not values["out_dir"]:
        raise checks.SettingError(f"{prefix}.out_dir={values['out_dir']!r} is not allowed; allowed: a folder path "
                         "(non-empty string)")
    return out
