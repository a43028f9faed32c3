"""Ablation: full vs factorized vs sparse temporal attention in the DiT (notebooks/ablation_sparse_temporal.ipynb).

The claim (Open-Sora-Plan's sparse attention): letting each frame attend to every k-th frame (plus
itself) instead of all frames cuts compute by about 30% for about 5% worse FVD (k = 4).

Each variant of `ablation_sparse_temporal.variants` (an attention layout, and k for `sparse`) is the
DiT of `conf/dit` with only that changed, trained from the same seed on the same latents, captions and
batches for `ablation_sparse_temporal.steps` steps with EMA decay `ablation_sparse_temporal.ema_decay`
(short next to those steps; the budget, steps x `train_dit.global_batch`, is the same for all and
smaller than the main run's, and the report says so), then sampled like `sample@rf`
and scored like `evaluate_generation` (FVD with its 95% interval, the caption judge). Beside the
quality, per variant:

- parameters and FLOPs (osplab.models.estimate: self-attention FLOPs and the whole training step, per
  sample, at the shortest and the longest trained clip);
- the training step (forward + backward) and the sampling forward, timed interleaved round by round
  across the variants (osplab.bench.timing), at the longest trained clip; the ratio to `full` is
  reported as the median and the range over the rounds, not as one run's value;
- the training stage's own wall time.

    variants = variants_from(cfg.ablation_sparse_temporal.variants)
    models = {v.name: train_variant(cfg, v, steps, out_root) for v in variants}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from osplab.ablations.common import claims_table, fvd_text, overlap, summary, write_files

NAME = "ablation_sparse_temporal"


@dataclass(frozen=True)
class Variant:
    """One attention layout of the DiT's self-attention (osplab.models.attention)."""

    name: str
    layout: str
    sparse_k: int | None = None

    def __post_init__(self):
        from osplab.models.attention import MODULE_LAYOUTS

        if self.layout not in MODULE_LAYOUTS:
            raise ValueError(f"variant {self.name!r}: layout {self.layout!r} is unknown; use one of {MODULE_LAYOUTS}")
        if (self.layout == "sparse") != (self.sparse_k is not None):
            raise ValueError(f"variant {self.name!r}: sparse_k is needed for layout sparse and only there")


def variants_from(conf) -> list[Variant]:
    """[{name, layout, sparse_k?}, ...] (conf: ablation_sparse_temporal.variants) -> Variants."""
    out = [Variant(str(v["name"]), str(v["layout"]), None if v.get("sparse_k") is None else int(v["sparse_k"]))
           for v in conf]
    names = [v.name for v in out]
    if len(set(names)) != len(names) or "full" not in names:
        raise ValueError(f"variants need unique names and one named 'full' (the reference), got {names}")
    return out


def variant_config(cfg, v: Variant):
    """A copy of the composed config with only the DiT's attention layout (and k) changed."""
    from omegaconf import OmegaConf

    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    c.dit.layout = v.layout
    if v.sparse_k is not None:
        c.dit.sparse_k = v.sparse_k
    return c


@dataclass
class Trained:
    """A variant after training: the EMA model, its latent normalisation and what training cost."""

    model: torch.nn.Module
    norm: object
    train_shapes: list
    stage_seconds: float
    final: dict


def train_variant(cfg, v: Variant, steps: int, out_root: str | Path) -> Trained:
    """Train variant `v` through the shared loop in <out_root>/<name> (resumable; a run of other
    settings or inputs is cleared first, as train_dit does) and return its EMA weights."""
    from osplab.checks import number
    from osplab.config import plain
    from osplab.models.dit import DiT, DiTConfig
    from osplab.tasks.dit import build_task, check_diffusion
    from osplab.train import TrainConfig, read_weights, seed_everything, train
    from osplab.train.provenance import claim_stage_run

    vc = variant_config(cfg, v)
    # the EMA horizon must be short next to the ablation's few steps, or the sampled weights stay part init
    ema = number("ablation_sparse_temporal.ema_decay", cfg.ablation_sparse_temporal.ema_decay, 0.0, 1.0, high_open=True)
    values = {**plain(vc.train_dit), "steps": int(steps), "out_dir": str(Path(out_root) / v.name), "ema_decay": ema}
    tcfg = TrainConfig.from_dict(values, prefix="train_dit")
    check_diffusion(vc.diffusion)
    settings = {k: plain(vc[k]) for k in ("dit", "diffusion", "text")}
    settings.update(train=values, objective="rf", seed=vc.seed)
    claim_stage_run(tcfg.out_dir, settings, [Path(vc.vqvae.latents) / "manifest.json",
                                             Path(vc.text.cache) / "manifest.json"], True)
    started = time.perf_counter()
    seed_everything(tcfg.seed)
    model = DiT(DiTConfig.from_dict(plain(vc.dit)))
    task = build_task(model, "rf", vc, steps=int(steps))
    final = train(tcfg, task)
    model.load_state_dict(read_weights(tcfg.checkpoint_dir, "ema"))
    return Trained(model.eval(), task.dataset.norm, sorted({tuple(s) for s in task.dataset.shapes()}),
                   time.perf_counter() - started, final)


