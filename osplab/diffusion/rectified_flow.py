"""Rectified flow (Liu et al. 2022; the SD3 recipe of Esser et al. 2024): training loss and ODE samplers.

Conventions (the stage-2 contract):

    x_t = (1 - t) * x0 + t * noise          t = 0 is data, t = 1 is Gaussian noise
    v   = noise - x0                         the model regresses this constant velocity

so the path from a data point to its noise is a straight line, and sampling integrates
dx/dt = v(x, t) from t = 1 down to t = 0. The samplers never see text: they take `fn(x, t)`
with t of shape (B,) (wrap a text-conditioned backbone with `osplab.diffusion.guidance.cfg`).
Tensors x can have any shape (B, ...), e.g. latent videos (B, C, T, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from osplab.diffusion.losses import checked, weighted_mse
from osplab.diffusion.noise import video_noise

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TIMESTEP_KINDS = ("uniform", "logit_normal")
SAMPLERS = ("euler", "heun")
PREDICTIONS = ("velocity", "x0")


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1), broadcastable against x of shape (B, ...); a per-frame t (B, T) of a
    video x (B, C, T, H, W) -> (B, 1, T, 1, 1)."""
    if t.dim() == 2:
        if x.dim() != 5 or t.shape != (x.shape[0], x.shape[2]):
            raise ValueError(f"a per-frame t (B, T) needs video x (B, C, T, H, W) with the same B and T; got t "
                             f"{tuple(t.shape)} for x {tuple(x.shape)}")
        return t[:, None, :, None, None]
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def frame_times(t: torch.Tensor, frames: int, fraction: float, group: int, timesteps: "TimestepSampler",
                generator: torch.Generator) -> torch.Tensor:
    """Per-frame noise levels (B, frames) from per-clip ones t (B,): a `fraction` of the clips (a
    Bernoulli draw per clip) get an independent level per group of `group` frames (the DiT's temporal
    patch), the rest keep t in every frame. Diffusion-forcing-style training: a clip whose early
    frames are clean and later ones noisy can only be denoised from the caption's motion words, a
    signal that a single noise level per clip hides (the model can read the motion off the noisy
    frames themselves, or nowhere when all are noisy). Measured here it did not help: with 0.5 the
    1000-step DiT still ignores the direction word (docs/stage2_experiments.md), so it is off by default."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"the fraction of clips with per-frame noise levels must be in [0, 1], got {fraction}")
    if group < 1 or frames % group:
        raise ValueError(f"{frames} latent frames do not split into groups of {group}")
    batch = t.shape[0]
    independent = timesteps(batch * (frames // group), generator, device=t.device).view(batch, frames // group)
    pick = torch.rand(batch, generator=generator, device=t.device) < fraction  # (B,)
    out = torch.where(pick[:, None], independent, t[:, None])  # (B, frames // group)
    return out.repeat_interleave(group, dim=1)  # (B, frames)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The straight path: x0, noise (B, ...), t (B,) in [0, 1] -> x_t = (1 - t) x0 + t noise."""
    t = _per_sample(t, x0).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def as_velocity(fn: VelocityFn, prediction: str, t_min: float) -> VelocityFn:
    """The velocity field of a backbone that predicts `prediction` ('velocity' | 'x0') at (x, t).

    'velocity': fn itself. 'x0': fn(x, t) estimates the clean data, and on the straight path
    v = (x_t - x0) / t, with t clamped below at t_min (the conversion divides by t; near t = 0 the
    velocity is then (x - x0_hat) / t_min). Training still regresses the velocity (loss below), so the
    loss is ||x0_hat - x0||^2 / t^2: x-prediction with a v-loss (Li & He 2025, "JiT"), whose point is
    that a clean-data target lies on the data's low-dimensional manifold while a velocity target
    carries the full-rank noise, which a narrow network (width <= token dim) cannot pass through.
    Guidance is unchanged by the choice: at fixed (x, t) the map x0 -> v is affine.
    """
    if prediction == "velocity":
        return fn
    if prediction != "x0":
        raise ValueError(f"rf prediction {prediction!r} is unknown; use one of {PREDICTIONS}")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must be in (0, 1) for x0 prediction, got {t_min}")

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0 = checked(fn(x, t), x)
        return (x - x0) / _per_sample(t, x).clamp_min(t_min).to(x.dtype)

    return velocity


@dataclass(frozen=True)
class TimestepSampler:
    """Training-time distribution of t.

    `uniform`: t ~ U(0, 1). `logit_normal`: t = sigmoid(mean + std * n), n ~ N(0, 1), which SD3
    found best (mean 0, std 1): it spends more steps at intermediate t, where the velocity is
    hardest to predict, and few at the ends, where it is nearly determined by x_t.
    """

    kind: str = "uniform"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if self.kind not in TIMESTEP_KINDS:
            raise ValueError(f"timestep kind {self.kind!r} is unknown; use one of {TIMESTEP_KINDS}")
        if not self.std > 0:
            raise ValueError(f"logit_normal std must be > 0, got {self.std}")

    def __call__(self, n: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """n times in [0, 1] as a float32 tensor (n,), drawn from `generator` only."""
        if self.kind == "uniform":
            return torch.rand(n, generator=generator, device=device)
        z = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.mean + self.std * z)


