"""Task: what a model family hands to the training loop.

A model plugs in by building one `Task`:

    Task(model=MyNet(...),
         loss=my_loss,                 # (model, batch) -> (scalar loss, {name: scalar})
         dataset=my_dataset,           # map-style: len(ds), ds[i]
         collate=my_collate,           # list of ds[i] -> batch (tensors / dicts / tuples)
         flops_per_sample=6 * n_params * tokens_per_sample)

Contract:
- `loss(model, batch)` runs the forward through `model` (it may be a DDP wrapper: call `model(...)`;
  use `osplab.train.distributed.unwrap(model)` for attributes). It returns the mean loss over the
  micro-batch (a 0-dim tensor) and metrics (0-dim tensors or floats, same keys on every rank and
  every step) that the loop averages over micro-steps and ranks before logging.
- `dataset[i]` must be a pure function of i (derive any augmentation noise from i): the loop
  checkpoints the data position, not DataLoader worker RNGs, and exact resume relies on this.
- Gradient checkpointing: a model that supports it has a boolean attribute
  `gradient_checkpointing`; the loop sets it from `train.grad_checkpointing`.
- `batch_sampler`, optional: factory `(rank, world_size, global_batch, micro_batch, seed) ->
  BatchSampler` (see osplab.train.sampler) for e.g. shape buckets; default: ShardedBatchSampler.
- `shard_units`, optional: `model -> iterable of submodules` that FSDP shards one by one
  (e.g. the transformer blocks); default: only the root module.
- `evaluate`, optional: `model -> {name: float}`, run by every rank at every checkpoint step (and
  the last) in eval mode under `torch.no_grad()`, its values logged on that step's row (e.g. a
  validation loss on fixed data). It must not draw from the global RNGs (use its own seeded
  generator), so that evaluating does not change the training run it watches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn

from .sampler import BatchSampler

LossFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, dict[str, torch.Tensor | float]]"]


class MapDataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@dataclass
class Task:
    """One trainable problem: model, objective, data, and the cost of one sample."""

    model: nn.Module
    loss: LossFn
    dataset: MapDataset
    collate: Callable[[list[Any]], Any]
    flops_per_sample: float  # training FLOPs (forward + backward) per sample, for GFLOP/s
    batch_sampler: Callable[[int, int, int, int, int], BatchSampler] | None = None
    shard_units: Callable[[nn.Module], Iterable[nn.Module]] | None = None
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"Task.model must be an nn.Module, got {type(self.model).__name__}")
        if self.flops_per_sample < 0:
            raise ValueError(f"Task.flops_per_sample={self.flops_per_sample} must be >= 0")
        if len(self.dataset) == 0:
            raise ValueError("Task.dataset is empty")
