"""The DDPM baseline (Ho et al. 2020) on the same backbone as rectified flow: schedules, loss, samplers.

Forward process over T = num_train_timesteps discrete steps i in {0, ..., T-1}:

    x_i = sqrt(alpha_bar_i) * x0 + sqrt(1 - alpha_bar_i) * eps,   alpha_bar_i = prod_{j<=i} (1 - beta_j)

The backbone sees the step as t = i / T in [0, 1) (the stage-2 contract) and predicts either
epsilon or v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x0 (Salimans & Ho 2022; diffusers'
sign). Schedules: `linear` (DDPM/DiT, beta 1e-4 -> 0.02), `scaled_linear` (Stable Diffusion: linear
in sqrt(beta), 0.00085 -> 0.012), `cosine` (Nichol & Dhariwal 2021, beta capped at 0.999).
`zero_terminal_snr` rescales any of them so that alpha_bar_{T-1} = 0 exactly (Lin et al. 2024,
Algorithm 1; what Open-Sora-Plan v1.3 trains with): the last training step is then pure noise,
like the sampler's starting point; it requires v-prediction, since at alpha_bar = 0 an epsilon
model carries no information about x0.

Samplers with any number of steps n <= T over a subset of the training steps:
- spacing `trailing` (default; Lin et al. Table 2): round(T - k T / n) - 1, k = 0..n-1, so sampling
  starts at i = T-1, the step that zero terminal SNR makes pure noise;
- spacing `leading` (diffusers' DDPM/DDIM default): k * (T // n), which starts below T-1
  (980 for n = 50) and so never sees the pure-noise step.
`ancestral`: the DDPM posterior q(x_prev | x_i, x0_hat) (mean and the "fixed small" variance),
generalised to skipped steps; `ddim`: Song et al. 2021 with eta (0 = deterministic; eta = 1 equals
`ancestral`). The predicted x0 is not clipped (latents are not bounded to [-1, 1]).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from osplab.diffusion.losses import checked, weighted_mse
from osplab.diffusion.noise import video_noise

PredictFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SCHEDULES = ("linear", "scaled_linear", "cosine")
# The published beta ranges of the two linear schedules (facts of the schedule names, not settings).
BETA_RANGES = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}
PREDICTIONS = ("epsilon", "v")
SAMPLERS = ("ancestral", "ddim")
SPACINGS = ("trailing", "leading")


def beta_schedule(name: str, num_steps: int, beta_start: float | None = None, beta_end: float | None = None):
    """Betas (num_steps,) float64 of a named schedule; beta_start/end default to BETA_RANGES[name]."""
    if name not in SCHEDULES:
        raise ValueError(f"beta schedule {name!r} is unknown; use one of {SCHEDULES}")
    if name == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ValueError("the cosine schedule has no beta_start/beta_end; leave them unset")
        s = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        alpha_bar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    lo, hi = BETA_RANGES[name]
    lo, hi = (lo if beta_start is None else beta_start), (hi if beta_end is None else beta_end)
    if name == "linear":
        return torch.linspace(lo, hi, num_steps, dtype=torch.float64)
    return torch.linspace(lo**0.5, hi**0.5, num_steps, dtype=torch.float64) ** 2


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so its last value is 0 and its first is kept.

    betas: (T,) -> (T,), float64; the last beta becomes exactly 1.
    """
    root = torch.cumprod(1 - betas.double(), 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficients (B,) float64 -> (B, 1, ..., 1) in x's dtype."""
    return v.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


class DDPM:
    """Schedule + loss + samplers; holds no model (diffusers-style: any backbone fn(x, t) can be sampled).

    Tables are float64 (T,): `betas`, `alphas_cumprod`. Indices i are integer tensors (B,) or ints.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear",
        prediction: str = "epsilon",
        zero_terminal_snr: bool = False,
        beta_start: float | None = None,
        beta_end: float | None = None,
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction {prediction!r} is unknown; use one of {PREDICTIONS}")
        if zero_terminal_snr and prediction != "v":
            raise ValueError(
                "zero_terminal_snr=True needs prediction='v': at alpha_bar = 0 the noise is the whole input, "
                "so an epsilon prediction says nothing about x0 (Lin et al. 2024)"
            )
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        self.num_train_timesteps = num_train_timesteps
        self.prediction = prediction
        betas = beta_schedule(schedule, num_train_timesteps, beta_start, beta_end)
        self.betas = rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)

    # ---- the forward process and the training target -------------------------------------------
    def model_time(self, i: torch.Tensor) -> torch.Tensor:
        """The backbone's time input for step indices i (B,): t = i / T, float32."""
        return i.to(torch.float32) / self.num_train_timesteps

    def _roots(self, i: torch.Tensor, x: torch.Tensor):
        ab = self.alphas_cumprod.to(x.device)[i]
        return _bcast(ab.sqrt(), x), _bcast((1 - ab).sqrt(), x)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """x_i = sqrt(ab_i) x0 + sqrt(1 - ab_i) noise. x0, noise: (B, ...); i: (B,) int."""
        a, s = self._roots(i, x0)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """What the backbone regresses: noise (epsilon) or v = sqrt(ab) noise - sqrt(1 - ab) x0."""
        if self.prediction == "epsilon":
            return noise
        a, s = self._roots(i, x0)
        return a * noise - s * x0

    def split(self, out: torch.Tensor, x: torch.Tensor, i: torch.Tensor):
        """Model output at x_i -> (x0_hat, eps_hat), both like x."""
        a, s = self._roots(i, x)
        if self.prediction == "epsilon":
            return (x - s * out) / a, out
        return a * x - s * out, a * out + s * x

    def loss(
        self,
        fn: PredictFn,
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        i: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        frame_corr: float = 0.0,
    ) -> torch.Tensor:
        """MSE between fn(x_i, i / T) and the target, mean over all elements (or mean_b(weights_b * mse_b)).

        x0: (B, ...); i: (B,) int or None (uniform over 0..T-1 from `generator`); noise like x0 or None
        (drawn from `generator`, correlated across latent frames by `frame_corr`, osplab.diffusion.noise).
        """
        batch = x0.shape[0]
        if (i is None or noise is None) and generator is None:
            raise ValueError("DDPM.loss draws i and/or noise: pass a torch.Generator (or both i and noise)")
        if i is None:
            i = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=x0.device)
        if noise is None:
            noise = video_noise(x0.shape, frame_corr, generator, device=x0.device, dtype=x0.dtype)
        if i.shape != (batch,) or noise.shape != x0.shape:
            raise ValueError(f"i must be ({batch},) and noise {tuple(x0.shape)}; got {tuple(i.shape)}, {tuple(noise.shape)}")
        pred = checked(fn(self.add_noise(x0, noise, i), self.model_time(i)), x0)
        return weighted_mse(pred, self.target(x0, noise, i), weights)

    @torch.no_grad()
    def loss_on_grid(self, fn: PredictFn, x0: torch.Tensor, noise: torch.Tensor, indices) -> torch.Tensor:
        """The loss at each fixed step index of `indices` (K ints) on fixed x0 and noise (B, ...) -> (K,)."""
        batch = x0.shape[0]
        return torch.stack([self.loss(fn, x0, i=torch.full((batch,), int(k), device=x0.device), noise=noise) for k in indices])

    # ---- sampling -------------------------------------------------------------------------------
    def timesteps(self, steps: int, spacing: str = "trailing") -> list[int]:
        """The `steps` training indices the sampler visits, descending (see the module docstring)."""
        T = self.num_train_timesteps
        if not isinstance(steps, int) or not 1 <= steps <= T:
            raise ValueError(f"steps must be an integer in [1, {T}] (num_train_timesteps), got {steps!r}")
        if spacing not in SPACINGS:
            raise ValueError(f"timestep spacing {spacing!r} is unknown; use one of {SPACINGS}")
        k = torch.arange(steps, dtype=torch.float64)
        if spacing == "trailing":
            return (torch.round(T - k * (T / steps)) - 1).long().tolist()
        return (k * (T // steps)).long().flip(0).tolist()

    def _alpha_bar(self, i: int) -> float:
        return 1.0 if i < 0 else self.alphas_cumprod[i].item()  # i = -1: the clean end of the chain

    def ancestral_mean_var(self, out: torch.Tensor, x: torch.Tensor, i: int, i_prev: int):
        """Posterior q(x_prev | x_i, x0_hat): mean (like x) and variance (float), for a jump i -> i_prev < i."""
        ab, ab_prev = self._alpha_bar(i), self._alpha_bar(i_prev)
        alpha = ab / ab_prev  # the product of (1 - beta) over the skipped steps
        x0, _ = self.split(out, x, torch.full((x.shape[0],), i, device=x.device))
        mean = (ab_prev**0.5 * (1 - alpha) / (1 - ab)) * x0 + (alpha**0.5 * (1 - ab_prev) / (1 - ab)) * x
        return mean, (1 - ab_prev) / (1 - ab) * (1 - alpha)

    def ddim_step(self, out, x, i: int, i_prev: int, eta: float = 0.0, generator: torch.Generator | None = None,
                  frame_corr: float = 0.0):
        """One DDIM step x_i -> x_prev (Song et al. 2021, eq. 12). Draws noise from `generator` iff eta > 0
        (correlated across latent frames by `frame_corr`, as in training)."""
        ab, ab_prev = self._alpha_bar(i), self._alpha_bar(i_prev)
        x0, eps = self.split(out, x, torch.full((x.shape[0],), i, device=x.device))
        std = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        x_prev = ab_prev**0.5 * x0 + max(1 - ab_prev - std**2, 0.0) ** 0.5 * eps
        if std > 0:
            if generator is None:
                raise ValueError(f"DDIM with eta={eta} draws noise: pass a torch.Generator")
            x_prev = x_prev + std * video_noise(x.shape, frame_corr, generator, device=x.device, dtype=x.dtype)
        return x_prev

    @torch.no_grad()
    def sample(
        self,
        fn: PredictFn,
        noise: torch.Tensor,
        steps: int,
        sampler: str = "ddim",
        *,
        eta: float = 0.0,
        spacing: str = "trailing",
        generator: torch.Generator | None = None,
        frame_corr: float = 0.0,
        progress: bool = False,
        return_trajectory: bool = False,
    ):
        """Denoise `noise` (B, ...) in `steps` steps; returns x0 or (x0, trajectory (steps + 1, B, ...)).
        The noise the stochastic samplers add is correlated across latent frames by `frame_corr`: the
        forward process of a model trained with that noise prior."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is unknown; use one of {SAMPLERS}")
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        stochastic = sampler == "ancestral" or eta > 0
        if stochastic and generator is None:
            raise ValueError(f"sampler {sampler!r} with eta={eta} draws noise: pass a torch.Generator")
        from tqdm import tqdm

        seq = self.timesteps(steps, spacing)
        x, trajectory = noise, [noise]
        for k in tqdm(range(steps), desc=f"ddpm {sampler}", disable=not progress):
            i, i_prev = seq[k], (seq[k + 1] if k + 1 < steps else -1)
            out = fn(x, self.model_time(torch.full((x.shape[0],), i, device=x.device)))
            if out.shape != x.shape:
                raise ValueError(f"the model returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}")
            if sampler == "ddim":
                x = self.ddim_step(out, x, i, i_prev, eta, generator, frame_corr)
            else:
                x, var = self.ancestral_mean_var(out, x, i, i_prev)
                if var > 0:  # the last step (to i = -1) has variance 0 and draws nothing
                    x = x + var**0.5 * video_noise(x.shape, frame_corr, generator, device=x.device, dtype=x.dtype)
            if return_trajectory:
                trajectory.append(x)
        return (x, torch.stack(trajectory)) if return_trajectory else x
