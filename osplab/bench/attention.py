"""Attention benchmark: dense/sparse/compiled attention and a DiT-shaped block stack on CPU (or GPU).

FLOP conventions (multiply-add = 2 FLOPs; softmax, norms and elementwise ops not counted):
  matmul peak      torch.mm of two n x n matrices: 2 n^3.
  attention fwd    4 * B * H * P * D, P = kept (query, key) pairs (QK^T and PV, 2 * P * D each).
  attention bwd    2 x fwd (dV, dP, dQ, dK: four matmuls of the forward's size); the flash kernel's
                   recomputation of QK^T is not counted, so fwd+bwd = 3 x fwd.
  linear layer     2 * tokens * in * out forward, x3 for fwd+bwd.
Timing (osplab/bench/timing.py): the variants of one comparison run in interleaved, rotated
rounds; medians over rounds after `warmup` untimed rounds; ratios and fractions of the matmul
peak are medians of per-round ratios. Compile time = first call - median steady call.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from osplab.bench.timing import (
    Timing,
    conditions,
    fraction_of_peak,
    fwd_bwd,
    inductor_cache_hits,
    matmul_fns,
    matmul_peak,
    median,
    no_grad,
    paired_ratio,
    ratio_quartiles,
    resolve_device,
    time_first_call,
    time_interleaved,
)
from osplab.models.attention import attention, sdpa, uses_cpu_math
from osplab.models.attention_sparse import anchor_frames, split_kv_available
from osplab.models.blocks import BlockStack, DiTBlock


def kept_pairs(layout: str, frames: int, tokens_per_frame: int, sparse_k: int | None) -> int:
    """Number of (query, key) pairs a layout keeps over T frames of S tokens."""
    T, S = frames, tokens_per_frame
    if layout == "full":
        return (T * S) ** 2
    if layout == "spatial":
        return T * S * S
    if layout == "temporal":
        return S * T * T
    n_anchor = len(anchor_frames(T, sparse_k))
    return S * S * sum(n_anchor + (t % sparse_k != 0) for t in range(T))


def attention_flops(batch: int, width: int, pairs: int) -> float:
    """Forward FLOPs of attention: 4 * B * P * (H * D); H * D = width."""
    return 4.0 * batch * pairs * width


def block_stack_flops(depth: int, width: int, mlp_ratio: float, frames: int, tokens: int, batch: int) -> float:
    """Forward FLOPs of `depth` DiTBlocks (full attention, cond_dim = width) on B x T x S tokens."""
    n = batch * frames * tokens
    linear = 2.0 * n * width * width * (3 + 1 + 2 * mlp_ratio)  # qkv, proj, MLP fc1 + fc2
    ada = 2.0 * batch * width * 6 * width  # adaLN modulation Linear
    return depth * (linear + ada + attention_flops(batch, width, kept_pairs("full", frames, tokens, None)))


def random_qkv(batch, heads, frames, tokens, head_dim, dtype=torch.float32, seed=0) -> list[torch.Tensor]:
    """Three (B, H, T, S, D) tensors drawn on the CPU (same numbers on any device), moved to the default device."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, heads, frames, tokens, head_dim)
    dev = torch.get_default_device()
    return [torch.randn(shape, generator=g, device="cpu").to(dev, dtype).requires_grad_(True) for _ in range(3)]


def dit_block(width: int, heads: int, mlp_ratio: float, backend: str, seed: int = 0) -> DiTBlock:
    """A DiTBlock (full attention, cond_dim = width) with random, non-zero modulation, so every
    branch carries gradient (adaLN-Zero would zero the gates). Same seed -> same weights."""
    torch.manual_seed(seed)
    block = DiTBlock(width, heads, width, mlp_ratio, layout="full", backend=backend, sparse_k=None, qk_norm=False)
    torch.nn.init.normal_(block.ada[1].weight, std=0.02)
    return block


