"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper that turns a text backbone into `fn(x, t)`.

    pred = uncond + scale * (cond - uncond)

The unconditional pass is the same caption with its mask all False (the contract's "null"
caption: the DiT then uses its learned null embedding, which caption dropout trained). Both passes
run in ONE backbone call on a batch of 2B, which is about as fast as one pass of B on a GPU and
avoids running the weights twice through memory.

A guidance interval (Kynkaenniemi et al. 2024, "Applying Guidance in a Limited Interval Improves
Sample and Distribution Quality in Diffusion Models") applies the scale only while the sample's noise
level lies in [lo, hi] and runs the conditional model alone elsewhere, which also skips the
unconditional pass there. The noise level is a rectified-flow time: the model time t itself for RF, and
for DDPM (whose model time is i / T) the RF time of the same signal-to-noise ratio, passed in as
`noise_level`, so that one interval means the same noise for both objectives.
"""

from __future__ import annotations

from typing import Callable

import torch

Backbone = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cfg(model: Backbone, text: torch.Tensor, mask: torch.Tensor, scale: float,
        interval: tuple[float, float] | None = None,
        noise_level: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Return fn(x, t) -> prediction for the samplers.

    model(x, t, text, text_mask) -> like x; text: (B, L, D_text) float; mask: (B, L) bool, True = real
    token; x: (B, ...); t: (B,) (or per frame (B, T)). scale == 1 is the conditional model itself (no unconditional pass);
    scale == 0 is the unconditional model; scale > 1 extrapolates away from it.
    interval (lo, hi), 0 <= lo <= hi <= 1: guide only the samples whose noise level (mean over frames
    when t is per frame) lies in [lo, hi]; the others get the conditional model. None = guide at every t.
    noise_level: model time (B,) -> RF time (B,) of the same noise (None: the model time is the RF time).
    """
    if text.dim() != 3 or mask.shape != text.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            f"cfg expects text (B, L, D) and a bool mask (B, L); got text {tuple(text.shape)}, "
            f"mask {tuple(mask.shape)} {mask.dtype}"
        )
    batch = text.shape[0]
    if interval is not None:
        lo, hi = (float(v) for v in interval)
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"guidance interval must be (lo, hi) with 0 <= lo <= hi <= 1; got {tuple(interval)}")

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

    if interval is None:
        return guided

    def guided_in_interval(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        level = t.float().mean(1) if t.dim() == 2 else t.float()  # (B,)
        level = level if noise_level is None else noise_level(level)
        inside = (level >= lo) & (level <= hi)
        if bool(inside.all()):
            return guided(x, t)
        check(x, t)
        if not bool(inside.any()):
            return model(x, t, text, mask)
        # a batch straddling an edge (only with per-sample times): both, then pick per sample
        both = guided(x, t)
        return torch.where(inside.view(-1, *[1] * (x.dim() - 1)), both, model(x, t, text, mask))

    return guided_in_interval
