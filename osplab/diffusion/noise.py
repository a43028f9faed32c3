"""The Gaussian noise of stage 2, optionally correlated across the frames of a latent video.

    noise = video_noise((B, C, T, H, W), frame_corr, generator)

Every element is N(0, 1). With `frame_corr` = rho > 0, the elements at the same (c, h, w) of
different latent frames have correlation rho: noise = sqrt(rho) * shared + sqrt(1 - rho) * own,
with `shared` (B, C, 1, H, W) drawn once per clip and `own` per frame (the "mixed" noise prior of
PYoCo, Ge et al. 2023). Why: where an object goes is decided at high noise, from the noise itself;
with independent noise per frame each latent frame gets its own layout, and a small model then
places the object anew in every frame. Correlated noise gives the frames a common starting layout.
The model must be trained with the same rho it is sampled with (the checkpoint records it).

rho = 0 draws exactly what `torch.randn(shape)` draws (one call), so runs without the prior are
unchanged. Frames are dim 2 of a (B, C, T, H, W) tensor; rho > 0 needs that 5-D layout.
"""

from __future__ import annotations

import torch


def check_frame_corr(frame_corr: float) -> float:
    rho = float(frame_corr)
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"noise_frame_corr must be in [0, 1) (0: independent frames), got {frame_corr}")
    return rho


def video_noise(shape, frame_corr: float, generator: torch.Generator | None, device=None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """N(0, 1) noise of `shape`; rho = frame_corr > 0 correlates frames (dim 2 of a 5-D shape)."""
    rho = check_frame_corr(frame_corr)
    own = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if rho == 0.0:
        return own
    if len(shape) != 5:
        raise ValueError(f"noise_frame_corr={rho} needs latent videos (B, C, T, H, W), got shape {tuple(shape)}")
    B, C, _, H, W = shape
    shared = torch.randn((B, C, 1, H, W), generator=generator, device=device, dtype=dtype)
    return rho**0.5 * shared + (1 - rho) ** 0.5 * own
