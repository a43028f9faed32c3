"""Per-clip video quality metrics: PSNR, SSIM and a temporal flicker score.

All functions take clips (N, T, H, W, C) as uint8 arrays/tensors or floats, and a `data_range`
(255 for uint8, 1.0 for [0, 1], 2.0 for [-1, 1]). PSNR and SSIM compare fake[i] with real[i]
(reconstructions against their sources); the flicker ratio compares two sets as a whole.

Conventions (they change the numbers, so they are fixed here and written down):
- PSNR: per frame, 10 log10(range^2 / MSE over H, W, C), then the mean over frames of a clip.
  A frame that matches exactly has infinite PSNR; the clip mean is then infinite too.
- SSIM: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  population (biased) local variances, 'valid' windows only (no padding); the SSIM map is
  averaged over pixels, then channels, then frames ("3D-aware" = per frame, averaged over time).
- Flicker: mean absolute frame-to-frame difference |x[t+1] - x[t]| / range per clip. It counts
  motion too, so it is only meaningful relative to real clips of the same content: the flicker
  ratio fake / real is ~1 for realistic temporal change, > 1 for flicker, < 1 for frozen video.
"""
from __future__ import annotations

import numpy as np
import torch


def _as_float(x, name: str) -> torch.Tensor:
    """Clips -> float64 tensor (N, T, H, W, C), with a clear error for other shapes."""
    t = x.double() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float64))
    if t.ndim != 5:
        raise ValueError(f"{name}: expected clips (N, T, H, W, C), got shape {tuple(t.shape)}")
    return t


def _pair(fake, real) -> tuple[torch.Tensor, torch.Tensor]:
    f, r = _as_float(fake, "fake"), _as_float(real, "real")
    if f.shape != r.shape:
        raise ValueError(f"fake {tuple(f.shape)} and real {tuple(r.shape)} clips must have the same shape")
    return f, r


def psnr(fake, real, data_range: float) -> torch.Tensor:
    """PSNR in dB per clip (N,): per-frame PSNR averaged over the T frames."""
    f, r = _pair(fake, real)
    mse = (f - r).pow(2).mean(dim=(2, 3, 4))                         # (N, T)
    return (10.0 * torch.log10(data_range**2 / mse)).mean(dim=1)    # inf where mse == 0


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,) in float64; the 2-D window is its outer product."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def valid_blur_matrix(n: int, g: torch.Tensor) -> torch.Tensor:
    """(n, n - len(g) + 1) banded matrix M with (z @ M)[j] = sum_b g[b] z[j + b]: a 'valid' 1-D filter.

    SSIM's separable Gaussian blur as two float64 matmuls (BLAS) instead of a depthwise float64 conv2d,
    which PyTorch runs on a slow generic path (SSIM 21x slower here); the result is the same sum up to
    float64 rounding."""
    k = len(g)
    m = torch.zeros(n, n - k + 1, dtype=g.dtype)
    for j in range(n - k + 1):
        m[j : j + k, j] = g
    return m


def ssim(fake, real, data_range: float, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM per clip (N,): Gaussian-window SSIM map per frame and channel, averaged (see module doc)."""
    f, r = _pair(fake, real)
    n, t, h, w, c = f.shape
    if h < window or w < window:
        raise ValueError(f"frames {h}x{w} are smaller than the SSIM window {window}; pass a smaller `window`")
    g = gaussian_window(window, sigma)
    rows, cols = valid_blur_matrix(h, g), valid_blur_matrix(w, g)

    def blur(z: torch.Tensor) -> torch.Tensor:  # (N*T, C, H, W) -> local means (N*T, C, H-window+1, W-window+1)
        return rows.T @ z @ cols                 # the 2-D window is the outer product g g^T: separable

    x = f.flatten(0, 1).permute(0, 3, 1, 2)                          # (N*T, C, H, W)
    y = r.flatten(0, 1).permute(0, 3, 1, 2)
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return smap.mean(dim=(1, 2, 3)).view(n, t).mean(dim=1)


def temporal_flicker(clips, data_range: float) -> torch.Tensor:
    """Mean |x[t+1] - x[t]| / data_range per clip (N,); needs T >= 2."""
    x = _as_float(clips, "clips")
    if x.shape[1] < 2:
        raise ValueError(f"flicker needs at least 2 frames per clip, got T={x.shape[1]}")
    return (x[:, 1:] - x[:, :-1]).abs().mean(dim=(1, 2, 3, 4)) / data_range


def flicker_ratio(fake, real, data_range: float) -> float:
    """Mean flicker of the fake clips over that of the real clips (1 = as much change as real)."""
    real_flicker = temporal_flicker(real, data_range).mean().item()
    if real_flicker == 0:
        raise ValueError("real clips have no frame-to-frame change (all frozen): the flicker ratio is undefined")
    return temporal_flicker(fake, data_range).mean().item() / real_flicker


def video_metrics(fake, real, data_range: float, ssim_cfg: dict, chunk: int = 16) -> dict[str, float]:
    """Means over clips of PSNR, SSIM and the flicker ratio of reconstructions `fake` vs `real`.

    ssim_cfg: window, sigma, k1, k2 (conf/eval/default.yaml `ssim`). Clips are processed `chunk`
    at a time so that float64 temporaries stay small for large (memory-mapped) clip arrays.
    """
    if len(fake) != len(real):
        raise ValueError(f"{len(fake)} fake clips vs {len(real)} real clips: pass matching pairs")
    parts = {"psnr": [], "ssim": [], "flicker_fake": [], "flicker_real": []}
    for i in range(0, len(fake), chunk):
        f, r = np.asarray(fake[i : i + chunk]), np.asarray(real[i : i + chunk])
        parts["psnr"].append(psnr(f, r, data_range))
        parts["ssim"].append(ssim(f, r, data_range, **ssim_cfg))
        parts["flicker_fake"].append(temporal_flicker(f, data_range))
        parts["flicker_real"].append(temporal_flicker(r, data_range))
    m = {k: torch.cat(v).mean().item() for k, v in parts.items()}
    if m["flicker_real"] == 0:
        raise ValueError("real clips have no frame-to-frame change (all frozen): the flicker ratio is undefined")
    return {"psnr": m["psnr"], "ssim": m["ssim"], "flicker_ratio": m["flicker_fake"] / m["flicker_real"]}
