"""Video VQ-VAE (stage 1): 3D-conv encoder -> vector quantizer -> 3D-conv decoder.

    cfg = VQVAEConfig(**settings)              # settings from conf/vqvae/*.yaml
    model = VQVAE(cfg)
    x = video_to_tensor(uint8_clips)            # (B, T, H, W, 3) uint8 -> (B, 3, T, H, W) in [-1, 1]
    z_q, indices, stats = model.encode(x)       # (B, D, T/ft, H/fh, W/fw), (B, T/ft, H/fh, W/fw)
    recon = model.decode(z_q)                   # (B, 3, T, H, W)
    recon, losses = model(x)                    # training: losses["loss"] is what to backprop

Only training mode updates the codebook (EMA, restarts): call `model.eval()` before encoding data.

The DiT diffuses the continuous quantized latents z_q (`model.encode(x)[0]`, or
`model.quantizer.lookup(indices)` from stored indices) and decodes its samples with
`model.decode(z, requantize=True)`, which snaps them to the nearest codes first. With
`l2_normalize` every latent vector has unit norm (per-channel scale about 1/sqrt(D)), so the DiT
should standardise them (e.g. multiply by sqrt(D), or by the measured per-channel std).

Two architectures (`arch`), both 3D-convolutional with residual blocks and axial attention:

* `patch` (the default): a **patch stem** does the whole downsampling at once (a Conv3d whose kernel
  equals its stride, e.g. 4x8x8), residual blocks and axial attention work at latent resolution,
  and a 1x1x1 conv + depth-to-space maps back to pixels. It is initialised from data
  (`init_from_data`): stem and output projection from the principal components of training
  patches, so training starts from the best *linear* patch autoencoder (`init_pca_psnr` in
  metrics/vqvae.json), and the codebook by k-means of the encoder outputs. On 2 CPU cores, where
  a run has a few hundred steps, this is what makes the PSNR target reachable: from random
  initialisation the hierarchical model reached about 20 dB in 500 steps (README, issue-4 note).
* `hierarchical`: the VideoGPT / Open-Sora-Plan layout described below: several resolution levels,
  strided causal convs down and depth-to-space up. More capacity per pixel, but it needs the long
  training of the paper profile.

The **encoder is causal** in time (documented choice): every temporal convolution pads only on the
past side, by replicating the first frame, and normalisation statistics are per frame. So latent
frame t depends only on input frames < ft * (t + 1) (its own block of ft frames and earlier ones),
and a prefix of the clip encodes to a prefix of the latents. This lets one model handle any clip
length, and a latent clip can be extended in time without re-encoding its past. The decoder is
causal too with `decoder_causal: true` (decoded frames of block t depend only on latents <= t);
with `false` its convolutions pad both sides and its temporal attention sees every latent frame,
so a block can blend into the next one instead of jumping at the border (the flicker of issue 12).
Decoding always has the whole latent clip at hand, so nothing is lost by looking ahead there.
Spatial padding is symmetric (zeros).

Hierarchical layout: len(channel_mult) levels; level i works at base_channels * channel_mult[i] channels.
Between consecutive levels an axis is halved while its factor is not yet reached: spatial axes at
the first transitions, time at the last ones (the Open-Sora-Plan ordering: time is compressed where
there are many channels; halving time first would be cheaper). The encoder halves with strided
causal convs, the decoder doubles with depth-to-space (see Upsample for why not nearest-neighbour).
The lowest resolution has `attn_blocks` axial attention blocks (spatial within each frame, then
causal temporal at each position) between residual blocks.

Patch layout: one level of base_channels * channel_mult[0] channels (channel_mult has one entry).
Encoder: stem -> ResBlock, (AxialAttention, ResBlock) x attn_blocks, num_res_blocks more
ResBlocks -> 1x1x1 conv to embed_dim. Decoder: the mirror image, ending in a conv (kernel
`unpatch_kernel`: 1 = each block from its own latent, 3 = from the latents around it) to
3 * ft * fh * fw channels and depth-to-space, then an optional full-resolution `Refiner`
(`refiner_channels`, both archs). There is no normalisation on the path from stem
to latents or from latents to pixels (only inside the residual branches): a per-frame
GroupNorm there would subtract each frame's mean and lose the colour of plain backgrounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from osplab import checks
from osplab.models.quantizer import VectorQuantizer


@dataclass
class VQVAEConfig:
    """Every field is required; values live in conf/vqvae/*.yaml (the one source of settings)."""

    arch: str                   # "patch" (patch stem, one level at latent resolution) | "hierarchical"
    base_channels: int          # channels of the first (full-resolution) level
    channel_mult: tuple         # per-level multiplier of base_channels, e.g. (1, 2, 2, 4)
    num_res_blocks: object      # residual blocks per level (encoder and decoder): an int or one per level
    downsample: tuple           # (t, h, w) total downsampling factors, powers of two, e.g. (4, 8, 8)
    attn_blocks: int            # axial attention blocks at the lowest resolution (0 = none)
    attn_heads: int             # heads of those blocks (must divide the lowest-level channels)
    codebook_size: int          # number of codes K
    embed_dim: int              # code (latent channel) dimension D
    l2_normalize: bool          # cosine-similarity lookup on the unit sphere (see quantizer.py)
    commitment: float           # weight beta of the commitment loss
    ema_decay: float            # EMA decay of the codebook
    restart_every: int          # training forward passes between dead-code restarts
    error_sampling: float       # share (0-1) of k-means seeds and dead-code replacements drawn by quantization
                                # error instead of uniformly (see quantizer.py)
    norm_groups: int            # GroupNorm groups (must divide every level's channels)
    decoder_causal: bool        # true: decoded frames of latent frame t see latents <= t only; false: both sides
    unpatch_kernel: int         # patch arch: kernel (odd) of the conv from latents to pixel blocks (1 = own latent)
    refiner_channels: int       # width of the full-resolution residual 3D-conv refiner after decoding (0 = none)
    refiner_features: int       # patch arch: extra full-resolution feature channels the unpatch writes beside RGB,
                                # read by the refiner only (0 = the refiner sees the decoded RGB alone)
    tdiff_weight: float         # weight of the L1 loss on frame-to-frame differences (recon vs input)
    grad_weight: float          # weight of the L1 loss on horizontal and vertical pixel differences

    def __post_init__(self):
        self._check_types()
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.downsample = tuple(int(f) for f in self.downsample)
        if isinstance(self.num_res_blocks, int):
            self.num_res_blocks = (self.num_res_blocks,) * len(self.channel_mult)
        self.num_res_blocks = tuple(int(n) for n in self.num_res_blocks)
        if len(self.num_res_blocks) != len(self.channel_mult) or min(self.num_res_blocks) < 0:
            raise checks.SettingError(
                f"vqvae.model.num_res_blocks={self.num_res_blocks}: give one int, or one count >= 0 "
                f"per level of channel_mult={self.channel_mult}")
        if len(self.downsample) != 3:
            raise checks.SettingError(
                f"vqvae.model.downsample={self.downsample}: give three factors (t, h, w), e.g. (4, 8, 8)")
        for f in self.downsample:
            if f < 1 or f & (f - 1):
                raise checks.SettingError(
                    f"vqvae.model.downsample={self.downsample}: every factor must be a power of two "
                    "(1, 2, 4, ...)")
        need = max(int(math.log2(f)) for f in self.downsample)
        if self.arch == "patch" and len(self.channel_mult) != 1:
            raise checks.SettingError(
                f"vqvae.model.arch=patch works at one resolution: give one channel_mult entry, got {self.channel_mult}")
        if self.arch == "hierarchical" and len(self.channel_mult) < need + 1:
            raise checks.SettingError(
                f"vqvae.model.channel_mult={self.channel_mult} gives {len(self.channel_mult) - 1} halvings, but "
                f"downsample={self.downsample} needs {need}: add levels to channel_mult")
        for c in self.level_channels():
            if c % self.norm_groups:
                raise checks.SettingError(
                    f"vqvae.model.norm_groups={self.norm_groups} does not divide level channels {c}")
        if self.attn_blocks and self.level_channels()[-1] % self.attn_heads:
            raise checks.SettingError(
                f"vqvae.model.attn_heads={self.attn_heads} does not divide {self.level_channels()[-1]} channels")

    def _check_types(self) -> None:
        """Types and ranges of the plain fields, naming the key (`vqvae.model.codebook_size=0 is not allowed`)."""
        key = "vqvae.model"
        checks.choice(f"{key}.arch", self.arch, ("patch", "hierarchical"))
        for name, minimum in (("base_channels", 1), ("attn_blocks", 0), ("attn_heads", 1), ("codebook_size", 1),
                              ("embed_dim", 1), ("restart_every", 1), ("norm_groups", 1), ("unpatch_kernel", 1),
                              ("refiner_channels", 0), ("refiner_features", 0)):
            checks.integer(f"{key}.{name}", getattr(self, name), minimum)
        checks.integers(f"{key}.channel_mult", self.channel_mult, 1)
        checks.integers(f"{key}.downsample", self.downsample, 1, length=3)
        if isinstance(self.num_res_blocks, int) or not isinstance(self.num_res_blocks, Sequence):
            checks.integer(f"{key}.num_res_blocks", self.num_res_blocks, 0)
        else:
            checks.integers(f"{key}.num_res_blocks", self.num_res_blocks, 0)
        checks.boolean(f"{key}.l2_normalize", self.l2_normalize)
        checks.boolean(f"{key}.decoder_causal", self.decoder_causal)
        if self.unpatch_kernel % 2 == 0:
            raise checks.SettingError(f"{key}.unpatch_kernel={self.unpatch_kernel}: use an odd kernel (1, 3, ...)")
        if self.arch != "patch" and self.unpatch_kernel != 1:
            raise checks.SettingError(f"{key}.unpatch_kernel={self.unpatch_kernel} is for arch=patch only; use 1")
        if self.refiner_features and (self.arch != "patch" or not self.refiner_channels):
            raise checks.SettingError(f"{key}.refiner_features={self.refiner_features} needs arch=patch and a refiner "
                                      f"(refiner_channels > 0); use 0")
        checks.number(f"{key}.commitment", self.commitment, 0.0)
        checks.number(f"{key}.tdiff_weight", self.tdiff_weight, 0.0)
        checks.number(f"{key}.grad_weight", self.grad_weight, 0.0)
        checks.number(f"{key}.ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        checks.number(f"{key}.error_sampling", self.error_sampling, 0.0, 1.0)

    def level_channels(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mult]

    def strides(self) -> list[tuple[int, int, int]]:
        """(t, h, w) stride of each of the len(channel_mult) - 1 level transitions."""
        n = len(self.channel_mult) - 1
        lt, lh, lw = (int(math.log2(f)) for f in self.downsample)
        # spatial halvings at the first transitions, temporal ones at the last
        return [(2 if i >= n - lt else 1, 2 if i < lh else 1, 2 if i < lw else 1) for i in range(n)]

    @classmethod
    def from_dict(cls, d) -> "VQVAEConfig":
        """Build from a mapping (e.g. an OmegaConf node); unknown keys are an error naming them."""
        d = checks.known_keys("vqvae.model", dict(d), cls)
        return cls(**d)


# ---------------------------------------------------------------- uint8 <-> float helpers
def video_to_tensor(video) -> torch.Tensor:
    """uint8 video (B, T, H, W, 3) or (T, H, W, 3) (numpy or torch) -> float32 (B, 3, T, H, W) in [-1, 1]."""
    v = torch.from_numpy(np.ascontiguousarray(video)) if isinstance(video, np.ndarray) else video
    if v.dtype != torch.uint8 or v.ndim not in (4, 5) or v.shape[-1] != 3:
        raise ValueError(f"expected uint8 video (B, T, H, W, 3) or (T, H, W, 3), got {v.dtype} {tuple(v.shape)}")
    if v.ndim == 4:
        v = v[None]
    return rearrange(v.float(), "b t h w c -> b c t h w") / 127.5 - 1.0


def tensor_to_video(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3), clamped and rounded."""
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, T, H, W), got {tuple(x.shape)}")
    u = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return rearrange(u, "b c t h w -> b t h w c").contiguous()


# ---------------------------------------------------------------- building blocks
class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: (B, C, T, H, W), stats over (C/G, H, W) of each (b, t).

    Per-frame statistics keep the network causal in time and independent of the clip length.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class CausalConv3d(nn.Module):
    """3D conv, stride (st, sh, sw); time padded k - st frames on the past side (first frame replicated).

    Output length T / st for T divisible by st; output t sees input frames <= st * t + st - 1.
    With causal=False (stride 1 in time only) the k - 1 padding frames are split between past and
    future (edge frames replicated), so output t sees input frames t - k//2 .. t + k//2.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride=(1, 1, 1), causal: bool = True):
        super().__init__()
        if not causal and stride[0] != 1:
            raise ValueError("a non-causal CausalConv3d needs temporal stride 1")
        pad = kernel - stride[0] if kernel > 1 else 0
        self.time_pad = (pad, 0) if causal else (pad // 2, pad - pad // 2)
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.time_pad):
            x = F.pad(x, (0, 0, 0, 0, *self.time_pad), mode="replicate")
        return self.conv(x)


class ResBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), (B, C, T, H, W) -> same shape."""

    def __init__(self, channels: int, groups: int, causal: bool = True):
        super().__init__()
        self.norm1, self.conv1 = FrameGroupNorm(groups, channels), CausalConv3d(channels, channels, causal=causal)
        self.norm2, self.conv2 = FrameGroupNorm(groups, channels), CausalConv3d(channels, channels, causal=causal)
        nn.init.zeros_(self.conv2.conv.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class AxialAttention(nn.Module):
    """Spatial self-attention within each frame, then temporal self-attention at each position
    (causal unless causal=False).

    (B, C, T, H, W) -> same shape; pre-norm, residual, output projections zero-initialised.
    Self-contained on purpose (small token counts at the lowest resolution; plain SDPA is enough).
    """

    def __init__(self, channels: int, heads: int, groups: int, causal: bool = True):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.norm_s, self.norm_t = FrameGroupNorm(groups, channels), FrameGroupNorm(groups, channels)
        self.qkv_s, self.qkv_t = nn.Linear(channels, 3 * channels), nn.Linear(channels, 3 * channels)
        self.out_s, self.out_t = nn.Linear(channels, channels), nn.Linear(channels, channels)
        for lin in (self.out_s, self.out_t):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _attend(self, tokens, qkv, out, causal):
        """tokens (N, L, C) -> (N, L, C): multi-head attention along L."""
        q, k, v = rearrange(qkv(tokens), "n l (three h d) -> three n h l d", three=3, h=self.heads)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # 4-D inputs: the fast path
        return out(rearrange(y, "n h l d -> n l (h d)"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        s = rearrange(self.norm_s(x), "b c t h w -> (b t) (h w) c")
        x = x + rearrange(self._attend(s, self.qkv_s, self.out_s, False), "(b t) (h w) c -> b c t h w", b=b, h=h)
        s = rearrange(self.norm_t(x), "b c t h w -> (b h w) t c")
        return x + rearrange(self._attend(s, self.qkv_t, self.out_t, self.causal), "(b h w) t c -> b c t h w", b=b, h=h)


class Upsample(nn.Module):
    """Causal conv to cout * st * sh * sw channels, then depth-to-space by (st, sh, sw).

    (B, cin, T, H, W) -> (B, cout, T st, H sh, W sw).

    Depth-to-space (not nearest-neighbour + conv) gives each of the st frames made from one latent
    frame its own weights: with causal padding, nearest-neighbour upsampling makes the frames of
    the first block identical and the others distinguishable only through their neighbours. The
    weights start equal across the sub-positions (ICNR), i.e. as nearest-neighbour upsampling,
    which avoids checkerboard artefacts early in training. Measured: a tiny model overfitting a
    moving square sat on the static (temporal-mean) solution for 300+ steps with nearest-neighbour
    upsampling in 3 of 4 seeds, and left it within ~50 steps in 4 of 4 with depth-to-space.
    """

    def __init__(self, cin: int, cout: int, stride, causal: bool = True):
        super().__init__()
        self.stride = tuple(int(s) for s in stride)
        r = math.prod(self.stride)
        self.conv = CausalConv3d(cin, cout * r, causal=causal)
        with torch.no_grad():  # ICNR: out channel (c, sub-position) starts as the same filter for every sub-position
            w, b = self.conv.conv.weight, self.conv.conv.bias
            w.copy_(w[::r].repeat_interleave(r, dim=0))
            b.copy_(b[::r].repeat_interleave(r, dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st, sh, sw = self.stride
        return rearrange(self.conv(x), "b (c st sh sw) t h w -> b c (t st) (h sh) (w sw)", st=st, sh=sh, sw=sw)


def _mid(c: int, cfg: VQVAEConfig, causal: bool = True) -> nn.Sequential:
    """Lowest-resolution stack: ResBlock, then (AxialAttention, ResBlock) x attn_blocks."""
    layers = [ResBlock(c, cfg.norm_groups, causal)]
    for _ in range(cfg.attn_blocks):
        layers += [AxialAttention(c, cfg.attn_heads, cfg.norm_groups, causal), ResBlock(c, cfg.norm_groups, causal)]
    return nn.Sequential(*layers)


class Refiner(nn.Module):
    """Full-resolution residual 3D-conv stack on decoded video: rgb + conv(SiLU(conv(SiLU(conv(x))))).

    x: (B, 3 + features, T, H, W), the decoded RGB followed by `features` extra channels that the
    decoder writes at full resolution for the refiner only -> (B, 3, T, H, W). Without extra
    channels the refiner only sees colours and must guess, say, where a triangle's corner was from a
    blurred block; the extra channels carry what the latent knew. Each output pixel sees a 7x7x7
    neighbourhood, so it can blend across the borders of the pixel blocks that the latents decode to,
    and across latent frames (causal=False: both sides in time). The last conv starts at zero: the
    refiner starts as the identity on the RGB and training only adds what the losses ask for.
    """

    def __init__(self, channels: int, causal: bool, features: int):
        super().__init__()
        self.conv_in = CausalConv3d(3 + features, channels, causal=causal)
        self.conv_mid = CausalConv3d(channels, channels, causal=causal)
        self.conv_out = CausalConv3d(channels, 3, causal=causal)
        nn.init.zeros_(self.conv_out.conv.weight)
        nn.init.zeros_(self.conv_out.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] + self.conv_out(F.silu(self.conv_mid(F.silu(self.conv_in(x)))))


def _refiner(cfg: VQVAEConfig) -> nn.Module:
    if not cfg.refiner_channels:
        return nn.Identity()
    return Refiner(cfg.refiner_channels, cfg.decoder_causal, cfg.refiner_features)


class Encoder(nn.Module):
    """(B, 3, T, H, W) in [-1, 1] -> (B, embed_dim, T/ft, H/fh, W/fw) pre-quantization latents.

    Per level: residual blocks, then a strided causal conv that halves the axes due at this
    transition and moves to the next level's channels (a 1x1x1 conv if nothing is halved).
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        chans, g, strides = cfg.level_channels(), cfg.norm_groups, cfg.strides()
        layers: list[nn.Module] = [CausalConv3d(3, chans[0])]
        for i, c in enumerate(chans):
            layers += [ResBlock(c, g) for _ in range(cfg.num_res_blocks[i])]
            if i == len(chans) - 1:
                break
            if strides[i] != (1, 1, 1):
                layers.append(CausalConv3d(c, chans[i + 1], stride=strides[i]))
            elif chans[i + 1] != c:
                layers.append(nn.Conv3d(c, chans[i + 1], 1))
        layers += [_mid(chans[-1], cfg), FrameGroupNorm(g, chans[-1]), nn.SiLU(),
                   CausalConv3d(chans[-1], cfg.embed_dim, kernel=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, embed_dim, T', H', W') latents -> (B, 3, T' ft, H' fh, W' fw) video in about [-1, 1].

    Mirror of the encoder: per level (lowest first) residual blocks, then a depth-to-space
    upsampling to the next level's channels and resolution; then the optional refiner.
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        chans, g, strides, causal = cfg.level_channels(), cfg.norm_groups, cfg.strides(), cfg.decoder_causal
        layers: list[nn.Module] = [CausalConv3d(cfg.embed_dim, chans[-1], causal=causal), _mid(chans[-1], cfg, causal)]
        for i in reversed(range(len(chans))):
            layers += [ResBlock(chans[i], g, causal) for _ in range(cfg.num_res_blocks[i])]
            if i == 0:
                break
            if strides[i - 1] != (1, 1, 1):
                layers.append(Upsample(chans[i], chans[i - 1], strides[i - 1], causal))
            elif chans[i - 1] != chans[i]:
                layers.append(nn.Conv3d(chans[i], chans[i - 1], 1))
        layers += [FrameGroupNorm(g, chans[0]), nn.SiLU(), CausalConv3d(chans[0], 3, causal=causal)]
        self.net = nn.Sequential(*layers)
        self.refine = _refiner(cfg)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.refine(self.net(z))


def _latent_blocks(c: int, cfg: VQVAEConfig, causal: bool = True) -> nn.Sequential:
    """Patch architecture's blocks at latent resolution: the `_mid` stack, then num_res_blocks ResBlocks."""
    return nn.Sequential(_mid(c, cfg, causal), *[ResBlock(c, cfg.norm_groups, causal)
                                                 for _ in range(cfg.num_res_blocks[0])])


class PatchEncoder(nn.Module):
    """(B, 3, T, H, W) -> (B, embed_dim, T/ft, H/fh, W/fw): patch stem, then blocks at latent resolution.

    The stem is a Conv3d with kernel = stride = (ft, fh, fw): each latent sees exactly its own
    ft x fh x fw block of pixels (so the encoder stays causal in time), and the residual blocks and
    axial attention mix neighbouring latents afterwards.
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        c = cfg.level_channels()[0]
        self.stem = nn.Conv3d(3, c, kernel_size=cfg.downsample, stride=cfg.downsample)
        self.blocks = _latent_blocks(c, cfg)
        self.out = nn.Conv3d(c, cfg.embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.stem(x)))


class PatchDecoder(nn.Module):
    """(B, embed_dim, T', H', W') -> (B, 3, T' ft, H' fh, W' fw): blocks at latent resolution, then
    a conv to the ft*fh*fw*(3 + refiner_features) values of each latent's block (RGB, then the
    refiner's feature channels), depth-to-space, and the optional full-resolution refiner.

    With unpatch_kernel k > 1 the block of latent (t, i, j) is computed from the k x k x k latents
    around it (past only if decoder_causal), so neighbouring blocks can agree at their borders and
    consecutive latent frames can blend instead of jumping. The PCA initialisation fills only the
    tap of the latent itself; the other taps start at zero.
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        c, self.factors, k = cfg.level_channels()[0], cfg.downsample, cfg.unpatch_kernel
        self.inp = nn.Conv3d(cfg.embed_dim, c, 1)
        self.blocks = _latent_blocks(c, cfg, cfg.decoder_causal)
        self.rgb_rows = 3 * math.prod(self.factors)     # unpatch rows of the RGB; the refiner's feature rows follow
        rows = (3 + cfg.refiner_features) * math.prod(self.factors)
        self.unpatch = nn.Conv3d(c, rows, k, padding=(0, k // 2, k // 2))
        self.time_pad = (k - 1, 0) if cfg.decoder_causal else (k // 2, k // 2)
        self.own_tap = (k - 1 if cfg.decoder_causal else k // 2, k // 2, k // 2)  # the latent's own tap (t, h, w)
        if k > 1:
            nn.init.zeros_(self.unpatch.weight[:self.rgb_rows])  # see init_from_data
        self.refine = _refiner(cfg)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        ft, fh, fw = self.factors
        h = self.blocks(self.inp(z))
        if any(self.time_pad):
            h = F.pad(h, (0, 0, 0, 0, *self.time_pad), mode="replicate")
        h = self.unpatch(h)
        return self.refine(rearrange(h, "b (c ft fh fw) t h w -> b c (t ft) (h fh) (w fw)", ft=ft, fh=fh, fw=fw))


def patch_rows(x: torch.Tensor, factors) -> torch.Tensor:
    """Video (N, 3, T, H, W) -> its (ft, fh, fw) blocks as rows (N T' H' W', 3 ft fh fw).

    The row layout (c, ft, fh, fw) is the one of a flattened stem kernel and of the unpatch
    channels, so a principal component is directly a stem filter and an unpatch column.
    """
    ft, fh, fw = factors
    return rearrange(x, "n c (t ft) (h fh) (w fw) -> (n t h w) (c ft fh fw)", ft=ft, fh=fh, fw=fw)


# ---------------------------------------------------------------- the model
class VQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        patch = cfg.arch == "patch"
        self.encoder = PatchEncoder(cfg) if patch else Encoder(cfg)
        self.decoder = PatchDecoder(cfg) if patch else Decoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.embed_dim, cfg.commitment, cfg.ema_decay,
                                         cfg.l2_normalize, cfg.restart_every, cfg.error_sampling)

    @torch.no_grad()
    def init_from_data(self, clips: list[torch.Tensor], kmeans_iters: int, seed: int) -> dict[str, float]:
        """Data-dependent initialisation before training; returns what it measured.

        clips: float videos (N_i, 3, T_i, H_i, W_i) in [-1, 1] (a list, one tensor per clip shape).
        arch=patch: the principal components of all (ft, fh, fw) blocks of the clips (float64)
        become the stem filters (the first `width` components) and the unpatch columns, with the
        mean patch as the unpatch bias; the 1x1x1 convs around the quantizer start as the identity
        on the first embed_dim channels; the residual and attention branches start at zero (their
        own init). The model then *is* the PCA autoencoder with embed_dim components.
        Both archs: the codebook starts as k-means (kmeans_iters Lloyd steps) of the encoder outputs.
        Deterministic for fixed clips and seed, so every DDP rank computes the same initialisation.
        Returns pca_psnr (dB on [0, 1] pixels of the init clips, before clamping; patch arch, nan
        otherwise) and the quantizer's kmeans_snr_db, kmeans_usage and kmeans_vectors.
        """
        stats = {"pca_psnr": float("nan")}
        if self.cfg.arch == "patch":
            enc, dec, f = self.encoder, self.decoder, self.cfg.downsample
            rows = torch.cat([patch_rows(x.double(), f) for x in clips])
            width, dim = enc.stem.out_channels, self.cfg.embed_dim
            if width < dim:
                raise ValueError(f"init_from_data: the PCA initialisation passes {dim} components (embed_dim) "
                                 f"through {width} stem channels (base_channels * channel_mult[0]); use a width "
                                 f">= embed_dim")
            if len(rows) < width:
                raise ValueError(f"init_from_data: {len(rows)} patches, but the stem's {width} principal components "
                                 f"need at least as many; pass more clips")
            mean = rows.mean(0)
            centred = rows - mean
            # eigenvectors of the (P, P) scatter matrix: ~10x cheaper than an SVD of the tall (N, P) rows
            evals, evecs = torch.linalg.eigh(centred.t() @ centred)
            order = evals.argsort(descending=True)
            evals, vh = evals[order], evecs[:, order].t()                      # rows of vh: components, largest first
            comp = vh[:width].float()                                            # (width, 3 ft fh fw)
            enc.stem.weight.copy_(comp.view_as(enc.stem.weight))
            enc.stem.bias.copy_(-(comp @ mean.float()))
            eye = torch.eye(dim, width)
            enc.out.weight.copy_(eye[:, :, None, None, None])
            enc.out.bias.zero_()
            dec.inp.weight.copy_(eye.t()[:, :, None, None, None])
            dec.inp.bias.zero_()
            rgb = dec.rgb_rows                                # feature rows (refiner_features) keep their
            dec.unpatch.weight[:rgb].zero_()                  # random init
            dec.unpatch.weight[(slice(0, rgb), slice(None), *dec.own_tap)] = comp.t()
            dec.unpatch.bias[:rgb].copy_(mean.float())
            # the PCA reconstruction's squared error is the variance left in the discarded components
            mse = evals[dim:].clamp_min(0).sum().item() / rows.numel()
            stats["pca_psnr"] = 10.0 * math.log10(4.0 / max(mse, 1e-20))
        latents = torch.cat([rearrange(self.encoder(chunk), "n d t h w -> (n t h w) d")
                             for x in clips for chunk in x.split(16)])  # chunks bound the activation memory
        stats.update(self.quantizer.init_kmeans(latents, kmeans_iters, seed))
        return stats

    def latent_shape(self, t: int, h: int, w: int) -> tuple[int, int, int, int]:
        """(D, T', H', W') of the latents of a (T, H, W) clip; a clear error if a size does not divide."""
        ft, fh, fw = self.cfg.downsample
        for name, n, f in (("T (frames)", t, ft), ("H (height)", h, fh), ("W (width)", w, fw)):
            if n % f or n == 0:
                raise ValueError(f"clip shape (T, H, W)=({t}, {h}, {w}): {name}={n} is not a positive multiple of "
                                 f"the downsampling factor {f} (downsample (t, h, w)={self.cfg.downsample}); "
                                 f"crop or resize to a multiple of {f}")
        return self.cfg.embed_dim, t // ft, h // fh, w // fw

    def _check_video(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"VQVAE input must be float video (B, 3, T, H, W) in [-1, 1], got shape {tuple(x.shape)}"
                             "; convert uint8 (B, T, H, W, 3) clips with video_to_tensor")
        if not x.dtype.is_floating_point:
            raise ValueError(f"VQVAE input must be floating point in [-1, 1], got {x.dtype}; use video_to_tensor")
        self.latent_shape(*x.shape[2:])

    def encode(self, x: torch.Tensor):
        """x (B, 3, T, H, W) in [-1, 1] -> z_q (B, D, T', H', W'), indices (B, T', H', W'), stats (see quantizer)."""
        self._check_video(x)
        return self.quantizer(self.encoder(x))

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, T, H, W) in [-1, 1] -> z (B, D, T', H', W'): the encoder's outputs in the codebook's space
        (l2-normalised when the lookup is), i.e. what the quantizer snaps to codes; the codebook is not touched."""
        self._check_video(x)
        z = self.encoder(x)
        return F.normalize(z, dim=1) if self.quantizer.l2_normalize else z

    def decode(self, z: torch.Tensor, requantize: bool = False) -> torch.Tensor:
        """z (B, D, T', H', W') -> video (B, 3, T' ft, H' fh, W' fw); requantize: snap z to the nearest codes first."""
        if z.ndim != 5 or z.shape[1] != self.cfg.embed_dim:
            raise ValueError(f"latents must be (B, {self.cfg.embed_dim}, T', H', W'), got {tuple(z.shape)}")
        if requantize:
            z = self.quantizer.snap(z)
        return self.decoder(z)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, T', H', W') int -> video (B, 3, T, H, W)."""
        return self.decoder(self.quantizer.lookup(indices))

    def forward(self, x: torch.Tensor):
        """x (B, 3, T, H, W) in [-1, 1] -> (recon, losses).

        losses: loss (recon_loss + commit_loss + tdiff_weight * tdiff_loss + grad_weight * grad_loss, with
        grad), recon_loss (MSE on [-1, 1]), commit_loss, tdiff_loss (L1 between the frame-to-frame
        differences of recon and x: what the flicker ratio sees), grad_loss (the same for horizontal
        plus vertical pixel differences: block edges and blurred outlines),
        psnr (dB, on [0, 1] pixels, batch MSE), perplexity and usage of the batch's codes.
        """
        z_q, _, stats = self.encode(x)
        recon = self.decode(z_q)
        r, x = recon.float(), x.float()
        mse = F.mse_loss(r, x)
        # a term with weight 0 is only logged: without autograd it costs ~10% of a training step less
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.tdiff_weight > 0):
            tdiff = F.l1_loss(r.diff(dim=2), x.diff(dim=2)) if x.shape[2] > 1 else r.new_zeros(())
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.grad_weight > 0):
            grad = F.l1_loss(r.diff(dim=3), x.diff(dim=3)) + F.l1_loss(r.diff(dim=4), x.diff(dim=4))
        loss = mse + stats["commit_loss"]
        if self.cfg.tdiff_weight > 0:
            loss = loss + self.cfg.tdiff_weight * tdiff
        if self.cfg.grad_weight > 0:
            loss = loss + self.cfg.grad_weight * grad
        losses = {"loss": loss, "recon_loss": mse, "commit_loss": stats["commit_loss"],
                  "tdiff_loss": tdiff.detach(), "grad_loss": grad.detach(),
                  "psnr": 10.0 * torch.log10(4.0 / mse.detach().clamp_min(1e-10)),
                  "perplexity": stats["perplexity"], "usage": stats["usage"]}
        return recon, losses
