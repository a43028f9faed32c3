"""AdamW with decay on matrices only, and the learning-rate schedule (linear warm-up, then
constant or cosine)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model` (wrapped or not).

    Weight decay applies to tensors with >= 2 dims (linear/conv weights, embeddings); biases and
    norm gains are not decayed, as in nanoGPT and DiT.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # Both kernels are deterministic (exact resume holds). The fused one reads and writes each
    # parameter, gradient and moment once per step: 3.5x faster than foreach on the CPU for the
    # default DiT (12 against 45 ms per step, 9.4M parameters). FSDP2's DTensor shards keep foreach.
    from torch.distributed.tensor import DTensor

    fused = all(not isinstance(p, DTensor) and p.device.type in ("cpu", "cuda") for p in params)
    kernel = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, **kernel)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for optimizer step `step` (0-based).

    Warm-up: (step + 1) / warmup_steps for step < warmup_steps, so the first update is not 0.
    Then 1 (constant) or a cosine from 1 down to final_lr_ratio at the last step.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(cfg.steps - cfg.warmup_steps - 1, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.final_lr_ratio + (1.0 - cfg.final_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over `lr_factor`; its state_dict is plain numbers (saved as JSON)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
