"""Reading a clip store: a map-style dataset and a bucketing batch sampler.

    ds = ClipDataset("data/raw", "train")
    item = ds[0]            # {"video": uint8 (T, H, W, 3), "caption": str, "id": str}
    ds.shape_of(0)          # (T, H, W): the bucket the clip belongs to
    for batch in BucketBatchSampler(ds.shapes(), batch_size=8, seed=0, epoch=0): ...

Shards are memory-mapped, so opening a dataset is cheap and workers share the page cache.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from osplab.data.store import read_manifest


class ClipDataset:
    """The clips of one split of a store, in the store's deterministic order."""

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if split not in manifest["clips"]:
            raise ValueError(f"{self.root}: no split {split!r}; it has {sorted(manifest['clips'])}")
        with open(self.root / "captions.jsonl", encoding="utf-8") as f:
            self.rows = [r for r in map(json.loads, f) if r["split"] == split]
        self.split = split
        self._shards: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            self._shards[name] = np.load(self.root / name, mmap_mode="r")
        return self._shards[name]

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        video = np.array(self._shard(row["shard"])[row["row"]])  # copy out of the memory map
        return {"video": video, "caption": row["caption"], "id": row["id"]}

    def shape_of(self, index: int) -> tuple[int, int, int]:
        row = self.rows[index]
        return row["frames"], row["height"], row["width"]

    def shapes(self) -> list[tuple[int, int, int]]:
        return [self.shape_of(i) for i in range(len(self))]

    def captions(self) -> list[str]:
        return [r["caption"] for r in self.rows]


class BucketBatchSampler:
    """Batches of indices whose clips share one shape (T, H, W), in a seeded order.

    Each bucket is shuffled and cut into batches of `batch_size` (the last partial batch of a bucket
    is kept unless `drop_last`); the batches of all buckets are then shuffled together. The same
    (seed, epoch) always gives the same batches, which exact resume relies on.
    """

    def __init__(self, shapes: list[tuple], batch_size: int, seed: int, epoch: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shapes, self.batch_size, self.seed, self.epoch, self.drop_last = shapes, batch_size, seed, epoch, drop_last

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        buckets = defaultdict(list)
        for index, shape in enumerate(self.shapes):
            buckets[tuple(shape)].append(index)
        out = []
        for key in sorted(buckets):
            idx = rng.permutation(buckets[key]).tolist()
            for start in range(0, len(idx), self.batch_size):
                batch = idx[start:start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    out.append(batch)
        order = rng.permutation(len(out))
        return [out[i] for i in order]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
