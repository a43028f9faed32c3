"""DVC stage `train_vqvae`: train the video VQVAE, export its weights, evaluate on the val clips.

    python -m osplab.stages.train_vqvae                        # one process
    torchrun --nproc_per_node=N -m osplab.stages.train_vqvae   # DDP (what dvc.yaml runs)
    python -m osplab.stages.train_vqvae [--multirun] [hydra/launcher=slurm] OVERRIDES...   # Hydra

Reads params.yaml (`vqvae`, `train_vqvae`, `eval.ssim`, `data.root`); given Hydra overrides or
--multirun it composes conf/ instead and writes the metrics and preview into the Hydra job's output
folder (the weights still go to `vqvae.checkpoint`, the run to `train_vqvae.out_dir`: give each job
of a sweep its own, e.g. `train_vqvae.out_dir=runs/sweep/${hydra:job.num}`). Before training, the model is
initialised from a seeded subset of training crops (`vqvae.init_clips`: PCA stem for arch=patch,
k-means codebook; its numbers are saved as init_* metrics and in `<out_dir>/init.json`). Writes the weights to
`vqvae.checkpoint` (safetensors, with the model config in its metadata), metrics/vqvae.json
(val_psnr, val_ssim, codebook_usage, perplexity, stage_seconds, frames_per_s, ...) and
reports/vqvae_recon.png. Re-running the command (or `dvc repro`: the run folder is a persisted
output) resumes from the newest checkpoint in `train_vqvae.out_dir` if that folder is a run of the
same settings, data and code (`osplab.train.provenance`), skipping the data initialisation;
otherwise the stale checkpoints are cleared and training starts afresh.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from osplab.config import load_params, plain, run_hydra, run_with_config_errors, wants_hydra
from osplab.data.clips import ClipDataset
from osplab.io import atomic_write_json
from osplab.train.checkpoint import latest_checkpoint
from osplab.train.provenance import claim_stage_run, settings_of
from osplab.models.vqvae import VQVAE, VQVAEConfig
from osplab.tasks.vqvae import build_task, evaluate, init_batches, reconstruct
from osplab.train import TrainConfig, cleanup_distributed, init_distributed, read_weights, save_tensors_atomic
from osplab.train import seed_everything, setup_logging, train
from osplab.viz import reconstruction_figure, save_figure


def export_and_evaluate(model: VQVAE, cfg, train_cfg: TrainConfig, args, started: float, train_metrics: dict,
                        init: dict) -> dict:
    """Rank 0: load the final live weights, save them, score the val split, draw reconstructions."""
    weights = read_weights(train_cfg.checkpoint_dir, "model")
    model.load_state_dict(weights)
    save_tensors_atomic(weights, cfg.vqvae.checkpoint, metadata={"config": json.dumps(plain(cfg.vqvae.model))})
    val = ClipDataset(cfg.data.root, "val")
    metrics = evaluate(model, val, plain(cfg.eval.ssim), limit=cfg.vqvae.eval_clips)
    real, fake, _, _ = reconstruct(model, val, limit=3)
    fig = reconstruction_figure(real, fake, block=model.cfg.downsample[0],
                                title=f"VQVAE reconstructions (val): PSNR {metrics['val_psnr']:.1f} dB, "
                                      f"flicker ratio {metrics['val_flicker_ratio']:.2f} (real clips: 1)")
    save_figure(fig, args.recon)
    metrics.update({"train_steps": train_cfg.steps, "train_loss": train_metrics.get("train/loss"),
                    "resumed_from_step": train_metrics.get("resumed_from_step"),
                    "train_seconds": train_metrics.get("train_seconds"),
                    **{f"init_{k}": v for k, v in init.items()}, "stage_seconds": time.perf_counter() - started})
    atomic_write_json(args.metrics, metrics)
    return metrics


def initialise(model: VQVAE, crops, cfg, train_cfg: TrainConfig) -> dict:
    """Data-dependent initialisation (PCA stem, k-means codebook; see VQVAE.init_from_data), timed.

    A resumed run skips it (the checkpoint holds the initialised, trained weights) and reads the
    statistics the first attempt saved in `<out_dir>/init.json`.
    """
    saved = Path(train_cfg.out_dir) / "init.json"
    if latest_checkpoint(train_cfg.checkpoint_dir) is not None and saved.is_file():
        print(f"VQVAE data init: skipped (resuming; statistics from {saved})", flush=True)
        return json.loads(saved.read_text())
    start = time.perf_counter()
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    stats = model.init_from_data(init_batches(crops, cfg.vqvae.init_clips, cfg.seed), cfg.vqvae.kmeans_iters,
                                 cfg.seed)
    stats["seconds"] = time.perf_counter() - start
    print("VQVAE data init: " + ", ".join(f"{k} {v:.4g}" for k, v in stats.items()), flush=True)
    if init_distributed().is_main:
        atomic_write_json(saved, stats)
    return stats


# The settings a run depends on: the `params` of the train_vqvae stage in dvc.yaml (tests/test_pipeline.py
# checks that they agree), so a change elsewhere (say, eval.num_clips) does not throw a persisted run away.
RUN_SETTINGS = ("seed", "data.root", "vqvae", "train_vqvae", "eval.ssim")


def claim_run(cfg, train_cfg: TrainConfig) -> None:
    """Keep `out_dir` only if it is a run of these settings, this data and this code."""
    settings = settings_of(cfg, RUN_SETTINGS)
    claim_stage_run(train_cfg.out_dir, settings, [Path(cfg.data.root) / "manifest.json"], init_distributed().is_main)


def main(argv: list[str] | None = None) -> dict:
    """The DVC path (params.yaml) or, given Hydra arguments, the Hydra app (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_hydra(argv):
        run_hydra(hydra_task, argv)
        return {}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", default="metrics/vqvae.json")
    parser.add_argument("--recon", default="reports/vqvae_recon.png")
    args = parser.parse_args(argv)
    return run(load_params(args.params), args)


def hydra_task(cfg) -> dict:
    """One Hydra job (possibly on a launcher's worker): outputs beside the job's .hydra/ record."""
    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    return run(cfg, argparse.Namespace(metrics=out / "vqvae.json", recon=out / "vqvae_recon.png"))


def run(cfg, args) -> dict:
    """Train, export and evaluate with the composed settings `cfg`; `args.metrics`/`args.recon`: outputs."""
    started = time.perf_counter()
    env = init_distributed()
    setup_logging(env)
    train_cfg = TrainConfig.from_dict(plain(cfg.train_vqvae), prefix="train_vqvae")
    claim_run(cfg, train_cfg)
    seed_everything(train_cfg.seed)  # the same initial weights on every rank
    model = VQVAE(VQVAEConfig.from_dict(plain(cfg.vqvae.model)))
    task = build_task(model, cfg.data.root, cfg.vqvae.train_frames, cfg.seed)
    init = initialise(model, task.dataset, cfg, train_cfg)  # a resumed run then loads its checkpoint over it
    train_metrics = train(train_cfg, task)
    metrics = {}
    if env.is_main:
        metrics = export_and_evaluate(model, cfg, train_cfg, args, started, train_metrics, init)
        print(json.dumps(metrics, indent=1))
    cleanup_distributed()
    return metrics


if __name__ == "__main__":
    sys.exit(run_with_config_errors(main))
