"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper that turns a text backbone into `fn(x, t)`.

    pred = uncond + scale * (cond - uncond)

The unconditional pass is the same caption with its mask all False (the contract's "null"
caption: the DiT then uses its learned null embedding, which caption dropout trained). Both passes
run in ONE backbone call on a batch of 2B, which is about as fast as one pass of B on a GPU and
avoids running the weights twice through memory.
"""

from __future__ import annotations

from typing import Callable

import torch

Backbone = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cfg(model: Backbone, text: torch.Tensor, mask: torch.Tensor, scale: float):
    """Return fn(x, t) -> prediction for the samplers.

    model(x, t, text, text_mask) -> like x; text: (B, L, D_text) float; mask: (B, L) bool, True = real
    token; x: (B, ...); t: (B,) (or per frame (B, T)). scale == 1 is the conditional model itself (no unconditional pass);
    scale == 0 is the unconditional model; scale > 1 extrapolates away from it.
    """
    if text.dim() != 3 or mask.shape != text.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            f"cfg expects text (B, L, D) and a bool mask (B, L); got text {tuple(text.shape)}, "
            f"mask {tuple(mask.shape)} {mask.dtype}"
        )
    batch = text.shape[0]

    def check(x: torch.Tensor, t: torch.Tensor):
        if x.shape[0] != batch or t.shape[0] != batch or t.dim() > 2:
            raise ValueError(f"cfg was built for a batch of {batch} captions; got x {tuple(x.shape)}, t {tuple(t.shape)}")

    if scale == 1:

        def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            check(x, t)
            return model(x, t, text, mask)

        return conditional

    text2 = torch.cat([text, text])
    mask2 = torch.cat([mask, torch.zeros_like(mask)])  # second half: the null caption

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check(x, t)
        cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), text2, mask2).chunk(2)
        return uncond + scale * (cond - uncond)

    return guided
