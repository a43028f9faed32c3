"""How the DiT plugs into the training loop: latents + cached text, an objective, a validation loss.

Data. Item i of a split is the clip's VQVAE latents (C, t, h, w): `codebook[indices]`, or with
`vqvae.latent_kind=continuous` the encoder's unquantized outputs (`LatentDataset.latent`), normalised
by one global mean and scale measured on the train latents (`LatentNorm`; saved with the
checkpoint), with the caption's cached tokens (L, D) and mask (L,). One global scale keeps the
latents' spectrum: they are PCA coefficients, and scaling each channel to unit variance would
inflate the near-noise high components that the loss then spends itself on (shared/FACTS.md).
`diffusion.latent_max_channel_std` caps that spectrum from above only: channels whose std exceeds
the cap (in global-scale units) are scaled down to it, so the first components no longer carry
several times the noise's energy and the layout is not fixed by noise alone at t > 0.9.
Batches come from the bucketing sampler, one latent shape per batch, over every shape of the split.
With `diffusion.curriculum.fraction` > 0 the first part of the run draws only from the easy clips
(`curriculum_subset`: one object that does not bounce) and the rest from the whole split.

Objectives (conf/diffusion): `rf` (rectified flow, velocity target) or `ddpm` (the 1000-step
baseline), both on the same backbone. Their noise and timesteps come from the global torch RNG of
the batch's device, which the loop checkpoints, so a resumed run draws the same ones.

Text. With `dit.text_standardise` the DiT's text tokens are standardised per dimension by the mean
and std of the train captions' valid tokens, measured here once and kept as buffers of the model
(`TextConditioner.fit_standardisation`), so the exported weights carry them.

Validation: the objective's loss on fixed val latents, at fixed times (`diffusion.val.t_grid`)
with fixed noise, logged at every checkpoint next to the training loss (`val/loss`, `val/loss_tX`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from itertools import zip_longest

import torch
from torch import nn

from osplab.data.clips import CurriculumBatchSampler
from osplab.data.latents import LatentDataset
from osplab.data.text_cache import TextCache
from osplab.diffusion import rectified_flow
from osplab.diffusion.ddpm import DDPM
from osplab.diffusion.noise import video_noise
from osplab.models.dit import DiT
from osplab.train import Task
from osplab.train.distributed import unwrap

OBJECTIVES = ("rf", "ddpm")
CURRICULUM_SUBSETS = ("simple",)


@dataclass(frozen=True)
class LatentNorm:
    """x = (z - mean) / (scale * channel), with a scalar mean and scale measured over every latent
    value of the train split and per-channel factors `channel` (C,) >= 1 (None = all 1).

    The factors cap the spectrum: a channel whose std exceeds `max_channel_std` (in units of the
    global scale) is scaled down to exactly that; every other channel keeps its place in the
    spectrum. Why: the latents are PCA coefficients, and with one global scale the first one has
    std 6.4, so where an object goes is decided by noise at t > 0.9; standardising every channel
    instead inflates the near-noise components (shared/FACTS.md).
    """

    mean: float
    scale: float
    channel: tuple[float, ...] | None = None

    def __post_init__(self):  # a list from a checkpoint's JSON becomes a tuple (frozen, hashable)
        if self.channel is not None:
            object.__setattr__(self, "channel", tuple(float(c) for c in self.channel))

    @classmethod
    def measure(cls, latents: LatentDataset, max_channel_std: float | None = None) -> "LatentNorm":
        """From per-channel first and second moments (float64) of every latent value of the split: for a
        store of codes exactly, from code counts (sum z = sum_k n_k c_k, sum z^2 = sum_k n_k c_k^2)."""
        if max_channel_std is not None and not max_channel_std > 0:
            raise ValueError(f"max_channel_std must be > 0 (or null for one global scale), got {max_channel_std}")
        s1, s2, n = _channel_moments(latents)                             # (D,), (D,), positions
        mean = float(s1.sum() / (n * len(s1)))
        var = float(s2.sum() / (n * len(s1))) - mean**2
        if max_channel_std is None:
            return cls(mean, var**0.5)
        std_c = ((s2 / n) - (s1 / n).square()).clamp_min(0).sqrt() / var**0.5  # (D,) in global units
        channel = (std_c / max_channel_std).clamp_min(1.0)
        return cls(mean, var**0.5, tuple(float(c) for c in channel))

    def to_dict(self) -> dict:
        d = {"mean": self.mean, "scale": self.scale}
        if self.channel is not None:
            d["channel"] = list(self.channel)
        return d

    def _divisor(self, z: torch.Tensor) -> torch.Tensor | float:
        """scale, or scale * channel shaped (C, 1, 1, 1) to broadcast over (..., C, t, h, w)."""
        if self.channel is None:
            return self.scale
        c = torch.tensor(self.channel, dtype=z.dtype, device=z.device)
        if z.dim() < 4 or z.shape[-4] != len(c):
            raise ValueError(f"latents must be (..., C={len(c)}, t, h, w), got {tuple(z.shape)}")
        return self.scale * c[:, None, None, None]

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self._divisor(z)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._divisor(x) + self.mean


def _channel_moments(latents: LatentDataset) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(sum of z, sum of z^2) per channel (D,) float64 over every latent position of the split, and the
    number of positions."""
    if latents.kind == "codes":
        counts = torch.zeros(len(latents.codebook), dtype=torch.float64)
        for i in range(len(latents)):
            counts += torch.bincount(latents[i]["indices"].flatten(), minlength=len(counts)).double()
        book = latents.codebook.double()                                  # (K, D)
        return counts @ book, counts @ book.square(), float(counts.sum())
    s1 = s2 = torch.zeros(latents.codebook.shape[1], dtype=torch.float64)
    n = 0
    for i in range(len(latents)):
        z = latents.latent(i).flatten(1).double()                         # (D, t h w)
        s1, s2, n = s1 + z.sum(1), s2 + z.square().sum(1), n + z.shape[1]
    return s1, s2, float(n)


