"""Text to video with the trained checkpoints: load, check, sample, decode.

    gen = load_generator("checkpoints/dit_rf.safetensors", "checkpoints/vqvae.safetensors", text_cfg)
    videos = gen.generate(["a small red circle moves left slowly"], frames=16, height=64, width=64,
                          steps=50, cfg_scale=4.0, seed=0)      # uint8 (N, T, H, W, 3)

`load_generator` refuses a DiT whose VQVAE or text encoder is not the one it was trained with,
naming both (the sha256 of the VQVAE file; the encoder's identity incl. its weights' sha256).
Sampling runs the DiT's objective: rectified flow (Euler/Heun, any step count) or DDPM
(ancestral/DDIM, any step count), with classifier-free guidance. Sampled latents are
de-normalised and, with `snap`, replaced by their nearest VQVAE codes before decoding: the decoder
was only ever trained on codes, and a sampled latent between codes decodes to a blend it never saw.
A shape the DiT never trained on is allowed (positions are computed for any size) but warned about.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from osplab.data.text_cache import check_identity
from osplab.diffusion import rectified_flow
from osplab.diffusion.guidance import cfg as guided
from osplab.diffusion.noise import video_noise
from osplab.io import sha256_file
from osplab.models.dit import DiT, DiTConfig
from osplab.models.text import TextEncoder, encoder_from_conf
from osplab.models.vqvae import VQVAE, tensor_to_video
from osplab.tasks.dit import LatentNorm, make_ddpm

STAGE_OF = {"dit": "train_dit", "vqvae": "train_vqvae"}


def _require(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint {path} not found; make it with `dvc repro {STAGE_OF[what]}`"
                                + (" (train_dit@rf or train_dit@ddpm)" if what == "dit" else ""))
    return path


def read_dit(path: str | Path) -> tuple[DiT, dict]:
    """A DiT in eval mode and its metadata (decoded JSON) from an exported checkpoint."""
    from safetensors import safe_open

    from osplab.train import load_tensors

    path = _require(path, "dit")
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if raw.get("format") != "osplab-dit/1":
        raise ValueError(f"{path} is not a DiT exported by train_dit (metadata format {raw.get('format')!r})")
    meta = {k: (json.loads(v) if k not in ("format", "objective", "vqvae_sha256") else v) for k, v in raw.items()}
    model = DiT(DiTConfig(**meta["model_config"]))
    model.load_state_dict(load_tensors(path))
    return model.eval(), meta


@dataclass
class Generator:
    dit: DiT
    vqvae: VQVAE
    text: TextEncoder
    meta: dict

    @property
    def norm(self) -> LatentNorm:
        return LatentNorm(**self.meta["latent_norm"])

    @property
    def latent_kind(self) -> str:
        """What the DiT was trained on: 'codes' or 'continuous' (vqvae.latent_kind; older checkpoints: codes)."""
        return self.meta.get("config", {}).get("vqvae", {}).get("latent_kind", "codes")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of a (frames, height, width) clip; a clear error with the nearest valid sizes."""
        ft, fh, fw = self.vqvae.cfg.downsample
        pt, ph, pw = self.dit.cfg.patch
        for name, n, f in (("frames", frames, ft * pt), ("height", height, fh * ph), ("width", width, fw * pw)):
            if n < f or n % f:
                lo, hi = (n // f) * f, (n // f + 1) * f
                near = f"{lo} or {hi}" if lo >= f else f"{hi}"
                raise ValueError(f"{name}={n} cannot be generated: it must be a positive multiple of {f} (VQVAE "
                                 f"downsampling x DiT patch); nearest valid {name}: {near}")
        c, t, h, w = self.vqvae.latent_shape(frames, height, width)
        seen = self.meta["train_shapes"]
        if seen is not None and [t, h, w] not in [list(s) for s in seen]:
            warnings.warn(f"latent shape {(t, h, w)} ({frames} frames at {height}x{width}) was never seen in "
                          f"training (trained on {self.meta['train_shapes']}): expect worse samples", stacklevel=3)
        return c, t, h, w

    @torch.no_grad()
    def sample_latents(self, captions: list[str], shape: tuple[int, int, int, int], steps: int, cfg_scale: float,
                       sampler: str | None, seed: int, progress: bool = False, precision: str = "fp32",
                       frame_lag: float = 0.0, cfg_interval: tuple[float, float] | None = None) -> torch.Tensor:
        """Normalised latents (N, C, t, h, w) for `captions`, noise from `seed`.

        cfg_interval (`diffusion.sample.cfg_interval`): guide only while the noise level, as an RF time,
        is in [lo, hi] (osplab.diffusion.guidance.cfg; DDPM steps by `ddpm_noise_level`); None: every step.

        precision (`diffusion.sample.precision`): fp32, bf16 or auto (bf16 on a GPU that has it) for the
        DiT's matmuls under autocast; the sampler's state and arithmetic stay fp32 either way."""
        text, mask = self.text.encode(list(captions))
        gen = torch.Generator().manual_seed(seed)
        d = self.meta["diffusion"]
        # checkpoints written before the noise prior existed were trained with independent frames
        rho = float(d.get("noise_frame_corr", 0.0))
        noise = video_noise((len(captions), *shape), rho, gen)
        model = with_precision(self.dit, precision, noise.device)
        if self.meta["objective"] == "rf":
            fn = guided(model, text, mask, cfg_scale, cfg_interval)
            rf = d["rf"]
            # checkpoints written before x0 prediction existed predict the velocity (and have no t_min)
            prediction = str(rf.get("prediction", "velocity"))
            if prediction != "velocity":
                fn = rectified_flow.as_velocity(fn, prediction, float(rf["t_min"]))
            return rectified_flow.sample(fn, noise, steps, sampler or "euler", shift=float(rf["shift"]),
                                         progress=progress, frame_lag=frame_lag, frame_group=self.dit.cfg.patch[0])
        ddpm = make_ddpm(d["ddpm"])
        fn = guided(model, text, mask, cfg_scale, cfg_interval, noise_level=ddpm_noise_level(ddpm))
        return ddpm.sample(fn, noise, steps, sampler or "ancestral", generator=gen, progress=progress,
                           spacing=d["ddpm"]["spacing"], frame_corr=rho)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, snap: bool) -> np.ndarray:
        """Normalised latents (N, C, t, h, w) -> uint8 videos (N, T, H, W, 3)."""
        z = self.norm.denormalize(x)
        return tensor_to_video(self.vqvae.decode(z, requantize=snap)).numpy()

    def generate(self, captions: list[str], frames: int, height: int, width: int, steps: int, cfg_scale: float,
                 seed: int, sampler: str | None = None, snap: bool = True, progress: bool = False,
                 precision: str = "fp32", frame_lag: float = 0.0,
                 cfg_interval: tuple[float, float] | None = None) -> np.ndarray:
        """uint8 videos (N, frames, height, width, 3) for `captions` (see `sample_latents` for precision
        and cfg_interval)."""
        if not steps >= 1:
            raise ValueError(f"steps={steps} must be >= 1")
        shape = self.latent_shape(frames, height, width)
        x = self.sample_latents(captions, shape, steps, cfg_scale, sampler, seed, progress, precision, frame_lag,
                                cfg_interval)
        return self.decode(x, snap)


