"""Ablation: codebook size and code dimension of the VQVAE (notebooks/ablation_codebook.ipynb).

The question (Open-Sora-Plan's VQVAE and its VideoGPT ancestor use 8192 or more codes): how much do
more codes or wider codes buy in reconstruction? Each variant of `ablation_codebook.variants` is the
VQVAE of `conf/vqvae` with only `codebook_size` and/or `embed_dim` changed, initialised from the same
data (PCA stem, k-means codebook) and trained from the same seed on the same crops for
`ablation_codebook.steps` steps (a matched budget, smaller than `train_vqvae`'s), then scored like the
`evaluate` stage on the val clips: PSNR, flicker ratio, codebook usage and perplexity, and rFVD with
its 95% bootstrap interval against the cached real features.

    variants = variants_from(cfg.ablation_codebook.variants)
    rows = [run_variant(cfg, v, steps, out_root, real_cache, i3d) for v in variants]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osplab.ablations.common import claims_table, fvd_text, overlap, summary, write_files

NAME = "ablation_codebook"


@dataclass(frozen=True)
class Variant:
    name: str
    codebook_size: int
    embed_dim: int

    def __post_init__(self):
        if self.codebook_size < 2 or self.embed_dim < 1:
            raise ValueError(f"variant {self.name!r}: codebook_size >= 2 and embed_dim >= 1 needed, "
                             f"got {self.codebook_size}, {self.embed_dim}")


def variants_from(conf) -> list[Variant]:
    """[{name, codebook_size, embed_dim}, ...] (conf: ablation_codebook.variants) -> Variants."""
    out = [Variant(str(v["name"]), int(v["codebook_size"]), int(v["embed_dim"])) for v in conf]
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    return out


def variant_config(cfg, v: Variant, steps: int, out_root: str | Path):
    """A copy of the composed config with the codebook changed and the training run moved and shortened."""
    from omegaconf import OmegaConf

    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    c.vqvae.model.codebook_size = v.codebook_size
    c.vqvae.model.embed_dim = v.embed_dim
    c.train_vqvae.steps = int(steps)
    c.train_vqvae.out_dir = str(Path(out_root) / v.name)
    return c


@dataclass
class Row:
    variant: str
    codebook_size: int
    embed_dim: int
    params: int
    psnr: float
    flicker_ratio: float
    codebook_usage: float       # fraction of codes used on the val clips
    perplexity: float           # exp(entropy) of the code histogram on the val clips
    fvd: float                  # rFVD: real val clips vs their reconstructions
    fvd_p2_5: float | None
    fvd_p97_5: float | None
    clips: int
    train_seconds: float


def run_variant(cfg, v: Variant, steps: int, out_root: str | Path, real_cache: str | None, i3d) -> Row:
    """Train variant `v` (resumable run in <out_root>/<name>) and score it like the `evaluate` stage."""
    from osplab.config import plain
    from osplab.models.vqvae import VQVAE, VQVAEConfig
    from osplab.stages.evaluate import evaluate
    from osplab.stages.train_vqvae import claim_run, initialise
    from osplab.tasks.vqvae import build_task
    from osplab.train import TrainConfig, read_weights, seed_everything, train

    vc = variant_config(cfg, v, steps, out_root)
    tcfg = TrainConfig.from_dict(plain(vc.train_vqvae), prefix="train_vqvae")
    claim_run(vc, tcfg)
    started = time.perf_counter()
    seed_everything(tcfg.seed)
    model = VQVAE(VQVAEConfig.from_dict(plain(vc.vqvae.model)))
    task = build_task(model, vc.data.root, vc.vqvae.train_frames, vc.seed)
    initialise(model, task.dataset, vc, tcfg)
    train(tcfg, task)
    model.load_state_dict(read_weights(tcfg.checkpoint_dir, "model"))
    seconds = time.perf_counter() - started
    m = evaluate(vc, real_cache, progress=False, i3d=i3d, vqvae=model.eval())
    return Row(v.name, v.codebook_size, v.embed_dim, sum(p.numel() for p in model.parameters()), m["psnr"],
               m["flicker_ratio"], m["codebook_usage"], m["perplexity"], m["fvd"], m["fvd_bootstrap_p2_5"],
               m["fvd_bootstrap_p97_5"], m["clips"], seconds)


def claims(rows: list[Row], reference: str) -> list[dict]:
    """Against the default codebook (`reference`, a variant name): does a larger codebook reconstruct better (PSNR up by
    0.5 dB or more and rFVD not worse), and does a smaller one lose (PSNR down 0.5 dB or more, or rFVD
    clearly worse)? Empty if the reference or the size variants are missing."""
    by = {r.variant: r for r in rows}
    ref = by.get(reference)
    if ref is None:
        return []
    out = []
    same_dim = [r for r in rows if r.embed_dim == ref.embed_dim and r is not ref]
    for r in sorted(same_dim, key=lambda r: r.codebook_size):
        d_psnr = r.psnr - ref.psnr
        clearly = r.fvd > ref.fvd and not overlap(r, ref)
        ev = (f"{r.codebook_size} codes: PSNR {r.psnr:.2f} dB ({d_psnr:+.2f}), rFVD {fvd_text(r)}, usage "
              f"{100 * r.codebook_usage:.0f}% vs {ref.codebook_size}: {ref.psnr:.2f} dB, rFVD {fvd_text(ref)}, usage "
              f"{100 * ref.codebook_usage:.0f}%")
        if r.codebook_size > ref.codebook_size:
            better = d_psnr >= 0.5 and (r.fvd <= ref.fvd or overlap(r, ref))
            out.append({"claim": f"{r.codebook_size} codes reconstruct better than {ref.codebook_size}",
                        "holds": better, "evidence": ev})
        else:
            worse = d_psnr <= -0.5 or clearly
            out.append({"claim": f"{r.codebook_size} codes reconstruct worse than {ref.codebook_size}",
                        "holds": worse, "evidence": ev})
    return out


def markdown(rows: list[Row], reference: str, notes: list[str] = ()) -> str:
    lines = ["| variant | codes | code dim | parameters | PSNR dB | flicker | usage | perplexity | rFVD [95% interval] "
             "| training s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.variant} | {r.codebook_size} | {r.embed_dim} | {r.params / 1e6:.2f} M | {r.psnr:.2f} | "
                     f"{r.flicker_ratio:.2f} | {100 * r.codebook_usage:.1f}% | {r.perplexity:.0f} | {fvd_text(r)} | "
                     f"{r.train_seconds:.0f} |")
    lines += [""] + [f"- {n}" for n in notes]
    lines += claims_table(claims(rows, reference))
    return "\n".join(lines) + "\n"


def figure(rows: list[Row]):
    """PSNR, usage and rFVD (with intervals) per variant."""
    import matplotlib.pyplot as plt

    from osplab.ablations.common import interval

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    names = [f"{r.variant}" for r in rows]
    y = np.arange(len(rows))
    axes[0].barh(y, [r.psnr for r in rows], color="tab:green")
    axes[0].set_xlim(min(r.psnr for r in rows) - 2, max(r.psnr for r in rows) + 1)
    axes[0].set_xlabel("val PSNR dB (higher is better)")
    axes[1].barh(y, [100 * r.codebook_usage for r in rows], color="tab:purple")
    axes[1].set_xlabel("codebook usage % (val)")
    err = np.array([[r.fvd - interval(r)[0], interval(r)[1] - r.fvd] for r in rows]).T
    axes[2].barh(y, [r.fvd for r in rows], xerr=err, color="tab:blue")
    axes[2].set_xlabel("rFVD, 95% interval (lower is better)")
    for ax in axes:
        ax.set_yticks(y, names); ax.invert_yaxis(); ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def write_report(rows: list[Row], reference: str, out_dir: str | Path, notes: list[str] = (),
                 name: str = NAME) -> dict[str, Path]:
    """<out_dir>/<name>.md, .csv and .png (atomic writes); returns their paths."""
    metrics = summary(rows, lambda r: r.variant, ("psnr", "flicker_ratio", "codebook_usage", "perplexity", "fvd",
                                                  "fvd_p2_5", "fvd_p97_5"))
    return write_files(out_dir, name, markdown(rows, reference, notes), rows, figure(rows), metrics)
