"""The latent store: the VQVAE latents of every clip, the input of the DiT.

Layout of `data/latents/`:

    manifest.json     format, kind, the VQVAE checkpoint's sha256, counts, shards
    codebook.npy      float32 (K, D): code vectors, so code latents are `codebook[indices]`
    captions.jsonl    id, split, shard, row, caption, latent shape (t, h, w) per clip
    train/t004_8x8_000.npy   one shard per split and latent shape (t, h, w):
                      kind "codes":      int16 (N, t, h, w), code indices (the default)
                      kind "continuous": float32 (N, t, h, w, D), the encoder's outputs before the
                                         quantizer, in the codebook's space (`VQVAE.encode_continuous`)

Indices (2 bytes per latent position) are exact and 128x smaller than float latents of dimension 64.
The continuous kind is for the ablation that diffuses the unquantized latents (as LDM does with its
VQ-regularised autoencoders); `LatentDataset.latent(i)` gives (D, t, h, w) floats for either kind.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from osplab.io import atomic_dir

FORMAT = "osplab-latents/1"
KINDS = ("codes", "continuous")


def write_latents(root: str | Path, records: Iterable[tuple[str, np.ndarray, dict]], codebook: np.ndarray,
                  source: dict, kind: str = "codes") -> dict:
    """Write (split, latents, meta with id and caption) records atomically; returns the manifest.

    latents: for kind "codes" int indices (t, h, w); for kind "continuous" floats (t, h, w, D) with D the
    codebook's dimension."""
    if kind not in KINDS:
        raise ValueError(f"latent kind {kind!r}: expected one of {KINDS}")
    if kind == "codes" and codebook.shape[0] > np.iinfo(np.int16).max:
        raise ValueError(f"codebook of {codebook.shape[0]} codes does not fit int16 indices")
    groups: dict[tuple, list] = defaultdict(list)
    for split, z, meta in records:
        if kind == "codes":
            if z.ndim != 3 or np.issubdtype(z.dtype, np.floating):
                raise ValueError(f"{meta.get('id')}: code latents must be integer indices (t, h, w), got "
                                 f"{z.dtype} {z.shape}")
            z = z.astype(np.int16)
        else:
            if z.ndim != 4 or z.shape[-1] != codebook.shape[1]:
                raise ValueError(f"{meta.get('id')}: continuous latents must be (t, h, w, {codebook.shape[1]}), "
                                 f"got {z.shape}")
            z = z.astype(np.float32)
        groups[(split, *z.shape[:3])].append((z, meta))
    rows, shards = [], []
    with atomic_dir(root, family=FORMAT.split("/")[0]) as tmp:
        for (split, t, h, w), items in sorted(groups.items()):
            name = f"{split}/t{t:03d}_{h}x{w}_000.npy"
            (tmp / split).mkdir(exist_ok=True)
            np.save(tmp / name, np.stack([i for i, _ in items]))
            shards.append({"path": name, "split": split, "shape": [t, h, w], "clips": len(items)})
            rows += [{**meta, "split": split, "shard": name, "row": r, "shape": [t, h, w]}
                     for r, (_, meta) in enumerate(items)]
        np.save(tmp / "codebook.npy", codebook.astype(np.float32))
        rows.sort(key=lambda r: (r["split"], r["id"]))
        (tmp / "captions.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        counts = defaultdict(int)
        for r in rows:
            counts[r["split"]] += 1
        manifest = {"format": FORMAT, "kind": kind, "source": source, "clips": dict(sorted(counts.items())), "shards": shards,
                    "codebook": list(codebook.shape)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


class LatentDataset:
    """One split of a latent store: item i = {"indices": int64 (t, h, w), "caption": str, "id": str} for a
    store of codes, {"z": float32 (t, h, w, D), ...} for a continuous one; `latent(i)` reads either."""

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; create the latents with the `encode` stage")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        with open(self.root / "captions.jsonl", encoding="utf-8") as f:
            self.rows = [r for r in map(json.loads, f) if r["split"] == split]
        if not self.rows:
            raise ValueError(f"{self.root}: no clips in split {split!r}")
        self.kind = self.manifest.get("kind", "codes")  # stores written before the continuous kind hold codes
        if self.kind not in KINDS:
            raise ValueError(f"{path}: latent kind {self.kind!r}, expected one of {KINDS}")
        self.codebook = torch.from_numpy(np.load(self.root / "codebook.npy"))  # (K, D)
        self._shards = {name: np.load(self.root / name) for name in {r["shard"] for r in self.rows}}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        stored = self._shards[row["shard"]][row["row"]]
        if self.kind == "codes":
            item = {"indices": torch.from_numpy(stored.astype(np.int64))}
        else:
            item = {"z": torch.from_numpy(np.array(stored, dtype=np.float32))}
        return {**item, "caption": row["caption"], "id": row["id"]}

    def latents(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (..., t, h, w) -> latents (..., D, t, h, w) (the quantized VQVAE latents)."""
        z = self.codebook[indices]                     # (..., t, h, w, D)
        return z.movedim(-1, -4)

    def latent(self, index: int) -> torch.Tensor:
        """The latents of clip `index`, float32 (D, t, h, w): its codes, or its continuous latents."""
        item = self[index]
        return self.latents(item["indices"]) if self.kind == "codes" else item["z"].movedim(-1, 0)

    def shapes(self) -> list[tuple[int, int, int]]:
        return [tuple(r["shape"]) for r in self.rows]