class TextLatents:
    """A split of the latent store with cached caption embeddings; item i is a pure function of i:
    {"x": float32 (C, t, h, w) normalised latents, "text": (L, D), "mask": bool (L,)}."""

    def __init__(self, latents_root: str, text_root: str, split: str, norm: LatentNorm | None = None,
                 max_channel_std: float | None = None, expect_kind: str | None = None):
        self.latents = LatentDataset(latents_root, split)
        if expect_kind is not None and self.latents.kind != expect_kind:  # a DiT's norm on the other kind: wrong inputs
            raise ValueError(f"{latents_root} holds {self.latents.kind} latents, but the DiT was trained on "
                             f"{expect_kind} latents (vqvae.latent_kind); re-run `dvc repro encode` with its setting")
        self.text = TextCache(text_root, split)
        self.norm = norm or LatentNorm.measure(self.latents, max_channel_std)
        ids = [r["id"] for r in self.latents.rows]
        self.tokens, self.mask = self.text.lookup(ids)  # (N, L, D), (N, L): fails if the cache is stale

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        z = self.latents.latent(index)                                       # (C, t, h, w)
        return {"x": self.norm.normalize(z), "text": self.tokens[index], "mask": self.mask[index]}

    def shapes(self) -> list[tuple[int, int, int]]:
        return self.latents.shapes()


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Items of one latent shape -> {"x": (B, C, t, h, w), "text": (B, L, D), "mask": (B, L)}."""
    return {k: torch.stack([it[k] for it in items]) for k in ("x", "text", "mask")}


def check_diffusion(d) -> None:
    """The `diffusion` settings that training reads at every step, checked once before a run starts:
    a bad value is a one-line SettingError naming the key (not a crash at the first loss step, after
    the run directory has been claimed)."""
    from osplab import checks
    from osplab.diffusion import ddpm

    r = d.rf
    checks.choice("diffusion.rf.timesteps", r.timesteps, rectified_flow.TIMESTEP_KINDS)
    checks.number("diffusion.rf.logit_mean", r.logit_mean)
    checks.number("diffusion.rf.logit_std", r.logit_std, low=0, low_open=True)
    checks.choice("diffusion.rf.prediction", r.prediction, rectified_flow.PREDICTIONS)
    checks.number("diffusion.rf.t_min", r.t_min, low=0, high=1, low_open=True, high_open=True)
    checks.number("diffusion.rf.frame_t", r.frame_t, low=0, high=1)
    checks.number("diffusion.rf.shift", r.shift, low=0, low_open=True)
    checks.number("diffusion.noise_frame_corr", d.noise_frame_corr, low=0, high=1)
    checks.choice("diffusion.ddpm.schedule", d.ddpm.schedule, ddpm.SCHEDULES)
    checks.choice("diffusion.ddpm.prediction", d.ddpm.prediction, ddpm.PREDICTIONS)
    checks.choice("diffusion.ddpm.spacing", d.ddpm.spacing, ddpm.SPACINGS)
    checks.integer("diffusion.ddpm.num_train_timesteps", d.ddpm.num_train_timesteps, minimum=2)
    checks.number("diffusion.curriculum.fraction", d.curriculum.fraction, low=0, high=1, high_open=True)
    checks.choice("diffusion.curriculum.subset", d.curriculum.subset, CURRICULUM_SUBSETS)


def curriculum_subset(captions: list[str], subset: str) -> list[int]:
    """Indices of the clips of `subset` ('simple': the caption names one object that does not bounce;
    osplab.data.synthetic.is_simple_caption). Raises when the subset is empty or is the whole split
    (captions not written by the synthetic generator, e.g. UCF-101's): a curriculum that changes
    nothing must not pass silently."""
    from osplab.data.synthetic import is_simple_caption

    if subset not in CURRICULUM_SUBSETS:
        raise ValueError(f"curriculum subset {subset!r} is unknown; use one of {CURRICULUM_SUBSETS}")
    keep = [i for i, c in enumerate(captions) if is_simple_caption(c)]
    if not keep or len(keep) == len(captions):
        raise ValueError(f"diffusion.curriculum.subset={subset!r} selects {len(keep)} of {len(captions)} train "
                         "clips; the curriculum needs the synthetic data's captions (one or two objects, bounces "
                         "named); set diffusion.curriculum.fraction=0 for other data")
    return keep


def checkpoint_path(cfg, objective: str) -> str:
    """Where train_dit exports the DiT of `objective` (`diffusion.checkpoints`); sampling reads it there."""
    return f"{cfg.diffusion.checkpoints}/dit_{objective}.safetensors"


def device_generator(device: torch.device) -> torch.Generator:
    """The global torch RNG of `device` (the one the training loop checkpoints and restores)."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index or 0]
    return torch.default_generator


def make_ddpm(d) -> DDPM:
    """The DDPM of the `diffusion.ddpm` settings (a DictConfig or a plain dict); built once per
    distinct setting (the training loss asks for it at every step)."""
    return _ddpm(int(d["num_train_timesteps"]), str(d["schedule"]), str(d["prediction"]), bool(d["zero_terminal_snr"]))


@lru_cache(maxsize=8)
def _ddpm(steps: int, schedule: str, prediction: str, zero_terminal_snr: bool) -> DDPM:
    return DDPM(steps, schedule, prediction, zero_terminal_snr)


def objective_loss(objective: str, diffusion_cfg, model: nn.Module, batch: dict, generator: torch.Generator,
                   t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The mean loss of `objective` on a batch; t (B,) in [0, 1] and noise fix the draw (validation)."""
    def fn(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return model(x, tt, batch["text"], batch["mask"])

    x0 = batch["x"]
    rho = float(diffusion_cfg.noise_frame_corr)
    if objective == "rf":
        r = diffusion_cfg.rf
        sampler = rectified_flow.TimestepSampler(r.timesteps, float(r.logit_mean), float(r.logit_std))
        velocity = rectified_flow.as_velocity(fn, str(r.prediction), float(r.t_min))
        frame_t = float(r.frame_t)  # per-frame noise levels come in groups of the DiT's temporal patch
        group = unwrap(model).cfg.patch[0] if frame_t > 0 else 1
        return rectified_flow.loss(velocity, x0, generator, t=t, noise=noise, timesteps=sampler, frame_corr=rho,
                                   frame_t=frame_t, frame_group=group)
    ddpm = make_ddpm(diffusion_cfg.ddpm)
    i = None if t is None else (t * ddpm.num_train_timesteps).round().long().clamp(0, ddpm.num_train_timesteps - 1)
    return ddpm.loss(fn, x0, generator, i=i, noise=noise, frame_corr=rho)


def val_batches(data: TextLatents, clips: int, seed: int, frame_corr: float = 0.0) -> list[dict]:
    """`clips` val clips taken round-robin over the shape buckets (first clips of each), one batch
    per shape, each with fixed noise (of the training noise prior `frame_corr`): the same batches at
    every evaluation of a run."""
    by_shape: dict[tuple, list[int]] = {}
    for i, shape in enumerate(data.shapes()):
        by_shape.setdefault(tuple(shape), []).append(i)
    round_robin = [i for group in zip_longest(*(by_shape[s] for s in sorted(by_shape))) for i in group
                   if i is not None][:clips]
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for shape in sorted(by_shape):
        members = [i for i in round_robin if tuple(data.shapes()[i]) == shape]
        if members:
            batch = collate([data[i] for i in members])
            batch["noise"] = video_noise(batch["x"].shape, frame_corr, gen)
            batches.append(batch)
    return batches


def build_task(model: DiT, objective: str, cfg, steps: int | None = None) -> Task:
    """The training-loop Task for `objective` ('rf' | 'ddpm') with the settings of params.yaml.

    `steps`: optimizer steps of the run (default `train_dit.steps`); the curriculum's switch is
    `diffusion.curriculum.fraction` of them."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is unknown; use one of {OBJECTIVES}")
    cap = cfg.diffusion.latent_max_channel_std
    train = TextLatents(cfg.vqvae.latents, cfg.text.cache, "train", max_channel_std=None if cap is None else float(cap))
    val = TextLatents(cfg.vqvae.latents, cfg.text.cache, "val", norm=train.norm)
    if model.cfg.text_standardise:  # fixed buffers of the model: the checkpoint carries them to sampling
        try:
            model.text.fit_standardisation(train.tokens, train.mask)
        except ValueError as err:  # name the cache: the fix is to re-run the stage that writes it
            raise ValueError(f"text cache {cfg.text.cache}: {err}; re-run `dvc repro embed_text` "
                             "(or set dit.text_standardise=false)") from err
    shapes = train.shapes()
    common = max(set(shapes), key=shapes.count)
    grid = [float(t) for t in cfg.diffusion.val.t_grid]
    fixed = val_batches(val, int(cfg.diffusion.val.clips), int(cfg.diffusion.val.seed),
                        float(cfg.diffusion.noise_frame_corr))

    def loss(m: nn.Module, batch: dict):
        return objective_loss(objective, cfg.diffusion, m, batch, device_generator(batch["x"].device)), {}

    def evaluate(m: nn.Module) -> dict[str, float]:
        device = next(unwrap(m).parameters()).device
        out, total, count = {}, 0.0, 0
        for t in grid:
            values = []
            for b in fixed:
                b = {k: v.to(device) for k, v in b.items()}
                n = len(b["x"])
                tt = torch.full((n,), t, device=device)
                values.append((float(objective_loss(objective, cfg.diffusion, m, b, None, tt, b["noise"])), n))
            mean = sum(v * n for v, n in values) / sum(n for _, n in values)
            out[f"val/loss_t{t:g}"] = mean
            total, count = total + mean, count + 1
        out["val/loss"] = total / count
        return out

    steps = int(cfg.train_dit.steps if steps is None else steps)
    fraction = float(cfg.diffusion.curriculum.fraction)
    switch = int(round(fraction * steps))
    if fraction > 0 and switch == 0:
        warnings.warn(f"diffusion.curriculum.fraction={fraction:g} of a {steps}-step run rounds to 0 steps: "
                      "this run has no curriculum", RuntimeWarning, stacklevel=2)
    captions = [r["caption"] for r in train.latents.rows]
    first = curriculum_subset(captions, cfg.diffusion.curriculum.subset) if switch else []

    def sampler(rank, world_size, global_batch, micro_batch, seed):
        return CurriculumBatchSampler(shapes, first, switch, rank, world_size, global_batch, micro_batch, seed)

    task = Task(model=model, loss=loss, dataset=train, collate=collate,
                flops_per_sample=model.flops_per_sample(common, train.tokens.shape[1]), batch_sampler=sampler,
                shard_units=lambda m: list(m.blocks), evaluate=evaluate)
    return task
