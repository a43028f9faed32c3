"""Every attention backend and layout against the eager reference (explicit boolean mask).

Tolerances (fp32, values and gradients of order 1): absolute 2e-5 + relative 1e-4. The kernels
differ in summation order only; measured differences are ~1e-6. A wrong mask moves values by ~0.1.
The compiled and FlexAttention (compiled) cases are one small shape each: torch.compile costs
~5-20 s per graph on 2 cores (FACTS.md), the rest of the file runs in a few seconds.
"""

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

from osplab.models.attention import (
    BACKENDS,
    CPU_MATH_MAX_KEYS,
    CPU_MATH_MAX_KEYS_FP32,
    LAYOUTS,
    MODULE_LAYOUTS,
    SpatioTemporalAttention,
    attention,
    layout_mask,
    sdpa,
)
from osplab.models import attention_sparse
from osplab.models.attention_sparse import flex_attention_layout, sparse_temporal_gather, sparse_temporal_split_kv

ATOL, RTOL = 2e-5, 1e-4

# (B, H, T, S, D, k): T not divisible by k, T = 1, k = 1 (sparse == full), k > T, T = 16 with k = 4
SHAPES = [
    (2, 2, 5, 6, 8, 2),
    (1, 3, 1, 4, 4, 3),
    (2, 1, 9, 3, 8, 4),
    (1, 2, 16, 4, 8, 4),
    (1, 1, 7, 5, 4, 1),
    (1, 2, 3, 5, 4, 5),
]


def close(a, b):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def qkv(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).requires_grad_(True) for _ in range(3)]


def out_and_grads(fn, q, k, v, seed=123):
    out = fn(q, k, v)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


def allowed(layout, t, s, t2, s2, k):
    """The layouts' definitions, written out per (query, key) pair."""
    return {
        "full": True,
        "spatial": t == t2,
        "temporal": s == s2,
        "sparse": t2 % k == 0 or t2 == t,
    }[layout]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_mask_matches_definition(layout):
    T, S, k = 7, 3, 3
    mask = layout_mask(layout, T, S, k)
    pairs = itertools.product(itertools.product(range(T), range(S)), repeat=2)
    expected = torch.tensor([allowed(layout, t, s, t2, s2, k) for (t, s), (t2, s2) in pairs]).view(T * S, T * S)
    assert torch.equal(mask, expected)
    assert mask.diagonal().all()  # every query keeps itself, so no softmax row is empty


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}T{}S{}D{}k{}".format(*s))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sdpa_matches_eager_fwd_bwd(layout, shape):
    *dims, k = shape
    q, kk, v = qkv(dims, seed=sum(shape))
    ref = out_and_grads(lambda a, b, c: attention(a, b, c, layout, "eager", k), q, kk, v)
    got = out_and_grads(lambda a, b, c: attention(a, b, c, layout, "sdpa", k), q, kk, v)
    for a, b in zip(got, ref, strict=True):
        close(a, b)


@pytest.mark.parametrize("impl", [sparse_temporal_gather, sparse_temporal_split_kv], ids=["gather", "split_kv"])
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[2] > s[5] > 1], ids=lambda s: "B{}H{}T{}S{}D{}k{}".format(*s))
def test_both_sparse_implementations_match_eager_fwd_bwd(impl, shape):
    """sdpa picks split_kv on CPU; the gather path (other devices) must be exact too."""
    *dims, k = shape
    q, kk, v = qkv(dims, seed=11)
    ref = out_and_grads(lambda a, b, c: attention(a, b, c, "sparse", "eager", k), q, kk, v)
    got = out_and_grads(lambda a, b, c: impl(a, b, c, k), q, kk, v)
    for a, b in zip(got, ref, strict=True):
        close(a, b)


# split-KV part 2 (each frame over its own keys) on all frames (views, anchors zeroed) or on the
# other frames only (gathered); ALL_FRAMES_MAX_S picks by S, the tests force each path
PART2_PATHS = {"all_frames": 10**9, "other_frames": 0}