def ddpm_noise_level(ddpm):
    """Model time t = i / T of `ddpm` (B,) -> the rectified-flow time of the same signal-to-noise ratio (B,):
    x_i = a x0 + s noise is (a + s) times the RF point with t = s / (a + s), where a = sqrt(alpha_bar_i),
    s = sqrt(1 - alpha_bar_i) (1 at zero terminal SNR). Lets `diffusion.sample.cfg_interval` name one noise
    band for both objectives."""
    alpha_bar = ddpm.alphas_cumprod

    def level(t: torch.Tensor) -> torch.Tensor:
        i = (t.double().cpu() * ddpm.num_train_timesteps).round().long().clamp(0, len(alpha_bar) - 1)
        a, s = alpha_bar[i].sqrt(), (1 - alpha_bar[i]).sqrt()
        return (s / (a + s)).to(device=t.device, dtype=torch.float32)

    return level


def guidance_interval(sample_cfg) -> tuple[float, float] | None:
    """`diffusion.sample.cfg_interval` as (lo, hi) model times, or None (guide every step)."""
    value = sample_cfg.cfg_interval
    if value is None:
        return None
    if len(value) != 2:
        raise ValueError(f"diffusion.sample.cfg_interval must be null or [lo, hi]; got {list(value)}")
    return float(value[0]), float(value[1])


