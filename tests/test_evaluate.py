"""The evaluate stage: clip choice, real-feature cache, quality numbers, and the stage end to end.

The end-to-end tests use the real Kinetics-400 I3D with the smoke profile's protocol (16 frames at
224, 4 clips at most; the smoke store's val split has 3 clips long enough) and a tiny VQVAE with
random weights written like train_vqvae writes it.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from osplab.config import compose, write_params
from osplab.data.clips import ClipDataset
from osplab.metrics.sanity import usable_clips
from osplab.stages import evaluate as ev


class FakeI3D(nn.Module):
    """A cheap stand-in with the I3D interface: (B, 3, T, R, R) -> (B, 400); counts the clips it sees."""

    weights_sha256 = "fake"

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4, 400)
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        pooled = nn.functional.adaptive_avg_pool3d(x, (1, 2, 2)).flatten(1)  # (B, 12)
        return self.proj(pooled)


class Identity(nn.Module):
    """A 'VQVAE' that reconstructs perfectly (the interface `reconstruct` uses)."""

    cfg = SimpleNamespace(codebook_size=4)

    def encode(self, x):
        return x, torch.zeros(x.shape[0], 1, dtype=torch.long), None

    def decode(self, z):
        return z


ECFG = dict(frames=16, stride=1, resolution=224, resize="tf1", num_clips=4, seed=0, real_split="val", batch_size=2,
            covariance="unbiased", bootstrap_rounds=3)


def clips(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (16, 24 + 8 * (i % 2), 32, 3), dtype=np.uint8) for i in range(n)]


def test_usable_clips_are_long_enough_seeded_and_counted(smoke_store):
    ds = ClipDataset(smoke_store, "val")
    long_enough = [i for i, (t, _, _) in enumerate(ds.shapes()) if t >= 16]
    idx, short = usable_clips(ds, 16, 1, None, 0)
    assert idx == long_enough and short == len(ds) - len(long_enough) and len(idx) >= 2
    two = usable_clips(ds, 16, 1, 2, seed=5)[0]
    assert two == usable_clips(ds, 16, 1, 2, seed=5)[0] and set(two) < set(idx) and two == sorted(two)
    all8, short8 = usable_clips(ds, 8, 1, None, 0)
    assert len(all8) == len(ds) and short8 == 0
    with pytest.raises(ValueError, match="eval.frames=16, eval.stride=2"):
        usable_clips(ds, 16, 2, None, 0)


def test_quality_matches_a_numpy_reference():
    real, fake = clips(3, 0), clips(3, 1)
    q = ev.quality(real, fake, dict(window=7, sigma=1.5, k1=0.01, k2=0.03))
    frame_psnr = [10 * np.log10(255.0**2 / ((f[t].astype(float) - r[t]) ** 2).mean())
                  for r, f in zip(real, fake) for t in range(len(r))]
    assert q["psnr"] == pytest.approx(np.mean(frame_psnr), rel=1e-9)
    change = lambda vids: sum(np.abs(np.diff(v.astype(float), axis=0)).sum() / v[0].size for v in vids)  # noqa: E731
    assert q["flicker_ratio"] == pytest.approx(change(fake) / change(real), rel=1e-9)
    same = ev.quality(real, real, dict(window=7, sigma=1.5, k1=0.01, k2=0.03))
    assert same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0) and same["flicker_ratio"] == 1.0
    assert -1 < q["ssim"] < 0.1  # independent noise: no structure in common


def test_real_cache_is_reused_only_for_the_same_pixels_and_protocol(tmp_path):
    model, windows, ids = FakeI3D(), clips(4, 0), ["a", "b", "c", "d"]
    cache = tmp_path / "real.npz"
    first, hit = ev.real_features(windows, ids, model, ECFG, str(cache), progress=False)
    assert not hit and first.shape == (4, 400) and model.seen == 4 and cache.is_file()
    again, hit = ev.real_features(windows, ids, model, ECFG, str(cache), progress=False)
    assert hit and np.array_equal(again, first) and model.seen == 4
    changed = [w.copy() for w in windows]
    changed[2][0, 0, 0, 0] ^= 1  # one pixel
    _, hit = ev.real_features(changed, ids, model, ECFG, str(cache), progress=False)
    assert not hit and model.seen == 8
    _, hit = ev.real_features(changed, ids, model, dict(ECFG, resize="pytorch"), str(cache), progress=False)
    assert not hit and model.seen == 12
    _, hit = ev.real_features(changed, ids, model, dict(ECFG, resize="pytorch"), None, progress=False)
    assert not hit and model.seen == 16


def test_readonly_real_cache_never_writes(tmp_path):
    """fvd_sanity reads the eval_real stage's cache: a missing or stale one is an error, not a rewrite."""
    model, windows, ids = FakeI3D(), clips(3, 0), ["a", "b", "c"]
    cache = tmp_path / "real.npz"
    with pytest.raises(FileNotFoundError, match="dvc repro eval_real"):
        ev.real_features(windows, ids, model, ECFG, str(cache), progress=False, readonly=True)
    assert not cache.exists() and model.seen == 0
    first, _ = ev.real_features(windows, ids, model, ECFG, str(cache), progress=False)
    got, hit = ev.real_features(windows, ids, model, ECFG, str(cache), progress=False, readonly=True)
    assert hit and np.array_equal(got, first)
    before = cache.read_bytes()
    with pytest.raises(ValueError, match=r"differs in \['resize'\]"):
        ev.real_features(windows, ids, model, dict(ECFG, resize="pytorch"), str(cache), progress=False, readonly=True)
    assert cache.read_bytes() == before


