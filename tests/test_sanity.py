"""FVD sanity helpers: windows, halves, FVD records, the corruption sweep and its report.

A cheap stand-in for I3D (same interface, any input size, counts the clips it sees) keeps these tests
fast; the real I3D runs in tests/test_evaluate.py and in the notebook (nbval).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from osplab.metrics import sanity
from osplab.metrics.fvd import fvd_from_features, preprocess

ECFG = dict(frames=16, stride=1, resolution=32, resize="tf1", num_clips=8, seed=0, real_split="val", batch_size=3,
            covariance="unbiased", bootstrap_rounds=4)


class FakeI3D(nn.Module):
    """(B, 3, T, R, R) -> (B, 400): pooled pixels through a fixed random projection."""

    weights_sha256 = "fake"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(3 * 2 * 4 * 4, 400)
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.proj(nn.functional.adaptive_avg_pool3d(x, (2, 4, 4)).flatten(1))


def clips(n: int, seed: int = 0, t: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (t, 24 + 8 * (i % 2), 32, 3), dtype=np.uint8) for i in range(n)]


def test_fvd_window_takes_strided_frames_from_the_start():
    clip = np.arange(20)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    w = sanity.fvd_window(clip.astype(np.uint8), frames=4, stride=3)
    assert w.shape == (4, 2, 2, 3) and list(w[:, 0, 0, 0]) == [0, 3, 6, 9]
    assert sanity.window_length(4, 3) == 10
    assert sanity.fvd_window(clip[:10].astype(np.uint8), 4, 3).shape[0] == 4
    with pytest.raises(ValueError, match="9 frames is shorter than 4 frames x stride 3"):
        sanity.fvd_window(clip[:9].astype(np.uint8), 4, 3)


def test_halves_are_disjoint_seeded_and_cover_everything():
    a, b = sanity.split_halves(9, seed=1)
    assert len(a) == 4 and len(b) == 5 and sorted(np.r_[a, b]) == list(range(9))
    a2, b2 = sanity.split_halves(9, seed=1)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    assert any(not np.array_equal(a, sanity.split_halves(9, seed=s)[0]) for s in (2, 3, 4))
    with pytest.raises(ValueError, match="3 clips cannot be split"):
        sanity.split_halves(3, 0)


def test_clip_features_match_a_direct_forward_pass():
    model, cs = FakeI3D(), clips(5)
    feats = sanity.clip_features(cs, model, ECFG, progress=False)
    with torch.no_grad():
        direct = torch.cat([model(preprocess(c[None], 32, "tf1")) for c in cs]).double().numpy()
    assert feats.shape == (5, 400) and np.allclose(feats, direct, rtol=1e-5, atol=1e-6)


def test_fvd_result_carries_the_protocol_of_the_settings():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(20, 400)), rng.normal(0.3, 1, size=(24, 400))
    res = sanity.fvd_result(real, fake, ECFG, "abc", skipped_real=2)
    with threadpool_limits(1, "blas"):  # as fvd_result runs it (multi-threaded BLAS crawls on busy cores)
        ref = fvd_from_features(real, fake, "unbiased", 4, 0, progress=False)
    assert res.fvd == pytest.approx(ref["fvd"], rel=1e-9)
    assert res.bootstrap_std == pytest.approx(ref["bootstrap_std"], rel=1e-9)
    p = res.protocol
    assert (p.n_real, p.n_fake, p.frames, p.resolution, p.resize, p.weights_sha256, p.bootstrap_rounds) == (
        20, 24, 16, 32, "tf1", "abc", 4)
    assert res.skipped_real == 2 and "20 real (val) vs 24 fake" in res.summary()
    assert sanity.fvd_result(real, fake, dict(ECFG, bootstrap_rounds=0), "abc").bootstrap_std is None


def test_sweep_shares_level_zero_and_extracts_each_set_once():
    model, cs = FakeI3D(), clips(8)
    kinds, levels = ["noise", "freeze"], [0.0, 0.5, 1.0]
    rows = sanity.corruption_sweep(cs, kinds, levels, model, ECFG, progress=False)
    assert [(r["kind"], r["level"]) for r in rows] == [(k, lv) for k in kinds for lv in levels]
    assert model.seen == 4 + 4 + len(kinds) * 2 * 4  # A, B, then B per (kind, level > 0)
    zero = [r for r in rows if r["level"] == 0]
    assert len({r["fvd"] for r in zero}) == 1
    a, b = sanity.split_halves(8, ECFG["seed"])
    fa = sanity.clip_features([cs[i] for i in a], FakeI3D(), ECFG, progress=False)
    fb = sanity.clip_features([cs[i] for i in b], FakeI3D(), ECFG, progress=False)
    assert zero[0]["fvd"] == pytest.approx(sanity.fvd_result(fa, fb, ECFG, "fake").fvd, rel=1e-9)
    assert rows[1]["strength"] == "noise std 32.0/255" and rows[0]["protocol"].n_real == 4
    with pytest.raises(ValueError, match="give lists"):
        sanity.corruption_sweep(cs, kinds, "[0, 1]", model, ECFG, progress=False)
    with pytest.raises(ValueError, match="kinds from"):
        sanity.corruption_sweep(cs, ["jpeg"], levels, model, ECFG, progress=False)


def test_sweep_against_reference_features_uses_every_clip_as_b():
    model, cs = FakeI3D(), clips(6)
    reference = sanity.clip_features(clips(5, seed=1), FakeI3D(), ECFG, progress=False)
    rows = sanity.corruption_sweep(cs, ["blur"], [0.0, 1.0], model, ECFG, progress=False, reference=reference)
    assert model.seen == 6 + 6                         # B once, then B blurred; A is not extracted again
    fb = sanity.clip_features(cs, FakeI3D(), ECFG, progress=False)
    assert rows[0]["fvd"] == pytest.approx(sanity.fvd_result(reference, fb, ECFG, "fake").fvd, rel=1e-9)
    assert rows[0]["protocol"].n_real == 5 and rows[0]["protocol"].n_fake == 6
    with pytest.raises(ValueError, match="need"):
        sanity.corruption_sweep(cs, ["blur"], [0.0], model, ECFG, progress=False, reference=reference[:1])


def fake_rows(values: dict[str, list[float]]) -> list[dict]:
    feats = np.random.default_rng(0).normal(size=(3, 400))
    p = sanity.fvd_result(feats, feats + 1, dict(ECFG, bootstrap_rounds=0), "x").protocol
    return [dict(kind=k, level=lv, strength=f"{k} {lv}", fvd=f, std=None if lv == 0 else 1.0, p2_5=None, p97_5=None,
                 sqrtm_method="sqrtm", protocol=p)
            for k, fs in values.items() for lv, f in zip([0.0, 0.5, 1.0], fs)]


def test_monotonicity_and_spearman():
    rows = fake_rows({"noise": [1, 2, 3], "blur": [3, 2, 1], "freeze": [1, 3, 2]})
    assert sanity.spearman_by_kind(rows) == pytest.approx({"noise": 1.0, "blur": -1.0, "freeze": 0.5})
    assert [sanity.is_monotone(rows, k) for k in ("noise", "blur", "freeze")] == [True, False, False]


def test_report_files(tmp_path):
    rows = fake_rows({"noise": [10.0, 20.0, 30.0], "shuffle": [10.0, 11.0, 10.5]})
    md, png, js = tmp_path / "r.md", tmp_path / "r.png", tmp_path / "r.json"
    sanity.write_report(rows, md, png, js)
    text = md.read_text()
    assert "| noise | 0.5 | noise 0.5 | 20.00 | 1.00 |" in text and "| shuffle | 0.500 | no |" in text
    assert "| noise | 0 | noise 0.0 | 10.00 | - |" in text and "3 vs 3 clips" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
    rec = json.loads(js.read_text())
    assert rec["monotone"] == {"noise": True, "shuffle": False} and len(rec["rows"]) == 6
    assert rec["protocol"] == dataclasses.asdict(rows[0]["protocol"])


def test_report_says_what_a_and_b_are(tmp_path):
    """The stage's A (cached val features) and B (test clips) are not halves: the report must not say so."""
    rows = fake_rows({"noise": [10.0, 20.0, 30.0]})
    halves = sanity.sweep_markdown(rows)
    assert "two disjoint random halves of the real `val` clips (3 vs 3 clips)" in halves
    sets = "A is the 3 real `val` clips whose I3D features the eval_real stage cached and B is 3 real clips of `test`"
    text = sanity.sweep_markdown(rows, sets=sets)
    assert f"where {sets} (3 vs 3 clips)" in text and "halves" not in text
