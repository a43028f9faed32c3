"""Look inside a DiT forward pass: tensor shapes, adaLN modulation, cross-attention maps.

Helpers for notebooks/02_dit.ipynb. Each runs one ordinary `model(x, t, text, text_mask)` call with
forward hooks, so what it reports is what the model computed, not a re-implementation of `forward`:

    rows = trace_shapes(model, x, t, text, mask)        # [(step name, shape), ...] in call order
    mod = adaln_modulation(model, x, t, text, mask)     # {"gate1": (depth, B, W), ...}
    attn = cross_attention_maps(model, x, t, text, mask)  # (depth, B, heads, N, L), N = T'*H'*W'

All three switch the model to eval mode for the call (no caption dropout) and restore its mode.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from einops import rearrange

from osplab.models.dit import DiT

MODULATION = ("shift1", "scale1", "gate1", "shift2", "scale2", "gate2")  # order of CrossDiTBlock.ada's chunks


@contextmanager
def _hooked(model: DiT, modules: dict, hook_factory):
    """Register hook_factory(name) as a forward hook on each named module; eval mode, no grad."""
    was_training = model.training
    handles = [m.register_forward_hook(hook_factory(name)) for name, m in modules.items()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def trace_shapes(model: DiT, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                 text_mask: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """The shape after each stage of the forward pass, in call order.

    Rows: the input latents (B, C, T, H, W); `patch` tokens (B, T', S, W); `t_embed` (B, W);
    `text` (cross-attention tokens (B, L, W), their mask (B, L), pooled text (B, W));
    each `blocks.i` (B, T', S, W); `final` (B, T', S, pt*ph*pw*C); the unpatchified output.
    """
    rows: list[tuple[str, tuple[int, ...]]] = [("input latents x", tuple(x.shape))]
    modules = {"patch": model.patch, "t_embed": model.t_embed, "text": model.text, "final": model.final}
    modules.update({f"blocks.{i}": b for i, b in enumerate(model.blocks)})

    def factory(name):
        def hook(_module, _inputs, out):
            shape = tuple(tuple(o.shape) for o in out) if isinstance(out, tuple) else tuple(out.shape)
            rows.append((name, shape))
        return hook

    with _hooked(model, modules, factory):
        out = model(x, t, text, text_mask)
    rows.append(("unpatchify -> output", tuple(out.shape)))
    return rows


def adaln_modulation(model: DiT, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                     text_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The adaLN-Zero modulation each block applied in this call: {name: (depth, B, W)} for the
    names in MODULATION (shift/scale/gate of the self-attention (1) and MLP (2) branches).
    At initialisation every value is exactly 0 (the modulation Linear starts at zero)."""
    chunks: dict[int, torch.Tensor] = {}

    def factory(i):
        def hook(_module, _inputs, out):
            chunks[i] = out.detach()  # (B, 6W)
        return hook

    with _hooked(model, {i: b.ada for i, b in enumerate(model.blocks)}, factory):
        model(x, t, text, text_mask)
    stacked = torch.stack([chunks[i] for i in range(len(model.blocks))])  # (depth, B, 6W)
    return dict(zip(MODULATION, stacked.chunk(6, dim=-1)))


def cross_attention_maps(model: DiT, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                         text_mask: torch.Tensor) -> torch.Tensor:
    """Attention weights of every block's cross-attention, video tokens -> text tokens.

    Returns (depth, B, heads, N, L) with N = T'*H'*W' video tokens in (t, h, w) order and L text
    tokens; each row sums to 1 over the real tokens and is 0 at padded ones. A caption that is all
    padding (the null caption) puts all weight on position 0, where the DiT placed its null token.
    The weights are recomputed from the inputs the block's CrossAttention received (the SDPA call
    does not return them), with the same projections, q/k norms, mask and 1/sqrt(d) scale.
    """
    maps: dict[int, torch.Tensor] = {}

    def factory(i):
        def hook(module, inputs, _out):
            h, ctx, mask = inputs  # (B, T', S, W), (B, L, W), (B, L)
            q = rearrange(module.q(h), "b t s (h d) -> b h (t s) d", h=module.heads)  # (B, H, N, D)
            k, _v = rearrange(module.kv(ctx), "b l (two h d) -> two b h l d", two=2, h=module.heads).unbind(0)
            q, k = module.q_norm(q), module.k_norm(k)
            logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, N, L)
            logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
            maps[i] = logits.softmax(dim=-1)
        return hook

    with _hooked(model, {i: b.cross for i, b in enumerate(model.blocks)}, factory):
        model(x, t, text, text_mask)
    return torch.stack([maps[i] for i in range(len(model.blocks))])  # (depth, B, H, N, L)
