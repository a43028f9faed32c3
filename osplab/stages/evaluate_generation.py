"""DVC stage `evaluate_generation`: what the generators make, in numbers and in pictures.

    python -m osplab.stages.evaluate_generation [--params params.yaml] [--no-progress]

Inputs: the sample stores of `sample@rf`, `sample@ddpm`, `sample@untrained` (<diffusion.samples>/<variant>),
the cached real I3D features of `eval_real` (the FVD reference set), metrics/eval.json (the VQVAE's
rFVD), the checkpoints. Writes metrics/generation.json:

- `fvd_rf<steps>`, `fvd_ddpm<steps>`, `fvd_untrained`: FVD of each sample set vs the reference set
  (protocol record and spread per FVD under `fvd_detail`); `fvd_floor`: the same for as many real
  test clips (the sampling floor at that clip count); `rfvd_vqvae`: the VQVAE's reconstruction FVD
  (metrics/eval.json, 128 clips). Floor and rFVD bound what a generator decoded by this VQVAE reaches.
- `caption_accuracy` (rf samples; `caption_accuracy_<variant>` for each), `caption_accuracy_real`
  (the same real clips' FVD windows with their own captions), `caption_accuracy_chance` (shuffled
  captions), `caption_accuracy_recon` (VQVAE reconstructions of those windows: the ceiling),
  `caption_accuracy_unquantized` (the same windows decoded from the encoder's latents with the
  quantizer skipped).
- Where the VQVAE loses detail, on those windows: `fvd_recon`, `psnr_recon` (decoded from their codes, as
  every generated clip is) and `fvd_unquantized`, `psnr_unquantized` (the quantizer skipped). The gap
  is what the 8192-code bottleneck costs; what is left under the unquantized numbers is the decoder's.
- `sample_seconds_16f_<steps>steps`: one 16-frame clip from a caption, decode included (median).
- `dit_fraction_of_peak`: a DiT training step (fp32) / the fp32 matmul rate, timed interleaved.
- `caption_use_<rf|ddpm>_<colour|shape|direction|null>`: how much the DiT's loss on val latents
  rises when that caption fact is swapped (or the caption dropped), osplab.diffusion.caption_use; near
  0 means the network ignores the fact, whatever the sampler does (losses per time under
  `caption_use_detail`).
and reports/samples.png: frames of real, RF and DDPM clips under their captions with the verdicts.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from osplab.bench.dit import dit_step_fraction
from osplab.bench.quantization import decode_twice
from osplab.bench.timing import Timing
from osplab.config import load_params
from osplab.data.clips import ClipDataset
from osplab.generate import guidance_interval
from osplab.io import atomic_write_json
from osplab.metrics.generated import fvd_entry, judged
from osplab.metrics.sanity import fvd_window, usable_clips
from osplab.metrics.video import psnr
from osplab.stages.evaluate import real_side
from osplab.stages.sample import VARIANTS, load_variant
from osplab.viz import samples_figure, save_figure


def one_clip_seconds(gen, caption: str, steps: int, cfg_scale: float, repeats: int, snap: bool,
                     precision: str, cfg_interval: tuple[float, float] | None = None) -> float:
    """Median seconds to make one 16-frame 64x64 clip (text encoding, sampling, decoding)."""
    times = []
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        gen.generate([caption], 16, 64, 64, steps, cfg_scale, seed=k, snap=snap, precision=precision,
                     cfg_interval=cfg_interval)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))  # the first call warms up


def mean_psnr(fake: list[np.ndarray], real: list[np.ndarray]) -> float:
    """Mean over clips of the per-clip PSNR (dB, uint8 range); clips may differ in shape."""
    return float(np.mean([float(psnr(f[None], r[None], 255.0)[0]) for f, r in zip(fake, real, strict=True)]))


def judge_real(cfg, ecfg: dict, ids: list[str], captions: list[str], chance_seed: int) -> tuple[dict, list, list, dict]:
    """The judge on the generated clips' real counterparts (their FVD windows): with their own captions
    (the judge's ceiling), with shuffled captions (chance) and through the VQVAE (the decoder's ceiling),
    also with its quantizer skipped (osplab.bench.quantization.decode_twice).
    Returns (scores with PSNRs, real windows, verdict lines of the real clips, {recon, unquantized} clips)."""
    from osplab.stages.encode import load_vqvae

    val = ClipDataset(cfg.data.root, cfg.eval.real_split)
    by_id = {r["id"]: i for i, r in enumerate(val.rows)}
    real = [fvd_window(val[by_id[i]]["video"], ecfg["frames"], ecfg["stride"]) for i in ids]
    out, lines = judged(real, captions, "caption_accuracy_real")
    shuffled = [captions[j] for j in np.random.default_rng(chance_seed).permutation(len(captions))]
    out.update(judged(real, shuffled, "caption_accuracy_chance")[0])
    vqvae = load_vqvae(cfg.vqvae.checkpoint)
    both = [decode_twice(vqvae, w)[0] for w in real]
    decoded = {"recon": [b["codes"] for b in both], "unquantized": [b["continuous"] for b in both]}
    for name, clips in decoded.items():
        out.update(judged(clips, captions, f"caption_accuracy_{name}")[0])
        out[f"psnr_{name}"] = mean_psnr(clips, real)
    return out, real, lines, decoded


def speed(cfg, gen, captions: list[str]) -> dict:
    """One-clip generation time of the RF generator `gen` and the DiT training step as a fraction of the
    fp32 matmul rate."""
    s, b = cfg.diffusion.sample, cfg.diffusion.evaluate.bench
    seconds = one_clip_seconds(gen, captions[0], int(s.rf_steps), float(s.cfg),
                               int(cfg.diffusion.evaluate.timing_repeats), bool(s.snap_to_codebook), str(s.precision),
                               guidance_interval(s))
    bench = dit_step_fraction(gen.dit, gen.latent_shape(16, 64, 64)[1:], int(cfg.train_dit.global_batch),
                              gen.text.encode(captions[:1])[0].shape[1],
                              Timing(int(b.repeats), int(b.warmup), float(b.min_seconds), int(b.max_repeats)),
                              int(b.matmul_n))
    return {f"sample_seconds_16f_{int(s.rf_steps)}steps": seconds,
            "dit_fraction_of_peak": bench.pop("fraction_of_peak"), "dit_step": bench}


def listening(cfg, gen) -> dict:
    """The caption-use probe (osplab.diffusion.caption_use) of the trained generator `gen` (load_variant
    'rf' or 'ddpm') on val latents: how much its DiT's loss rises when a caption fact is swapped."""
    from osplab.diffusion.noise import video_noise
    from osplab.diffusion.caption_use import caption_use
    from osplab.tasks.dit import TextLatents, objective_loss

    d = OmegaConf.create(gen.meta["diffusion"])
    rho = float(d.noise_frame_corr)
    data = TextLatents(cfg.vqvae.latents, cfg.text.cache, "val", norm=gen.norm, expect_kind=gen.latent_kind)

    def loss_fn(batch: dict, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return objective_loss(gen.meta["objective"], d, gen.dit, batch, None, t, noise)

    return caption_use(loss_fn, data, gen.text, int(cfg.diffusion.evaluate.caption_use_clips),
                       cfg.diffusion.val.t_grid, int(cfg.diffusion.val.seed),
                       lambda shape, g: video_noise(shape, rho, g))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="sample sets to score (default: all; rf is required); e.g. before the DDPM "
                             "baseline is trained: --variants rf untrained")
    args = parser.parse_args(argv)
    if "rf" not in args.variants:
        parser.error("--variants must include rf (its captions and timings are the reference)")
    cfg = load_params(args.params)
    progress, started = not args.no_progress, time.perf_counter()
    from osplab.metrics.i3d import load_i3d

    ecfg = OmegaConf.to_container(cfg.eval, resolve=True)
    s = cfg.diffusion.sample
    i3d = load_i3d(ecfg.get("device"))
    _, _, _, feats_real, _ = real_side(cfg, ecfg, i3d, cfg.eval.real_cache, progress, readonly=True)
    every = {"rf": f"rf{int(s.rf_steps)}", "ddpm": f"ddpm{int(s.ddpm_steps)}", "untrained": "untrained"}
    names = {v: every[v] for v in VARIANTS if v in args.variants}
    samples = {v: ClipDataset(f"{cfg.diffusion.samples}/{v}", "sample") for v in names}
    clips = {v: [ds[i]["video"] for i in range(len(ds))] for v, ds in samples.items()}
    captions = samples["rf"].captions()
    out, detail, verdicts = {}, {}, {}
    for v, name in names.items():
        detail[f"fvd_{name}"] = fvd_entry(feats_real, clips[v], ecfg, i3d, f"I3D {v}", progress)
        scores, verdicts[v] = judged(clips[v], samples[v].captions(), f"caption_accuracy_{v}")
        out.update(scores)
    out["caption_accuracy"] = out["caption_accuracy_rf"]
    scores, real, verdicts["real"], decoded = judge_real(cfg, ecfg, [r["id"] for r in samples["rf"].rows], captions,
                                                         int(cfg.diffusion.evaluate.chance_seed))
    out.update(scores)
    for name, windows in decoded.items():
        detail[f"fvd_{name}"] = fvd_entry(feats_real, windows, ecfg, i3d, f"I3D {name}", progress)
    test = ClipDataset(cfg.data.root, "test")
    t_idx, _ = usable_clips(test, ecfg["frames"], ecfg["stride"], len(captions), ecfg["seed"])
    detail["fvd_floor"] = fvd_entry(feats_real, [test[i]["video"] for i in t_idx], ecfg, i3d, "I3D test", progress)
    out.update({k: d["fvd"] for k, d in detail.items()})
    out["rfvd_vqvae"] = json.loads(open("metrics/eval.json").read())["fvd"]
    probes = {}
    for v in ("rf", "ddpm"):
        if v in names:  # one load per generator: the probe, then (rf) the timings
            gen = load_variant(cfg, v)
            probes[v] = listening(cfg, gen)
            out.update({f"caption_use_{v}_{k}": x for k, x in probes[v]["increase"].items()})
            if v == "rf":
                out.update(speed(cfg, gen, captions))
    out.update({"variants": list(names), "fvd_detail": detail, "caption_use_detail": probes, "clips": len(captions),
                "seconds": time.perf_counter() - started})
    k, shown = int(cfg.diffusion.evaluate.figure_clips), [v for v in ("rf", "ddpm") if v in names]
    fig = samples_figure({"real": real[:k], **{names[v]: clips[v][:k] for v in shown}}, captions[:k],
                         {"real": verdicts["real"][:k], **{names[v]: verdicts[v][:k] for v in shown}},
                         title=f"val captions; real 16-frame windows vs generated (CFG {float(s.cfg):g})")
    save_figure(fig, "reports/samples.png")
    atomic_write_json("metrics/generation.json", out)
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}, indent=1))
    return out


if __name__ == "__main__":
    main()
