"""The clip store on disk, shared by the synthetic generator and the video-folder reader.

Layout of a store (e.g. `data/raw/`):

    manifest.json     format, source settings, clip counts, one entry per shard (shape, rows, sha256)
    captions.jsonl    one JSON object per clip: id, split, shard, row, frames, height, width, caption, ...
    train/f016_64x64_000.npy   uint8 array (N, T, H, W, 3): clips of one shape, lossless
    val/...  test/...

Clips of the same shape share a shard, so a bucketing sampler can batch them without padding. Every
file is written deterministically (sorted JSON keys, clips in index order), so the same input gives
the same bytes, and the whole folder is swapped in atomically when complete.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from osplab.io import atomic_dir, sha256_file

FORMAT = "osplab-clips/1"


def shard_name(split: str, frames: int, height: int, width: int, number: int) -> str:
    return f"{split}/f{frames:03d}_{height}x{width}_{number:03d}.npy"


class StoreWriter:
    """Collect clips per (split, shape) and write full shards as they fill up.

    Use `write_store(root, records, ...)`; records are `(split, frames uint8 (T,H,W,3), metadata dict)`
    in a deterministic order. The metadata (caption and anything JSON-serialisable) goes to captions.jsonl.
    """

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.pending: dict[tuple, list] = defaultdict(list)
        self.counts: dict[tuple, int] = defaultdict(int)
        self.shards: list[dict] = []
        self.rows: list[dict] = []

    def add(self, split: str, frames: np.ndarray, meta: dict) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"clip {meta.get('id')}: expected uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        key = (split, *frames.shape[:3])
        self.pending[key].append((frames, meta))
        if len(self.pending[key]) == self.shard_size:
            self._flush(key)

    def _flush(self, key: tuple) -> None:
        split, t, h, w = key
        clips = self.pending.pop(key)
        name = shard_name(split, t, h, w, self.counts[key])
        self.counts[key] += 1
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.stack([c for c, _ in clips]))
        self.shards.append({"path": name, "split": split, "frames": t, "height": h, "width": w,
                            "clips": len(clips), "sha256": sha256_file(path)})
        for row, (_, meta) in enumerate(clips):
            self.rows.append({**meta, "split": split, "shard": name, "row": row, "frames": t, "height": h, "width": w})

    def finish(self, source: dict) -> dict:
        for key in sorted(self.pending):
            self._flush(key)
        order = {s: i for i, s in enumerate(("train", "val", "test"))}
        self.rows.sort(key=lambda r: (order.get(r["split"], 9), r["id"]))
        self.shards.sort(key=lambda s: s["path"])
        with open(self.folder / "captions.jsonl", "w", encoding="utf-8") as f:
            for row in self.rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        counts = defaultdict(int)
        for row in self.rows:
            counts[row["split"]] += 1
        manifest = {"format": FORMAT, "source": source, "clips": dict(sorted(counts.items())),
                    "bytes": sum((self.folder / s["path"]).stat().st_size for s in self.shards),
                    "shards": self.shards}
        with open(self.folder / "manifest.json", "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        return manifest


def write_store(root: str | Path, records: Iterable[tuple[str, np.ndarray, dict]], shard_size: int,
                source: dict) -> dict:
    """Write a complete store to `root` atomically (the old folder stays until the new one is done).

    Returns the manifest. An exception (or a kill) leaves `root` as it was.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    with atomic_dir(root, family=FORMAT.split("/")[0]) as tmp:
        writer = StoreWriter(tmp, shard_size)
        for split, frames, meta in records:
            writer.add(split, frames, meta)
        if not writer.pending and not writer.shards:
            raise RuntimeError(f"no clips to write to {root}")
        manifest = writer.finish(source)
    return manifest


def read_manifest(root: str | Path) -> dict:
    """The manifest of a store, with a clear error if `root` is not one."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not an osplab clip store; "
                                "create one with `osplab data synth` or `osplab data video-folder`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def verify_store(root: str | Path) -> list[str]:
    """Check every shard against the manifest (exists, shape, sha256); returns the problems found."""
    root = Path(root)
    problems = []
    for shard in read_manifest(root)["shards"]:
        path = root / shard["path"]
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, EOFError, OSError) as err:
            problems.append(f"{path}: unreadable ({err})")
            continue
        want = (shard["clips"], shard["frames"], shard["height"], shard["width"], 3)
        if arr.shape != want or arr.dtype != np.uint8:
            problems.append(f"{path}: {arr.dtype} {arr.shape}, manifest says uint8 {want}")
        elif sha256_file(path) != shard["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (file changed or corrupt)")
    return problems