@pytest.fixture(scope="module")
def stage(smoke_store, tmp_path_factory):
    """params.yaml (smoke profile on the smoke store) and a random-weight tiny VQVAE checkpoint."""
    from osplab.models.vqvae import VQVAE, VQVAEConfig
    from osplab.train import save_tensors_atomic

    work = tmp_path_factory.mktemp("evaluate")
    cfg = compose(["profile=smoke", f"data.root={smoke_store}", f"vqvae.checkpoint={work / 'vqvae.safetensors'}"])
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig.from_dict(dict(cfg.vqvae.model)))
    save_tensors_atomic(model.state_dict(), cfg.vqvae.checkpoint,
                        metadata={"config": json.dumps(OmegaConf.to_container(cfg.vqvae.model, resolve=True))})
    write_params(cfg, work / "params.yaml")
    return work, cfg


def test_stage_end_to_end_with_real_i3d_and_cached_real_side(stage, capsys):
    from osplab.metrics.fvd import load_features

    work, cfg = stage
    args = ["--params", str(work / "params.yaml"), "--out", str(work / "eval.json"),
            "--real-cache", str(work / "real.npz"), "--no-progress"]
    shapes = ClipDataset(cfg.data.root, "val").shapes()
    n, short = min(sum(t >= 16 for t, _, _ in shapes), cfg.eval.num_clips), sum(t < 16 for t, _, _ in shapes)
    assert n >= 2 and short > 0  # the smoke val split has 8- and 16-frame clips: some are skipped
    built = ev.main(args + ["--real-only"])
    assert built["clips"] == n and built["skipped_real"] == short and not built["from_cache"]
    ev.main(args)
    out = json.loads((work / "eval.json").read_text())
    printed = capsys.readouterr().out
    assert f"FVD {out['fvd']:.2f}" in printed and f"protocol: {n} real (val) vs {n} fake clips" in printed
    assert "summary" not in out and out["real_features_from_cache"]
    assert out["clips"] == n and out["skipped_real"] == short
    for key in ("fvd", "psnr", "ssim", "flicker_ratio"):
        assert math.isfinite(out[key]), key
    assert out["fvd"] > 0 and out["psnr"] < 40
    if n < 4:  # half-sampling needs >= 4 clips per side: no spread rather than a meaningless one
        assert out["fvd_bootstrap_std"] is None and out["fvd_debiased"] is None and "no spread" in printed
    else:
        assert out["fvd_bootstrap_std"] > 0 and out["fvd_bootstrap_p2_5"] < out["fvd"] < out["fvd_bootstrap_p97_5"]
    p = out["protocol"]
    assert (p["n_real"], p["n_fake"], p["frames"], p["resolution"], p["bootstrap_rounds"]) == (
        n, n, cfg.eval.frames, cfg.eval.resolution, cfg.eval.bootstrap_rounds)
    assert len(out["vqvae_sha256"]) == 64
    feats, meta = load_features(work / "real.npz", {})
    assert feats.shape == (n, 400) and meta["weights_sha256"] == p["weights_sha256"]

    # the same numbers from the reconstructions computed here, and PSNR from numpy
    from osplab.stages.encode import load_vqvae
    from osplab.tasks.vqvae import reconstruct

    ds = ClipDataset(cfg.data.root, "val")
    idx, _ = usable_clips(ds, 16, 1, cfg.eval.num_clips, cfg.eval.seed)
    real, fake, _, _ = reconstruct(load_vqvae(cfg.vqvae.checkpoint), ev._Subset(ds, idx))
    frame_psnr = [10 * np.log10(255.0**2 / ((f[t].astype(float) - r[t]) ** 2).mean())
                  for r, f in zip(real, fake) for t in range(len(r))]
    assert out["psnr"] == pytest.approx(np.mean(frame_psnr), rel=1e-9)


def test_perfect_reconstruction_scores_zero_fvd(stage):
    from osplab.metrics.i3d import load_i3d

    work, cfg = stage
    out = ev.evaluate(cfg, str(work / "real.npz"), progress=False, i3d=load_i3d(), vqvae=Identity())
    assert out["real_features_from_cache"]
    print("FVD of a perfect reconstruction:", out["fvd"])
    assert abs(out["fvd"]) < 1e-3 and out["psnr"] == math.inf and out["flicker_ratio"] == 1.0
    assert out["ssim"] == pytest.approx(1.0) and out["vqvae_sha256"] is None