def bench_dense_shape(batch, width, frames, tokens, head_dim, mlp_ratio, matmul_n, timing: Timing,
                      bf16: bool = True) -> dict:
    """Full (3-D) attention at one shape.

    Attention op: SDPA forward and forward+backward (fp32, and bf16 if `bf16`: where it is native,
    `osplab.hardware.native_bf16`) on (B, H, T, S, D) inputs.
    Compiled vs SDPA: one DiTBlock (adaLN, attention, MLP) fwd+bwd, run eagerly with the sdpa
    backend vs the same block under torch.compile (SDPA stays an extern kernel in the graph;
    inductor fuses the norms, modulation, GELU and residuals around it). A second eager block
    timed alongside gives the A/A ratio, the noise floor of the comparison. Fractions of peak are
    against fp32/bf16 matmuls timed in the same rounds.
    """
    heads = width // head_dim
    q, k, v = random_qkv(batch, heads, frames, tokens, head_dim)
    dtypes = ("fp32", "bf16") if bf16 else ("fp32",)
    attn = lambda a, b, c: (lambda: attention(a, b, c, "full", "sdpa"))  # noqa: E731
    blocks = {name: dit_block(width, heads, mlp_ratio, "sdpa") for name in ("eager", "eager_again", "compiled")}
    x, c = torch.randn(batch, frames, tokens, width, requires_grad=True), torch.randn(batch, width)
    grad = torch.randn_like(x)
    torch._dynamo.reset()  # a fresh compile per shape, so compile time is measured, not cached in-process
    run = {name: (torch.compile(b) if name == "compiled" else b) for name, b in blocks.items()}
    step = {name: fwd_bwd(lambda f=f: f(x, c), [x, *blocks[name].parameters()], grad) for name, f in run.items()}
    hits = inductor_cache_hits()
    first = time_first_call(step["compiled"])
    hits = [now - before for now, before in zip(inductor_cache_hits(), hits, strict=True)]
    fns = {
        "sdpa_fwd": no_grad(attn(q, k, v)),
        "sdpa_fwd_bwd": fwd_bwd(attn(q, k, v), [q, k, v], torch.randn_like(q)),
        **{f"block_{name}_fwd_bwd": fn for name, fn in step.items()},
    }
    if bf16:
        qb, kb, vb = random_qkv(batch, heads, frames, tokens, head_dim, torch.bfloat16)
        fns["bf16_fwd_bwd"] = fwd_bwd(attn(qb, kb, vb), [qb, kb, vb], torch.randn_like(qb))
    mm, mm_flops = matmul_fns(matmul_n, 1, dtypes)
    times = time_interleaved(fns | mm, timing)
    row = {"frames": frames, "tokens_per_frame": tokens, "head_dim": head_dim, "heads": heads, "batch": batch}
    row["attn_fwd_flops"] = attention_flops(batch, width, kept_pairs("full", frames, tokens, None))
    row["ms"] = {name: 1e3 * median(ts) for name, ts in times.items()}
    row["peak_gflops"] = {dt: mm_flops / median(times[f"mm_{dt}"]) / 1e9 for dt in dtypes}
    f, mult = row["attn_fwd_flops"], {"sdpa_fwd": 1, "sdpa_fwd_bwd": 3, "bf16_fwd_bwd": 3}  # fwd+bwd = 3 x fwd
    mult = {n: m for n, m in mult.items() if n in fns}
    mm_of = {"sdpa_fwd": "mm_fp32", "sdpa_fwd_bwd": "mm_fp32", "bf16_fwd_bwd": "mm_bf16"}
    row["gflops"] = {n: mult[n] * f / median(times[n]) / 1e9 for n in mult}
    row["frac_peak"] = {n: fraction_of_peak(mult[n] * f, times[n], mm_flops, times[mm_of[n]]) for n in mult}
    bc, be, ba = (times[f"block_{name}_fwd_bwd"] for name in ("compiled", "eager", "eager_again"))
    row["compiled_over_sdpa"], row["compiled_over_sdpa_iqr"] = paired_ratio(bc, be), ratio_quartiles(bc, be)
    row["sdpa_over_sdpa_aa"], row["repeats"] = paired_ratio(ba, be), len(be)
    row["compile_s"] = first - median(bc)
    row["fx_cache_hits_misses"] = hits  # inductor's on-disk graph cache: warm (hits) or cold (misses)
    return row

