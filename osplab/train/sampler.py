"""Deterministic, resumable, rank-sharded batch sampling.

The data stream is a sequence of *global batches* numbered 0, 1, 2, ...; optimizer step s consumes
global batch s. Global batch b is the same set of samples whatever the number of processes, so a
1-process run and an N-process run with the same global batch see the same data per step. Each rank
takes a contiguous 1/world_size slice of it and cuts that slice into `accum` micro-batches.

Resume needs only the global batch number: set `start` before iterating. Nothing is counted
inside the sampler, so DataLoader prefetching (which runs ahead of training) cannot corrupt the
position; the loop stores the step in the checkpoint.

Any sampler with the same protocol (a `start` attribute and `__iter__` yielding this rank's
micro-batches as lists of dataset indices, `accum` lists per global batch) plugs into the loop,
e.g. a sampler that buckets clips by shape.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np


class BatchSampler(Protocol):
    """What the loop needs from a sampler; it is passed to DataLoader(batch_sampler=...)."""

    start: int  # first global batch to yield (= optimizer step to resume at)

    def __iter__(self) -> Iterator[list[int]]:
        """Endless stream of this rank's micro-batches (lists of dataset indices)."""
        ...


class ShardedBatchSampler:
    """Shuffled epochs over range(num_samples), cut into global batches, sharded over ranks.

    Epoch e uses the permutation drawn from numpy's PCG64 seeded with (seed, e), so the order is
    the same on every platform and every rank. The last `num_samples % global_batch` samples of
    each (shuffled) epoch are dropped, so every global batch is full.
    """

    def __init__(self, num_samples: int, rank: int, world_size: int, global_batch: int,
                 micro_batch: int, seed: int, shuffle: bool = True) -> None:
        if global_batch % (micro_batch * world_size):
            raise ValueError(
                f"global_batch={global_batch} not divisible by micro_batch={micro_batch} x "
                f"world_size={world_size}"
            )
        if num_samples < global_batch:
            raise ValueError(
                f"dataset has {num_samples} samples, fewer than one global batch ({global_batch}); "
                "lower train.global_batch or use a larger dataset"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} outside [0, world_size={world_size})")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.seed, self.shuffle = seed, shuffle
        self.start = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Sample indices of one epoch, shape (num_samples,), int64."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        return rng.permutation(self.num_samples).astype(np.int64)

    def global_batch_indices(self, b: int) -> np.ndarray:
        """All indices of global batch b, shape (global_batch,), before sharding."""
        epoch, k = divmod(b, self.batches_per_epoch)
        return self.epoch_order(epoch)[k * self.global_batch:(k + 1) * self.global_batch]

    def __iter__(self) -> Iterator[list[int]]:
        share = self.global_batch // self.world_size
        b = self.start
        epoch, order = -1, np.empty(0, dtype=np.int64)
        while True:
            e, k = divmod(b, self.batches_per_epoch)
            if e != epoch:  # one permutation per epoch, not per batch
                epoch, order = e, self.epoch_order(e)
            batch = order[k * self.global_batch:(k + 1) * self.global_batch]
            mine = batch[self.rank * share:(self.rank + 1) * share]
            for i in range(0, share, self.micro_batch):
                yield mine[i:i + self.micro_batch].tolist()
            b += 1
