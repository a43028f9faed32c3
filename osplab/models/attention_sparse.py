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
  T*S queries over the anchor keys (a long, efficient problem instead of T short ones); each
  frame over its own S keys is plain batched matmuls (`_SplitKVSparse`), whose softmax is taken
  directly against the merged log-sum-exp, so the two parts combine exactly. Backward is the
  split-KV identity: the flash backward of part 1, fed the merged output and log-sum-exp,
  returns exactly part 1's gradients; part 2's are written out by hand. It uses the CPU flash
  kernels behind SDPA (`aten::_scaled_dot_product_flash_attention_for_cpu[_backward]`), which
  return the log-sum-exp that the public SDPA hides. Its time relative to dense full attention is
  measured by the bench_attention stage (metrics/attention.json, reports/attention.md).

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


# Part 2 (each frame over its own keys) runs on all T frames up to this S, on the other frames
# only above it. All frames: every tensor is a view or updated in place (no gather/scatter of the
# other frames), at the price of n_a of T wasted (S, S) problems. Measured fwd+bwd at B=2, H=4,
# T=16, D=64, k=4 (2 busy cores): S=64, all frames as fast as gathering on 1 thread and faster on
# 2 (fewer memory-bound copies, which scale worse than bmm); S=256, the (S, S) waste dominates
# (all frames ~4% slower on 1 thread). 128 is between the two measured sizes, not tuned.
ALL_FRAMES_MAX_S = 128


