"""A toy task for tests and demos: residual-MLP regression onto a fixed random "teacher".

It exercises everything the loop cares about: dropout (RNG), LayerNorm, biases (no weight decay),
gradient checkpointing, a metric besides the loss, and a known FLOP count. Settings come from
conf/train/task/toy.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import default_collate

from .task import Task


@dataclass(frozen=True)
class ToyConfig:
    n_samples: int  # dataset size
    dim_in: int  # input features
    hidden: int  # width of the residual MLP
    depth: int  # residual blocks
    dim_out: int  # regression targets
    dropout: float  # dropout probability inside each block
    noise: float  # std of the target noise
    data_seed: int  # seeds the inputs and the teacher (independent of the training seed)


class ToyDataset:
    """x ~ N(0, I) of shape (n, dim_in); y = tanh(x W1) W2 + noise, shape (n, dim_out).

    Generated once from its own generator, so ds[i] is a pure function of i.
    """

    def __init__(self, cfg: ToyConfig) -> None:
        g = torch.Generator().manual_seed(cfg.data_seed)
        self.x = torch.randn(cfg.n_samples, cfg.dim_in, generator=g)
        w1 = torch.randn(cfg.dim_in, 4 * cfg.dim_out, generator=g) / cfg.dim_in ** 0.5
        w2 = torch.randn(4 * cfg.dim_out, cfg.dim_out, generator=g) / (4 * cfg.dim_out) ** 0.5
        self.y = torch.tanh(self.x @ w1) @ w2 + cfg.noise * torch.randn(cfg.n_samples, cfg.dim_out, generator=g)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Block(nn.Module):
    """Pre-norm residual MLP block: x + Dropout(GELU(Linear(LN(x))))."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, width) -> (B, width)
        return x + self.drop(F.gelu(self.fc(self.norm(x))))


class ToyMLP(nn.Module):
    """(B, dim_in) -> (B, dim_out). `gradient_checkpointing` recomputes each block in backward."""

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(cfg.dim_in, cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg.hidden, cfg.dropout) for _ in range(cfg.depth))
        self.out = nn.Linear(cfg.hidden, cfg.dim_out)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)  # (B, hidden)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                # preserve_rng_state (default) replays the same dropout mask in the recompute.
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        return self.out(h)  # (B, dim_out)


def toy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    """Mean squared error over the micro-batch; also reports the mean absolute error."""
    x, y = batch  # (B, dim_in), (B, dim_out)
    pred = model(x)
    loss = F.mse_loss(pred.float(), y)
    return loss, {"mae": (pred.float() - y).abs().mean().detach()}


def toy_flops_per_sample(cfg: ToyConfig) -> float:
    """Training FLOPs per sample: 6 x multiply-adds of the linear layers (2 forward, 4 backward);
    LayerNorm/GELU/bias are O(width) and left out."""
    macs = cfg.dim_in * cfg.hidden + cfg.depth * cfg.hidden ** 2 + cfg.hidden * cfg.dim_out
    return 6.0 * macs


def build_toy_task(cfg: ToyConfig) -> Task:
    """Seed the global RNG before calling this: it initialises the model weights."""
    model = ToyMLP(cfg)
    return Task(model=model, loss=toy_loss, dataset=ToyDataset(cfg), collate=default_collate,
                flops_per_sample=toy_flops_per_sample(cfg), shard_units=lambda m: list(m.blocks))