def bench_sparse(batch, width, frames, tokens, head_dim, k, timing: Timing, flex: bool) -> dict:
    """Sparse temporal (backend sdpa: split-KV on CPU, gather elsewhere) vs dense full attention on the
    same (B, H, T, S, D) inputs; optionally FlexAttention forward with a per-frame block mask."""
    heads = width // head_dim
    q, k_, v = random_qkv(batch, heads, frames, tokens, head_dim)
    grad = torch.randn_like(q)
    run = lambda layout, backend: (lambda: attention(q, k_, v, layout, backend, k))  # noqa: E731
    fns = {
        "dense_fwd_bwd": fwd_bwd(run("full", "sdpa"), [q, k_, v], grad),
        "sparse_fwd_bwd": fwd_bwd(run("sparse", "sdpa"), [q, k_, v], grad),
        "dense_fwd": no_grad(run("full", "sdpa")),
        "sparse_fwd": no_grad(run("sparse", "sdpa")),
    }
    row = {"frames": frames, "tokens_per_frame": tokens, "head_dim": head_dim, "k": k, "batch": batch,
           "impl": "split-KV" if split_kv_available(q) else "gather"}
    if flex:
        fns["flex_sparse_fwd"] = no_grad(run("sparse", "flex"))
        row["flex_compile_s"] = time_first_call(fns["flex_sparse_fwd"])
    times = time_interleaved(fns, timing)
    if flex:
        row["flex_compile_s"] -= median(times["flex_sparse_fwd"])
    row["ms"] = {name: 1e3 * median(ts) for name, ts in times.items()}
    row["kept_fraction"] = kept_pairs("sparse", frames, tokens, k) / kept_pairs("full", frames, tokens, None)
    row["sparse_over_dense_fwd_bwd"] = paired_ratio(times["sparse_fwd_bwd"], times["dense_fwd_bwd"])
    row["sparse_over_dense_fwd"] = paired_ratio(times["sparse_fwd"], times["dense_fwd"])
    return row


