"""The FVD spread (half-sampling) checked on Gaussian features whose Fréchet distance is known in closed form.

Features: N(mu1, S1) vs N(mu2, S2) with S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T (a shared random
eigenbasis), so FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 exactly, without any matrix root.
Many seeds (independent draws of N clips per side) give the coverage of each interval.
"""
import numpy as np
import pytest

from osplab.metrics import fvd
from osplab.metrics.spread import half_sample_fvd

D, N, SEEDS, ROUNDS = 16, 96, 200, 40


def problem():
    g = np.random.Generator(np.random.PCG64(2026))
    q, _ = np.linalg.qr(g.standard_normal((D, D)))
    a, b = g.uniform(0.5, 2.0, D), g.uniform(0.5, 2.0, D)
    mu1, mu2 = np.zeros(D), g.normal(0.0, 0.25, D)
    true_fd = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    return (mu1, q * np.sqrt(a)), (mu2, q * np.sqrt(b)), true_fd


def draw(side, n, g):
    mu, root = side
    return mu + g.standard_normal((n, D)) @ root.T  # covariance root root^T = Q diag Q^T


def old_bootstrap_interval(x, y, rounds, g):
    """The previous method, written out: percentiles of FVDs of resamples with replacement."""
    vals = []
    for _ in range(rounds):
        r, f = x[g.integers(0, len(x), len(x))], y[g.integers(0, len(y), len(y))]
        vals.append(fvd.fvd_from_features(r, f, "unbiased", 0, 0, progress=False)["fvd"])
    return np.percentile(vals, [2.5, 97.5])


@pytest.fixture(scope="module")
def runs():
    side1, side2, true_fd = problem()
    rows = []
    for seed in range(SEEDS):
        g = np.random.Generator(np.random.PCG64(seed))
        x, y = draw(side1, N, g), draw(side2, N, g)
        res = fvd.fvd_from_features(x, y, "unbiased", ROUNDS, seed, progress=False)
        old = old_bootstrap_interval(x, y, ROUNDS, g) if seed < 50 else (np.nan, np.nan)
        rows.append((res, old))
    return rows, true_fd


def test_intervals_contain_their_estimates(runs):
    rows, _ = runs
    for res, _ in rows:
        assert res["bootstrap_p2_5"] < res["fvd"] < res["bootstrap_p97_5"]
        assert res["fvd_debiased_p2_5"] < res["fvd_debiased"] < res["fvd_debiased_p97_5"]


def test_debiased_interval_covers_the_closed_form_distance(runs):
    rows, true_fd = runs
    covered = np.mean([r["fvd_debiased_p2_5"] <= true_fd <= r["fvd_debiased_p97_5"] for r, _ in rows])
    plug_in = np.array([r["fvd"] for r, _ in rows])
    debiased = np.array([r["fvd_debiased"] for r, _ in rows])
    assert 0.88 <= covered <= 0.99, covered
    # the plug-in FVD is biased upward by a lot more than the debiased one (bias ~ 1/N)
    assert plug_in.mean() - true_fd > 5 * abs(debiased.mean() - true_fd)
    # the previous bootstrap percentile interval missed it: the whole interval sits above
    old = [(lo, hi) for _, (lo, hi) in rows[:50]]
    assert np.mean([lo <= true_fd <= hi for lo, hi in old]) < 0.2
    assert np.mean([lo > r["fvd"] for (r, _), (lo, _) in zip(rows, old)]) > 0.5


def test_std_and_interval_describe_the_n_clip_fvd(runs):
    """Reference computed another way: the spread of the FVD over the independent draws themselves."""
    rows, _ = runs
    plug_in = np.array([r["fvd"] for r, _ in rows])
    std = np.array([r["bootstrap_std"] for r, _ in rows])
    ratio = np.median(std) / plug_in.std(ddof=1)
    assert 0.85 <= ratio <= 1.4, ratio  # never much too narrow; halves of few clips err on the wide side
    mean_fvd = plug_in.mean()  # E[FVD at N clips], estimated over the draws
    covered = np.mean([r["bootstrap_p2_5"] <= mean_fvd <= r["bootstrap_p97_5"] for r, _ in rows])
    assert 0.88 <= covered <= 0.99, covered


def test_half_sampling_is_seeded_and_has_no_duplicates():
    side1, side2, _ = problem()
    g = np.random.Generator(np.random.PCG64(0))
    x, y = draw(side1, 10, g), draw(side2, 9, g)
    a = half_sample_fvd(x, y, 5, seed=3, covariance="unbiased", progress=False)
    np.testing.assert_array_equal(a, half_sample_fvd(x, y, 5, seed=3, covariance="unbiased", progress=False))
    assert not np.array_equal(a, half_sample_fvd(x, y, 5, seed=4, covariance="unbiased", progress=False))
    # a half of 2 distinct clips out of 4 identical-but-one: duplicates would give a zero covariance
    with pytest.raises(ValueError, match=">= 4 clips per side"):
        half_sample_fvd(x[:3], y, 5, seed=0, covariance="unbiased")
    res = fvd.fvd_from_features(x[:3], y, "unbiased", 5, 0, progress=False)
    assert res["bootstrap_std"] is None and res["fvd_debiased"] is None and res["fvd"] > 0
