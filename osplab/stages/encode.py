"""DVC stage `encode`: the VQVAE latents of every clip of every split (the DiT's training data).

    python -m osplab.stages.encode [--params params.yaml] [--out data/latents]

Loads the weights at `vqvae.checkpoint`, encodes each whole clip, and writes a latent store
(osplab/data/latents.py) atomically. Clips of one shape are encoded in batches of `vqvae.encode_batch`.
`vqvae.latent_kind` picks what is stored: `codes` (the default: code indices, so the DiT diffuses
`codebook[indices]`) or `continuous` (the encoder's outputs before the quantizer, 32x larger on disk).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from osplab import checks
from osplab.config import load_params, run_with_config_errors
from osplab.data.clips import ClipDataset
from osplab.data.latents import KINDS, write_latents
from osplab.data.store import read_manifest
from osplab.io import sha256_file
from osplab.models.vqvae import VQVAE, VQVAEConfig, video_to_tensor


def load_vqvae(path: str) -> VQVAE:
    """A VQVAE in eval mode from a safetensors file written by train_vqvae (config in its metadata)."""
    from safetensors import safe_open

    from osplab.train import load_tensors

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} has no model config in its metadata; was it written by train_vqvae?")
    model = VQVAE(VQVAEConfig.from_dict(json.loads(meta["config"])))
    model.load_state_dict(load_tensors(path))
    return model.eval()


def encode_split(model: VQVAE, clips: ClipDataset, batch: int, progress: bool, kind: str = "codes"):
    """Yield (split, latents, meta) for every clip, batching clips of one shape: latents are code indices
    int (t, h, w) for kind "codes", the continuous latents float (t, h, w, D) for kind "continuous"."""
    by_shape: dict[tuple, list[int]] = {}
    for i, shape in enumerate(clips.shapes()):
        by_shape.setdefault(shape, []).append(i)
    bar = tqdm(total=len(clips), desc=f"encode {clips.split}", unit="clip", disable=not progress)
    for shape in sorted(by_shape):
        members = by_shape[shape]
        for start in range(0, len(members), batch):
            chunk = members[start:start + batch]
            x = video_to_tensor(np.stack([clips[i]["video"] for i in chunk]))
            with torch.no_grad():
                if kind == "codes":
                    latents = model.encode(x)[1].numpy()                          # (B, t, h, w)
                else:
                    latents = model.encode_continuous(x).movedim(1, -1).numpy()   # (B, t, h, w, D)
            for i, z in zip(chunk, latents):
                row = clips.rows[i]
                yield clips.split, z, {"id": row["id"], "caption": row["caption"]}
            bar.update(len(chunk))
    bar.close()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/latents")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    started = time.perf_counter()
    kind = checks.choice("vqvae.latent_kind", cfg.vqvae.latent_kind, KINDS)
    model = load_vqvae(cfg.vqvae.checkpoint)
    splits = list(read_manifest(cfg.data.root)["clips"])

    def records():
        for split in splits:
            yield from encode_split(model, ClipDataset(cfg.data.root, split), cfg.vqvae.encode_batch,
                                    not args.no_progress, kind)

    digest = sha256_file(cfg.vqvae.checkpoint)
    source = {"vqvae_checkpoint": str(cfg.vqvae.checkpoint), "vqvae_sha256": digest, "data_root": str(cfg.data.root)}
    manifest = write_latents(args.out, records(), model.quantizer.codebook.numpy(), source, kind)
    print(f"encoded {manifest['clips']} in {time.perf_counter() - started:.1f} s into {args.out}")
    return manifest


if __name__ == "__main__":
    sys.exit(run_with_config_errors(main))  # a missing/bad setting: one `error:` line
