"""A 2D playground for the samplers (notebooks/03_rectified_flow.ipynb): toy data, a tiny MLP, training, metrics.

Everything runs on CPU in seconds, so the notebook can show trajectories, straightness and the
effect of the step count without a video model. The MLP follows the backbone contract of the
samplers, `fn(x, t)` with x (B, 2) and t (B,) in [0, 1].
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

TOY_KINDS = ("blobs", "ring")


def toy_data(kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """n points (n, 2) float32.

    `blobs`: two Gaussians of std 0.25 at (-2, 0) and (2, 0), equally likely: the flow from one
    unimodal noise must split in two, which bends the paths of a learned rectified flow.
    `ring`: radius 2 with radial std 0.1, uniform angle.
    """
    if kind not in TOY_KINDS:
        raise ValueError(f"toy data kind {kind!r} is unknown; use one of {TOY_KINDS}")
    if kind == "blobs":
        side = torch.randint(0, 2, (n,), generator=generator).float() * 4 - 2  # -2 or +2
        centres = torch.stack([side, torch.zeros(n)], 1)
        return centres + 0.25 * torch.randn(n, 2, generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    radius = 2 + 0.1 * torch.randn(n, generator=generator)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)


class ToyMLP(nn.Module):
    """fn(x (B, dim), t (B,)) -> (B, dim): an MLP on [x, Fourier features of t]."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, frequencies: int = 8):
        super().__init__()
        # Frequencies 1..F (cycles over t in [0, 1]): enough resolution in t for a field that changes fast near t = 0.
        self.register_buffer("freq", 2 * math.pi * torch.arange(1, frequencies + 1, dtype=torch.float32))
        layers, width = [], dim + 1 + 2 * frequencies
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None].float() * self.freq  # (B, F)
        return self.net(torch.cat([x, t[:, None].float(), angles.sin(), angles.cos()], 1))


def train_toy(
    model: nn.Module,
    loss_fn: Callable[[Callable, torch.Tensor, torch.Generator], torch.Tensor],
    kind: str,
    steps: int,
    generator: torch.Generator,
    batch: int = 256,
    lr: float = 2e-3,
    progress: bool = False,
) -> list[float]:
    """Adam on fresh toy batches; loss_fn(model, x0, generator) is e.g. `rectified_flow.loss` or `DDPM.loss`.

    The learning rate decays linearly to 0 (a short run ends at a low-noise point). Returns the loss per step.
    """
    from tqdm import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    losses = []
    for _ in tqdm(range(steps), desc=f"train toy {kind}", disable=not progress):
        loss = loss_fn(model, toy_data(kind, batch, generator), generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def bend(trajectory: torch.Tensor) -> torch.Tensor:
    """1 - chord / path length per sample: 0 for a straight path, towards 1 for a path that doubles back.

    trajectory: (S + 1, B, ...) from a sampler with return_trajectory=True -> (B,).
    """
    steps = trajectory.flatten(2)
    path = (steps[1:] - steps[:-1]).norm(dim=-1).sum(0)  # (B,)
    chord = (steps[-1] - steps[0]).norm(dim=-1)
    return 1 - chord / path.clamp(min=torch.finfo(path.dtype).tiny)


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance 2 E|a - b| - E|a - a'| - E|b - b'| between point sets a (N, D), b (M, D).

    0 for identical sets, > 0 otherwise; for point masses at distance d it is 2 d (V-statistic,
    so it is exactly 0 when a equals b).
    """
    ab = torch.cdist(a.double(), b.double()).mean()
    return (2 * ab - torch.cdist(a.double(), a.double()).mean() - torch.cdist(b.double(), b.double()).mean()).item()
