"""3-D rotary position embedding (RoPE) for spatiotemporal attention.

    rotation = rope_rotation(head_dim, (T, H, W))       # (2, T, H*W, head_dim): cos, signed sin per channel
    q, k = apply_rope(q, rotation), apply_rope(k, rotation)   # q, k: (B, heads, T, S, head_dim)

The DiT builds the rotation once per forward and hands it to every block (cos and sin are not
recomputed per attention op).

Each head's channels are split into (t, h, w) parts (`embeddings.axis_dims`: near thirds, each even);
channel pair i of an axis part is rotated by the token's position along that axis times
theta^(-2i / part). A rotation of q and k by their positions makes q.k depend on the *offset* between
two tokens only (Su et al. 2021), so "the same place one latent frame earlier" is the same relation in
every frame and at every grid size, which absolute sin-cos positions added to the tokens do not give
directly. Open-Sora-Plan (from v1.2) and most later video DiTs use 3-D RoPE.
"""

from __future__ import annotations

import torch

from osplab.models.embeddings import axis_dims

THETA = 10000.0  # the RoPE base of Su et al. (positions here are small integers)


def rope_angles(head_dim: int, grid: tuple[int, int, int], device=None) -> torch.Tensor:
    """Rotation angles of a (T, H, W) token grid -> (T, H*W, head_dim // 2) float32."""
    T, H, W = grid
    parts = axis_dims(head_dim)
    pos = torch.stack(torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij"), -1)
    pos = pos.reshape(T, H * W, 3).to(device=device, dtype=torch.float32)  # (T, S, 3)
    out = []
    for axis, d in enumerate(parts):
        inv = THETA ** (-torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)  # (d/2,)
        out.append(pos[..., axis : axis + 1] * inv)  # (T, S, d/2)
    return torch.cat(out, dim=-1)  # (T, S, head_dim/2)


def rope_rotation(head_dim: int, grid: tuple[int, int, int], device=None) -> torch.Tensor:
    """Per-channel cos and signed sin of `rope_angles` -> (2, T, H*W, head_dim) float32.

    Channel pair (2i, 2i+1) with angle a_i gets cos (c_i, c_i) and sin (-s_i, s_i), the factors of
    `apply_rope`'s whole-row form; built once per forward, so every attention op shares them."""
    angles = rope_angles(head_dim, grid, device)  # (T, S, D/2)
    cos = angles.cos().repeat_interleave(2, dim=-1)  # c0 c0 c1 c1 ...
    sin = torch.stack((-angles.sin(), angles.sin()), dim=-1).flatten(-2)  # -s0 s0 -s1 s1 ...
    return torch.stack((cos, sin))


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (B, heads, T, S, D) by `rope_rotation` (2, T, S, D):
    (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin); same shape and dtype."""
    if rotation.shape != (2, *x.shape[2:4], x.shape[-1]):
        raise ValueError(f"rotation {tuple(rotation.shape)} does not fit tokens {tuple(x.shape)}: "
                         f"expected (2, T, S, D) from rope_rotation")
    cos, sin = rotation.to(x.dtype).unbind(0)  # each (T, S, D)
    # x * cos + swapped * signed sin over whole rows: the same products and sums as the pairwise formula
    # (bitwise the same forward and gradients) in 3x less CPU time than strided half-width slices,
    # whose elementwise kernels took ~10% of a bf16 training step.
    pairs = x.unflatten(-1, (-1, 2))  # (B, heads, T, S, D/2, 2)
    swapped = torch.stack((pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # x1 x0 x3 x2 ...
    return x * cos + swapped * sin
