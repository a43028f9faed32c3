"""Structured-sparse attention kernels for spatiotemporal tokens.

Exact ways to skip the work that a boolean mask would only hide. All tensors are
(B, H, T, S, D): batch, heads, frames, tokens per frame, head dim.

The **sparse temporal** layout: a query in frame t sees the anchor frames t' % k == 0 plus its
own frame t. Two exact, differentiable implementations (`sparse_temporal_sdpa` picks one):

* `sparse_temporal_gather` (any device): gather the kept frames and call
  `scaled_dot_product_attention` twice on dense 4-D tensors (anchor-frame queries over anchor
  keys; every other frame's queries over [anchors, own frame]).
* `sparse_temporal_split_kv` (CPU): the kept keys of a non-anchor frame are two disjoint sets,
  the anchors (shared by every query) and the frame itself. One flash-attention call runs *all*
  T*S queries over the anchor keys (a long, efficient problem instead of T short ones), a second
  runs each non-anchor frame over its own keys, and the two softmaxes are merged exactly with
  their log-sum-exps. Backward is the split-KV identity: the flash backward of each part, fed the
  merged output and log-sum-exp, returns exactly that part's gradients. It uses the CPU flash
  kernels behind SDPA (`aten::_scaled_dot_product_flash_attention_for_cpu[_backward]`), which
  return the log-sum-exp that the public SDPA hides. ~1.4x faster than the gather at S=64.

`flex_attention_layout`: one FlexAttention call over the flattened (T*S) sequence with a block
mask whose block size is the frame size S. On CPU (torch 2.13) FlexAttention has no backward:
forward/inference only there.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange


def anchor_frames(frames: int, sparse_k: int) -> list[int]:
    """Frames every query may attend to in the sparse layout: 0, k, 2k, ... < frames."""
    return list(range(0, frames, sparse_k))


def other_frames(frames: int, sparse_k: int) -> list[int]:
    """Frames that are not anchors; each also attends to itself."""
    return [t for t in range(frames) if t % sparse_k != 0]


def _index(frames: list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(frames, dtype=torch.long, device=like.device)


def split_kv_available(q: torch.Tensor) -> bool:
    """True where `sparse_temporal_sdpa` uses the split-KV kernels (CPU tensors, torch with them)."""
    return q.device.type == "cpu" and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def sparse_temporal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sparse_k: int) -> torch.Tensor:
    """Exact sparse temporal attention without a mask. q, k, v: (B, H, T, S, D) -> (B, H, T, S, D).

    Cost about (#anchors + 1) / T of dense attention (a boolean mask costs all of it).
    """
    B, H, T, S, D = q.shape
    if not other_frames(T, sparse_k):  # T == 1 or k == 1: every frame is an anchor -> full attention
        flat = lambda x: x.reshape(B, H, T * S, D)  # noqa: E731
        return F.scaled_dot_product_attention(flat(q), flat(k), flat(v)).view(B, H, T, S, D)
    if split_kv_available(q):
        return sparse_temporal_split_kv(q, k, v, sparse_k)
    return sparse_temporal_gather(q, k, v, sparse_k)


def sparse_temporal_gather(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sparse_k: int) -> torch.Tensor:
    """Gather + two SDPA calls (any device). q, k, v: (B, H, T, S, D) -> (B, H, T, S, D).

    Anchor queries: one call over (B, H, n_a*S). Other frames: one gather builds
    [anchors..., frame t] keys for all n_o of them, and the second call treats the frames as
    extra "heads", (B*H, n_o, S) queries over (B*H, n_o, (n_a+1)*S) keys, so the gathered
    tensors are used as views without further copies.
    """
    B, H, T, S, D = q.shape
    anchors, others = anchor_frames(T, sparse_k), other_frames(T, sparse_k)
    n_a, n_o = len(anchors), len(others)
    ia = _index(anchors, q)
    qa, ka, va = (x.index_select(2, ia).reshape(B, H, n_a * S, D) for x in (q, k, v))  # contiguous gathers
    out_a = F.scaled_dot_product_attention(qa, ka, va).view(B, H, n_a, S, D)
    kept = _index([f for t in others for f in anchors + [t]], q)  # per other frame: anchors, then itself
    qo = q.index_select(2, _index(others, q)).reshape(B * H, n_o, S, D)
    ko, vo = (x.index_select(2, kept).reshape(B * H, n_o, (n_a + 1) * S, D) for x in (k, v))
    out_o = F.scaled_dot_product_attention(qo, ko, vo).view(B, H, n_o, S, D)
    # frames are in [anchors..., others...] order; gather them back into time order
    return torch.cat([out_a, out_o], dim=2).index_select(2, torch.argsort(_index(anchors + others, q)))


def sparse_temporal_split_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sparse_k: int) -> torch.Tensor:
    """Split-KV sparse temporal attention on CPU (module docstring). (B, H, T, S, D) -> same."""
    return _SplitKVSparse.apply(q, k, v, sparse_k)


class _SplitKVSparse(torch.autograd.Function):
    """out = softmax over [anchor keys, own-frame keys] @ values, from two flash calls + an LSE merge."""

    @staticmethod
    def forward(ctx, q, k, v, sparse_k):
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        B, H, T, S, D = q.shape
        ia, io = _index(anchor_frames(T, sparse_k), q), _index(other_frames(T, sparse_k), q)
        n_a, n_o = len(ia), len(io)
        q_all = q.reshape(B, H, T * S, D)  # a view for the module's qkv layout
        ka, va = (x.index_select(2, ia).reshape(B, H, n_a * S, D) for x in (k, v))
        out1, lse1 = flash(q_all, ka, va)  # (B, H, T*S, D), (B, H, T*S): everyone over the anchors
        qo, ko, vo = (x.index_select(2, io).reshape(B * H, n_o, S, D) for x in (q, k, v))
        out2, lse2 = flash(qo, ko, vo)  # (B*H, n_o, S, D), (B*H, n_o, S): each other frame over itself
        out1, lse1 = out1.view(B, H, T, S, D), lse1.view(B, H, T, S)
        lse1_o, lse2 = lse1.index_select(2, io), lse2.view(B, H, n_o, S)
        lse_o = torch.logaddexp(lse1_o, lse2)  # (B, H, n_o, S), float32
        w1, w2 = (torch.exp(x - lse_o).unsqueeze(-1) for x in (lse1_o, lse2))
        out_o = w1 * out1.index_select(2, io).float() + w2 * out2.view(B, H, n_o, S, D).float()
        out = out1.clone().index_copy_(2, io, out_o.to(out1.dtype))  # anchor frames keep out1
        lse = lse1.clone().index_copy_(2, io, lse_o)
        ctx.save_for_backward(q_all, ka, va, qo, ko, vo, out, lse, ia, io)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        q_all, ka, va, qo, ko, vo, out, lse, ia, io = ctx.saved_tensors
        B, H, T, S, D = out.shape
        n_a, n_o = len(ia), len(io)
        # part 1 (all queries, anchor keys) and part 2 (other frames, own keys), each given the
        # merged output and log-sum-exp, so each returns exactly its share of the gradients
        dq, dka, dva = flash_bwd(grad.reshape(B, H, T * S, D), q_all, ka, va, out.view(B, H, T * S, D),
                                 lse.view(B, H, T * S), 0.0, False)
        other = lambda x, *shape: x.index_select(2, io).reshape(*shape)  # noqa: E731
        dqo, dko, dvo = flash_bwd(other(grad, B * H, n_o, S, D), qo, ko, vo, other(out, B * H, n_o, S, D),
                                  other(lse, B * H, n_o, S), 0.0, False)
        dq = dq.reshape(B, H, T, S, D).index_add(2, io, dqo.view(B, H, n_o, S, D))

        def frames_back(d_anchor, d_other):  # anchors and others partition the frames
            d = d_anchor.new_empty(B, H, T, S, D)
            d.index_copy_(2, ia, d_anchor.reshape(B, H, n_a, S, D))
            return d.index_copy_(2, io, d_other.reshape(B, H, n_o, S, D))

        return dq, frames_back(dka, dko), frames_back(dva, dvo), None


# ---------------------------------------------------------------- FlexAttention (block masks)


def _mask_mod(layout: str, tokens_per_frame: int, sparse_k: int | None):
    """FlexAttention mask_mod for a layout over the flattened (t s) index (True = attend)."""
    S = tokens_per_frame
    if layout == "spatial":
        return lambda b, h, qi, ki: (qi // S) == (ki // S)
    if layout == "temporal":
        return lambda b, h, qi, ki: (qi % S) == (ki % S)
    if layout == "sparse":
        return lambda b, h, qi, ki: ((ki // S) % sparse_k == 0) | ((qi // S) == (ki // S))
    raise ValueError(f"no FlexAttention mask for layout={layout!r}")


@functools.lru_cache(maxsize=64)
def _block_mask(layout: str, frames: int, tokens_per_frame: int, sparse_k: int | None, device: str):
    """Block mask with one block per frame (block size = S), built once per shape and cached."""
    from torch.nn.attention.flex_attention import create_block_mask

    L = frames * tokens_per_frame
    return create_block_mask(
        _mask_mod(layout, tokens_per_frame, sparse_k), None, None, L, L, device=device, BLOCK_SIZE=tokens_per_frame
    )


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention_layout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str, sparse_k: int | None, compiled: bool = True
) -> torch.Tensor:
    """FlexAttention over the flattened sequence with a per-frame block mask.

    q, k, v: (B, H, T, S, D). Returns (B, H, T, S, D). `compiled=False` runs FlexAttention's
    unfused reference (materialises the scores; for tests of the mask logic only).
    Raises RuntimeError when a backward pass would be needed on CPU, where torch 2.13 has none.
    """
    from torch.nn.attention.flex_attention import flex_attention

    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if needs_grad and q.device.type == "cpu":
        raise RuntimeError(
            "backend='flex' is forward-only on CPU (FlexAttention has no CPU backward in torch 2.13). "
            "Use backend='sdpa' or 'compiled' for training, or run inference under torch.no_grad()."
        )
    if not needs_grad:  # flex rejects CPU inputs with requires_grad even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    B, H, T, S, D = q.shape
    block_mask = None if layout == "full" else _block_mask(layout, T, S, sparse_k, str(q.device))
    fn = _compiled_flex() if compiled else flex_attention
    flat = lambda x: rearrange(x, "b h t s d -> b h (t s) d")  # noqa: E731
    out = fn(flat(q), flat(k), flat(v), block_mask=block_mask)
    return rearrange(out, "b h (t s) d -> b h t s d", t=T)
