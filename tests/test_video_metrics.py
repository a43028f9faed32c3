"""PSNR, SSIM and flicker against closed forms and an independent brute-force SSIM."""
import numpy as np
import pytest
import torch

from osplab.metrics import video

SSIM_CFG = dict(window=11, sigma=1.5, k1=0.01, k2=0.03)


def rng(seed=0):
    return np.random.Generator(np.random.PCG64(seed))


def test_psnr_of_known_mse():
    real = np.zeros((1, 2, 4, 4, 3), np.uint8)
    fake = real.copy()
    fake[0, 0] = 16   # frame 0: MSE 256
    fake[0, 1] = 4    # frame 1: MSE 16
    expect = (10 * np.log10(255**2 / 256) + 10 * np.log10(255**2 / 16)) / 2
    assert video.psnr(fake, real, 255).item() == pytest.approx(expect, rel=1e-12)
    assert video.psnr(real, real, 255).item() == float("inf")


def test_psnr_float_range():
    g = rng(1)
    real = g.uniform(-1, 1, (2, 3, 8, 8, 3))
    fake = real + 0.1
    assert video.psnr(fake, real, 2.0).numpy() == pytest.approx(10 * np.log10(4 / 0.01))


def brute_force_ssim(x, y, data_range, window=11, sigma=1.5, k1=0.01, k2=0.03):
    """One explicit weighted window at a time, for a single (H, W) channel."""
    g = np.exp(-((np.arange(window) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    vals = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            a, b = x[i : i + window, j : j + window], y[i : i + window, j : j + window]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb, cab = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum(), (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return np.mean(vals)


def test_ssim_matches_brute_force():
    g = rng(2)
    real = g.integers(0, 256, (2, 3, 15, 17, 2)).astype(np.uint8)
    fake = np.clip(real + g.integers(-40, 40, real.shape), 0, 255).astype(np.uint8)
    got = video.ssim(fake, real, 255, **SSIM_CFG).numpy()
    expect = [np.mean([brute_force_ssim(fake[n, t, :, :, c].astype(float), real[n, t, :, :, c].astype(float), 255)
                       for t in range(3) for c in range(2)]) for n in range(2)]
    np.testing.assert_allclose(got, expect, rtol=1e-10)


def test_ssim_identity_constants_and_symmetry():
    g = rng(3)
    x = g.integers(0, 256, (2, 2, 16, 16, 3)).astype(np.uint8)
    np.testing.assert_allclose(video.ssim(x, x, 255, **SSIM_CFG).numpy(), 1.0, rtol=1e-12)
    a, b = np.full((1, 1, 12, 12, 1), 100.0), np.full((1, 1, 12, 12, 1), 150.0)
    c1 = (0.01 * 255) ** 2  # flat images: contrast/structure term is 1, luminance term remains
    assert video.ssim(a, b, 255, **SSIM_CFG).item() == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))
    y = np.clip(x + g.integers(-30, 30, x.shape), 0, 255).astype(np.uint8)
    torch.testing.assert_close(video.ssim(x, y, 255, **SSIM_CFG), video.ssim(y, x, 255, **SSIM_CFG))
    noisier = np.clip(x + g.integers(-90, 90, x.shape), 0, 255).astype(np.uint8)
    assert (video.ssim(noisier, x, 255, **SSIM_CFG) < video.ssim(y, x, 255, **SSIM_CFG)).all()


def test_flicker_known_values():
    frozen = np.full((2, 5, 4, 4, 3), 77, np.uint8)
    blink = np.zeros((2, 5, 4, 4, 3), np.uint8)
    blink[:, 1::2] = 255  # 0, 255, 0, 255, 0: every step changes by the full range
    np.testing.assert_array_equal(video.temporal_flicker(frozen, 255).numpy(), 0.0)
    np.testing.assert_array_equal(video.temporal_flicker(blink, 255).numpy(), 1.0)
    ramp = np.broadcast_to(np.arange(5, dtype=np.uint8)[None, :, None, None, None] * 10, (1, 5, 4, 4, 3))
    assert video.flicker_ratio(blink, ramp, 255) == pytest.approx(255 / 10)
    with pytest.raises(ValueError, match="frozen"):
        video.flicker_ratio(blink, frozen, 255)


def test_video_metrics_chunking_and_errors():
    g = rng(4)
    real = g.integers(0, 256, (5, 4, 16, 16, 3)).astype(np.uint8)
    fake = np.clip(real + g.integers(-20, 20, real.shape), 0, 255).astype(np.uint8)
    a = video.video_metrics(fake, real, 255, SSIM_CFG, chunk=2)
    b = video.video_metrics(fake, real, 255, SSIM_CFG, chunk=16)
    assert a == pytest.approx(b, rel=1e-12)
    assert 0 < a["ssim"] < 1 and a["psnr"] > 20
    with pytest.raises(ValueError, match="same shape"):
        video.psnr(fake[:, :3], real, 255)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        video.ssim(fake[:, :, :8, :8], real[:, :, :8, :8], 255, **SSIM_CFG)
