"""Transformer building blocks shared by the DiT (and the attention benchmark).

`DiTBlock` is the adaLN-Zero block of DiT (Peebles & Xie, 2023) on spatiotemporal tokens:

    shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))          # (B, C) each
    x = x + gate1 * Attn(LN(x) * (1 + scale1) + shift1)                     # LN without affine
    x = x + gate2 * MLP (LN(x) * (1 + scale2) + shift2)

The modulation Linear starts at zero ("-Zero"), so every gate is 0 and a freshly built block is
the identity map: deep stacks start as a no-op and learn how much each block contributes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from osplab.models.attention import SpatioTemporalAttention


def per_frame(v: torch.Tensor) -> torch.Tensor:
    """A conditioning tensor broadcastable against tokens (B, T, S, C): (B, C) -> (B, 1, 1, C), one
    vector per sample; (B, T, C) -> (B, T, 1, C), one per frame (per-frame noise levels)."""
    if v.dim() == 2:
        return v[:, None, None]
    if v.dim() == 3:
        return v[:, :, None]
    raise ValueError(f"conditioning must be (B, C) or (B, T, C), got {tuple(v.shape)}")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: (B, T, S, C); shift, scale: (B, C) or (B, T, C) -> x * (1 + scale) + shift, broadcast per
    sample or per frame."""
    return x * (1 + per_frame(scale)) + per_frame(shift)


class Mlp(nn.Module):
    """Token-wise MLP: Linear(C, hidden) -> GELU(tanh) -> Linear(hidden, C). x: (..., C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block. x: (B, T, S, C), c: (B, cond_dim) or per frame (B, T, cond_dim)
    -> (B, T, S, C).

    Attention settings (layout, backend, sparse_k, qk_norm) are passed to
    `SpatioTemporalAttention`; mlp_ratio sets the MLP hidden width (DiT uses 4).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        cond_dim: int,
        mlp_ratio: float,
        layout: str,
        backend: str,
        sparse_k: int | None,
        qk_norm: bool,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)  # affine comes from adaLN
        self.attn = SpatioTemporalAttention(dim, heads, layout, backend, sparse_k, qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
        self.zero_modulation_()

    def zero_modulation_(self) -> None:
        """adaLN-Zero init: zero the modulation Linear, so all gates are 0 and the block is identity."""
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # (B, [T,] C) each
        x = x + per_frame(gate1) * self.attn(modulate(self.norm1(x), shift1, scale1))  # (B, T, S, C)
        x = x + per_frame(gate2) * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, T, S, C)
        return x


class BlockStack(nn.Module):
    """`depth` DiTBlocks applied in order with one shared conditioning vector.

    x: (B, T, S, C), c: (B, cond_dim) -> (B, T, S, C). The DiT adds embedders and a final layer
    around this; the attention benchmark times it alone.
    """

    def __init__(self, depth: int, dim: int, heads: int, cond_dim: int, mlp_ratio: float, **attn):
        super().__init__()
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, cond_dim, mlp_ratio, **attn) for _ in range(depth))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, c)
        return x
