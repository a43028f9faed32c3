"""FVD: Fréchet distance against direct scipy/analytic references, clip reading, protocol records."""
import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from osplab.metrics import fvd


def rng(seed=0):
    return np.random.Generator(np.random.PCG64(seed))


def correlated(n, d, seed, shift=0.0):
    g = rng(seed)
    mix = g.standard_normal((d, d)) / np.sqrt(d)
    return g.standard_normal((n, d)) @ mix + shift


def scipy_reference(x, y, bias=False):
    """The textbook formula, written out directly with numpy.cov and scipy.linalg.sqrtm."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False, bias=bias), np.cov(y, rowvar=False, bias=bias)
    return np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)


@pytest.mark.parametrize("covariance,bias", [("unbiased", False), ("biased", True)])
def test_stats_match_numpy_cov(covariance, bias):
    x = correlated(50, 7, 1)
    mu, s = fvd.gaussian_stats(x, covariance)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s, np.cov(x, rowvar=False, bias=bias), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("covariance,bias", [("unbiased", False), ("biased", True)])
def test_frechet_equals_direct_scipy_reference(covariance, bias):
    x, y = correlated(600, 40, 2), correlated(500, 40, 3, shift=0.2)
    got, method = fvd.frechet_distance(*fvd.gaussian_stats(x, covariance), *fvd.gaussian_stats(y, covariance))
    assert method == "sqrtm"
    assert got == pytest.approx(scipy_reference(x, y, bias), rel=1e-6)


def test_biased_and_unbiased_differ():
    x, y = correlated(60, 10, 4), correlated(60, 10, 5)
    a = fvd.frechet_distance(*fvd.gaussian_stats(x, "unbiased"), *fvd.gaussian_stats(y, "unbiased"))[0]
    b = fvd.frechet_distance(*fvd.gaussian_stats(x, "biased"), *fvd.gaussian_stats(y, "biased"))[0]
    assert abs(a - b) / a > 1e-3


def test_same_features_give_zero():
    x = correlated(500, 30, 6)
    stats = fvd.gaussian_stats(x, "unbiased")
    d, _ = fvd.frechet_distance(*stats, *stats)
    assert abs(d) < 1e-8 * np.trace(stats[1])


def test_shift_gives_squared_distance():
    """Same covariance, means apart by delta: FD = |delta|^2 exactly (sqrtm(S S) = S)."""
    x = correlated(400, 20, 7)
    delta = rng(8).standard_normal(20)
    d, _ = fvd.frechet_distance(*fvd.gaussian_stats(x, "unbiased"), *fvd.gaussian_stats(x + delta, "unbiased"))
    assert d == pytest.approx(np.sum(delta**2), rel=1e-6)


def test_analytic_gaussians_with_shared_eigenbasis():
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
    g = rng(9)
    q, _ = np.linalg.qr(g.standard_normal((30, 30)))
    a, b = g.uniform(0.1, 4, 30), g.uniform(0.1, 4, 30)
    mu1, mu2 = g.standard_normal(30), g.standard_normal(30)
    expect = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got, _ = fvd.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(expect, rel=1e-9)
    assert fvd.trace_sqrt_product_eigh((q * a) @ q.T, (q * b) @ q.T) == pytest.approx(np.sqrt(a * b).sum(), rel=1e-9)


def test_singular_covariances_agree_across_methods():
    """N < d (as with small FVD runs): sqrtm path and eigen trace agree to ~1e-5 relative."""
    x, y = correlated(40, 60, 10), correlated(40, 60, 11, shift=0.1)
    (m1, s1), (m2, s2) = fvd.gaussian_stats(x, "unbiased"), fvd.gaussian_stats(y, "unbiased")
    d, _ = fvd.frechet_distance(m1, s1, m2, s2)
    d_eigh = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * fvd.trace_sqrt_product_eigh(s1, s2)
    assert d == pytest.approx(d_eigh, rel=1e-5)


def test_fallback_when_sqrtm_fails(monkeypatch):
    x, y = correlated(300, 20, 12), correlated(300, 20, 13, shift=0.3)
    stats = (*fvd.gaussian_stats(x, "unbiased"), *fvd.gaussian_stats(y, "unbiased"))
    expect, _ = fvd.frechet_distance(*stats)
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: np.full_like(a, np.nan))
    got, method = fvd.frechet_distance(*stats)
    assert method == "eigh" and got == pytest.approx(expect, rel=1e-8)


def test_spread_is_seeded_and_brackets_the_fvd():
    x, y = correlated(200, 10, 14), correlated(200, 10, 15, shift=1.0)
    a = fvd.fvd_from_features(x, y, "unbiased", 20, 3, progress=False)
    assert a == fvd.fvd_from_features(x, y, "unbiased", 20, 3, progress=False)
    assert a["bootstrap_std"] > 0 and a["bootstrap_p2_5"] < a["fvd"] < a["bootstrap_p97_5"]
    assert a["fvd_debiased"] < a["fvd"]  # FVD is biased upward at finite N; the correction lowers it


def test_tf1_resize_conventions():
    x = torch.arange(8.0).repeat(8, 1)[None, None]  # (1, 1, 8, 8), value = column index
    np.testing.assert_array_equal(fvd.resize_frames(x, 4, "tf1")[0, 0], x[0, 0, ::2, ::2])  # src = 2 dst
    up = fvd.resize_frames(x, 16, "tf1")[0, 0, 0]  # src = dst / 2, clamped at the last pixel
    np.testing.assert_allclose(up, np.minimum(np.arange(16) / 2, 7))
    torch.testing.assert_close(fvd.resize_frames(x, 16, "pytorch"), F.interpolate(x, size=(16, 16), mode="bilinear"))
    for method in fvd.RESIZE:
        torch.testing.assert_close(fvd.resize_frames(x, 8, method), x)
    assert not torch.allclose(fvd.resize_frames(x, 16, "tf1"), fvd.resize_frames(x, 16, "pytorch"))


def test_preprocess_range_and_layout():
    clips = np.zeros((2, 3, 5, 6, 3), np.uint8)
    clips[0, :, :, :, 1] = 255
    x = fvd.preprocess(clips, 10, "tf1")
    assert x.shape == (2, 3, 3, 10, 10)
    assert x[0, 1].min() == 1.0 and x[0, 0].max() == -1.0 and x[1].max() == -1.0
    with pytest.raises(ValueError, match="uint8"):
        fvd.preprocess(clips.astype(np.float32), 10, "tf1")


def test_clip_source_folder_subset_and_skips(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "a.npy", np.full((3, 20, 8, 8, 3), 1, np.uint8))
    np.save(shards / "b.npy", np.full((2, 6, 4, 6, 3), 2, np.uint8))  # too short for 5 frames x stride 2
    src = fvd.ClipSource(shards, frames=5, stride=2)
    clips = list(src)
    assert len(src) == 5 and len(clips) == 3 and len(src.skipped) == 2
    assert clips[0].shape == (5, 8, 8, 3)
    sub = [fvd.ClipSource(shards, 5, 2, num_clips=2, seed=1).refs for _ in range(2)]
    assert len(sub[0]) == 2 and [r[1] for r in sub[0]] == [r[1] for r in sub[1]]
    with pytest.raises(ValueError, match="uint8"):
        np.save(shards / "c.npy", np.zeros((1, 5, 4, 4, 3), np.float32))
        fvd.ClipSource(shards, 5, 1)


def test_clip_source_decodes_videos(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as box:
        stream = box.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for t in range(12):
            frame = np.full((32, 32, 3), 20 * t, np.uint8)
            box.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        box.mux(stream.encode())
    clips = list(fvd.ClipSource(path, frames=4, stride=3))
    assert len(clips) == 1 and clips[0].shape == (4, 32, 32, 3)
    np.testing.assert_allclose(clips[0].mean(axis=(1, 2, 3)), [0, 60, 120, 180], atol=6)
    short = fvd.ClipSource(path, frames=13, stride=1)
    assert list(short) == [] and "12 frames" in short.skipped[0][1]


@pytest.fixture(scope="module")
def model():
    from osplab.metrics.i3d import load_i3d

    return load_i3d()


def tiny_cfg(**kw):
    cfg = dict(num_clips=None, frames=10, stride=1, resolution=224, resize="tf1", covariance="unbiased",
               bootstrap_rounds=5, batch_size=2, seed=0, real_split="test-real")
    return {**cfg, **kw}


def test_end_to_end_protocol_record_and_cache(model, tmp_path):
    """Real I3D on 3 + 3 tiny clips (10 frames, the cheapest length I3D accepts comfortably)."""
    g = rng(16)
    real = g.integers(0, 256, (3, 10, 24, 24, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + g.integers(-60, 60, real.shape), 0, 255).astype(np.uint8)
    (tmp_path / "fake").mkdir()
    np.save(tmp_path / "fake" / "a.npy", fake)
    np.save(tmp_path / "fake" / "b.npy", fake[:1, :8])  # too short: skipped and counted
    cache = tmp_path / "real.npz"
    with pytest.warns(UserWarning, match="fake: skipped 1 of 4"):
        diff = fvd.compute_fvd(real, tmp_path / "fake", tiny_cfg(), model=model, progress=False, real_cache=cache)
    same = fvd.compute_fvd(cache, cache, tiny_cfg(), model=model, progress=False)  # features reused, no I3D
    assert abs(same.fvd) < 1e-4 * diff.fvd and diff.fvd > 0 and diff.skipped_fake == 1
    p = diff.protocol
    assert (p.n_real, p.n_fake, p.frames, p.covariance, p.real_split) == (3, 3, 10, "unbiased", "test-real")
    assert p.weights_sha256 == model.weights_sha256
    diff.save(tmp_path / "fvd.json")
    saved = json.loads((tmp_path / "fvd.json").read_text())
    assert saved["fvd"] == diff.fvd and saved["protocol"]["bootstrap_rounds"] == 5
    assert "FVD" in diff.summary() and "3 real (test-real)" in diff.summary()
    with pytest.raises(ValueError, match="different protocol"):
        fvd.compute_fvd(cache, fake, tiny_cfg(stride=2), model=model, progress=False)


def test_cli_on_cached_features(model, tmp_path, capsys):
    from osplab.fvd import main

    meta = dict(frames=16, stride=1, resolution=224, resize="tf1", num_clips=8, seed=0,
                weights_sha256=model.weights_sha256)
    fvd.save_features(tmp_path / "r.npz", correlated(30, 20, 17), meta)
    fvd.save_features(tmp_path / "f.npz", correlated(30, 20, 18, shift=0.5), meta)
    args = [str(tmp_path / "r.npz"), str(tmp_path / "f.npz"), "--num-clips", "8", "--stride", "1",
            "--bootstrap-rounds", "3", "--quiet", "--out", str(tmp_path / "o.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "FVD" in out and "30 real" in out and "unbiased covariance" in out
    protocol = json.loads((tmp_path / "o.json").read_text())["protocol"]
    assert protocol["n_fake"] == 30 and protocol["real_split"] == str(tmp_path / "r.npz")  # what REAL was
    assert main(args + ["--real-split", "val"]) == 0
    assert json.loads((tmp_path / "o.json").read_text())["protocol"]["real_split"] == "val"


@pytest.mark.parametrize("flag,value,allowed", [
    ("--bootstrap-rounds", "-1", "an integer >= 0"), ("--batch-size", "0", "an integer >= 1"),
    ("--stride", "0", "an integer >= 1"), ("--resolution", "0", "an integer >= 193 and <= 224"),
    ("--num-clips", "-3", "an integer >= 2"), ("--frames", "4", "an integer >= 9"),
    ("--covariance", "biassed", "one of 'unbiased', 'biased'")])
def test_cli_rejects_bad_flags_before_any_work(tmp_path, capsys, monkeypatch, flag, value, allowed):
    from osplab.fvd import main
    from osplab.metrics import i3d

    monkeypatch.setattr(i3d, "load_i3d", lambda *a, **k: pytest.fail("I3D loaded before the settings were checked"))
    np.save(tmp_path / "c.npy", np.zeros((2, 16, 8, 8, 3), np.uint8))
    assert main([str(tmp_path / "c.npy"), str(tmp_path / "c.npy"), flag, value, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {flag}={value if flag == '--covariance' else int(value)!r} is not allowed; allowed: {allowed}"


def test_cli_names_the_config_file_for_a_bad_file_setting(tmp_path, capsys):
    from osplab.fvd import main

    conf = tmp_path / "eval.yaml"
    conf.write_text(fvd_default_yaml().replace("batch_size: 4", "batch_size: 0"))
    assert main(["a", "b", "--config", str(conf)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: batch_size (in {conf})=0 is not allowed")


def fvd_default_yaml() -> str:
    from osplab.fvd import DEFAULT_CONFIG

    text = DEFAULT_CONFIG.read_text()
    assert "batch_size: 4" in text
    return text


def test_rank_deficient_side_warns():
    x, y = correlated(30, 20, 17), correlated(3, 20, 18)
    with pytest.warns(UserWarning, match=r"only fake 3 clips for 20-dimensional features"):
        fvd.warn_rank_deficient(len(x), len(y), x.shape[1])