@pytest.mark.parametrize("path", PART2_PATHS)
@pytest.mark.parametrize(
    "shape",
    [(2, 2, 5, 6, 8, 2), (2, 1, 9, 3, 8, 4), (1, 2, 16, 4, 8, 4), (1, 2, 3, 5, 4, 5), (2, 3, 7, 8, 16, 3),
     (1, 1, 2, 1, 4, 2)],
    ids=lambda s: "B{}H{}T{}S{}D{}k{}".format(*s),
)
def test_split_kv_part2_paths_match_eager_fwd_bwd(path, shape, monkeypatch):
    """Both part-2 paths, outputs and gradients, incl. T % k != 0, k >= T and S = 1."""
    monkeypatch.setattr(attention_sparse, "ALL_FRAMES_MAX_S", PART2_PATHS[path])
    *dims, k = shape
    q, kk, v = qkv(dims, seed=5)
    ref = out_and_grads(lambda a, b, c: attention(a, b, c, "sparse", "eager", k), q, kk, v)
    got = out_and_grads(lambda a, b, c: sparse_temporal_split_kv(a, b, c, k), q, kk, v)
    for a, b in zip(got, ref, strict=True):
        close(a, b)


@pytest.mark.parametrize("path", PART2_PATHS)
def test_split_kv_large_scores_do_not_overflow(path, monkeypatch):
    """Scores of order 100 (exp would overflow without the max/log-sum-exp shifts). Against a
    float64 reference: at this scale fp32 rounding alone is ~1e-3 (eager fp32 included)."""
    monkeypatch.setattr(attention_sparse, "ALL_FRAMES_MAX_S", PART2_PATHS[path])
    q, kk, v = (10 * x.detach() for x in qkv((1, 2, 6, 5, 8), seed=9))
    ref = out_and_grads(lambda a, b, c: attention(a, b, c, "sparse", "eager", 3),
                        *(x.double().requires_grad_(True) for x in (q, kk, v)))
    got = out_and_grads(lambda a, b, c: sparse_temporal_split_kv(a, b, c, 3),
                        *(x.requires_grad_(True) for x in (q, kk, v)))
    for a, b in zip(got, ref, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, atol=5e-3, rtol=1e-3)


@pytest.mark.parametrize("path", PART2_PATHS)
def test_split_kv_takes_strided_inputs_and_bf16(path, monkeypatch):
    """The module hands q, k, v as strided views of one qkv tensor; bf16 runs the bf16 kernels."""
    monkeypatch.setattr(attention_sparse, "ALL_FRAMES_MAX_S", PART2_PATHS[path])
    qkv_all = torch.randn(2, 6, 4, 3, 2, 8, requires_grad=True)  # (B, T, S, three, H, D)
    q, k, v = qkv_all.permute(3, 0, 4, 1, 2, 5).unbind(0)  # (B, H, T, S, D) views
    grad = torch.randn(2, 2, 6, 4, 8)
    ref = torch.autograd.grad(attention(q, k, v, "sparse", "eager", 4), qkv_all, grad)[0]
    got = torch.autograd.grad(sparse_temporal_split_kv(q, k, v, 4), qkv_all, grad)[0]
    close(got, ref)
    qb, kb, vb = (x.detach().bfloat16() for x in (q, k, v))
    out_bf16 = sparse_temporal_split_kv(qb, kb, vb, 4)
    assert out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.float(), attention(q, k, v, "sparse", "eager", 4), atol=3e-2, rtol=3e-2)
    # bf16 gradients: bf16 dtypes, close to the fp32 reference
    qb, kb, vb = (x.requires_grad_(True) for x in (qb, kb, vb))
    got = torch.autograd.grad(sparse_temporal_split_kv(qb, kb, vb, 4), (qb, kb, vb), grad.bfloat16())
    ref = torch.autograd.grad(attention(q, k, v, "sparse", "eager", 4), (q, k, v), grad)
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b, atol=5e-2, rtol=5e-2)


def test_sparse_k1_is_full_and_k_ge_T_is_anchor0_plus_own_frame():
    q, k, v = qkv((1, 2, 6, 4, 8), seed=1)
    close(attention(q, k, v, "sparse", "sdpa", 1), attention(q, k, v, "full", "eager"))
    # k >= T: only frame 0 is an anchor; frame 0 then attends to itself only (spatial)
    out = attention(q, k, v, "sparse", "sdpa", 6)
    close(out[:, :, 0], attention(q, k, v, "spatial", "eager")[:, :, 0])