def generator_for(trained: Trained, cfg, vqvae, text):
    """An osplab.generate.Generator of a trained variant (RF, the sample stage's settings)."""
    from omegaconf import OmegaConf

    from osplab.generate import Generator

    meta = {"objective": "rf", "diffusion": OmegaConf.to_container(cfg.diffusion, resolve=True),
            "latent_norm": trained.norm.to_dict(), "train_shapes": [list(s) for s in trained.train_shapes],
            "vqvae_sha256": "in-memory", "text_encoder": None}
    return Generator(trained.model, vqvae, text, meta)


def costs(models: dict[str, torch.nn.Module], latent_shapes: list[tuple], text_len: int, batch: int,
          timing) -> dict[str, dict]:
    """Parameters, FLOPs and interleaved timings per variant.

    latent_shapes: (t, h, w) of the shortest and the longest trained clip; FLOPs are per sample at
    each, times at the longest: a training step (fwd + bwd, fp32, `batch` clips, MSE to a random
    target) and a sampling forward (2 clips: one CFG pair). Returns {name: {...}}, with the
    per-round ratios to `full` as median / min / max."""
    from osplab.bench.timing import time_interleaved
    from osplab.models.estimate import forward_flops, train_flops

    longest = max(latent_shapes, key=lambda s: s[0] * s[1] * s[2])
    gen = torch.Generator().manual_seed(0)
    cfg0 = next(iter(models.values())).cfg
    x = torch.randn(batch, cfg0.in_channels, *longest, generator=gen)
    t = torch.rand(batch, generator=gen)
    text = torch.randn(batch, text_len, cfg0.text_dim, generator=gen)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    target = torch.randn(x.shape, generator=gen)

    def step_fn(m):
        def step():
            m.train()
            (m(x, t, text, mask) - target).square().mean().backward()
            m.zero_grad(set_to_none=True)
        return step

    def forward_fn(m):
        @torch.no_grad()
        def fwd():
            m.eval()
            m(x[:2], t[:2], text[:2], mask[:2])
        return fwd

    steps = time_interleaved({n: step_fn(m) for n, m in models.items()}, timing)
    fwds = time_interleaved({n: forward_fn(m) for n, m in models.items()}, timing)
    out = {}
    for name, m in models.items():
        ratio = np.array(steps[name]) / np.array(steps["full"])
        fratio = np.array(fwds[name]) / np.array(fwds["full"])
        out[name] = {"params": sum(p.numel() for p in m.parameters()),
                     "attn_gflops": [forward_flops(m.cfg, s, text_len)["self_attention"] / 1e9 for s in latent_shapes],
                     "train_gflops": [train_flops(m.cfg, s, text_len) / 1e9 for s in latent_shapes],
                     "step_s": float(np.median(steps[name])), "forward_s": float(np.median(fwds[name])),
                     "step_ratio": (float(np.median(ratio)), float(ratio.min()), float(ratio.max())),
                     "forward_ratio": (float(np.median(fratio)), float(fratio.min()), float(fratio.max())),
                     "rounds": len(steps[name])}
    return out


@dataclass
class Row:
    variant: str
    layout: str
    sparse_k: int | None
    params: int
    attn_gflops_short: float     # self-attention forward GFLOPs per sample, shortest trained clip
    attn_gflops_long: float      # ... longest trained clip
    train_gflops_long: float     # whole training step (fwd + bwd) GFLOPs per sample, longest clip
    step_s: float                # median training step (fwd + bwd) at the longest clip, timed interleaved
    step_ratio: float            # median over rounds of step / full's step
    step_ratio_min: float
    step_ratio_max: float
    forward_ratio: float         # the same for a sampling forward (one CFG pair)
    forward_ratio_min: float
    forward_ratio_max: float
    train_seconds: float         # the variant's training run, wall time
    fvd: float
    fvd_p2_5: float | None
    fvd_p97_5: float | None
    clips: int
    caption_accuracy: float
    colour: float
    shape: float
    direction: float


def make_row(v: Variant, cost: dict, trained: Trained, scores: dict) -> Row:
    return Row(v.name, v.layout, v.sparse_k, cost["params"], cost["attn_gflops"][0], cost["attn_gflops"][-1],
               cost["train_gflops"][-1], cost["step_s"], *cost["step_ratio"], *cost["forward_ratio"],
               trained.stage_seconds, **scores)


