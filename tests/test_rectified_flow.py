"""Rectified flow on a distribution with a closed-form answer, plus diffusers' flow-matching Euler scheduler.

Data x0 ~ N(mu, diag(s^2)), noise n ~ N(0, I), x_t = (1 - t) x0 + t n. Per dimension, x_t is Gaussian with
mean (1 - t) mu and variance var(t) = (1 - t)^2 s^2 + t^2, and the exact (marginal) velocity is

    E[n - x0 | x_t] = -mu + (t - (1 - t) s^2) / var(t) * (x_t - (1 - t) mu),

whose residual variance, the minimum of the RF loss at time t, is s^2 / var(t); averaged over t ~ U(0, 1)
it is pi * s / 2. Its ODE is solved by x_t = (1 - t) mu + sqrt(var(t)) n, so integrating from noise n at
t = 1 down to t = 0 must give exactly mu + s * n.
"""

from __future__ import annotations

import math

import pytest
import torch

from osplab.diffusion import rectified_flow as rf

MU = torch.tensor([1.5, -2.0, 0.0, 0.5], dtype=torch.float64)
S = torch.tensor([0.5, 1.0, 2.0, 0.3], dtype=torch.float64)


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The marginal velocity field of the straight-path flow for N(MU, S^2). x: (B, 4), t: (B,)."""
    t = t[:, None].to(x.dtype)
    mu, s2 = MU.to(x.dtype), S.square().to(x.dtype)
    var = (1 - t) ** 2 * s2 + t**2
    return -mu + (t - (1 - t) * s2) / var * (x - (1 - t) * mu)


def data(n: int, generator: torch.Generator) -> torch.Tensor:
    return MU + S * torch.randn(n, 4, generator=generator, dtype=torch.float64)


def test_interpolate_endpoints_and_velocity_target():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 5, 5, generator=g), torch.randn(3, 2, 4, 5, 5, generator=g)
    t = torch.tensor([0.0, 1.0, 0.25])
    xt = rf.interpolate(x0, noise, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], noise[1])
    torch.testing.assert_close(xt[2], 0.75 * x0[2] + 0.25 * noise[2])
    # A model that returns exactly noise - x0 (it can, given both) has zero loss: the target is v = noise - x0.
    oracle = lambda x, tt: noise - x0  # noqa: E731
    assert rf.loss(oracle, x0, t=t, noise=noise).item() < 1e-12


def test_loss_at_exact_field_equals_analytic_minimum_on_a_fixed_t_grid():
    g = torch.Generator().manual_seed(1)
    n = 200_000
    t = torch.linspace(0, 1, 11, dtype=torch.float64).repeat_interleave(n // 11 + 1)[:n]
    x0, noise = data(n, g), torch.randn(n, 4, generator=g, dtype=torch.float64)
    got = rf.loss(exact_velocity, x0, t=t, noise=noise).item()
    tt = t[:, None]
    expected = (S.square() / ((1 - tt) ** 2 * S.square() + tt**2)).mean().item()
    assert got == pytest.approx(expected, rel=0.01)
    # Any other field is worse, by the mean square of the difference (the cross term has zero mean).
    shifted = rf.loss(lambda x, tt: exact_velocity(x, tt) + 0.3, x0, t=t, noise=noise).item()
    assert shifted - got == pytest.approx(0.09, rel=0.05)


def test_loss_on_grid_is_the_analytic_curve():
    g = torch.Generator().manual_seed(11)
    x0, noise = data(100_000, g), torch.randn(100_000, 4, generator=g, dtype=torch.float64)
    grid = [0.0, 0.1, 0.5, 0.9, 1.0]
    curve = rf.loss_on_grid(exact_velocity, x0, noise, grid)
    t = torch.tensor(grid, dtype=torch.float64)[:, None]
    expected = (S.square() / ((1 - t) ** 2 * S.square() + t**2)).mean(1)  # s^2 / var(t), mean over dimensions
    torch.testing.assert_close(curve, expected, rtol=0.015, atol=0)
    assert torch.equal(curve, rf.loss_on_grid(exact_velocity, x0, noise, grid))  # fixed problems: no randomness


def test_loss_with_uniform_t_from_generator_equals_pi_s_over_2():
    g = torch.Generator().manual_seed(2)
    n = 200_000
    got = rf.loss(exact_velocity, data(n, g), g, timesteps=rf.TimestepSampler("uniform")).item()
    assert got == pytest.approx((math.pi * S / 2).mean().item(), rel=0.01)


def test_loss_weights():
    g = torch.Generator().manual_seed(3)
    x0, noise, t = torch.randn(6, 3, 2, generator=g), torch.randn(6, 3, 2, generator=g), torch.rand(6, generator=g)
    model = lambda x, tt: 0.5 * x  # noqa: E731
    plain = rf.loss(model, x0, t=t, noise=noise)
    torch.testing.assert_close(rf.loss(model, x0, t=t, noise=noise, weights=torch.ones(6)), plain)
    # Weights (2, 0, 0, 0, 0, 0) keep only sample 0: mean_b(w_b * mse_b) = 2 * mse_0 / 6.
    w = torch.tensor([2.0, 0, 0, 0, 0, 0])
    mse0 = rf.loss(model, x0[:1], t=t[:1], noise=noise[:1])
    torch.testing.assert_close(rf.loss(model, x0, t=t, noise=noise, weights=w), 2 * mse0 / 6)
    with pytest.raises(ValueError, match=r"weights must have shape \(6,\)"):
        rf.loss(model, x0, t=t, noise=noise, weights=torch.ones(5))


def test_timestep_samplers_distribution_and_seeding():
    uni = rf.TimestepSampler("uniform")(100_000, torch.Generator().manual_seed(4))
    assert uni.min() >= 0 and uni.max() <= 1
    assert uni.mean().item() == pytest.approx(0.5, abs=0.005)
    assert uni.var().item() == pytest.approx(1 / 12, rel=0.02)
    ln = rf.TimestepSampler("logit_normal", mean=0.5, std=0.8)(100_000, torch.Generator().manual_seed(4))
    logit = torch.log(ln / (1 - ln))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01)
    assert logit.std().item() == pytest.approx(0.8, rel=0.01)
    a = rf.TimestepSampler("logit_normal")(8, torch.Generator().manual_seed(5))
    b = rf.TimestepSampler("logit_normal")(8, torch.Generator().manual_seed(5))
    c = rf.TimestepSampler("logit_normal")(8, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _sample_error(steps: int, sampler: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    noise = torch.randn(4096, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = rf.sample(exact_velocity, noise, steps, sampler)
    return (x - (MU + S * noise)).abs().max().item(), x, noise


def test_euler_maps_noise_to_the_data_distribution():
    err, x, _ = _sample_error(400, "euler")
    assert err < 0.04  # first order: the max error over 4096 samples is ~12 / steps
    torch.testing.assert_close(x.mean(0), MU, atol=0.06, rtol=0)
    torch.testing.assert_close(x.std(0), S, rtol=0.04, atol=0)


def test_heun_more_accurate_than_euler_and_convergence_orders():
    e10, e20 = _sample_error(10, "euler")[0], _sample_error(20, "euler")[0]
    h10, h20 = _sample_error(10, "heun")[0], _sample_error(20, "heun")[0]
    assert h10 < e10 / 5
    assert 1.7 < e10 / e20 < 2.3  # first order
    assert 3.4 < h10 / h20 < 4.6  # second order


def test_trajectory_and_shift():
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    x, traj = rf.sample(exact_velocity, noise, 6, "heun", shift=3.0, return_trajectory=True, progress=True)
    assert traj.shape == (7, 5, 4)
    assert torch.equal(traj[0], noise) and torch.equal(traj[-1], x)
    grid = rf.time_grid(4, shift=3.0)
    assert grid[0] == 1 and grid[-1] == 0 and bool((grid.diff() < 0).all())
    t = torch.linspace(1, 0, 5, dtype=torch.float64)
    torch.testing.assert_close(grid, 3 * t / (1 + 2 * t))
    assert torch.equal(rf.time_grid(4), t)


def test_flow_match_euler_matches_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps, shift = 12, 3.0
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    # Our grid without shift, handed to diffusers, which applies the same shift and appends sigma = 0.
    sched.set_timesteps(sigmas=rf.time_grid(steps)[:-1].tolist())
    torch.testing.assert_close(sched.sigmas, rf.time_grid(steps, shift).float(), rtol=0, atol=1e-7)

    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(9))
    x_ref = noise.clone()
    for i, timestep in enumerate(sched.timesteps):
        v = exact_velocity(x_ref, sched.sigmas[i].expand(3))
        x_ref = sched.step(v, timestep, x_ref).prev_sample
    ours = rf.sample(exact_velocity, noise, steps, "euler", shift=shift)
    torch.testing.assert_close(ours, x_ref, rtol=0, atol=5e-7)  # ~2 float32 ulps at |x| ~ 2 after 12 steps


def test_x0_prediction_is_the_same_flow_through_v_equals_x_minus_x0_over_t():
    g = torch.Generator().manual_seed(5)
    x0, noise = data(64, g), torch.randn(64, 4, generator=g, dtype=torch.float64)
    t = torch.linspace(0.05, 1.0, 64, dtype=torch.float64)
    # An x0 oracle gives the velocity target exactly wherever t >= t_min: zero loss.
    oracle = rf.as_velocity(lambda x, tt: x0, "x0", t_min=0.05)
    assert rf.loss(oracle, x0, t=t, noise=noise).item() < 1e-20
    # The exact posterior mean E[x0 | x_t] = x_t - t E[v | x_t] converts back to the exact field ...
    x = rf.interpolate(x0, noise, t)
    posterior = rf.as_velocity(lambda xx, tt: xx - tt[:, None] * exact_velocity(xx, tt), "x0", t_min=0.05)
    torch.testing.assert_close(posterior(x, t), exact_velocity(x, t))
    # ... and below t_min the division uses t_min: v = t / t_min * exact velocity there.
    small = torch.full((64,), 0.01, dtype=torch.float64)
    torch.testing.assert_close(posterior(x, small), exact_velocity(x, small) * 0.01 / 0.05)
    # 'velocity' is the backbone itself.
    assert rf.as_velocity(exact_velocity, "velocity", t_min=0.05) is exact_velocity


def test_frame_times_mix_per_clip_and_per_frame_levels():
    gen = torch.Generator().manual_seed(0)
    sampler = rf.TimestepSampler("uniform")
    t = torch.rand(2000, generator=gen)
    out = rf.frame_times(t, 6, 0.5, 2, sampler, gen)  # (B, 6): groups of 2 frames
    assert out.shape == (2000, 6) and torch.equal(out[:, ::2], out[:, 1::2])
    kept = (out == t[:, None]).all(1)
    assert 0.45 < kept.float().mean() < 0.55  # the other half: independent levels per group
    assert (out[~kept, 0] != out[~kept, 2]).all()
    assert torch.equal(rf.frame_times(t, 6, 0.0, 1, sampler, gen), t[:, None].expand(-1, 6))
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        rf.frame_times(t, 6, 0.5, 4, sampler, gen)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        rf.frame_times(t, 6, 1.5, 1, sampler, gen)


def test_per_frame_t_in_the_loss_noises_each_frame_at_its_level():
    x0 = torch.randn(3, 2, 4, 2, 2)
    noise = torch.randn_like(x0)
    t = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(3, -1)
    seen = {}

    def fn(x, tt):
        seen["x"], seen["t"] = x, tt
        return noise - x0  # the exact velocity: zero loss

    assert rf.loss(fn, x0, t=t, noise=noise) == 0
    torch.testing.assert_close(seen["x"][:, :, :2], x0[:, :, :2])  # t = 0: data
    torch.testing.assert_close(seen["x"][:, :, 2:], noise[:, :, 2:])  # t = 1: noise
    assert seen["t"].shape == (3, 4)
    with pytest.raises(ValueError, match="per frame"):
        rf.loss(fn, x0, t=torch.zeros(3, 5), noise=noise)


def test_staggered_sampling_runs_every_frame_from_noise_to_data_earlier_frames_first():
    noise = torch.randn(2, 3, 6, 2, 2)
    seen = []

    def fn(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    rf.sample(fn, noise, 10, frame_lag=0.25, frame_group=2)
    ts = torch.stack(seen)  # (steps, B, T)
    assert ts.shape == (10, 2, 6) and torch.equal(ts[:, :, ::2], ts[:, :, 1::2])  # groups of 2 frames share t
    assert (ts[0] == 1).all() and (ts[-1] < 1).all()
    assert (ts[:, :, :2] <= ts[:, :, 2:4]).all() and (ts[:, :, 2:4] <= ts[:, :, 4:]).all()  # earlier frames lead
    assert (ts[1:] <= ts[:-1]).all()  # every frame's time only decreases
    x0 = torch.randn(2, 3, 6, 2, 2)
    out = rf.sample(lambda x, t: noise - x0, noise, 10, frame_lag=0.25, frame_group=2)
    torch.testing.assert_close(out, x0)  # each frame travels its whole straight path, from t = 1 to 0
    with pytest.raises(ValueError, match="groups of 4"):
        rf.sample(fn, noise, 3, frame_lag=0.2, frame_group=4)


def test_bad_inputs_have_clear_errors():
    noise = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        rf.sample(exact_velocity, noise, 0)
    with pytest.raises(ValueError, match="sampler 'rk4' is unknown"):
        rf.sample(exact_velocity, noise, 2, "rk4")
    with pytest.raises(ValueError, match="shift must be > 0"):
        rf.time_grid(3, shift=0.0)
    with pytest.raises(ValueError, match="timestep kind 'beta' is unknown"):
        rf.TimestepSampler("beta")
    with pytest.raises(ValueError, match="std must be > 0"):
        rf.TimestepSampler("logit_normal", std=0.0)
    with pytest.raises(ValueError, match="pass a torch.Generator"):
        rf.loss(exact_velocity, noise)
    with pytest.raises(ValueError, match=r"the model returned shape \(2, 1\) for an input of shape \(2, 4\)"):
        rf.sample(lambda x, t: x[:, :1], noise, 2)
    with pytest.raises(ValueError, match=r"the model returned shape \(2, 1\)"):
        rf.loss(lambda x, t: x[:, :1], noise, t=torch.zeros(2), noise=noise)
    with pytest.raises(ValueError, match=r"t must be \(2,\)"):
        rf.loss(exact_velocity, noise, t=torch.zeros(3), noise=noise)
    with pytest.raises(ValueError, match="rf prediction 'eps' is unknown"):
        rf.as_velocity(exact_velocity, "eps", 0.05)
    with pytest.raises(ValueError, match="t_min must be in"):
        rf.as_velocity(exact_velocity, "x0", 0.0)


# ---- the 2-D toy of notebooks/03_rectified_flow.ipynb (osplab.diffusion.toy) ----------------------------------


def test_toy_data():
    from osplab.diffusion.toy import toy_data

    blobs = toy_data("blobs", 20_000, torch.Generator().manual_seed(0))
    assert blobs.shape == (20_000, 2) and blobs.dtype == torch.float32
    right = blobs[:, 0] > 0
    assert right.float().mean().item() == pytest.approx(0.5, abs=0.02)
    torch.testing.assert_close(blobs[right].mean(0), torch.tensor([2.0, 0.0]), rtol=0, atol=0.01)
    torch.testing.assert_close(blobs[right].std(0), torch.tensor([0.25, 0.25]), rtol=0.03, atol=0)
    ring = toy_data("ring", 20_000, torch.Generator().manual_seed(0))
    radius = ring.norm(dim=1)
    assert radius.mean().item() == pytest.approx(2.0, abs=0.005) and radius.std().item() == pytest.approx(0.1, rel=0.03)
    assert torch.equal(toy_data("ring", 5, torch.Generator().manual_seed(1)), toy_data("ring", 5, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="toy data kind 'moons' is unknown"):
        toy_data("moons", 5, torch.Generator())


def test_bend_and_energy_distance():
    from osplab.diffusion.toy import bend, energy_distance

    line = torch.linspace(0, 1, 6)[:, None, None] * torch.tensor([[3.0, 4.0]])  # (6, 1, 2): a straight path
    corner = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]])  # chord sqrt(2), path length 2
    assert bend(line).abs().item() < 1e-6
    assert bend(corner).item() == pytest.approx(1 - math.sqrt(2) / 2)
    assert bend(torch.cat([line[[0, 5]], line[[0, 5]]], 1)).shape == (2,)
    pts = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    assert energy_distance(pts, pts) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]])) == pytest.approx(10.0)  # 2 * distance


def test_toy_training_learns_the_flow():
    from osplab.diffusion.toy import ToyMLP, energy_distance, toy_data, train_toy

    torch.manual_seed(0)
    model = ToyMLP()
    assert model(torch.zeros(3, 2), torch.rand(3)).shape == (3, 2)
    losses = train_toy(model, rf.loss, "blobs", 300, torch.Generator().manual_seed(1))
    assert len(losses) == 300 and sum(losses[-50:]) / 50 < 0.7 * sum(losses[:10]) / 10
    data = toy_data("blobs", 1000, torch.Generator().manual_seed(2))
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3))
    samples = rf.sample(model, noise, 10)
    assert energy_distance(samples, data) < 0.1 * energy_distance(noise, data)