@pytest.mark.parametrize("shape", SHAPES[:4], ids=lambda s: "B{}H{}T{}S{}D{}k{}".format(*s))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_flex_masks_match_eager_uncompiled(layout, shape):
    """The block-mask logic, checked with FlexAttention's unfused reference (no compile)."""
    *dims, k = shape
    q, kk, v = qkv(dims, seed=7)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        got = flex_attention_layout(q, kk, v, layout, k, compiled=False)
        close(got, attention(q, kk, v, layout, "eager", k))


def test_flex_compiled_forward_matches_eager():
    q, k, v = qkv((1, 2, 5, 16, 16), seed=3)
    with torch.no_grad():
        close(attention(q, k, v, "sparse", "flex", 2), attention(q, k, v, "sparse", "eager", 2))


def test_flex_backward_on_cpu_is_a_clear_error():
    q, k, v = qkv((1, 1, 2, 4, 8), seed=0)
    with pytest.raises(RuntimeError, match="forward-only on CPU"):
        attention(q, k, v, "sparse", "flex", 2)


def make_modules(layout, backends, qk_norm, dim=16, heads=2, k=2):
    torch.manual_seed(0)
    mods = {be: SpatioTemporalAttention(dim, heads, layout, be, k, qk_norm) for be in backends}
    ref = next(iter(mods.values()))
    for m in mods.values():
        m.load_state_dict(ref.state_dict())
        if qk_norm:  # move the RMSNorm scales off 1 so that a skipped norm would show
            for name, p in m.named_parameters():
                if "norm" in name:
                    p.data.copy_(torch.linspace(0.5, 1.5, p.numel()))
    return mods


def module_out_and_grads(m, x, grad):
    out = m(x)
    return (out, *torch.autograd.grad(out, (x, *m.parameters()), grad))


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("layout", MODULE_LAYOUTS)
def test_module_sdpa_matches_eager(layout, qk_norm):
    mods = make_modules(layout, ("eager", "sdpa"), qk_norm)
    x = torch.randn(2, 5, 6, 16, requires_grad=True)
    grad = torch.randn(2, 5, 6, 16)
    ref, got = (module_out_and_grads(mods[be], x, grad) for be in ("eager", "sdpa"))
    assert len(ref) == len(got)
    for a, b in zip(got, ref, strict=True):
        close(a, b)


def test_module_compiled_matches_eager_fwd_bwd():
    """One compiled graph (sparse layout, T % k != 0, QK-norm): torch.compile must not change numbers."""
    mods = make_modules("sparse", ("eager", "compiled"), qk_norm=True)
    x = torch.randn(1, 5, 4, 16, requires_grad=True)
    grad = torch.randn(1, 5, 4, 16)
    ref, got = (module_out_and_grads(mods[be], x, grad) for be in ("eager", "compiled"))
    for a, b in zip(got, ref, strict=True):
        close(a, b)


def receptive(layout, T=6, S=3, k=3, t0=1, s0=2):
    """Which outputs (T, S) change when one input token (t0, s0) is perturbed."""
    torch.manual_seed(0)
    m = SpatioTemporalAttention(8, 2, layout, "sdpa", k, False)
    x = torch.randn(1, T, S, 8)
    x2 = x.clone()
    x2[0, t0, s0] += 1.0
    with torch.no_grad():
        return (m(x2) - m(x)).abs().amax(-1)[0] > 1e-6


def test_receptive_fields_follow_the_layouts():
    T, S = 6, 3
    assert receptive("full").all()
    spatial = receptive("spatial")
    assert spatial[1].all() and not spatial[[0, 2, 3, 4, 5]].any()  # own frame only
    temporal = receptive("temporal")
    assert temporal[:, 2].all() and not temporal[:, :2].any()  # own position only
    # frame 1 is not an anchor (k=3): only frame 1 sees it; anchor frame 3 is seen by everyone
    assert receptive("sparse", t0=1)[1].all() and not receptive("sparse", t0=1)[[0, 2, 3, 4, 5]].any()
    assert receptive("sparse", t0=3).all()
    assert receptive("factorized").all() and receptive("factorized").shape == (T, S)  # two hops reach all


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layout="diagonal"), "layout='diagonal'"),
        (dict(backend="triton"), "backend='triton'"),
        (dict(layout="sparse", sparse_k=None), "sparse_k"),
        (dict(layout="sparse", sparse_k=0), "sparse_k"),
        (dict(dim=10), "divisible by heads"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, match):
    args = dict(dim=16, heads=4, layout="full", backend="sdpa", sparse_k=None, qk_norm=False) | kwargs
    with pytest.raises(ValueError, match=match):
        SpatioTemporalAttention(**args)


