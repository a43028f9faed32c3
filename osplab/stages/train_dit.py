"""DVC stage `train_dit@<objective>`: train the text-conditioned DiT on the VQVAE latents.

    python -m osplab.stages.train_dit --objective rf       # rectified flow (the kit's generator)
    python -m osplab.stages.train_dit --objective ddpm     # the 1000-step DDPM baseline, same budget
    torchrun --nproc_per_node=N -m osplab.stages.train_dit --objective rf

Reads params.yaml (`dit`, `diffusion`, `train_dit`, `text.cache`, `vqvae.latents`). Trains through
the shared loop in `<train_dit.out_dir>/<objective>` (resumable; a run of other inputs is cleared
first, osplab.train.provenance), logging the training loss and, at every checkpoint, the
validation loss on a fixed t-grid. Exports the EMA weights to `<diffusion.checkpoints>/dit_<objective>.safetensors`
with everything sampling needs and checks in the metadata (`osplab.generate.load_generator`):
model config, objective and diffusion settings, latent normalisation, the text encoder's identity,
the VQVAE checkpoint's sha256, the composed config, git commit and package versions. Writes
`metrics/dit_<objective>.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from osplab.config import load_params, plain
from osplab.data.latents import LatentDataset
from osplab.data.text_cache import read_manifest as read_text_manifest
from osplab.io import atomic_write_json
from osplab.models.dit import DiT, DiTConfig
from osplab.provenance import run_record
from osplab.tasks.dit import OBJECTIVES, build_task, check_diffusion, checkpoint_path
from osplab.train import TrainConfig, cleanup_distributed, init_distributed, read_weights, save_tensors_atomic
from osplab.train import seed_everything, setup_logging, train
from osplab.train.provenance import claim_stage_run, settings_of


# The settings a run depends on: the `params` of the train_dit stages in dvc.yaml (tests/test_pipeline.py
# checks that they agree), so that, say, a new sampling setting does not throw a persisted run away.
RUN_SETTINGS = ("seed", "dit", "diffusion.latent_max_channel_std", "diffusion.noise_frame_corr", "diffusion.curriculum",
                "diffusion.rf", "diffusion.ddpm", "diffusion.val", "train_dit", "text")


def export(model: DiT, task, cfg, objective: str, train_cfg: TrainConfig) -> dict:
    """EMA weights + metadata (JSON strings) to <diffusion.checkpoints>/dit_<objective>.safetensors."""
    latents = LatentDataset(cfg.vqvae.latents, "val")
    meta = {
        "format": "osplab-dit/1",
        "objective": objective,
        "dit": json.dumps(plain(cfg.dit)),
        "model_config": json.dumps({**vars(model.cfg), "patch": list(model.cfg.patch)}),
        "diffusion": json.dumps(plain(cfg.diffusion)),
        "latent_norm": json.dumps(task.dataset.norm.to_dict()),
        "text_encoder": json.dumps(read_text_manifest(cfg.text.cache)["encoder"]),
        "vqvae_sha256": latents.manifest["source"]["vqvae_sha256"],
        "train_shapes": json.dumps(sorted({tuple(s) for s in task.dataset.shapes()})),
        "config": json.dumps(plain(cfg)),
        "record": json.dumps(run_record()),
    }
    path = checkpoint_path(cfg, objective)
    save_tensors_atomic(read_weights(train_cfg.checkpoint_dir, "ema"), path, metadata=meta)
    return meta


def main(argv: list[str] | None = None) -> dict:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", required=True, choices=OBJECTIVES)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    env = init_distributed()
    setup_logging(env)
    values = plain(cfg.train_dit)
    values["out_dir"] = str(Path(values["out_dir"]) / args.objective)
    train_cfg = TrainConfig.from_dict(values, prefix="train_dit")
    check_diffusion(cfg.diffusion)
    settings = {**settings_of(cfg, RUN_SETTINGS), "objective": args.objective}
    inputs = [Path(cfg.vqvae.latents) / "manifest.json", Path(cfg.text.cache) / "manifest.json"]
    claim_stage_run(train_cfg.out_dir, settings, inputs, env.is_main)
    seed_everything(train_cfg.seed)  # the same initial weights on every rank
    model = DiT(DiTConfig.from_dict(plain(cfg.dit)))
    task = build_task(model, args.objective, cfg)
    final = train(train_cfg, task)
    metrics = {}
    if env.is_main:
        export(model, task, cfg, args.objective, train_cfg)
        n_params = sum(p.numel() for p in model.parameters())
        metrics = {"objective": args.objective, "steps": train_cfg.steps, "global_batch": train_cfg.global_batch,
                   "params": n_params, "stage_seconds": time.perf_counter() - started,
                   **{k.replace("/", "_"): v for k, v in final.items() if k != "step"}}
        atomic_write_json(f"metrics/dit_{args.objective}.json", metrics)
        print(json.dumps(metrics, indent=1))
    cleanup_distributed()
    return metrics


if __name__ == "__main__":
    main()
