"""DVC stage `evaluate`: reconstruction FVD (rFVD), PSNR, SSIM and flicker of the VQVAE on real clips.

    python -m osplab.stages.evaluate [--params params.yaml] [--out metrics/eval.json]
        [--real-cache data/eval/real_val_i3d.npz] [--real-only] [--no-progress]

Reads params.yaml: `eval` (the FVD protocol and SSIM settings, conf/eval/default.yaml), `data.root`
and `vqvae.checkpoint`. Steps:

1. Clips: the `eval.real_split` clips long enough for the FVD window (`eval.frames` frames at
   `eval.stride`); at most `eval.num_clips` of them, a seeded (`eval.seed`) random subset. Shorter
   clips are counted (`skipped_real`), never silently dropped. Unlike `compute_fvd` on a folder,
   the subset is drawn among usable clips, so `num_clips` clips are scored whenever that many exist.
2. Real side: I3D features of the clips' FVD windows, cached in `--real-cache` with the protocol
   and a sha256 of the exact input pixels; a cache made from other clips or another protocol is
   recomputed (and says so). `--real-only` just builds the cache (the DVC stage `eval_real`).
3. Fake side: every chosen clip is encoded and decoded whole by the VQVAE; the FVD window of the
   reconstruction goes through I3D. rFVD = FVD(real windows, reconstructed windows).
4. PSNR, SSIM (osplab.metrics.video) on the whole clip pairs, averaged over all frames; flicker
   ratio = total frame-to-frame change of the reconstructions / that of the originals (a ratio of
   sums, so nearly static clips cannot dominate it).

Writes `--out` (metrics/eval.json): fvd, fvd_bootstrap_std and fvd_bootstrap_p2_5/p97_5 (the spread by
half-sampling and a 95% interval at this clip count that contains fvd; osplab.metrics.fvd step 5),
fvd_debiased (extrapolated to infinitely many clips, with its interval), psnr, ssim,
flicker_ratio, codebook usage, the protocol record, the checkpoint's sha256 and timings.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from osplab.config import load_params, run_with_config_errors
from osplab.data.clips import ClipDataset
from osplab.io import atomic_write_json, sha256_file
from osplab.metrics.fvd import load_features, save_features
from osplab.metrics.sanity import clip_features, fvd_result, fvd_window, usable_clips
from osplab.metrics.settings import REAL_SIDE, check_eval_settings
from osplab.metrics.video import psnr, ssim, temporal_flicker


def pixels_sha256(ids: list[str], clips: list[np.ndarray]) -> str:
    """sha256 over clip ids, shapes and bytes: identifies exactly what went into I3D."""
    h = hashlib.sha256()
    for i, c in zip(ids, clips):
        h.update(f"{i}:{c.shape}".encode())
        h.update(np.ascontiguousarray(c).tobytes())
    return h.hexdigest()


def real_features(windows: list[np.ndarray], ids: list[str], model, ecfg: dict, cache: str | None,
                  progress: bool, readonly: bool = False) -> tuple[np.ndarray, bool]:
    """I3D features (N, 400) of the real FVD windows, from/to `cache` -> (features, came from cache).

    readonly: never write the cache (another stage owns it); a missing or stale one is an error."""
    meta = {k: ecfg[k] for k in ("frames", "stride", "resolution", "resize", "num_clips", "seed", "real_split")}
    meta.update(weights_sha256=model.weights_sha256, n=len(windows), pixels_sha256=pixels_sha256(ids, windows))
    if cache and Path(cache).is_file():
        feats, old = load_features(cache, {})
        stale = sorted(k for k, v in meta.items() if old.get(k) != v)
        if not stale:
            return feats, True
        if readonly:
            raise ValueError(f"{cache}: made from other clips or another protocol (differs in {stale}); "
                             "re-run the stage that writes it (dvc repro eval_real)")
        print(f"{cache}: made from other clips or another protocol (differs in {stale}); recomputing")
    elif readonly:
        raise FileNotFoundError(f"{cache}: no cached real features; run `dvc repro eval_real` first")
    feats = clip_features(windows, model, ecfg, "I3D real", progress)
    if cache:
        save_features(cache, feats, meta)
    return feats, False


class _Subset:
    """The items `indices` of a ClipDataset, in that order (what `reconstruct` iterates over)."""

    def __init__(self, ds: ClipDataset, indices: list[int]):
        self.ds, self.indices = ds, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.ds[self.indices[i]]


def quality(real: list[np.ndarray], fake: list[np.ndarray], ssim_cfg: dict) -> dict[str, float]:
    """PSNR (dB) and SSIM averaged over all frames, and the flicker ratio (ratio of sums), of clip pairs."""
    frames, p, s, fr, ff = 0, 0.0, 0.0, 0.0, 0.0
    for r, f in zip(real, fake):  # clips differ in shape: one at a time
        t = len(r)
        p += psnr(f[None], r[None], 255.0).item() * t
        s += ssim(f[None], r[None], 255.0, **ssim_cfg).item() * t
        fr += temporal_flicker(r[None], 255.0).item() * (t - 1)
        ff += temporal_flicker(f[None], 255.0).item() * (t - 1)
        frames += t
    if fr == 0:
        raise ValueError("the real clips have no frame-to-frame change: the flicker ratio is undefined")
    return {"psnr": p / frames, "ssim": s / frames, "flicker_ratio": ff / fr}


def real_side(cfg, ecfg: dict, i3d, real_cache: str | None, progress: bool, readonly: bool = False):
    """Steps 1-2 -> (dataset, chosen indices, number of short clips, real features (N, 400), from cache).

    Also used by notebooks/fvd_sanity.ipynb, whose reference set is these cached val features."""
    ds = ClipDataset(cfg.data.root, ecfg["real_split"])
    indices, n_short = usable_clips(ds, ecfg["frames"], ecfg["stride"], ecfg["num_clips"], ecfg["seed"])
    windows = [fvd_window(ds[i]["video"], ecfg["frames"], ecfg["stride"]) for i in indices]
    feats, cached = real_features(windows, [ds.rows[i]["id"] for i in indices], i3d, ecfg, real_cache, progress,
                                  readonly)
    return ds, indices, n_short, feats, cached


def evaluate(cfg, real_cache: str | None, progress: bool = True, i3d=None, vqvae=None) -> dict:
    """Steps 1-4 of the module doc -> the metrics of metrics/eval.json, plus "summary" (printable text).

    cfg: the composed params; i3d / vqvae: preloaded models (default: load_i3d() and vqvae.checkpoint).
    """
    from osplab.metrics.i3d import load_i3d
    from osplab.models.quantizer import codebook_stats
    from osplab.stages.encode import load_vqvae
    from osplab.tasks.vqvae import reconstruct

    ecfg, sec, t0 = OmegaConf.to_container(cfg.eval, resolve=True), {}, time.perf_counter()
    check_eval_settings(ecfg)
    i3d = i3d or load_i3d(ecfg.get("device"))
    ds, indices, n_short, feats_r, cached = real_side(cfg, ecfg, i3d, real_cache, progress)
    sec["real_i3d"] = time.perf_counter() - t0

    t = time.perf_counter()
    source = "in-memory model" if vqvae is not None else str(cfg.vqvae.checkpoint)
    vqvae = vqvae or load_vqvae(cfg.vqvae.checkpoint)
    real, fake, counts, fps = reconstruct(vqvae, _Subset(ds, indices))  # whole clips, one at a time
    sec["reconstruct"] = time.perf_counter() - t
    t = time.perf_counter()
    windows = [fvd_window(v, ecfg["frames"], ecfg["stride"]) for v in fake]
    feats_f = clip_features(windows, i3d, ecfg, "I3D recon", progress)
    sec["fake_i3d"] = time.perf_counter() - t
    t = time.perf_counter()
    result = fvd_result(feats_r, feats_f, ecfg, i3d.weights_sha256, skipped_real=n_short, progress=progress)
    sec["fvd_stats"] = time.perf_counter() - t
    t = time.perf_counter()
    q = quality(real, fake, ecfg["ssim"])
    sec["video_metrics"] = time.perf_counter() - t
    sec["total"] = time.perf_counter() - t0
    usage = codebook_stats(counts)
    return {"fvd": result.fvd, "fvd_bootstrap_std": result.bootstrap_std,
            "fvd_bootstrap_p2_5": result.bootstrap_p2_5, "fvd_bootstrap_p97_5": result.bootstrap_p97_5,
            "fvd_debiased": result.fvd_debiased, "fvd_debiased_p2_5": result.fvd_debiased_p2_5,
            "fvd_debiased_p97_5": result.fvd_debiased_p97_5,
            **q, "fvd_kind": "rFVD: real clips vs their VQVAE reconstructions", "clips": len(indices),
            "codebook_usage": usage["usage"], "perplexity": usage["perplexity"], "recon_frames_per_s": fps,
            "real_features_from_cache": cached, "sqrtm_method": result.sqrtm_method,
            "skipped_real": result.skipped_real, "skipped_fake": result.skipped_fake,
            "protocol": dataclasses.asdict(result.protocol), "summary": result.summary(),
            "vqvae_checkpoint": source,
            "vqvae_sha256": None if source == "in-memory model" else sha256_file(source),
            "seconds": sec}


def build_real_cache(cfg, real_cache: str, progress: bool = True, i3d=None) -> dict:
    """Step 2 alone (`--real-only`): make sure `real_cache` holds the real features -> small summary."""
    from osplab.metrics.i3d import load_i3d

    ecfg, t0 = OmegaConf.to_container(cfg.eval, resolve=True), time.perf_counter()
    check_eval_settings(ecfg, required=REAL_SIDE)
    _, _, n_short, feats, cached = real_side(cfg, ecfg, i3d or load_i3d(ecfg.get("device")), real_cache, progress)
    return {"clips": len(feats), "skipped_real": n_short, "from_cache": cached, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="metrics/eval.json")
    parser.add_argument("--real-cache", default="data/eval/real_val_i3d.npz",
                        help="real-side I3D features (.npz); '' = no cache")
    parser.add_argument("--real-only", action="store_true", help="only build the real-side cache")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    if args.real_only:
        if not args.real_cache:
            parser.error("--real-only needs --real-cache PATH")
        out = build_real_cache(cfg, args.real_cache, not args.no_progress)
        print(json.dumps(out, indent=1))
        return out
    metrics = evaluate(cfg, args.real_cache or None, not args.no_progress)
    summary = metrics.pop("summary")  # multi-line text: printed, kept out of the table `dvc metrics show` draws
    atomic_write_json(args.out, metrics)
    print(summary)
    print(f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, flicker ratio {metrics['flicker_ratio']:.3f} "
          f"over {metrics['clips']} clips; {metrics['seconds']['total']:.0f} s -> {args.out}")
    return metrics


if __name__ == "__main__":
    sys.exit(run_with_config_errors(main))  # a missing/bad setting: one `error:` line
