"""Draw moving shapes into uint8 frames, bit-for-bit reproducibly.

Only IEEE-exact float64 arithmetic is used (+, -, *, /, comparisons; no sin/exp whose SIMD
implementations differ between CPUs), so the same scene gives the same bytes on any machine.
Edges are anti-aliased by 2x2 supersampling: coverage is the fraction of four sub-pixel samples
inside the shape.
"""

from __future__ import annotations

import numpy as np

SUPERSAMPLE = 2  # sub-pixel samples per axis


def _sample_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel sample centres in pixel units: ys (H*S, 1), xs (1, W*S)."""
    s = SUPERSAMPLE
    ys = (np.arange(height * s, dtype=np.float64) + 0.5) / s
    xs = (np.arange(width * s, dtype=np.float64) + 0.5) / s
    return ys[:, None], xs[None, :]


def shape_mask(shape: str, cy: float, cx: float, radius: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Boolean mask (H*S, W*S) of a shape centred at (cy, cx) with half-extent `radius` (pixels)."""
    dy, dx = ys - cy, xs - cx
    if shape == "circle":
        return dy * dy + dx * dx <= radius * radius
    if shape == "square":
        return (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    if shape == "triangle":  # apex up; |dx| shrinks linearly from the base (dy = +r) to the apex (dy = -r)
        return (dy <= radius) & (np.abs(dx) * 2.0 <= dy + radius)
    raise ValueError(f"unknown shape {shape!r}; expected circle, square or triangle")


def coverage(mask: np.ndarray) -> np.ndarray:
    """Average supersampled mask (H*S, W*S) down to per-pixel coverage (H, W) in [0, 1]."""
    s = SUPERSAMPLE
    h, w = mask.shape[0] // s, mask.shape[1] // s
    return mask.reshape(h, s, w, s).mean(axis=(1, 3))


def render_clip(background: np.ndarray, objects: list[dict], centres: np.ndarray) -> np.ndarray:
    """Composite objects over a static background.

    background: (H, W, 3) float64 in [0, 255]. objects: dicts with `shape`, `rgb` (3 ints) and
    `radius` (pixels), drawn in list order (later ones on top). centres: (T, n_objects, 2) float64
    (y, x) pixel positions. Returns uint8 frames (T, H, W, 3).
    """
    height, width, _ = background.shape
    ys, xs = _sample_grid(height, width)
    frames = np.empty((centres.shape[0], height, width, 3), dtype=np.uint8)
    for t in range(centres.shape[0]):
        frame = background.copy()
        for k, obj in enumerate(objects):
            cov = coverage(shape_mask(obj["shape"], centres[t, k, 0], centres[t, k, 1], obj["radius"], ys, xs))
            rgb = np.asarray(obj["rgb"], dtype=np.float64)
            frame = frame * (1.0 - cov[..., None]) + rgb * cov[..., None]
        frames[t] = np.floor(frame + 0.5).astype(np.uint8)
    return frames
