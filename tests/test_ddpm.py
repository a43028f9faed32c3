"""DDPM baseline: schedule values, epsilon/v conversions, samplers on a Gaussian with a closed-form denoiser,
and diffusers' DDPMScheduler / DDIMScheduler as an independent reference."""

from __future__ import annotations

import math

import pytest
import torch

from osplab.diffusion.ddpm import DDPM, beta_schedule, rescale_zero_terminal_snr

DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
BETA_RANGE = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "cosine": (1e-4, 0.02)}  # cosine ignores it
MU = torch.tensor([1.5, -2.0, 0.0, 0.5], dtype=torch.float64)
S = torch.tensor([0.5, 1.0, 2.0, 0.3], dtype=torch.float64)


def gaussian_model(ddpm: DDPM):
    """The exact epsilon / v prediction for data N(MU, S^2): x_i is Gaussian, so E[x0 | x_i] is linear in x_i."""

    def fn(x, t):
        i = torch.round(t.double() * ddpm.num_train_timesteps).long()
        ab = ddpm.alphas_cumprod[i][:, None]
        var = ab * S**2 + 1 - ab  # Var(x_i) per dimension
        centred = x - ab.sqrt() * MU
        eps = (1 - ab).sqrt() / var * centred
        x0 = MU + ab.sqrt() * S**2 / var * centred
        return eps if ddpm.prediction == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    return fn


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_schedules_match_diffusers(schedule, zero_snr):
    from diffusers import DDPMScheduler

    lo, hi = BETA_RANGE[schedule]
    ref = DDPMScheduler(1000, lo, hi, DIFFUSERS_NAME[schedule], rescale_betas_zero_snr=zero_snr)
    ours = DDPM(1000, schedule, "v", zero_snr)
    # diffusers builds the tables in float32 (a 1000-factor cumprod): agreement to ~1e-6 is float32's limit.
    torch.testing.assert_close(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.betas.float(), ref.betas, rtol=0, atol=1e-5 if zero_snr else 1e-8)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_zero_terminal_snr_rescaling(schedule):
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as reference

    betas = beta_schedule(schedule, 1000)
    rescaled = rescale_zero_terminal_snr(betas)
    torch.testing.assert_close(rescaled, reference(betas.clone()), rtol=0, atol=1e-12)  # float64 on both sides
    ab, ab_orig = torch.cumprod(1 - rescaled, 0), torch.cumprod(1 - betas, 0)
    assert ab[-1].item() == 0.0 and rescaled[-1].item() == 1.0  # exactly pure noise at the last step
    assert ab[0].item() == pytest.approx(ab_orig[0].item(), rel=1e-12)  # the first step is kept
    assert bool((ab.diff() < 0).all()) and bool((rescaled[:-1] > 0).all())
    assert ab_orig[-1].item() > 0  # without rescaling the last step still carries signal


def test_schedule_values():
    T = 1000
    lin = DDPM(T, "linear").betas
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    sl = DDPM(T, "scaled_linear").betas
    assert sl[0].item() == pytest.approx(0.00085) and sl[-1].item() == pytest.approx(0.012)
    a, b = 0.00085**0.5, 0.012**0.5  # linear in sqrt(beta)
    assert sl[300].item() == pytest.approx((a + (b - a) * 300 / (T - 1)) ** 2, rel=1e-12)
    # Cosine: the product telescopes, alpha_bar_i = f((i + 1) / T) / f(0) with f(s) = cos^2((s + 0.008) / 1.008 * pi / 2),
    # wherever the 0.999 cap on beta is not active (all but the last steps).
    ab = DDPM(T, "cosine").alphas_cumprod
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for i in (0, 100, 500, 900):
        assert ab[i].item() == pytest.approx(f((i + 1) / T) / f(0), rel=1e-9)