def bench_short(cfg: dict, dtype: torch.dtype, timing: Timing) -> list[dict]:
    """The kit's SDPA kernel pick for short sequences (osplab.models.attention.sdpa: on the CPU, a call
    with a backward and few keys (`uses_cpu_math`) -> the math kernel; without grad,
    SDPA's own pick) against SDPA forced to the flash kernel and to the math kernel, forward + backward
    and forward alone (no grad, as in sampling), interleaved, at the DiT's lengths: self-attention over
    `self_lengths` tokens (queries = keys) and cross-attention of `cross_queries` tokens to `cross_keys`
    text tokens with a padding mask (the last quarter of the keys masked). A call holds `tokens` queries
    (batch = tokens / queries), like one training step's attention call. CPU kernels only."""
    H, D = cfg["heads"], cfg["head_dim"]
    cases = [("self", n, n) for n in cfg["self_lengths"]] + [("cross", cfg["cross_queries"], cfg["cross_keys"])]
    g = torch.Generator().manual_seed(0)
    kernels = (("kit", None), ("flash", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH))
    rows = []
    for kind, lq, lk in cases:
        B = max(1, cfg["tokens"] // lq)
        q = torch.randn(B, H, lq, D, generator=g).to(dtype).requires_grad_()
        k, v = (torch.randn(B, H, lk, D, generator=g).to(dtype).requires_grad_() for _ in range(2))
        mask = None
        if kind == "cross":
            mask = torch.ones(B, 1, 1, lk, dtype=torch.bool)
            mask[..., lk - lk // 4:] = False

        def call(kernel):
            if kernel is None:
                return lambda: sdpa(q, k, v, attn_mask=mask)

            def forced():
                with sdpa_kernel(kernel):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

            return forced

        grad = torch.randn_like(q)
        fns = {f"{name}_fwd_bwd": fwd_bwd(call(kernel), [q, k, v], grad) for name, kernel in kernels}
        fns |= {f"{name}_fwd": no_grad(call(kernel)) for name, kernel in kernels}
        times = time_interleaved(fns, timing)
        row = {"kind": kind, "dtype": str(dtype).removeprefix("torch."), "batch": B, "heads": H, "head_dim": D,
               "queries": lq, "keys": lk, "ms": {name: 1e3 * median(ts) for name, ts in times.items()}}
        for mode in ("fwd_bwd", "fwd"):
            t = {name: times[f"{name}_{mode}"] for name, _ in kernels}
            best = min(("flash", "math"), key=lambda name: median(t[name]))
            with torch.set_grad_enabled(mode == "fwd_bwd"):  # the kit's own rule, as the timed calls met it
                pick = "math" if uses_cpu_math(q, k, v) else "flash"
            row[mode] = {"kit_pick": pick,
                         "best": best, "kit_over_best": paired_ratio(t["kit"], t[best]),
                         "flash_over_math": paired_ratio(t["flash"], t["math"])}
        rows.append(row)
    return rows


def bench_block_stack(cfg: dict, matmul_n: int, timing: Timing, bf16_native: bool = True) -> list[dict]:
    """Training step (zero_grad, fwd, bwd, AdamW step) of a DiT-shaped stack of adaLN blocks with
    full attention, for each variant in cfg["variants"], timed interleaved:
      sdpa             eager blocks, attention backend sdpa
      compiled         eager blocks, attention backend compiled (each attention op compiled)
      compiled_blocks  each DiTBlock under torch.compile (SDPA inside as an extern kernel)
    plus, if cfg["bf16"] and `bf16_native`, the first variant under bf16 autocast. FLOPs counted: 3 x forward matmuls
    (the optimizer's elementwise work is not counted, so the fractions are conservative); fractions
    are against 4 fp32/bf16 matmuls timed in the same rounds."""
    width, T, S, B = cfg["width"], cfg["frames"], cfg["tokens_per_frame"], cfg["batch"]
    x, c, grad = torch.randn(B, T, S, width), torch.randn(B, width), torch.randn(B, T, S, width)
    with_bf16 = bool(cfg["bf16"]) and bf16_native
    runs = [(v, False) for v in cfg["variants"]] + ([(cfg["variants"][0], True)] if with_bf16 else [])
    torch._dynamo.reset()
    steps, first = {}, {}
    for variant, bf16 in runs:
        torch.manual_seed(0)
        stack = BlockStack(cfg["depth"], width, cfg["heads"], width, cfg["mlp_ratio"], layout="full",
                           backend="compiled" if variant == "compiled" else "sdpa", sparse_k=None, qk_norm=False)
        for block in stack.blocks:  # leave adaLN-Zero: random gates so every branch carries gradient
            torch.nn.init.normal_(block.ada[1].weight, std=0.02)
        if variant == "compiled_blocks":
            for block in stack.blocks:
                block.compile()  # in place; one graph serves all blocks of the same shape
        name = f"{variant}{' bf16' if bf16 else ''}"
        steps[name] = train_step(stack, x, c, grad, bf16)
        first[name] = time_first_call(steps[name])
    mm, mm_flops = matmul_fns(matmul_n, 4, ("fp32", "bf16") if with_bf16 else ("fp32",))
    times = time_interleaved(steps | mm, timing)
    flops = 3 * block_stack_flops(cfg["depth"], width, cfg["mlp_ratio"], T, S, B)
    base = next(iter(steps))
    rows = []
    for name in steps:
        ts, dt = times[name], "bf16" if name.endswith("bf16") else "fp32"
        rows.append({"variant": name.split()[0], "dtype": "bf16-autocast" if dt == "bf16" else "fp32",
                     "step_ms": 1e3 * median(ts), "gflops": flops / median(ts) / 1e9, "flops_per_step": flops,
                     "first_step_s": first[name], "over_first": paired_ratio(ts, times[base]),
                     "peak_gflops": mm_flops / median(times[f"mm_{dt}"]) / 1e9,
                     "frac_peak": fraction_of_peak(flops, ts, mm_flops, times[f"mm_{dt}"])})
    return rows


def train_step(stack: BlockStack, x, c, grad, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(stack.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = stack(x, c)
        out.backward(grad.to(out.dtype))
        opt.step()

    return step


# ---------------------------------------------------------------- whole run, summary, settings


def run_benchmark(s: dict, progress: bool = True) -> dict:
    """Run every measurement of the `attention.bench` settings `s` (a plain dict) in one process.

    bf16 is measured only where it is native (a CUDA GPU with bf16, a CPU with AVX512_BF16 or AMX):
    elsewhere emulated bf16 is 40-80x slower than fp32 and would take hours; `conditions.bf16` says which."""
    from tqdm.auto import tqdm

    from osplab.hardware import describe_cpu, native_bf16

    check_settings(s)
    torch.set_num_threads(s["threads"])
    device = resolve_device(s["device"])
    bf16 = native_bf16(device)
    dtypes = ("fp32", "bf16") if bf16 else ("fp32",)
    sh, sp, bs = s["shapes"], s["sparse"], s["block_stack"]
    t = Timing(s["repeats"], s["warmup"], s["min_seconds"], s["max_repeats"])
    peak = lambda dt: (lambda: matmul_peak(s["matmul_n"], dt, t))  # noqa: E731
    peaks = [("peak_fp32", peak(torch.float32))] + ([("peak_bf16", peak(torch.bfloat16))] if bf16 else [])
    tasks = list(peaks)
    n = s["matmul_n"]
    tasks += [("dense", lambda T=T, S=S, D=D: bench_dense_shape(sh["batch"], sh["width"], T, S, D,
                                                                sh["mlp_ratio"], n, t, bf16))
              for T in sh["frames"] for S in sh["tokens_per_frame"] for D in sh["head_dims"]]
    tasks += [("sparse", lambda S=S: bench_sparse(sp["batch"], sp["width"], sp["frames"], S, sp["head_dim"],
                                                  sp["k"], t, sp["flex"])) for S in sp["tokens_per_frame"]]
    if device == "cpu":  # the kernel pick of `sdpa` is a CPU rule
        tasks += [("short", lambda dt=dt: bench_short(s["short"], dt, t))
                  for dt in ((torch.float32, torch.bfloat16) if bf16 else (torch.float32,))]
    tasks.append(("block_stack", lambda: bench_block_stack(bs, n, t, bf16)))
    tasks += peaks  # again at the end
    with torch.device(device):  # every tensor and module below is created there
        res: dict = {"conditions": conditions(), "settings": s, "dense": [], "sparse": [], "short": [],
                     "block_stack": []}
        res["conditions"]["bf16"] = {"measured": bf16, **describe_cpu()}
        res["peak_runs"] = {name: [] for name, _ in peaks}
        t0 = time.perf_counter()
        for name, fn in tqdm(tasks, desc="bench_attention", disable=not progress):
            out = fn()
            if name in ("block_stack", "short"):
                res[name] += out
            else:
                (res["peak_runs"][name] if name.startswith("peak") else res[name]).append(out)
    res["conditions"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    res["conditions"]["wall_s"] = time.perf_counter() - t0
    runs = res["peak_runs"]
    res["peak_gflops_alone"] = {dt: {k: max(r[k] for r in runs[f"peak_{dt}"]) for k in ("median", "best")}
                                for dt in dtypes}
    res["summary"] = summarize(res)
    return res


def summarize(res: dict) -> dict:
    """The flat numbers of metrics/attention.json."""
    alone = res["peak_gflops_alone"]
    out = {f"matmul_peak_gflops_{dt}{key}": alone[dt][stat] for dt in alone  # bf16 only where native
           for key, stat in (("", "median"), ("_best_call", "best"))}  # replaced below by the stack's peak
    if res["dense"]:
        ratios = [row["compiled_over_sdpa"] for row in res["dense"]]
        out["compiled_over_sdpa_worst"] = max(ratios)
        out["compiled_over_sdpa_median"] = median(ratios)
        out["compile_s_max"] = max(row["compile_s"] for row in res["dense"])
        out["sdpa_fwd_frac_peak_fp32_best"] = max(row["frac_peak"]["sdpa_fwd"] for row in res["dense"])
    for row in res["sparse"]:
        key = f"sparse_k{row['k']}_over_dense_fwd_bwd"
        out[key] = max(out.get(key, 0.0), row["sparse_over_dense_fwd_bwd"])  # worst over shapes
        out[f"{key}_S{row['tokens_per_frame']}"] = row["sparse_over_dense_fwd_bwd"]
    if res.get("short"):  # the kit's pick against the faster of flash and math, worst case over shapes, dtypes, modes
        out["short_kit_over_best_worst"] = max(row[mode]["kit_over_best"] for row in res["short"]
                                               for mode in ("fwd_bwd", "fwd"))
        for row in res["short"]:
            if row["fwd_bwd"]["kit_pick"] == "math":  # what the pick buys in training: flash / math, fwd+bwd
                key = f"short_flash_over_math_fwd_bwd_{row['dtype']}_{row['kind']}{row['keys']}"
                out[key] = row["fwd_bwd"]["flash_over_math"]
    fp32 = [row for row in res["block_stack"] if row["dtype"] == "fp32"]
    if fp32:  # the first variant is the headline; the best one is reported beside it
        # the peak behind the headline fraction: matmuls timed in the same rounds as the stack
        out["matmul_peak_gflops_fp32"] = fp32[0]["peak_gflops"]
        bf16 = [row for row in res["block_stack"] if row["dtype"] != "fp32"]
        if bf16:
            out["matmul_peak_gflops_bf16"] = bf16[0]["peak_gflops"]
        out["block_stack_fraction_of_peak"] = fp32[0]["frac_peak"]
        out["block_stack_gflops_fp32"] = fp32[0]["gflops"]
        out["block_stack_fraction_of_peak_best"] = max(row["frac_peak"] for row in fp32)
    return out


REQUIRED = {  # every key of attention.bench, by section ("" = top level)
    "": ["device", "threads", "repeats", "warmup", "min_seconds", "max_repeats", "matmul_n",
         "shapes", "sparse", "short", "block_stack"],
    "shapes": ["batch", "width", "mlp_ratio", "frames", "tokens_per_frame", "head_dims"],
    "sparse": ["k", "batch", "width", "frames", "tokens_per_frame", "head_dim", "flex"],
    "short": ["tokens", "heads", "head_dim", "self_lengths", "cross_queries", "cross_keys"],
    "block_stack": ["depth", "width", "heads", "mlp_ratio", "frames", "tokens_per_frame", "batch", "variants",
                    "bf16"],
}


def check_settings(s: dict) -> None:
    """Raise a clear error naming missing `attention.bench` keys (conf/attention/default.yaml has them all)."""
    missing = [f"{sec + '.' if sec else ''}{key}" for sec, keys in REQUIRED.items()
               for key in keys if key not in (s[sec] if sec else s)]
    if missing:
        raise KeyError(f"attention.bench is missing {missing}; see conf/attention/default.yaml")
    bad = [v for v in s["block_stack"]["variants"] if v not in ("sdpa", "compiled", "compiled_blocks")]
    if bad or not s["block_stack"]["variants"]:
        raise ValueError(f"attention.bench.block_stack.variants: {bad or 'empty'}; use sdpa, compiled, compiled_blocks")
    if s["repeats"] < 1 or s["warmup"] < 0:
        raise ValueError(f"attention.bench needs repeats >= 1 and warmup >= 0, got {s['repeats']}, {s['warmup']}")


def bench_settings(smoke: bool, params_path: str, shapes: dict | None = None, repeats: int | None = None) -> dict:
    """`attention.bench` as a plain dict: composed with profile=smoke when `smoke`, else read from
    the DVC params file; `shapes` (a dict of attention.bench.shapes keys) and `repeats` override."""
    from omegaconf import OmegaConf

    from osplab.config import compose, load_params

    cfg = compose(["profile=smoke"]) if smoke else load_params(params_path)
    if "attention" not in cfg or "bench" not in cfg.attention:
        raise KeyError(
            "no attention.bench in the composed config: add `- attention: default` to the defaults of conf/config.yaml"
        )
    s = OmegaConf.to_container(cfg.attention.bench, resolve=True)
    s["shapes"].update(shapes or {})
    s["repeats"] = repeats if repeats is not None else s["repeats"]
    check_settings(s)
    return s