def with_precision(model, precision: str, device: torch.device):
    """`model(*args)` run under bf16 autocast when `precision` asks for it on `device`
    (osplab.train.loop.autocast_dtype: fp32 | bf16 | auto), its output returned as fp32, so that the
    guidance arithmetic (cond - uncond, scaled) and the sampler stay in fp32."""
    from osplab.checks import choice
    from osplab.train.config import PRECISIONS
    from osplab.train.loop import autocast_dtype

    amp = autocast_dtype(choice("diffusion.sample.precision", precision, PRECISIONS), device,
                        "diffusion.sample.precision")
    if amp is None:
        return model

    def run(*args) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp):
            return model(*args).float()

    return run


def load_generator(dit_path: str | Path, vqvae_path: str | Path, text_cfg, device: str = "cpu") -> Generator:
    """Load and cross-check the DiT, the VQVAE and the text encoder (see the module docstring)."""
    from osplab.stages.encode import load_vqvae

    dit, meta = read_dit(dit_path)
    vq_path = _require(vqvae_path, "vqvae")
    digest = sha256_file(vq_path)
    if digest != meta["vqvae_sha256"]:
        raise ValueError(f"{dit_path} was trained on the latents of a VQVAE with sha256 {meta['vqvae_sha256'][:12]}..., "
                         f"but {vq_path} has sha256 {digest[:12]}...: its decoder does not speak the DiT's latents; "
                         f"use the matching VQVAE or re-run `dvc repro train_dit`")
    text = encoder_from_conf(text_cfg, device)
    check_identity(meta["text_encoder"], text.identity, f"{dit_path}")
    return Generator(dit.to(device), load_vqvae(str(vq_path)).to(device), text, meta)


def untrained_generator(cfg, objective: str, seed: int, train_shapes: list | None = None,
                        device: str = "cpu") -> Generator:
    """The DiT and VQVAE of `cfg`'s architectures at initialisation (seeded), with `cfg`'s text encoder.

    No checkpoint is read: it is the "untrained" baseline and what the notebooks' smoke runs sample
    from (their numbers then test the code path only). `objective` picks the sampler family (rf |
    ddpm, settings from cfg.diffusion); latents are taken as already normalised (mean 0, scale 1);
    `train_shapes` are the latent (t, h, w) shapes that count as seen in training (None: every shape)."""
    from omegaconf import OmegaConf

    from osplab.models.vqvae import VQVAEConfig
    from osplab.tasks.dit import OBJECTIVES
    from osplab.train import seed_everything

    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is unknown; use one of {OBJECTIVES}")
    seed_everything(seed)
    plain = OmegaConf.to_container(cfg, resolve=True)
    dit = DiT(DiTConfig.from_dict(plain["dit"])).eval()
    vqvae = VQVAE(VQVAEConfig.from_dict(plain["vqvae"]["model"])).eval()
    meta = {"objective": objective, "diffusion": plain["diffusion"], "latent_norm": {"mean": 0.0, "scale": 1.0},
            "train_shapes": None if train_shapes is None else [list(s) for s in train_shapes],
            "vqvae_sha256": "untrained",
            "text_encoder": None}
    return Generator(dit.to(device), vqvae.to(device), encoder_from_conf(plain["text"], device), meta)