@pytest.mark.parametrize("prediction,zero_snr", [("epsilon", False), ("v", False), ("v", True)])
def test_epsilon_and_v_round_trip(prediction, zero_snr):
    d = DDPM(1000, "scaled_linear", prediction, zero_snr)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 2, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(4, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    i = torch.tensor([0, 17, 500, 999 if zero_snr else 998])
    xi = d.add_noise(x0, eps, i)
    x0_hat, eps_hat = d.split(d.target(x0, eps, i), xi, i)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-9)
    if prediction == "v":  # v = sqrt(ab) eps - sqrt(1 - ab) x0, diffusers' get_velocity convention
        from diffusers import DDPMScheduler

        ref = DDPMScheduler(1000, 0.00085, 0.012, "scaled_linear", rescale_betas_zero_snr=zero_snr)
        torch.testing.assert_close(d.target(x0.float(), eps.float(), i), ref.get_velocity(x0.float(), eps.float(), i), rtol=1e-5, atol=1e-5)


def test_loss():
    d = DDPM(1000, "linear", "v")
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(5, 3, 2, generator=g), torch.randn(5, 3, 2, generator=g)
    i = torch.tensor([3, 10, 400, 700, 999])
    oracle = lambda x, t: d.target(x0, noise, torch.round(t * 1000).long())  # noqa: E731
    assert d.loss(oracle, x0, i=i, noise=noise).item() < 1e-12
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    expected = d.target(x0, noise, i).square().mean()
    torch.testing.assert_close(d.loss(zero, x0, i=i, noise=noise), expected)
    w = torch.tensor([1.0, 0, 0, 0, 0])
    torch.testing.assert_close(d.loss(zero, x0, i=i, noise=noise, weights=w), d.target(x0, noise, i)[0].square().mean() / 5)
    drawn = d.loss(zero, x0, torch.Generator().manual_seed(2))
    assert torch.equal(drawn, d.loss(zero, x0, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="pass a torch.Generator"):
        d.loss(zero, x0)


def test_loss_on_grid_is_the_analytic_curve():
    d = DDPM(1000, "cosine", "epsilon")
    g = torch.Generator().manual_seed(12)
    x0 = MU + S * torch.randn(100_000, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(100_000, 4, generator=g, dtype=torch.float64)
    indices = [0, 250, 500, 900]
    curve = d.loss_on_grid(gaussian_model(d), x0, noise, indices)
    ab = d.alphas_cumprod[indices][:, None]
    expected = (ab * S**2 / (ab * S**2 + 1 - ab)).mean(1)  # Var(eps | x_i) per dimension, mean over dimensions
    torch.testing.assert_close(curve, expected, rtol=0.015, atol=0)


@pytest.mark.parametrize("n", [1, 3, 7, 10, 50, 999, 1000])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_timesteps_match_diffusers(n, spacing):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(1000, timestep_spacing=spacing)
    ref.set_timesteps(n)
    seq = DDPM(1000).timesteps(n, spacing)
    assert seq == ref.timesteps.tolist()
    assert len(set(seq)) == n and seq == sorted(seq, reverse=True)
    if spacing == "trailing":
        assert seq[0] == 999


def _pair(prediction, zero_snr):
    dp = "v_prediction" if prediction == "v" else "epsilon"
    kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=dp,
              rescale_betas_zero_snr=zero_snr, clip_sample=False, timestep_spacing="trailing")
    return DDPM(1000, "scaled_linear", prediction, zero_snr), kw


@pytest.mark.parametrize("prediction,zero_snr", [("epsilon", False), ("v", False), ("v", True)])
def test_ddim_and_ancestral_steps_match_diffusers(prediction, zero_snr):
    from diffusers import DDIMScheduler, DDPMScheduler

    ours, kw = _pair(prediction, zero_snr)
    ddim, ddpm = DDIMScheduler(set_alpha_to_one=True, **kw), DDPMScheduler(**kw)
    ddim.set_timesteps(10)
    ddpm.set_timesteps(10)
    seq = ours.timesteps(10)
    g = torch.Generator().manual_seed(3)
    x, out = torch.randn(2, 4, 3, 5, 5, generator=g), torch.randn(2, 4, 3, 5, 5, generator=g)
    # float32 arithmetic on values up to ~8: a few ulps.
    tol = dict(rtol=2e-6, atol=2e-6)
    for k in (0, 4, 9):
        i, i_prev = seq[k], (seq[k + 1] if k < 9 else -1)
        for eta in (0.0, 0.7):
            ref = ddim.step(out, i, x, eta=eta, generator=torch.Generator().manual_seed(5)).prev_sample
            torch.testing.assert_close(ours.ddim_step(out, x, i, i_prev, eta, torch.Generator().manual_seed(5)), ref, **tol)
        mean, var = ours.ancestral_mean_var(out, x, i, i_prev)
        ref = ddpm.step(out, i, x, generator=torch.Generator().manual_seed(5)).prev_sample
        if k < 9:  # diffusers adds sqrt(var) * z with z drawn from the generator
            assert var == pytest.approx(ddpm._get_variance(i).item(), rel=1e-6)
            mean = mean + var**0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        else:
            assert var == 0.0
        torch.testing.assert_close(mean, ref, **tol)


def test_ancestral_equals_ddim_with_eta_one():
    d = DDPM(1000, "linear", "epsilon")
    noise = torch.randn(64, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = d.sample(gaussian_model(d), noise, 20, "ancestral", generator=torch.Generator().manual_seed(9))
    b = d.sample(gaussian_model(d), noise, 20, "ddim", eta=1.0, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("prediction,zero_snr", [("epsilon", False), ("v", True)])
def test_samplers_recover_the_gaussian(prediction, zero_snr):
    d = DDPM(1000, "linear", prediction, zero_snr)
    noise = torch.randn(8192, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    fn = gaussian_model(d)
    # Deterministic DDIM is a discretised probability-flow ODE: it converges (first order) to the exact map
    # n -> MU + S n (measured max error over 8192 samples: ~1.15 at 10 steps, ~0.12 at 100).
    errors = [(d.sample(fn, noise, n, "ddim") - (MU + S * noise)).abs().max().item() for n in (10, 100)]
    assert errors[1] < 0.2 and errors[1] < errors[0] / 7
    x, traj = d.sample(fn, noise[:5], 10, "ddim", return_trajectory=True, progress=True)
    assert traj.shape == (11, 5, 4) and torch.equal(traj[0], noise[:5]) and torch.equal(traj[-1], x)
    # Ancestral sampling with all 1000 steps draws from the data distribution (with few skipped steps it is
    # under-dispersed: the posterior step treats the predicted x0 as certain).
    noise = noise[:4096]
    x = d.sample(fn, noise, 1000, "ancestral", generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(x.mean(0), MU, rtol=0, atol=3 * 2.0 / 4096**0.5)  # 3 standard errors of the widest dim
    torch.testing.assert_close(x.std(0), S, rtol=0.04, atol=0)


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="beta schedule 'sigmoid' is unknown"):
        DDPM(schedule="sigmoid")
    with pytest.raises(ValueError, match="prediction 'sample' is unknown"):
        DDPM(prediction="sample")
    with pytest.raises(ValueError, match="zero_terminal_snr=True needs prediction='v'"):
        DDPM(prediction="epsilon", zero_terminal_snr=True)
    with pytest.raises(ValueError, match="cosine schedule has no beta_start"):
        DDPM(schedule="cosine", beta_start=1e-4)
    d = DDPM(100)
    fn = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 100\]"):
        d.sample(fn, torch.zeros(2, 3), 101)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 100\]"):
        d.sample(fn, torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match=r"the model returned shape \(2, 1\) for an input of shape \(2, 3\)"):
        d.sample(lambda x, t: x[:, :1], torch.zeros(2, 3), 5)
    with pytest.raises(ValueError, match=r"the model returned shape \(2, 1\)"):
        d.loss(lambda x, t: x[:, :1], torch.zeros(2, 3), torch.Generator())
    with pytest.raises(ValueError, match="spacing 'linspace' is unknown"):
        d.sample(fn, torch.zeros(2, 3), 5, spacing="linspace")
    with pytest.raises(ValueError, match="sampler 'plms' is unknown"):
        d.sample(fn, torch.zeros(2, 3), 5, "plms")
    with pytest.raises(ValueError, match="draws noise: pass a torch.Generator"):
        d.sample(fn, torch.zeros(2, 3), 5, "ancestral")
    with pytest.raises(ValueError, match="draws noise: pass a torch.Generator"):
        d.ddim_step(torch.zeros(2, 3), torch.zeros(2, 3), 50, 40, eta=0.5)
