"""Corruptions: identity at level 0, growing effect, kept shapes, determinism, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from osplab.metrics.corrupt import KINDS, corrupt, strength

LEVELS = [0.0, 0.25, 0.5, 0.75, 1.0]


def moving_texture(n: int = 3, t: int = 16, h: int = 32, w: int = 40, seed: int = 0) -> np.ndarray:
    """uint8 (n, t, h, w, 3): a smooth random texture sliding 2 px per frame, so every frame differs."""
    rng = np.random.default_rng(seed)
    tex = gaussian_filter(rng.uniform(0, 255, (n, h, w + 2 * t, 3)), sigma=(0, 1.5, 1.5, 0))
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 255
    return np.stack([tex[:, :, 2 * i:2 * i + w] for i in range(t)], axis=1).round().astype(np.uint8)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b) ** 2).mean())


@pytest.mark.parametrize("kind", KINDS)
def test_level_zero_is_an_exact_copy(kind):
    clips = moving_texture()
    out = corrupt(clips, kind, 0.0, seed=3)
    assert np.array_equal(out, clips) and out is not clips


@pytest.mark.parametrize("kind", KINDS)
def test_effect_grows_with_level(kind):
    clips = moving_texture()
    errors = [mse(corrupt(clips, kind, lv, seed=1), clips) for lv in LEVELS]
    assert errors[0] == 0.0
    assert all(b > a for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_dtypes_and_lists_are_kept(kind):
    clips = moving_texture()
    out = corrupt(clips, kind, 0.6, seed=0)
    assert out.shape == clips.shape and out.dtype == np.uint8
    mixed = [moving_texture(1, 12, 24, 32)[0], moving_texture(1, 16, 32, 32, seed=1)[0]]
    out_list = corrupt(mixed, kind, 0.6, seed=0)
    assert isinstance(out_list, list) and [c.shape for c in out_list] == [c.shape for c in mixed]
    assert all(c.dtype == np.uint8 for c in out_list)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_clip_and_seeded(kind):
    clips = moving_texture()
    a, b = corrupt(clips, kind, 0.5, seed=7), corrupt(clips, kind, 0.5, seed=7)
    assert np.array_equal(a, b)
    # clip i depends on (seed, kind, i) only, not on the other clips of the call
    assert np.array_equal(corrupt(clips[:2], kind, 0.5, seed=7), a[:2])
    if kind != "blur":  # blur has no randomness
        others = [corrupt(clips, kind, 0.5, seed=s) for s in (8, 9)]
        assert any(not np.array_equal(a, o) for o in others)


def test_noise_moves_every_pixel_monotonically():
    clips = moving_texture(1)
    prev = np.zeros(clips.shape)
    for lv in LEVELS[1:]:
        dist = np.abs(corrupt(clips, "noise", lv, seed=0).astype(np.float64) - clips)
        assert np.all(dist >= prev)
        prev = dist
    sd = (corrupt(clips, "noise", 0.25, seed=0).astype(np.float64) - clips)[(clips > 60) & (clips < 195)].std()
    assert 14 < sd < 18  # 0.25 * 64 = 16 where clipping to [0, 255] cannot bite


def test_shuffle_permutes_frames_and_freeze_repeats_them():
    clips = moving_texture(2)
    t = clips.shape[1]
    full = corrupt(clips, "shuffle", 1.0, seed=0)
    for c, s in zip(clips, full):
        # the same frames in another order, and no frame left in place (one cycle over all positions)
        rows = [next(j for j in range(t) if np.array_equal(s[i], c[j])) for i in range(t)]
        assert sorted(rows) == list(range(t)) and all(r != i for i, r in enumerate(rows))
    frozen = corrupt(clips, "freeze", 1.0, seed=0)
    assert np.array_equal(frozen, np.repeat(clips[:, :1], t, axis=1))
    half = corrupt(clips, "freeze", 0.5, seed=0)[0]
    changes = sum(not np.array_equal(half[i], half[i - 1]) for i in range(1, t))
    assert changes == (t - 1) - round(0.5 * (t - 1))


def test_blur_is_spatial_only():
    clips = moving_texture(1)
    flat = np.broadcast_to(clips[:, :, :1, :1], clips.shape).copy()  # constant frames that change over time
    assert np.array_equal(corrupt(flat, "blur", 1.0), flat)


def test_bad_inputs_name_the_problem():
    clips = moving_texture(1)
    with pytest.raises(ValueError, match="kind 'jpeg'"):
        corrupt(clips, "jpeg", 0.5)
    for bad in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="level"):
            corrupt(clips, "noise", bad)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(clips.astype(np.float32), "noise", 0.5)
    with pytest.raises(ValueError, match=r"\(N, T, H, W, 3\)"):
        corrupt(clips[0], "noise", 0.5)


def test_strength_describes_the_level():
    assert strength("noise", 0.5, 64, 64, 16) == "noise std 32.0/255"
    assert strength("blur", 1.0, 48, 64, 16) == "blur std 5% of short side (2.4 px at 48)"
    assert strength("blur", 0.25, 64, 64, 16) == "blur std 1.2% of short side (0.8 px at 64)"
    assert strength("shuffle", 0.5, 64, 64, 16) == "8/16 frames shuffled"
    assert strength("freeze", 1.0, 64, 64, 16) == "15/16 frames frozen"
