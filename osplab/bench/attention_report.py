"""Markdown tables, targets and the plot of the attention benchmark (results of
`osplab.bench.attention.run_benchmark`), written atomically."""

from __future__ import annotations

TARGETS = [  # (metric, comparison, threshold, what it means)
    ("compiled_over_sdpa_worst", "<=", 1.0,
     "compiled DiT block at least as fast as the eager SDPA block, every shape, fwd+bwd"),
    ("sparse_k4_over_dense_fwd_bwd", "<=", 0.40, "sparse temporal k=4 over 16 frames vs dense, fwd+bwd (worst shape)"),
    ("block_stack_fraction_of_peak", ">=", 0.60, "DiT-shaped block stack training step, fraction of fp32 matmul peak"),
]

INTRO = """How to read this report. Times are medians over interleaved rounds (every variant of one
comparison runs once per round, in an order rotated from round to round, so load from other
processes hits all of them alike); ratios are medians of the per-round paired ratios. GFLOP/s use the FLOP formulas in
osplab/bench/attention.py: attention forward 4*B*H*P*D for P kept query-key pairs, backward 2x
forward (flash recomputation not counted), linear layers 2*tokens*in*out, softmax/norms not
counted. Fractions of peak: the workload's rate over the rate of n x n torch.mm calls timed in
the same rounds (paired per round, median), so that both see the same load from other processes;
on a quiet machine this is the usual fraction of the matmul peak.

What "compiled" means here. The per-shape comparison (and `compiled_over_sdpa_worst`) times one
DiTBlock (adaLN modulation, attention, MLP) eagerly with the `sdpa` attention backend against the
same block under `torch.compile`. Inductor does not replace SDPA: it stays one extern
flash-attention kernel inside the compiled graph; the gain comes from fusing the layer norms,
modulation, GELU, gates and residual adds (and their backward) around it, so it shrinks as the
attention's share of the time grows with T*S. The attention module's own `compiled` backend
(torch.compile of one attention op) is timed in the block-stack table; for layout `full` it runs
the same kernels as `sdpa` (nothing to fuse) and differs from it by noise only.

Sparse temporal (k=4, 16 frames) keeps 4.75/16 = 0.297 of the query-key pairs and is computed
exactly without a mask: on CPU one flash call runs all queries over the anchor frames, batched
matmuls run each frame over itself (S x S; the flash kernel is slower on such small problems), and
the own-frame softmax is taken against the merged log-sum-exp, so the merge is exact and in place
(split-KV; osplab/models/attention_sparse.py). Its time ratio to dense sits above 0.297: the S x S
part runs at a lower rate than the long flash call, and the merge and its backward are
memory-bound extra work. Both shrink relative to the attention as S grows, so the ratio
is closer to 0.297 at S=256 than at S=64. FlexAttention (forward only on CPU) is shown beside it.

Environment. Both variables are read once, when a process starts, so the DVC stage sets them on
the papermill command line (the notebook kernel inherits them); their values are in the run line.
`OMP_WAIT_POLICY=PASSIVE` lets idle OpenMP threads sleep instead of spinning: with other jobs on
the 2 cores, spinning workers made even tiny element-wise ops cost a ~10 ms scheduler slice each.
`GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000` keeps freed
buffers in the heap, so fresh temporaries do not page-fault on every call.
"""


def target_rows(summary: dict) -> list[tuple[str, str, float | None, bool | None]]:
    """(description, threshold text, measured value or None, met or None) per target."""
    rows = []
    for key, op, threshold, what in TARGETS:
        value = summary.get(key)
        met = None if value is None else (value <= threshold if op == "<=" else value >= threshold)
        rows.append((f"{what} (`{key}`)", f"{op} {threshold:.2f}", value, met))
    return rows


def targets_markdown(summary: dict) -> list[str]:
    lines = ["### Targets", "", "| target | required | measured | met |", "|---|---|---|---|"]
    for what, req, value, met in target_rows(summary):
        shown = "not measured" if value is None else f"{value:.3f}"
        lines.append(f"| {what} | {req} | {shown} | {'-' if met is None else ('yes' if met else 'NO')} |")
    return lines + [""]


