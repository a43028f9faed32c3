"""DVC stage `sample@<variant>`: generate clips for val captions with a trained DiT.

    python -m osplab.stages.sample --variant rf          # checkpoints/dit_rf.safetensors, RF Euler
    python -m osplab.stages.sample --variant ddpm        # checkpoints/dit_ddpm.safetensors, DDPM 1000 steps
    python -m osplab.stages.sample --variant untrained   # the RF DiT's architecture at initialisation

Which clips: the FVD reference set of the evaluation (the `eval.real_split` clips long enough for
the FVD window, the seeded subset of `eval.num_clips`, osplab.stages.evaluate), of which the first
`diffusion.sample.clips`; each generated clip has its real clip's caption and size and
`eval.frames x eval.stride` frames, so the generated set has the reference set's distribution of
content and shapes. Steps, sampler and guidance come from `diffusion.sample`.

Writes a clip store (osplab/data/store.py, split `sample`) at `<diffusion.samples>/<variant>` (uint8 clips,
captions, ids of the real clips), mp4 and gif previews of the first `diffusion.sample.previews`
clips in `<diffusion.samples>/<variant>/previews/`, and `metrics/sample_<variant>.json` (seconds, clips/s).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from omegaconf import OmegaConf

from osplab.config import load_params
from osplab.data.clips import ClipDataset
from osplab.data.store import write_store
from osplab.generate import Generator, guidance_interval, load_generator
from osplab.io import atomic_write_json
from osplab.media import write_gif, write_mp4
from osplab.metrics.sanity import usable_clips, window_length
from osplab.models.dit import DiT
from osplab.tasks.dit import checkpoint_path
from osplab.train import seed_everything

VARIANTS = ("rf", "ddpm", "untrained")


def reference_clips(cfg, count: int) -> tuple[ClipDataset, list[int]]:
    """The first `count` clips of the FVD reference set (same selection as osplab.stages.evaluate)."""
    e = cfg.eval
    ds = ClipDataset(cfg.data.root, e.real_split)
    indices, _ = usable_clips(ds, int(e.frames), int(e.stride), e.num_clips, int(e.seed))
    return ds, indices[:count]


def load_variant(cfg, variant: str) -> Generator:
    """The generator of a variant; `untrained` = the rf DiT re-initialised with the run's seed."""
    gen = load_generator(checkpoint_path(cfg, "ddpm" if variant == "ddpm" else "rf"), cfg.vqvae.checkpoint, cfg.text)
    if variant == "untrained":  # exactly the weights train_dit starts from
        seed_everything(int(cfg.train_dit.seed))
        gen.dit = DiT(gen.dit.cfg).eval()
    return gen


def generate_set(gen: Generator, cfg, ds: ClipDataset, indices: list[int], progress: bool,
                 steps: int | None = None, sampler: str | None = None, frames: int | None = None):
    """Yield (split, uint8 clip, meta) for the chosen real clips, batching clips of one shape.
    Steps and sampler: the objective's from `diffusion.sample` unless given (the sampling-steps ablation);
    frames: the FVD window's length unless given (the length ablation)."""
    s = cfg.diffusion.sample
    frames = frames or window_length(int(cfg.eval.frames), int(cfg.eval.stride))
    rf = gen.meta["objective"] == "rf"
    default_steps, default_sampler = (int(s.rf_steps), s.rf_sampler) if rf else (int(s.ddpm_steps), s.ddpm_sampler)
    steps, sampler = steps or default_steps, sampler or default_sampler
    by_shape: dict[tuple, list[int]] = {}
    for i in indices:
        by_shape.setdefault(ds.shape_of(i)[1:], []).append(i)
    batch_no = 0
    for (h, w), members in sorted(by_shape.items()):
        for start in range(0, len(members), int(s.batch)):
            chunk = members[start:start + int(s.batch)]
            rows = [ds.rows[i] for i in chunk]
            videos = gen.generate([r["caption"] for r in rows], frames, h, w, steps, float(s.cfg),
                                  int(s.seed) + batch_no, sampler=sampler, snap=bool(s.snap_to_codebook),
                                  progress=progress, precision=str(s.precision),
                                  frame_lag=float(s.frame_lag) if rf else 0.0,
                                  cfg_interval=guidance_interval(s))
            batch_no += 1
            for r, video in zip(rows, videos):
                yield "sample", video, {"id": r["id"], "caption": r["caption"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    torch.set_num_threads(int(cfg.train_dit.num_threads) or torch.get_num_threads())
    started = time.perf_counter()
    gen = load_variant(cfg, args.variant)
    ds, indices = reference_clips(cfg, int(cfg.diffusion.sample.clips))
    out = f"{cfg.diffusion.samples}/{args.variant}"
    clips = list(generate_set(gen, cfg, ds, indices, not args.no_progress))
    seconds = time.perf_counter() - started
    source = {"variant": args.variant, "objective": gen.meta["objective"], "real_split": str(cfg.eval.real_split),
              "sample": OmegaConf.to_container(cfg.diffusion.sample, resolve=True),
              "vqvae_sha256": gen.meta["vqvae_sha256"]}
    write_store(out, clips, int(cfg.data.shard_size), source)
    for k, (_, video, meta) in enumerate(clips[: int(cfg.diffusion.sample.previews)]):
        write_mp4(f"{out}/previews/{k}.mp4", video, fps=8, upscale=4)
        write_gif(f"{out}/previews/{k}.gif", video, fps=8, upscale=2)
    metrics = {"variant": args.variant, "clips": len(clips), "seconds": seconds, "clips_per_s": len(clips) / seconds}
    atomic_write_json(f"metrics/sample_{args.variant}.json", metrics)
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