def loss(
    fn: VelocityFn,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    timesteps: TimestepSampler = TimestepSampler(),
    weights: torch.Tensor | None = None,
    frame_corr: float = 0.0,
    frame_t: float = 0.0,
    frame_group: int = 1,
) -> torch.Tensor:
    """Rectified-flow training loss: MSE between fn(x_t, t) and v = noise - x0, mean over all elements.

    x0: (B, ...) data; t: (B,), per latent frame (B, T) for video x0 (B, C, T, H, W), or None (drawn by
    `timesteps` from `generator`; with `frame_t` > 0 that fraction of the clips gets a level per group of
    `frame_group` latent frames, `frame_times`); noise: like x0 or None (drawn from `generator`,
    correlated across latent frames by `frame_corr`, osplab.diffusion.noise).
    Passing both t and noise makes the loss deterministic (the
    validation loss on a fixed t-grid). weights: optional (B,) per-sample factors; the result is
    then mean_b(weights_b * mse_b), which equals the plain mean for weights of ones.
    """
    batch = x0.shape[0]
    if (t is None or noise is None) and generator is None:
        raise ValueError("rectified_flow.loss draws t and/or noise: pass a torch.Generator (or both t and noise)")
    if t is None:
        t = timesteps(batch, generator, device=x0.device)
        if frame_t > 0:
            t = frame_times(t, x0.shape[2], frame_t, frame_group, timesteps, generator)
    if noise is None:
        noise = video_noise(x0.shape, frame_corr, generator, device=x0.device, dtype=x0.dtype)
    frames = (batch, x0.shape[2]) if x0.dim() == 5 else None
    if (t.shape != (batch,) and t.shape != frames) or noise.shape != x0.shape:
        raise ValueError(f"t must be ({batch},) (or per frame {frames}) and noise {tuple(x0.shape)}; got "
                         f"{tuple(t.shape)}, {tuple(noise.shape)}")
    return weighted_mse(checked(fn(interpolate(x0, noise, t), t), x0), noise - x0, weights)


@torch.no_grad()
def loss_on_grid(fn: VelocityFn, x0: torch.Tensor, noise: torch.Tensor, grid) -> torch.Tensor:
    """The loss at each fixed time of `grid` (K floats in [0, 1]) on fixed x0 and noise (B, ...) -> (K,).

    A validation signal that does not move with the random t of training: with the same x0, noise
    and grid, two checkpoints are compared on exactly the same problems, and the curve shows at
    which noise levels a model is good or bad.
    """
    batch = x0.shape[0]
    return torch.stack([loss(fn, x0, t=torch.full((batch,), float(t), device=x0.device), noise=noise) for t in grid])


def time_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from 1 down to 0 (float64), equally spaced, then SD3's resolution shift.

    shift s maps t -> s t / (1 + (s - 1) t): s > 1 keeps more of the steps at high noise (what
    SD3 uses for large images / long videos, whose signal survives more noise); s = 1 is the identity.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


@torch.no_grad()
def sample(
    fn: VelocityFn,
    noise: torch.Tensor,
    steps: int,
    sampler: str = "euler",
    *,
    shift: float = 1.0,
    progress: bool = False,
    return_trajectory: bool = False,
    frame_lag: float = 0.0,
    frame_group: int = 1,
):
    """Integrate dx/dt = fn(x, t) from t = 1 (x = noise, shape (B, ...)) to t = 0 with `steps` steps.

    `euler`: one model call per step. `heun`: Euler predictor plus a trapezoidal corrector, two
    calls per step, second-order accurate. Unlike EDM's Heun, the corrector also runs on the last
    step: the velocity is defined at t = 0 (it is a velocity, not a denoiser divided by sigma).
    Returns x0 (B, ...), or (x0, trajectory) with trajectory (steps + 1, B, ...) from noise to x0.

    frame_lag > 0 (video noise (B, C, T, H, W), a model trained with per-frame noise levels): frame
    group k (of `frame_group` latent frames) runs at t_k = clamp(tau + frame_lag * k, 0, 1) while tau
    goes from 1 to -frame_lag * (groups - 1), so earlier frames are denoised ahead of later ones and
    the later frames are drawn given them (diffusion forcing's staggered schedule); 0 = one t.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is unknown; use one of {SAMPLERS}")
    from tqdm import tqdm

    grid = time_grid(steps, shift)
    batch = noise.shape[0]
    if frame_lag:
        if not frame_lag > 0 or noise.dim() != 5 or noise.shape[2] % frame_group:
            raise ValueError(f"frame_lag={frame_lag} needs frame_lag > 0 and video noise (B, C, T, H, W) whose T "
                             f"splits into groups of {frame_group}; got {tuple(noise.shape)}")
        groups = noise.shape[2] // frame_group
        offsets = frame_lag * torch.arange(groups, dtype=torch.float64).repeat_interleave(frame_group)  # (T,)
        spread = frame_lag * (groups - 1)
        grid = ((grid * (1 + spread) - spread)[:, None] + offsets).clamp(0, 1)  # (steps + 1, T)
    grid = grid.to(noise.device)  # float64: step sizes are differences of it, rounded once to x's dtype

    def at(i: int) -> torch.Tensor:  # (B,) or (B, T) in x's dtype
        return grid[i].to(noise.dtype).expand(batch, *grid.shape[1:]).contiguous()

    x = noise
    trajectory = [x]
    for i in tqdm(range(steps), desc=f"rf {sampler}", disable=not progress):
        t_cur, t_next = at(i), at(i + 1)
        dt = (grid[i + 1] - grid[i]).to(noise.dtype)  # negative: time runs from noise to data
        dt = _per_sample(dt.expand(batch, *grid.shape[1:]), x) if frame_lag else dt
        v = checked(fn(x, t_cur), x)
        x_next = x + dt * v
        if sampler == "heun":
            x_next = x + dt * 0.5 * (v + checked(fn(x_next, t_next), x))
        x = x_next
        if return_trajectory:
            trajectory.append(x)
    return (x, torch.stack(trajectory)) if return_trajectory else x