def markdown_report(res: dict) -> str:
    """reports/attention.md: the reading guide, the run conditions, targets and every table."""
    c, s = res["conditions"], res["summary"]

    def alone(dt: str) -> str:
        return ", ".join(f"{r['median']:.0f}/{r['best']:.0f}" for r in res["peak_runs"][f"peak_{dt}"])

    def num(d: dict, key: str, scale: float = 1.0, spec: str = ".0f") -> str:
        return format(scale * d[key], spec) if key in d else "-"  # "-": bf16 not measured on this machine

    bf16 = c.get("bf16", {"measured": True})  # runs before the flag existed measured bf16 everywhere
    fp32 = f"fp32 {s.get('matmul_peak_gflops_fp32', float('nan')):.0f}"
    alone_text = "Alone at the start and end of the run, median/fastest call: fp32 " + alone("fp32")
    if bf16["measured"]:
        peaks = (f"{fp32}, bf16 {s.get('matmul_peak_gflops_bf16', float('nan')):.0f} GFLOP/s). "
                 f"{alone_text}; bf16 {alone('bf16')} GFLOP/s.")
    else:
        peaks = (f"{fp32} GFLOP/s). {alone_text} GFLOP/s. bf16 not measured: this CPU ({bf16['cpu_capability']}) "
                 "has no native bf16 (AVX512_BF16 or AMX), and emulated bf16 runs 40-80x slower than fp32 "
                 "(osplab.hardware).")

    lines = [
        "# Attention benchmark",
        "",
        INTRO,
        f"Run: {c['time_utc']}, torch {c['torch']}, {c['threads']} threads on {c['cpu_count']} CPUs ({c['cpu']}), "
        f"load average {c['loadavg'][0]:.1f} at start and {c['loadavg_end'][0]:.1f} at end, "
        f"OMP_WAIT_POLICY={c['OMP_WAIT_POLICY'] or '(unset)'}, GLIBC_TUNABLES={c['GLIBC_TUNABLES'] or '(unset)'}, "
        f"device {c['device']}, {c['wall_s']:.0f} s wall.",
        "",
        f"Matmul peak (torch.mm {res['settings']['matmul_n']}^2). Fractions use the matmuls timed in the same "
        "rounds as each workload (same load); the block stack's are the metrics "
        f"({peaks}",
        "",
        *targets_markdown(s),
        "### Dense full attention: SDPA on 4-D inputs; compiled vs eager DiT block",
        "",
        "Attention columns: the SDPA op alone, (B, H, T*S, D). Block columns: one DiTBlock (adaLN, "
        f"attention, MLP {res['settings']['shapes']['mlp_ratio']}x) fwd+bwd, eager with the sdpa backend vs the "
        "same block under torch.compile; "
        "A/A is a second eager block timed alongside (the noise floor); IQR is the quartile band of the "
        "per-round ratios.",
        "",
        "| T | S | D | H | B | fwd ms | fwd GF/s | fwd % fp32 peak | fwd+bwd ms | GF/s | % fp32 peak "
        "| bf16 fwd+bwd ms | GF/s | % bf16 peak | mm fp32/bf16 GF/s | block eager ms | block compiled ms "
        "| compiled/eager (IQR) "
        "| A/A eager/eager | rounds | compile s (graph cache hits/misses) |",
        "|" + "---|" * 21,
    ]
    for r in res["dense"]:
        ms, g, f = r["ms"], r["gflops"], r["frac_peak"]
        lines.append(
            f"| {r['frames']} | {r['tokens_per_frame']} | {r['head_dim']} | {r['heads']} | {r['batch']} "
            f"| {ms['sdpa_fwd']:.1f} | {g['sdpa_fwd']:.0f} | {100 * f['sdpa_fwd']:.0f} "
            f"| {ms['sdpa_fwd_bwd']:.1f} | {g['sdpa_fwd_bwd']:.0f} | {100 * f['sdpa_fwd_bwd']:.0f} "
            f"| {num(ms, 'bf16_fwd_bwd', spec='.1f')} | {num(g, 'bf16_fwd_bwd')} | {num(f, 'bf16_fwd_bwd', 100)} "
            f"| {r['peak_gflops']['fp32']:.0f}/{num(r['peak_gflops'], 'bf16')} "
            f"| {ms['block_eager_fwd_bwd']:.1f} | {ms['block_compiled_fwd_bwd']:.1f} "
            f"| {r['compiled_over_sdpa']:.3f} "
            f"({r['compiled_over_sdpa_iqr'][0]:.2f}-{r['compiled_over_sdpa_iqr'][1]:.2f}) "
            f"| {r['sdpa_over_sdpa_aa']:.3f} | {r['repeats']} "
            f"| {r['compile_s']:.1f} ({r['fx_cache_hits_misses'][0]}/{r['fx_cache_hits_misses'][1]}) |"
        )
    lines += ["", "### Sparse temporal attention (exact, no mask: split-KV SDPA kernels on CPU) vs dense", "",
              "| T | S | D | k | sparse impl | kept fraction | dense fwd+bwd ms | sparse fwd+bwd ms "
              "| sparse/dense fwd+bwd | dense fwd ms | sparse fwd ms | flex sparse fwd ms | flex compile s |",
              "|" + "---|" * 13]
    for r in res["sparse"]:
        ms = r["ms"]
        flex = (f"{ms['flex_sparse_fwd']:.1f} | {r['flex_compile_s']:.1f}" if "flex_sparse_fwd" in ms else "- | -")
        lines.append(
            f"| {r['frames']} | {r['tokens_per_frame']} | {r['head_dim']} | {r['k']} | {r['impl']} "
            f"| {r['kept_fraction']:.3f} "
            f"| {ms['dense_fwd_bwd']:.1f} | {ms['sparse_fwd_bwd']:.1f} | {r['sparse_over_dense_fwd_bwd']:.3f} "
            f"| {ms['dense_fwd']:.1f} | {ms['sparse_fwd']:.1f} | {flex} |"
        )
    if res.get("short"):
        lines += ["", "### Short sequences: SDPA kernel pick (CPU)", "",
                  "SDPA at the DiT's lengths, forward + backward (training) and forward alone without grad "
                  "(sampling). `kit` is osplab.models.attention.sdpa: on the CPU a call with a backward and few keys "
                  "(at most 128 in bf16/fp16, 32 in fp32) runs the math kernel, everything else SDPA's own pick "
                  "(flash); `flash` and `math` force one kernel. Cross: the last quarter of the keys masked "
                  "(caption padding). Times in ms; ratios paired per round.", "",
                  "| kind | dtype | batch x heads | queries | keys | fwd+bwd kit / flash / math | pick | kit / faster "
                  "| fwd kit / flash / math | pick | kit / faster |",
                  "|" + "---|" * 11]
        for r in res["short"]:
            ms = r["ms"]
            cells = [f"{ms['kit_' + m]:.1f} / {ms['flash_' + m]:.1f} / {ms['math_' + m]:.1f} | {r[m]['kit_pick']} "
                     f"| {r[m]['kit_over_best']:.2f}" for m in ("fwd_bwd", "fwd")]
            lines.append(f"| {r['kind']} | {r['dtype']} | {r['batch']} x {r['heads']} | {r['queries']} | {r['keys']} "
                         f"| {cells[0]} | {cells[1]} |")
    bs = res["settings"]["block_stack"]
    lines += ["", f"### DiT-shaped block stack: {bs['depth']} adaLN blocks, width {bs['width']}, "
              f"{bs['heads']} heads, MLP {bs['mlp_ratio']}x, {bs['frames']}x{bs['tokens_per_frame']} tokens, "
              f"batch {bs['batch']}; training step = zero_grad + fwd + bwd + AdamW", "",
              "sdpa: eager blocks; compiled: attention ops compiled; compiled_blocks: every DiTBlock compiled "
              "whole. Time ratio is against the first row, paired per round.", "",
              "| variant | precision | step ms | GFLOP/s | matmul GFLOP/s (same rounds) | fraction of matmul peak "
              "| time / first row | first step s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in res["block_stack"]:
        lines.append(f"| {r['variant']} | {r['dtype']} | {r['step_ms']:.0f} | {r['gflops']:.0f} "
                     f"| {r['peak_gflops']:.0f} | {r['frac_peak']:.2f} | {r['over_first']:.3f} "
                     f"| {r['first_step_s']:.1f} |")
    lines += ["", "### Summary (metrics/attention.json)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in sorted(s.items())]
    return "\n".join(lines) + "\n"


def plot(res: dict, path) -> None:
    """Two panels: achieved GFLOP/s per dense shape against the peaks; the measured ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from osplab.io import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = [f"T{r['frames']} S{r['tokens_per_frame']} D{r['head_dim']}" for r in res["dense"]]
    xs = range(len(labels))
    measured = res["dense"][0]["gflops"] if res["dense"] else {}  # bf16 only where native (osplab.hardware)
    for i, (key, name) in enumerate([("sdpa_fwd", "fp32 fwd"), ("sdpa_fwd_bwd", "fp32 fwd+bwd"),
                                     ("bf16_fwd_bwd", "bf16 fwd+bwd")]):
        if key in measured:
            ax1.bar([x + 0.27 * (i - 1) for x in xs], [r["gflops"][key] for r in res["dense"]], 0.27, label=name)
    for dt, marker in (("fp32", "_"), ("bf16", "1")):  # the matmul rate timed alongside each shape
        if res["dense"] and dt not in res["dense"][0]["peak_gflops"]:
            continue
        ax1.scatter(list(xs), [r["peak_gflops"][dt] for r in res["dense"]], marker=marker, s=120, color="k",
                    label=f"matmul {dt}, same rounds")
    ax1.set_xticks(list(xs), labels, rotation=60, fontsize=7)
    ax1.set_ylabel("GFLOP/s")
    ax1.set_title("dense attention (SDPA)")
    ax1.legend(fontsize=7)
    ratios = [("compiled/eager block " + lab, r["compiled_over_sdpa"])
              for lab, r in zip(labels, res["dense"], strict=True)]
    ratios += [(f"sparse k{r['k']}/dense T{r['frames']} S{r['tokens_per_frame']}", r["sparse_over_dense_fwd_bwd"])
               for r in res["sparse"]]
    ax2.barh([n for n, _ in ratios], [v for _, v in ratios], color="tab:gray")
    ax2.axvline(1.0, color="k", lw=1)
    ax2.axvline(0.4, color="tab:red", ls="--", lw=1, label="sparse target 0.40")
    ax2.tick_params(axis="y", labelsize=7)
    ax2.set_xlabel("time ratio, fwd+bwd (lower is faster)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_outputs(res: dict, report_md, report_png, metrics_json) -> None:
    """Write the report, the plot and the metrics (flat numbers), each atomically."""
    from osplab.io import atomic_write_json, atomic_write_text

    atomic_write_text(report_md, markdown_report(res))
    plot(res, report_png)
    atomic_write_json(metrics_json, res["summary"])
