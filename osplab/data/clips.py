"""Reading a clip store: a map-style dataset and a bucketing batch sampler.

    ds = ClipDataset("data/raw", "train")
    item = ds[0]            # {"video": uint8 (T, H, W, 3), "caption": str, "id": str}
    ds.shape_of(0)          # (T, H, W): the bucket the clip belongs to
    sampler = BucketBatchSampler(ds.shapes(), rank=0, world_size=1, global_batch=8, micro_batch=4, seed=0)
    for micro_batch in sampler: ...   # endless; lists of indices of clips of one shape

Shards are memory-mapped, so opening a dataset is cheap and workers share the page cache.
"""

from __future__ import annotations

import json
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
    """Endless, resumable, rank-sharded micro-batches whose clips all share one shape (T, H, W).

    The stream is a sequence of global batches; each is `global_batch` clips of one bucket. Epoch e
    shuffles every bucket with PCG64 seeded by (seed, e), cuts it into full global batches (a bucket's
    remainder waits for the next epoch's shuffle), and shuffles the batches of all buckets together.
    Rank r takes the r-th contiguous slice of each global batch and cuts it into micro-batches. The
    stream depends only on (shapes, seed, global batch), not on the number of processes; resume by
    setting `start` to the global batch (= optimizer step) to begin at. This is the sampler protocol of
    `osplab.train.sampler`.
    """

    def __init__(self, shapes: list[tuple], rank: int, world_size: int, global_batch: int, micro_batch: int,
                 seed: int):
        if global_batch % (micro_batch * world_size):
            raise ValueError(f"global_batch={global_batch} is not divisible by micro_batch={micro_batch} x "
                             f"world_size={world_size}")
        self.buckets: dict[tuple, np.ndarray] = {}
        for index, shape in enumerate(shapes):
            self.buckets.setdefault(tuple(shape), []).append(index)
        self.buckets = {k: np.asarray(v, dtype=np.int64) for k, v in sorted(self.buckets.items())}
        self.batches_per_epoch = sum(len(v) // global_batch for v in self.buckets.values())
        if self.batches_per_epoch == 0:
            sizes = {f"{t}x{h}x{w}": len(v) for (t, h, w), v in self.buckets.items()}
            raise ValueError(f"no shape bucket holds a full global batch of {global_batch} clips (bucket sizes "
                             f"{sizes}); lower the global batch or generate more clips")
        self.rank, self.world_size, self.global_batch, self.micro_batch, self.seed = (
            rank, world_size, global_batch, micro_batch, seed)
        self.start = 0

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches of one epoch, each an int64 array of `global_batch` clip indices."""
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        batches = []
        for indices in self.buckets.values():
            shuffled = rng.permutation(indices)
            full = len(shuffled) // self.global_batch * self.global_batch
            batches.extend(shuffled[:full].reshape(-1, self.global_batch))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        share = self.global_batch // self.world_size
        b, epoch, batches = self.start, -1, []
        while True:
            e, k = divmod(b, self.batches_per_epoch)
            if e != epoch:
                epoch, batches = e, self.epoch_batches(e)
            mine = batches[k][self.rank * share:(self.rank + 1) * share]
            for i in range(0, share, self.micro_batch):
                yield mine[i:i + self.micro_batch].tolist()
            b += 1


class CurriculumBatchSampler:
    """Easy clips first: global batches 0 .. switch - 1 come from the clips `first` only, the rest from
    every clip; both phases are `BucketBatchSampler` streams (one shape per batch) with the same seed.

    Global batch b is a pure function of b (phase 1: batch b of the subset's stream; phase 2: batch
    b - switch of the whole split's stream, which so starts at an epoch boundary), so resuming at any
    step is exact, as for the bucketing sampler. `switch` = 0 is exactly `BucketBatchSampler(shapes, ...)`.
    """

    def __init__(self, shapes: list[tuple], first: list[int], switch: int, rank: int, world_size: int,
                 global_batch: int, micro_batch: int, seed: int):
        if switch < 0:
            raise ValueError(f"switch={switch} must be >= 0 (global batches drawn from the subset)")
        self.first = np.asarray(first, dtype=np.int64)
        if switch and not len(self.first):
            raise ValueError("the curriculum's subset is empty")
        if len(self.first) and (self.first.min() < 0 or self.first.max() >= len(shapes)):
            raise ValueError(f"subset indices must lie in [0, {len(shapes)})")
        self.full = BucketBatchSampler(shapes, rank, world_size, global_batch, micro_batch, seed)
        self.easy = None
        if switch:
            try:
                self.easy = BucketBatchSampler([shapes[i] for i in self.first], rank, world_size, global_batch,
                                               micro_batch, seed)
            except ValueError as err:
                raise ValueError(f"the curriculum's subset ({len(self.first)} clips): {err}") from err
        self.switch, self.start = switch, 0
        self.micro_per_batch = global_batch // world_size // micro_batch

    def __iter__(self):
        if self.start < self.switch:
            self.easy.start = self.start
            easy = iter(self.easy)
            for _ in range((self.switch - self.start) * self.micro_per_batch):
                yield self.first[next(easy)].tolist()
        self.full.start = max(self.start - self.switch, 0)
        yield from self.full
