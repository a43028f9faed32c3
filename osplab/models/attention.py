"""Multi-head attention over spatiotemporal tokens x: (B, T, S, C).

B batch, T (latent) frames, S tokens per frame (h*w patches), C channels = heads * head_dim.

Layouts (which keys a query at (frame t, token s) sees):
  full      all T*S tokens (3-D attention).
  spatial   the S tokens of its own frame t.
  temporal  the T tokens at its own position s (one per frame).
  sparse    every token of the anchor frames t' with t' % k == 0, plus every token of its own
            frame t (k = `sparse_k`). With T=16, k=4 a query sees 4 or 5 of 16 frames.
  factorized (module only) Latte-style factorised attention: a spatial attention op followed by a
            temporal attention op, each with its own qkv and output projections:
            y = Attn_temporal(Attn_spatial(x)). No residual or norm in between (a block that wants
            Latte's residual between the two should stack a 'spatial' and a 'temporal' block).

Backends (all exact; they differ in speed only):
  eager     reference: q @ k^T, an explicit (T*S, T*S) boolean mask, softmax, @ v. Slow, obvious.
  sdpa      F.scaled_dot_product_attention on 4-D (batch, heads, len, dim) tensors; spatial and
            temporal fold the other axis into the batch; sparse skips the masked frames exactly
            (attention_sparse: split-KV (one flash call + batched matmuls) on CPU, gather + SDPA on other devices).
            SDPA picks its kernel by device and dtype (flash / memory-efficient on CUDA, bf16 under
            autocast); nothing here requires a GPU or bf16. One exception to SDPA's own pick, in `sdpa`:
            on the CPU, training calls (with a backward) with few keys take the math kernel.
  compiled  torch.compile of the whole attention op (qkv projection, layout reshapes, QK-norm,
            sparse gathers, SDPA, output projection). SDPA stays one extern kernel inside the
            graph; inductor fuses what is around it. One graph per (shape, layout), shared by all
            ops of that configuration; dynamo's recompile limit (8 per function) applies.
  flex      FlexAttention with a block mask (block = one frame). Forward only on CPU (torch 2.13
            has no CPU backward: a clear RuntimeError asks for sdpa/compiled when grads are needed).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.nn.attention import SDPBackend, sdpa_kernel

from osplab.models.attention_sparse import flex_attention_layout, sparse_temporal_sdpa
from osplab.models.rope import apply_rope

LAYOUTS = ("full", "spatial", "temporal", "sparse")  # one attention op each
MODULE_LAYOUTS = LAYOUTS + ("factorized",)  # factorized = spatial op then temporal op
BACKENDS = ("eager", "sdpa", "compiled", "flex")


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(allowed)}")


def check_sparse_k(layout: str, sparse_k) -> None:
    if layout == "sparse" and (not isinstance(sparse_k, int) or isinstance(sparse_k, bool) or sparse_k < 1):
        raise ValueError(f"layout='sparse' needs an integer sparse_k >= 1 (anchor every k frames), got {sparse_k!r}")


def layout_mask(layout: str, frames: int, tokens_per_frame: int, sparse_k: int | None, device=None) -> torch.Tensor:
    """Boolean (L, L) mask over the flattened (t s) sequence, L = T*S; True = may attend."""
    check_choice("layout", layout, LAYOUTS)
    check_sparse_k(layout, sparse_k)
    idx = torch.arange(frames * tokens_per_frame, device=device)
    t, s = idx // tokens_per_frame, idx % tokens_per_frame
    same_frame = t[:, None] == t[None, :]
    if layout == "full":
        return torch.ones_like(same_frame)
    if layout == "spatial":
        return same_frame
    if layout == "temporal":
        return s[:, None] == s[None, :]
    return same_frame | (t[None, :] % sparse_k == 0)  # sparse: own frame or an anchor frame


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reference attention, q, k, v: (B, H, L, D), mask: (L, L) bool -> (B, H, L, D).

    Every row of the masks used here keeps at least the query's own token, so no row is all -inf.
    """
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, L, L)
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


