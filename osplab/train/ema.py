"""Exponential moving average of the weights (DiT keeps one for sampling and evaluation).

    ema <- decay * ema + (1 - decay) * w      (once per optimizer step that was not skipped)

The shadow copies live on the parameters' device in fp32 (the parameters' dtype). Under FSDP2 the
parameters are DTensor shards, so the shadows are shards too and the update stays local.
Buffers (e.g. norm statistics) are not averaged: `state_dict` takes them from the live model.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import shard_like


class EMA:
    """Shadow weights for the named parameters of `model` (the unwrapped module)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters()
        }
        # Tied weights appear under several names in state_dict(); map each alias to its shadow.
        first: dict[int, str] = {}
        self.alias = {name: first.setdefault(id(p), name)
                      for name, p in model.named_parameters(remove_duplicate=False)}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every shadow a fraction (1 - decay) towards the current weights."""
        params = dict(model.named_parameters())
        names = list(self.shadow)
        # lerp_(w, 1 - decay) computes ema + (1 - decay) * (w - ema): the usual EMA in one fused op.
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach() for n in names],
                             1.0 - self.decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full model state dict with EMA parameters and the model's own buffers (local shards)."""
        out = {}
        for name, value in model.state_dict().items():
            out[name] = self.shadow[self.alias[name]] if name in self.alias else value
        return out

    @torch.no_grad()
    def load_shadow(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy saved shadows (full tensors) in; under FSDP each rank keeps its own shard."""
        missing = sorted(set(self.shadow) - set(tensors))
        if missing:
            raise KeyError(f"EMA checkpoint lacks parameters {missing[:5]} (of {len(missing)})")
        for name, dst in self.shadow.items():
            dst.copy_(shard_like(tensors[name], dst))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the EMA weights (e.g. before sampling)."""
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name])

