"""Cached text embeddings: every caption of a clip store through the text encoder, once.

Layout of `data/text/` (written atomically by the `embed_text` stage):

    manifest.json          format, the encoder's identity (name, path, dim, max_length, weights sha256),
                           token length L, clip counts per split, source clip store
    <split>.safetensors    tokens float32 (N, L, D), mask bool (N, L); rows in the order of
    <split>.ids.json       ... these clip ids (the clip store's ids, shared by the latent store)

L is the longest caption's token count over all splits (at most text.max_length), so rows stack
without padding per batch and the DiT never sees more padding than it must. The encoder is never
in the training loop; a DiT checkpoint records the identity, and a cache whose identity differs
from the configured encoder's is refused (`check_identity`).
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from tqdm.auto import tqdm

from osplab.io import atomic_dir

FORMAT = "osplab-text/1"


def embed_captions(encoder, captions: list[str], batch: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode in batches padded to max_length; returns (tokens (N, Lmax, D), mask (N, Lmax))."""
    tokens, masks = [], []
    for start in tqdm(range(0, len(captions), batch), desc="embed captions", unit="batch", disable=not progress):
        t, m = encoder.encode(captions[start:start + batch], pad_to_max_length=True)
        tokens.append(t.cpu())
        masks.append(m.cpu())
    return torch.cat(tokens), torch.cat(masks)


def write_text_cache(root: str | Path, encoder, splits: dict[str, tuple[list[str], list[str]]], batch: int,
                     source: dict, progress: bool = True) -> dict:
    """splits: {split: (ids, captions)}. Embeds every caption, trims all splits to the longest real
    token count, writes the cache atomically; returns the manifest."""
    embedded = {s: embed_captions(encoder, caps, batch, progress) for s, (_, caps) in splits.items()}
    length = max(int(m.sum(1).max()) for _, m in embedded.values())
    with atomic_dir(root, family=FORMAT.split("/")[0]) as tmp:
        for split, (tokens, mask) in embedded.items():
            safetensors.torch.save_file({"tokens": tokens[:, :length].contiguous(),
                                         "mask": mask[:, :length].contiguous()}, str(tmp / f"{split}.safetensors"))
            (tmp / f"{split}.ids.json").write_text(json.dumps(splits[split][0]) + "\n")
        manifest = {"format": FORMAT, "encoder": encoder.identity, "length": length, "source": source,
                    "clips": {s: len(ids) for s, (ids, _) in splits.items()}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; compute the caption embeddings with `dvc repro embed_text`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def check_identity(cached: dict, expected: dict, what: str) -> None:
    """Refuse embeddings (or a DiT) made with another text encoder than `expected`, naming both."""
    keys = ("name", "dim", "max_length", "weights_sha256")
    diff = {k: (cached.get(k), expected.get(k)) for k in keys if cached.get(k) != expected.get(k)}
    if diff:
        detail = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{what} was made with text encoder {cached.get('name')!r}, but the configured one is "
                         f"{expected.get('name')!r} ({detail}); re-run `dvc repro embed_text` (and train_dit) "
                         f"or configure the matching text encoder")


class TextCache:
    """One split of the cache: `lookup(ids) -> (tokens (B, L, D), mask (B, L))`."""

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if split not in self.manifest["clips"]:
            raise ValueError(f"{self.root}: no split {split!r}; it has {sorted(self.manifest['clips'])}")
        data = safetensors.torch.load_file(str(self.root / f"{split}.safetensors"))
        self.tokens, self.mask = data["tokens"], data["mask"]
        ids = json.loads((self.root / f"{split}.ids.json").read_text())
        self.row = {clip_id: r for r, clip_id in enumerate(ids)}

    @property
    def identity(self) -> dict:
        return self.manifest["encoder"]

    def lookup(self, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [i for i in ids if i not in self.row]
        if missing:
            raise KeyError(f"{self.root}: no embeddings for clips {missing[:3]} ({len(missing)} missing); "
                           f"the cache is stale: `dvc repro embed_text`")
        rows = torch.tensor([self.row[i] for i in ids])
        return self.tokens[rows], self.mask[rows]