# PyTorch's CPU flash kernel has a backward that works in key blocks of fixed size; with few keys a
# training call (forward + backward) costs more than the plain math kernel's: in bf16 1.6-1.8x with
# 64-128 keys and about 3x with the DiT's ~20 text keys; in fp32 the two are within 10% up to 128 keys,
# except that with ~20 keys math is about 1.4x faster. Without a backward, flash wins (its bf16 forward
# alone is ~1.8x faster than math's at 64-128 keys), so sampling keeps it. The DiT's tokens (64-128 per
# clip) and text (~20) sit in that range: on an AVX-512-bf16 CPU this took ~10% off `train_dit`.
# `bench_attention` re-measures all of it (reports/attention.md, "Short sequences").
CPU_MATH_MAX_KEYS = 128  # bf16 / fp16
CPU_MATH_MAX_KEYS_FP32 = 32


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """F.scaled_dot_product_attention (q: (..., L, D), k, v: (..., Lk, D)) with one kernel choice of
    our own: on the CPU, when autograd records the call (a backward will follow) and Lk <=
    `cpu_math_max_keys(dtype)`, the math kernel (the same result up to rounding). Elsewhere, without
    grad, and inside torch.compile (inductor chooses there), SDPA's own pick."""
    if uses_cpu_math(q, k, v):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def uses_cpu_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `sdpa` sends this call to the math kernel (see CPU_MATH_MAX_KEYS)."""
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return (training and q.device.type == "cpu" and not torch.compiler.is_compiling()
            and k.shape[-2] <= cpu_math_max_keys(q.dtype))


def cpu_math_max_keys(dtype: torch.dtype) -> int:
    """Most keys for which `sdpa` takes the math kernel on the CPU at this dtype."""
    return CPU_MATH_MAX_KEYS if dtype in (torch.bfloat16, torch.float16) else CPU_MATH_MAX_KEYS_FP32


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, sparse_k: int | None
) -> torch.Tensor:
    """Layout-aware SDPA, q, k, v: (B, H, T, S, D) -> (B, H, T, S, D). Always 4-D SDPA calls
    (5-D inputs silently take the slow math kernel)."""
    B, H, T, S, D = q.shape
    if layout == "full":
        flat = lambda x: rearrange(x, "b h t s d -> b h (t s) d")  # noqa: E731
        out = sdpa(flat(q), flat(k), flat(v))
        return rearrange(out, "b h (t s) d -> b h t s d", t=T)
    if layout == "spatial":  # each frame is an independent sequence of S tokens
        fold = lambda x: rearrange(x, "b h t s d -> (b t) h s d")  # noqa: E731
        out = sdpa(fold(q), fold(k), fold(v))
        return rearrange(out, "(b t) h s d -> b h t s d", b=B)
    if layout == "temporal":  # each spatial position is an independent sequence of T tokens
        fold = lambda x: rearrange(x, "b h t s d -> (b s) h t d")  # noqa: E731
        out = sdpa(fold(q), fold(k), fold(v))
        return rearrange(out, "(b s) h t d -> b h t s d", b=B)
    return sparse_temporal_sdpa(q, k, v, sparse_k)


@functools.cache
def _compiled_sdpa_attention():
    # Built on first use: torch.compile imports dynamo (~1 s), so never at import time.
    return torch.compile(sdpa_attention, dynamic=False)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, backend: str, sparse_k: int | None = None
) -> torch.Tensor:
    """Functional spatiotemporal attention (scale 1/sqrt(D), no dropout).

    q, k, v: (B, H, T, S, D). Returns (B, H, T, S, D). `sparse_k` is needed for layout='sparse'.
    """
    check_choice("layout", layout, LAYOUTS)
    check_choice("backend", backend, BACKENDS)
    check_sparse_k(layout, sparse_k)
    if q.dim() != 5 or q.shape != k.shape or q.shape != v.shape:
        shapes = ", ".join(str(tuple(t.shape)) for t in (q, k, v))
        raise ValueError(f"q, k, v must share one (B, H, T, S, D) shape, got {shapes}")
    B, H, T, S, D = q.shape
    if backend == "eager":
        flat = lambda x: rearrange(x, "b h t s d -> b h (t s) d")  # noqa: E731
        out = eager_attention(flat(q), flat(k), flat(v), layout_mask(layout, T, S, sparse_k, q.device))
        return rearrange(out, "b h (t s) d -> b h t s d", t=T)
    if backend == "sdpa":
        return sdpa_attention(q, k, v, layout, sparse_k)
    if backend == "compiled":
        return _compiled_sdpa_attention()(q, k, v, layout, sparse_k)
    return flex_attention_layout(q, k, v, layout, sparse_k)


class AttentionOp(nn.Module):
    """One multi-head attention op with one layout: qkv projection, optional QK-norm, attention,
    output projection. x: (B, T, S, C) -> (B, T, S, C)."""

    def __init__(self, dim: int, heads: int, layout: str, backend: str, sparse_k: int | None, qk_norm: bool):
        super().__init__()
        check_choice("layout", layout, LAYOUTS)
        check_choice("backend", backend, BACKENDS)
        check_sparse_k(layout, sparse_k)
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.layout, self.backend, self.sparse_k = heads, layout, backend, sparse_k
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # QK-norm (RMS over the head dim, learnt scale): keeps logits bounded in long/low-precision
        # training; a few elementwise ops, so it costs little.
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        if self.backend == "compiled":  # the whole op in one graph: inductor fuses the layout copies
            return _compiled_op_forward()(self, x, "sdpa", rope)
        return _op_forward(self, x, self.backend, rope)


def _op_forward(op: AttentionOp, x: torch.Tensor, backend: str, rope: torch.Tensor | None = None) -> torch.Tensor:
    """AttentionOp body, x: (B, T, S, C) -> (B, T, S, C); a free function so that one compiled
    graph serves every AttentionOp instance of the same configuration. rope: (2, T, S, D) cos and signed sin
    (osplab.models.rope.rope_rotation) applied to q and k after QK-norm, or None."""
    qkv = rearrange(op.qkv(x), "b t s (three h d) -> three b h t s d", three=3, h=op.heads)  # a view
    q, k, v = qkv.unbind(0)  # each (B, H, T, S, D); unbind's backward is one stack, not 3 zero-fills
    q, k = op.q_norm(q), op.k_norm(k)
    if rope is not None:
        q, k = apply_rope(q, rope), apply_rope(k, rope)
    out = attention(q, k, v, op.layout, backend, op.sparse_k)  # (B, H, T, S, D)
    return op.proj(rearrange(out, "b h t s d -> b t s (h d)"))  # (B, T, S, C)


@functools.cache
def _compiled_op_forward():
    return torch.compile(_op_forward, dynamic=False)


class SpatioTemporalAttention(nn.Module):
    """Multi-head attention on (B, T, S, C) tokens with a layout and a backend (module docstring).

    layout='factorized' holds two ops (spatial, then temporal) and applies them in sequence;
    every other layout holds one. `sparse_k` is used by layout='sparse' only.
    """

    def __init__(self, dim: int, heads: int, layout: str, backend: str, sparse_k: int | None, qk_norm: bool):
        super().__init__()
        check_choice("layout", layout, MODULE_LAYOUTS)
        layouts = ("spatial", "temporal") if layout == "factorized" else (layout,)
        self.layout = layout
        self.ops = nn.ModuleList(AttentionOp(dim, heads, lay, backend, sparse_k, qk_norm) for lay in layouts)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, S, C); rope: (2, T, S, D) cos and signed sin for q and k (osplab.models.rope) or None."""
        if x.dim() != 4:
            raise ValueError(f"expected tokens (B, T, S, C), got shape {tuple(x.shape)}")
        for op in self.ops:
            x = op(x, rope)
        return x