def test_bad_shapes_are_clear_errors():
    m = SpatioTemporalAttention(8, 2, "full", "sdpa", None, False)
    with pytest.raises(ValueError, match=r"\(B, T, S, C\)"):
        m(torch.randn(2, 3, 8))
    q = torch.randn(1, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="share one"):
        attention(q, q, q[..., :2], "full", "sdpa")
    assert set(BACKENDS) == {"eager", "sdpa", "compiled", "flex"}


@pytest.mark.parametrize("layout", ["sparse", "factorized"])
def test_module_under_bf16_autocast_stays_close_to_fp32(layout):
    """bf16 is selected by the caller's autocast (e.g. on CUDA or AVX512-bf16 CPUs), never required."""
    mods = make_modules(layout, ("eager", "sdpa"), qk_norm=True)
    x = torch.randn(2, 5, 4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rms_norm: bf16 input with an fp32 weight is not fused
        out = mods["sdpa"](x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), mods["eager"](x), atol=2e-2, rtol=2e-2)


def _sdpa_kernels(q, k, v, mask=None, backward=True) -> set[str]:
    """The aten SDPA kernels that `sdpa` ran (profiler op names), forward + backward or forward alone."""
    from torch.profiler import profile

    with profile() as prof:
        if backward:
            sdpa(q, k, v, attn_mask=mask).float().sum().backward()
        else:
            with torch.no_grad():
                sdpa(q, k, v, attn_mask=mask)
    return {e.name for e in prof.events() if "_scaled_dot_product" in e.name}


@pytest.mark.parametrize("keys, dtype, math", [(20, torch.bfloat16, True), (CPU_MATH_MAX_KEYS, torch.bfloat16, True),
                                               (CPU_MATH_MAX_KEYS + 1, torch.bfloat16, False),
                                               (CPU_MATH_MAX_KEYS_FP32, torch.float32, True),
                                               (CPU_MATH_MAX_KEYS_FP32 + 1, torch.float32, False)])
def test_sdpa_takes_the_math_kernel_only_for_few_keys_with_a_backward_on_cpu(keys, dtype, math):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 48, 16, generator=gen)
    k, v = (torch.randn(2, 2, keys, 16, generator=gen) for _ in range(2))
    mask = torch.rand(2, 1, 1, keys, generator=gen) > 0.3
    mask[..., 0] = True  # every row keeps a key
    leaves = [x.to(dtype).clone().requires_grad_() for x in (q, k, v)]
    kernels = _sdpa_kernels(*leaves, mask)
    assert ("aten::_scaled_dot_product_attention_math" in kernels) == math, kernels
    assert any("flash" in name for name in kernels) != math, kernels
    # without grad (sampling) the flash forward is the faster one: never math
    no_grad_kernels = _sdpa_kernels(*leaves, mask, backward=False)
    assert "aten::_scaled_dot_product_attention_math" not in no_grad_kernels and any("flash" in n for n in no_grad_kernels)
    # the same attention as float64 SDPA, forward and backward, up to the dtype's rounding
    ref = [x.double().clone().requires_grad_() for x in (q, k, v)]
    F.scaled_dot_product_attention(*ref, attn_mask=mask).sum().backward()
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    out = sdpa(*[x.detach() for x in leaves], attn_mask=mask)
    torch.testing.assert_close(out.double(), F.scaled_dot_product_attention(*[x.detach() for x in ref], attn_mask=mask),
                               atol=tol, rtol=tol)
    for leaf, r in zip(leaves, ref):
        torch.testing.assert_close(leaf.grad.double(), r.grad, atol=tol, rtol=tol)
