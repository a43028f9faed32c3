"""Deterministic corruptions of uint8 clips, for checking that a metric gets worse as video does.

    bad = corrupt(clips, "blur", level=0.5, seed=0)   # clips: uint8 (N, T, H, W, 3) or a list of (T, H, W, 3)

`level` in [0, 1] sets the strength; level 0 returns an exact copy. Each kind is built so that its
effect grows with the level for a fixed seed (the random draws of a clip do not depend on the
level, so a higher level extends a lower one rather than redrawing it):

- "noise":   add Gaussian noise of std `level * NOISE_STD` (uint8 units), clip to [0, 255], round.
             One standard normal draw per pixel, scaled by the level, so every pixel moves
             monotonically further from its original value as the level rises.
- "blur":    spatial Gaussian blur of every frame (not across time or channels) with std
             `level * BLUR_FRACTION * min(H, W)` pixels, so a level means the same visual blur at any
             resolution; edges are reflected.
- "shuffle": `round(level * T)` frame positions (the first ones of a seeded permutation of 0..T-1)
             exchange their frames along one random cycle (Sattolo's algorithm), so every chosen
             position gets another frame; fewer than 2 chosen positions change nothing.
- "freeze":  `round(level * (T - 1))` positions among 1..T-1 (a seeded permutation again) repeat the
             previous output frame, so a run of frozen positions holds the last live frame; level 1
             shows frame 0 for the whole clip.

Clip i of a call draws from its own stream, PCG64 seeded by (seed, kind, i): the result is the same
on any machine and does not depend on how many clips are corrupted together.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

KINDS = ("noise", "blur", "shuffle", "freeze")
NOISE_STD = 64.0        # uint8 units at level 1: heavy but the content stays recognisable
BLUR_FRACTION = 0.05    # Gaussian std at level 1, as a fraction of the shorter frame side (3.2 px at 64)


def _rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, KINDS.index(kind), index]))


def _noise(clip: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    z = rng.standard_normal(clip.shape, dtype=np.float32)
    return np.rint(np.clip(clip + (level * NOISE_STD) * z, 0, 255)).astype(np.uint8)


def _blur(clip: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    sigma = level * BLUR_FRACTION * min(clip.shape[1:3])
    out = gaussian_filter(clip.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="reflect", truncate=4.0)
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def _shuffle(clip: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    t = len(clip)
    chosen = rng.permutation(t)[: round(level * t)]  # nested: a higher level adds positions
    order = np.arange(len(chosen))
    for i in range(len(order) - 1, 0, -1):           # Sattolo: a uniformly random single cycle
        j = int(rng.integers(0, i))
        order[i], order[j] = order[j], order[i]
    src = np.arange(t)
    src[chosen] = chosen[order]                       # a cycle has no fixed point: every chosen frame moves
    return clip[src]


def _freeze(clip: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    t = len(clip)
    frozen = np.zeros(t, dtype=bool)
    frozen[1 + rng.permutation(t - 1)[: round(level * (t - 1))]] = True
    src = np.arange(t)
    for i in range(1, t):                             # a frozen position shows its predecessor's frame
        if frozen[i]:
            src[i] = src[i - 1]
    return clip[src]


_APPLY = {"noise": _noise, "blur": _blur, "shuffle": _shuffle, "freeze": _freeze}


def _check_clip(clip: np.ndarray, where: str) -> None:
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3 or clip.shape[0] < 1:
        raise ValueError(f"{where}: expected a uint8 RGB clip (T, H, W, 3), got {clip.dtype} {clip.shape}")


def corrupt(clips, kind: str, level: float, seed: int = 0):
    """Corrupt every clip -> the same container: uint8 (N, T, H, W, 3) array, or a list of (T, H, W, 3).

    kind: one of KINDS; level: float in [0, 1] (0 = exact copy); seed: int (see module doc).
    """
    if kind not in KINDS:
        raise ValueError(f"corruption kind {kind!r} is unknown; use one of {KINDS}")
    if not (isinstance(level, (int, float, np.floating)) and math.isfinite(level) and 0.0 <= level <= 1.0):
        raise ValueError(f"corruption level {level!r} must be a number in [0, 1]")
    as_array = isinstance(clips, np.ndarray)
    if as_array and clips.ndim != 5:
        raise ValueError(f"expected clips (N, T, H, W, 3) or a list of (T, H, W, 3), got shape {clips.shape}")
    out = []
    for i, clip in enumerate(clips):
        clip = np.asarray(clip)
        _check_clip(clip, f"clip {i}")
        out.append(clip.copy() if level == 0 else _APPLY[kind](clip, float(level), _rng(seed, kind, i)))
    return np.stack(out) if as_array and out else (np.empty_like(clips) if as_array else out)


def strength(kind: str, level: float, height: int, width: int, frames: int) -> str:
    """What `level` means for a clip of this size, in words (for tables and plot labels)."""
    if kind == "noise":
        return f"noise std {level * NOISE_STD:.1f}/255"
    if kind == "blur":  # relative first, so that one label fits clips of several sizes
        side = min(height, width)
        px = level * BLUR_FRACTION * side
        return f"blur std {100 * level * BLUR_FRACTION:.2g}% of short side ({px:.1f} px at {side})"
    if kind == "shuffle":
        k = round(level * frames)
        return f"{k if k >= 2 else 0}/{frames} frames shuffled"
    if kind == "freeze":
        return f"{round(level * (frames - 1))}/{frames} frames frozen"
    raise ValueError(f"corruption kind {kind!r} is unknown; use one of {KINDS}")
