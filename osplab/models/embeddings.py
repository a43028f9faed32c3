"""Embedders of the DiT: sin-cos positions of a (T, H, W) token grid, timesteps, patches, text.

All positional and timestep features are computed on the fly from the shape (no table sized for
one resolution), so one model takes any latent length and resolution that divides by its patch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange, repeat

MAX_PERIOD = 10_000.0  # longest wavelength of the sin-cos features (Transformer / DiT convention)


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos: (n,) float positions -> (n, dim) features [sin(pos * w_i), cos(pos * w_i)], dim even.

    w_i = MAX_PERIOD ** (-i / (dim / 2)), i < dim / 2: geometric wavelengths from 2*pi up to
    2*pi*MAX_PERIOD, so both neighbouring and distant positions are told apart.
    """
    if dim % 2:
        raise ValueError(f"sin-cos features need an even dimension, got {dim}")
    half = dim // 2
    omega = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    angles = pos.double()[:, None] * omega[None]  # (n, half); float64: t * 1000 keeps its digits
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # (n, dim)


def axis_dims(width: int) -> tuple[int, int, int]:
    """Channels given to the (t, h, w) axes: h and w get 2 * (width // 6) each, t the rest.

    Each part is even (sin and cos pairs). The split is near thirds, so no axis is starved; the
    time part is the largest when width is not divisible by 6.
    """
    if width % 2 or width < 6:
        raise ValueError(f"width={width}: the 3-D sin-cos embedding needs an even width >= 6")
    d_hw = 2 * (width // 6)
    return width - 2 * d_hw, d_hw, d_hw


def sincos_3d(width: int, grid: tuple[int, int, int], device=None) -> torch.Tensor:
    """Positional embedding of a (T, H, W) token grid -> (T, H*W, width) float32.

    Channel block i encodes only the position along axis i (concatenated 1-D embeddings), so the
    embedding of a (t, h, w) token does not depend on the grid size: a model trained on 8x8 keeps
    the same positions for the top-left 8x8 of a 16x16 grid.
    """
    T, H, W = grid
    dt, dh, dw = axis_dims(width)
    arange = lambda n: torch.arange(n, dtype=torch.float32, device=device)  # noqa: E731
    et = repeat(sincos_1d(dt, arange(T)), "t c -> t h w c", h=H, w=W)
    eh = repeat(sincos_1d(dh, arange(H)), "h c -> t h w c", t=T, w=W)
    ew = repeat(sincos_1d(dw, arange(W)), "w c -> t h w c", t=T, h=H)
    return rearrange(torch.cat([et, eh, ew], dim=-1), "t h w c -> t (h w) c")  # (T, H*W, width)


class TimestepEmbedder(nn.Module):
    """t: (B,) in [0, 1] -> (B, width): sin-cos features of t * 1000, then Linear-SiLU-Linear.

    The 1000x maps t onto DiT's integer timestep range, where the geometric wavelengths of the
    features resolve steps of 1/1000 (a flow sampler's t-grid) as well as the whole range.
    """

    def __init__(self, width: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = sincos_1d(self.freq_dim, t * 1000)  # (B, freq_dim)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))  # (B, width)


class PatchEmbed3D(nn.Module):
    """x: (B, C, T, H, W) -> tokens (B, T/pt, (H/ph)*(W/pw), width): a Conv3d with kernel = stride = patch,
    i.e. one Linear applied to each non-overlapping (pt, ph, pw) patch."""

    def __init__(self, in_channels: int, width: int, patch: tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x), "b c t h w -> b t (h w) c")  # (B, T', S, width)


class TextConditioner(nn.Module):
    """Text tokens (B, L, D_text) + mask (B, L) -> cross-attention tokens (B, L, width), their mask,
    and the pooled text (B, width) that joins the timestep in the adaLN conditioning.

    A sample whose mask is all False (no caption, the CFG "null" caption, or dropped by caption
    dropout) gets the learned null embedding instead: one real token `null`, so the cross-attention
    and the pooling always have a key to look at, and the unconditional branch is learned.

    Every token is first standardised per dimension, (text - token_mean) / token_std, with fixed
    buffers (D_text,) that `fit_standardisation` measures on the train captions (identity until then;
    saved in the state dict, so a checkpoint carries them and the cache and the live encoder meet the
    same transform). Why: a pretrained encoder's tokens share a large common component (MiniLM's mean
    token is half as long as a token), so two captions that differ in one word differ little in every
    token; centred and scaled, the word that differs stands out (docs/stage2_experiments.md).
    """

    STD_FLOOR = 0.1  # token_std >= STD_FLOOR x the median std: near-constant dimensions are not blown up

    def __init__(self, text_dim: int, width: int):
        super().__init__()
        self.null = nn.Parameter(torch.zeros(text_dim))  # initialised in dit.initialize_weights
        self.tokens = nn.Sequential(nn.Linear(text_dim, width), nn.GELU(approximate="tanh"), nn.Linear(width, width))
        self.pooled = nn.Sequential(nn.Linear(text_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.register_buffer("token_mean", torch.zeros(text_dim))
        self.register_buffer("token_std", torch.ones(text_dim))

    @torch.no_grad()
    def fit_standardisation(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Set token_mean / token_std from the valid tokens of `tokens` (N, L, D_text), mask (N, L)."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_mean.numel() or mask.shape != tokens.shape[:2]:
            raise ValueError(f"tokens must be (N, L, {self.token_mean.numel()}) with mask (N, L), got "
                             f"{tuple(tokens.shape)} and {tuple(mask.shape)}")
        valid = tokens[mask].double()  # (n, D_text)
        if len(valid) < 2:
            raise ValueError(f"standardising the text tokens needs at least 2 valid tokens, got {len(valid)}")
        mean, std = valid.mean(0), valid.std(0)
        std = std.clamp_min(self.STD_FLOOR * float(std.median()))
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and float(std.min()) > 0):
            raise ValueError("the text tokens' statistics are not finite and positive (constant or non-finite cache?)")
        self.token_mean.copy_(mean.to(self.token_mean))
        self.token_std.copy_(std.to(self.token_std))

    def forward(self, text: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor):
        """drop: (B,) bool, samples to replace by the null caption. Returns (B, L, width), (B, L), (B, width)."""
        B, L, _ = text.shape
        text = text.to(self.null.dtype)  # a half-precision token cache meets fp32 weights (autocast recasts)
        text = (text - self.token_mean.to(text.dtype)) / self.token_std.to(text.dtype)  # (B, L, D_text)
        null = ~mask.any(dim=1) | drop  # (B,)
        first = torch.arange(L, device=mask.device) == 0  # (L,)
        mask = torch.where(null[:, None], first[None], mask)  # (B, L): null samples keep one token
        text = torch.where(null[:, None, None], self.null.to(text.dtype), text)  # (B, L, D_text)
        keep = mask[..., None]  # (B, L, 1)
        # where (not multiply): padded positions may hold anything, even inf, without leaking in
        pooled = torch.where(keep, text, 0).sum(dim=1) / keep.sum(dim=1)  # (B, D_text)
        return self.tokens(text), mask, self.pooled(pooled)  # (B, L, W), (B, L), (B, W)