def claims(rows: list[Row], variant: str = "sparse_k4") -> list[dict]:
    """The claim for `variant` against `full`: compute cut about 30% (measured: the training step at the
    longest clip; it holds if every round cut at least 20%) for about 5% worse FVD (holds if the FVD
    is not clearly worse: lower, or inside the bootstrap spread; 5% itself is far below that spread)."""
    by = {r.variant: r for r in rows}
    if "full" not in by or variant not in by:
        return []
    full, s = by["full"], by[variant]
    cut = 1 - s.step_ratio
    cut_range = (1 - s.step_ratio_max, 1 - s.step_ratio_min)
    flop_cut = 1 - s.train_gflops_long / full.train_gflops_long
    compute = {"claim": f"{variant}: attention to every k-th frame cuts training compute about 30%",
               "holds": cut_range[0] >= 0.20,
               "evidence": f"training step at the longest clip: {s.step_ratio:.2f} x full's time, a cut of "
                           f"{100 * cut:+.0f}% (range over rounds {100 * cut_range[0]:+.0f}% to {100 * cut_range[1]:+.0f}%); "
                           f"counted FLOPs {-100 * flop_cut:+.0f}% (self-attention {s.attn_gflops_long:.3g} vs "
                           f"{full.attn_gflops_long:.3g} GFLOPs per sample)"}
    change = s.fvd / full.fvd - 1
    worse = s.fvd > full.fvd and not overlap(s, full)
    quality = {"claim": f"{variant}: for about 5% worse FVD", "holds": not worse,
               "evidence": f"FVD {fvd_text(s)} vs full {fvd_text(full)} ({100 * change:+.0f}%"
                           + ("; clearly worse)" if worse else "; inside the spread)" if overlap(s, full) else ")")
                           + f"; caption accuracy {s.caption_accuracy:.3f} vs {full.caption_accuracy:.3f}"}
    return [compute, quality]


def markdown(rows: list[Row], notes: list[str] = ()) -> str:
    lines = ["| variant | layout | parameters | self-attention GFLOPs / sample (short / long clip) | train step "
             "GFLOPs / sample (long) | train step s (long) | step / full [range] | sampling forward / full [range] "
             "| training s | FVD [95% interval] | caption accuracy (colour / shape / direction) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        layout = r.layout + (f" k={r.sparse_k}" if r.sparse_k else "")
        lines.append(f"| {r.variant} | {layout} | {r.params / 1e6:.2f} M | {r.attn_gflops_short:.3g} / "
                     f"{r.attn_gflops_long:.3g} | {r.train_gflops_long:.3g} | {r.step_s:.3f} | {r.step_ratio:.2f} "
                     f"[{r.step_ratio_min:.2f}, {r.step_ratio_max:.2f}] | {r.forward_ratio:.2f} [{r.forward_ratio_min:.2f}, "
                     f"{r.forward_ratio_max:.2f}] | {r.train_seconds:.0f} | {fvd_text(r)} | {r.caption_accuracy:.3f} "
                     f"({r.colour:.2f} / {r.shape:.2f} / {r.direction:.2f}) |")
    lines += [""] + [f"- {n}" for n in notes]
    lines += claims_table(claims(rows))
    return "\n".join(lines) + "\n"


def figure(rows: list[Row]):
    """Left: cost relative to full (counted FLOPs, timed step and sampling forward with ranges).
    Right: FVD with its interval and caption accuracy per variant."""
    import matplotlib.pyplot as plt

    from osplab.ablations.common import interval

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.8))
    full = next(r for r in rows if r.variant == "full")
    y = np.arange(len(rows))
    a.barh(y - 0.27, [r.train_gflops_long / full.train_gflops_long for r in rows], height=0.27, label="counted FLOPs")
    for k, (key, label) in enumerate((("step", "train step time"), ("forward", "sampling forward time"))):
        med = [getattr(r, f"{key}_ratio") for r in rows]
        err = np.array([[m - getattr(r, f"{key}_ratio_min"), getattr(r, f"{key}_ratio_max") - m]
                        for m, r in zip(med, rows)]).T
        a.barh(y + k * 0.27, med, xerr=err, height=0.27, label=label)
    a.axvline(1.0, color="grey", lw=0.8, ls="--"); a.axvline(0.7, color="tab:red", lw=0.8, ls=":", label="claim: -30%")
    a.set_yticks(y, [r.variant for r in rows]); a.invert_yaxis(); a.set_xlabel("relative to full attention")
    a.legend(fontsize=8); a.set_title("cost at the longest trained clip")
    err = np.array([[r.fvd - interval(r)[0], interval(r)[1] - r.fvd] for r in rows]).T
    b.barh(y, [r.fvd for r in rows], xerr=err, color="tab:blue", alpha=0.8)
    b.set_yticks(y, [f"{r.variant}\nacc {r.caption_accuracy:.2f}" for r in rows]); b.invert_yaxis()
    b.set_xlabel("FVD vs real val clips (lower is better)"); b.set_title("quality at the same training budget")
    fig.tight_layout()
    return fig


def write_report(rows: list[Row], out_dir: str | Path, notes: list[str] = (), name: str = NAME) -> dict[str, Path]:
    """<out_dir>/<name>.md, .csv and .png (atomic writes); returns their paths."""
    metrics = summary(rows, lambda r: r.variant, ("params", "train_gflops_long", "step_ratio", "step_ratio_min",
                                                  "step_ratio_max", "forward_ratio", "fvd", "fvd_p2_5", "fvd_p97_5",
                                                  "caption_accuracy"))
    return write_files(out_dir, name, markdown(rows, notes), rows, figure(rows), metrics)