class _SplitKVSparse(torch.autograd.Function):
    """out = softmax over [anchor keys, own-frame keys] @ values: one flash call + batched matmuls.

    Shapes: q, k, v (B, H, T, S, D); n_a anchor frames (0, k, 2k, ...), n_o = T - n_a others.

    * Part 1, every query over the anchor keys: the CPU flash kernel on (B, H, T*S) queries and
      (B, H, n_a*S) keys, a long problem that runs near the matmul rate.
    * Part 2, each frame over its own S keys: plain bmm on N2 problems of (S, D), where the flash
      kernel's per-block overhead on small (S, S) problems costs more than the work. The rows
      are either all N2 = B*H*T frames, as views, with the anchor frames' probabilities zeroed
      (their own keys are in part 1 already), or the N2 = B*H*n_o other frames, gathered
      (ALL_FRAMES_MAX_S picks).
    * The merge is exact: part 2's probabilities are computed directly against the merged
      log-sum-exp lse = logaddexp(lse_1, lse_own), so they are the final ones, and part 1's output
      is reweighted by its share exp(lse_1 - lse).

    Backward (split-KV identity): part 1's flash backward fed the merged output and lse returns
    exactly part 1's gradients; part 2's is the textbook one with its saved probabilities.
    Part 2 runs in float32 at least (bf16 inputs are upcast; the merge is float32 anyway).
    """

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # part 2 picks its dtypes itself (autocast would make bmm bf16)
    def forward(ctx, q, k, v, sparse_k):
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        B, H, T, S, D = q.shape
        scale = D**-0.5
        f32 = torch.promote_types(q.dtype, torch.float32)
        anchor = slice(None, None, sparse_k)  # frames 0, k, 2k, ... on the T axis
        q_all = q.reshape(B, H, T * S, D)  # a view for contiguous input (copied for the module's qkv layout)
        ka, va = (x[:, :, anchor].reshape(B, H, -1, D) for x in (k, v))  # strided slice -> one copy each
        out, lse = flash(q_all, ka, va)  # (B, H, T*S, D), (B, H, T*S) float32, both fresh
        out, lse = out.view(B, H, T, S, D), lse.view(B, H, T, S)  # (lse has (B, L, H) strides)

        all_frames = S <= ALL_FRAMES_MAX_S
        io = None if all_frames else _index(other_frames(T, sparse_k), q)
        rows = lambda x: (x if all_frames else x.index_select(2, io)).reshape(-1, S, x.shape[-1])  # noqa: E731
        q2, k2, v2 = (rows(x).to(f32) for x in (q, k, v))  # (N2, S, D): views, or gathered frames
        # scores (N2, S, S), scale folded into the matmul (beta=0: the 0-d input is ignored)
        p = torch.baddbmm(q2.new_zeros(()), q2, k2.transpose(1, 2), beta=0.0, alpha=scale)
        m = p.amax(-1, keepdim=True)  # (N2, S, 1)
        p = p.sub_(m).exp_()  # exp(score - m) <= 1
        lse_own = p.sum(-1, keepdim=True).log_().add_(m)  # (N2, S, 1): log-sum-exp over the own keys
        if all_frames:  # anchor frames: their own keys are counted in part 1 only
            lse_own.view(B * H, T, S)[:, anchor] = -torch.inf
        lse_1 = rows(lse.unsqueeze(-1))  # (N2, S, 1) part 1's lse of the same rows (a copy: lse is strided)
        lse_2 = torch.logaddexp(lse_1, lse_own)  # merged lse of the rows; = lse_1 on anchor frames
        w_own = torch.exp(m - lse_2)
        if all_frames:
            w_own.view(B * H, T, S)[:, anchor] = 0.0  # ... and their part-2 probabilities are 0
        p = p.mul_(w_own)  # final probabilities exp(score - lse_2) of the own keys
        # merged output rows: part 1 times its share exp(lse_1 - lse_2) (exactly 1 on anchors) + p @ v
        o = rows(out).to(f32)  # all frames, fp32, contiguous q: a view of out, updated in place
        o = o.mul_(torch.exp(lse_1 - lse_2)).baddbmm_(p, v2)  # (N2, S, D)
        if all_frames:
            out, lse = o.view(B, H, T, S, D).to(q.dtype), lse_2.view(B, H, T, S)
        else:  # write the other frames' rows; anchor frames keep part 1
            out.index_copy_(2, io, o.view(B, H, -1, S, D).to(out.dtype))
            lse.index_copy_(2, io, lse_2.view(B, H, -1, S))
        ctx.save_for_backward(q_all, ka, va, out, lse, io, q2, k2, v2, p, o)
        ctx.scale, ctx.sparse_k = scale, sparse_k
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, grad):
        flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        q_all, ka, va, out, lse, io, q2, k2, v2, p, o = ctx.saved_tensors
        B, H, T, S, D = out.shape
        scale, anchor, dtype = ctx.scale, slice(None, None, ctx.sparse_k), out.dtype
        flat = lambda x: x.reshape(B, H, T * S, *x.shape[4:])  # noqa: E731
        # part 1 (all queries, anchor keys), given the merged output and lse: exactly its gradients.
        # The kernel returns dq, dka, dva with (B, L, H, D) strides.
        dq, dka, dva = flash_bwd(flat(grad), q_all, ka, va, flat(out), flat(lse), 0.0, False)
        # part 2 by hand: p (N2, S, S) the final own-key probabilities, o the merged output rows
        go = (grad if io is None else grad.index_select(2, io)).reshape(-1, S, D).to(p.dtype)  # (N2, S, D)
        delta = (go * o).sum(-1, keepdim=True)  # rowsum(dO * O), (N2, S, 1)
        ds = torch.bmm(go, v2.transpose(1, 2)).sub_(delta).mul_(p)  # d(scaled scores), (N2, S, S)
        dk2 = torch.baddbmm(ds.new_zeros(()), ds.transpose(1, 2), q2, beta=0.0, alpha=scale)  # (N2, S, D)
        dv2 = torch.bmm(p.transpose(1, 2), go)
        if io is None:  # all frames: part 2 gives whole tensors; add part 1 in place
            dq = dq.reshape(-1, S, D).to(p.dtype).baddbmm_(ds, k2, alpha=scale)  # reshape: one copy
            dq, dk, dv = (x.to(dtype).view(B, H, T, S, D) for x in (dq, dk2, dv2))
            dk[:, :, anchor] += dka.unflatten(2, (-1, S))  # anchor frames: part 1's gradients too
            dv[:, :, anchor] += dva.unflatten(2, (-1, S))
            return dq, dk, dv, None
        dq = dq.unflatten(2, (T, S)).index_add_(2, io, torch.bmm(ds, k2).view(B, H, -1, S, D).to(dtype), alpha=scale)

        def frames_back(d_anchor, d_other):  # anchors and others partition the frames
            d = d_anchor.new_empty(B, H, T, S, D)
            d[:, :, anchor] = d_anchor.unflatten(2, (-1, S))
            return d.index_copy_(2, io, d_other.view(B, H, -1, S, D).to(dtype))

        return dq, frames_back(dka, dk2), frames_back(dva, dv2), None


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
