"""Text-conditioned video DiT over latent volumes (stage 2 backbone).

    cfg = DiTConfig.from_dict(params["dit"])          # conf/dit/default.yaml: a preset + overrides
    model = DiT(cfg)
    v = model(x, t, text, text_mask)                  # x: (B, C, T, H, W) latents, t: (B,) in [0, 1],
                                                      # text: (B, L, D_text), text_mask: (B, L) bool -> (B, C, T, H, W)

The DiT of Peebles & Xie (2023) made 3-D and text-conditioned, as in Latte / Open-Sora-Plan / PixArt-alpha:
  x -> PatchEmbed3D (Conv3d, kernel = stride = (pt, ph, pw)) -> tokens (B, T', S, W), S = H'*W'
    + 3-D sin-cos positions computed for this (T', H', W') (embeddings.sincos_3d)
  c = TimestepEmbedder(t) + pooled text projection               (B, W): adaLN conditioning
  depth x CrossDiTBlock: adaLN-Zero self-attention (blocks.DiTBlock, layout full / spatial /
    temporal / factorized / sparse, backend from config), then cross-attention to the text tokens
    (masked), then the adaLN-Zero MLP
  FinalLayer: adaLN + Linear to pt*ph*pw*C per token, then unpatchify -> (B, C, T, H, W)

Caption dropout (classifier-free guidance training) replaces a sample's caption by the learned null
caption with probability `caption_dropout`, in training mode only. The coin flips come from an
explicit `generator` if forward gets one; otherwise from a per-call generator seeded by
(`seed`, a call counter kept as a buffer, the rank): the counter is in the state dict, so a resumed
run draws the same flips as an uninterrupted one, and the global RNG is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np
import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from osplab.models.attention import BACKENDS, MODULE_LAYOUTS, check_choice, check_sparse_k, sdpa
from osplab.models.blocks import DiTBlock, modulate, per_frame
from osplab.models.embeddings import PatchEmbed3D, TextConditioner, TimestepEmbedder, axis_dims, sincos_3d
from osplab.models.rope import rope_rotation

# Size presets (architecture only; layout/backend and everything else come from conf/dit).
# DiT-S/B/L/XL widths and depths follow the DiT paper; "osp-v1.3" is an Open-Sora-Plan-v1.3-like
# size (32 blocks of 24 heads x 96 = 2304 channels, patch 1x2x2) - "-like": the real model also
# differs in its text encoder, normalisation and attention details.
_COMMON = dict(mlp_ratio=4.0, patch=(1, 2, 2), time_freq_dim=256, rope=True)
PRESETS: dict[str, dict] = {
    "tiny": dict(_COMMON, width=256, depth=6, heads=4),  # CPU default: 9.4M parameters (C=64, MiniLM 384-d text)
    "S": dict(_COMMON, width=384, depth=12, heads=6),
    "B": dict(_COMMON, width=768, depth=12, heads=12),
    "L": dict(_COMMON, width=1024, depth=24, heads=16),
    "XL": dict(_COMMON, width=1152, depth=28, heads=16),
    "osp-v1.3": dict(_COMMON, width=2304, depth=32, heads=24),
}


@dataclass
class DiTConfig:
    """Every field is required (values from conf/dit/default.yaml or a preset); `from_dict` builds it."""

    in_channels: int        # latent channels C (= VQVAE embed_dim); the output has the same
    text_dim: int           # D_text of the text tokens (= the text encoder's hidden size)
    width: int              # token channels W
    depth: int              # number of blocks
    heads: int              # attention heads (self and cross); must divide width
    mlp_ratio: float        # MLP hidden = width * mlp_ratio
    patch: tuple            # (pt, ph, pw) latent voxels per token
    time_freq_dim: int      # sin-cos features of the timestep before its MLP
    layout: str             # self-attention layout (attention.py MODULE_LAYOUTS)
    backend: str            # attention backend (attention.py BACKENDS)
    sparse_k: int           # layout=sparse: anchor frame every sparse_k latent frames
    qk_norm: bool           # RMS-normalise q and k per head (self and cross)
    rope: bool              # 3-D rotary positions on self-attention's q and k (osplab.models.rope)
    caption_dropout: float  # training probability of replacing a caption by the null caption
    text_standardise: bool  # train_dit fits per-dimension token mean/std on the train captions (TextConditioner)
    seed: int               # seeds the caption-dropout coin flips when forward gets no generator

    def __post_init__(self):
        self.patch = tuple(int(p) for p in self.patch)
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"dit.patch={self.patch}: give three positive ints (pt, ph, pw)")
        for key in ("in_channels", "text_dim", "width", "depth", "heads", "time_freq_dim"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"dit.{key}={getattr(self, key)} must be a positive int")
        if self.width % self.heads:
            raise ValueError(f"dit.width={self.width} must be divisible by dit.heads={self.heads}")
        axis_dims(self.width)  # even width >= 6 for the 3-D positions
        if self.rope and ((self.width // self.heads) % 2 or self.width // self.heads < 6):
            raise ValueError(f"dit.rope=true needs an even head dim >= 6 (width / heads = {self.width}/{self.heads} "
                             f"= {self.width // self.heads}) to rotate t, h and w pairs; use fewer heads or dit.rope=false")
        if self.time_freq_dim % 2:
            raise ValueError(f"dit.time_freq_dim={self.time_freq_dim} must be even (sin and cos pairs)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"dit.seed={self.seed!r} must be an int >= 0")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"dit.caption_dropout={self.caption_dropout} must be in [0, 1)")
        check_choice("dit.layout", self.layout, MODULE_LAYOUTS)
        check_choice("dit.backend", self.backend, BACKENDS)
        check_sparse_k(self.layout, self.sparse_k)

    @classmethod
    def from_dict(cls, settings: Mapping, **extra) -> "DiTConfig":
        """`settings` = conf/dit: `preset` plus fields; a null field takes the preset's value.

        `extra` sets fields the caller knows (e.g. text_dim=encoder.dim) and wins over both.
        """
        settings = dict(settings, **extra)
        preset = settings.pop("preset", None)
        if preset not in PRESETS:
            raise ValueError(f"dit.preset={preset!r} is not a preset; choose one of {list(PRESETS)}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise ValueError(f"dit: unknown key(s) {unknown}; DiTConfig fields are {sorted(names)}")
        values = {**PRESETS[preset], **{k: v for k, v in settings.items() if v is not None}}
        missing = sorted(names - set(values))
        if missing:
            raise ValueError(f"dit: no value for {missing} (set them in conf/dit or pass them to from_dict)")
        return cls(**values)

    def grid(self, latent_thw: tuple[int, int, int]) -> tuple[int, int, int]:
        """Token grid (T', H', W') of a latent (T, H, W); a clear error if a size does not divide."""
        out = []
        for axis, n, p in zip("THW", latent_thw, self.patch):
            if n < p or n % p:
                lo, hi = (n // p) * p, (n // p + 1) * p
                near = f"{lo} or {hi}" if lo >= p else f"{hi}"
                raise ValueError(f"latent {axis}={n} is not a multiple of the DiT patch size {p} along {axis} "
                                 f"(dit.patch={list(self.patch)}); nearest valid {axis}: {near}")
            out.append(n // p)
        return tuple(out)


class CrossAttention(nn.Module):
    """Queries from video tokens x: (B, T, S, W), keys/values from text tokens ctx: (B, L, W) with
    mask (B, L) bool (True = attend). Every row of `mask` needs one True (the DiT's null token)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        q = rearrange(self.q(x), "b t s (h d) -> b h (t s) d", h=self.heads)  # (B, H, N, D)
        k, v = rearrange(self.kv(ctx), "b l (two h d) -> two b h l d", two=2, h=self.heads).unbind(0)  # (B, H, L, D)
        out = sdpa(self.q_norm(q), self.k_norm(k), v, attn_mask=mask[:, None, None, :])  # (B, H, N, D)
        return self.proj(rearrange(out, "b h (t s) d -> b t s (h d)", t=T))  # (B, T, S, W)


class CrossDiTBlock(DiTBlock):
    """blocks.DiTBlock (unchanged) with cross-attention to the text between self-attention and MLP.

    x: (B, T, S, W), c: (B, W) or (B, T, W), ctx: (B, L, W), ctx_mask: (B, L) -> (B, T, S, W). The cross branch
    has a plain affine LayerNorm and no adaLN gate (as PixArt-alpha); its output projection starts
    at zero (initialize_weights), so a fresh block is still the identity map.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, layout: str, backend: str,
                 sparse_k: int | None, qk_norm: bool):
        super().__init__(dim, heads, dim, mlp_ratio, layout, backend, sparse_k, qk_norm)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, heads, qk_norm)

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: torch.Tensor,  # type: ignore[override]
                ctx_mask: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # (B, [T,] W) each
        x = x + per_frame(gate1) * self.attn(modulate(self.norm1(x), shift1, scale1), rope)  # (B, T, S, W)
        x = x + self.cross(self.norm_cross(x), ctx, ctx_mask)  # (B, T, S, W)
        x = x + per_frame(gate2) * self.mlp(modulate(self.norm2(x), shift2, scale2))  # (B, T, S, W)
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale from c) + Linear: x (B, T, S, W), c (B, [T,] W) -> (B, T, S, pt*ph*pw*C)."""

    def __init__(self, width: int, patch_voxels: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch_voxels * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)  # (B, [T,] W) each
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, T, S, p*C)


class DiT(nn.Module):
    """Text-conditioned latent video DiT: forward(x, t, text, text_mask) -> same shape as x.

    `gradient_checkpointing` (set by the training loop) recomputes each block in backward.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.patch = PatchEmbed3D(cfg.in_channels, W, cfg.patch)
        self.t_embed = TimestepEmbedder(W, cfg.time_freq_dim)
        self.text = TextConditioner(cfg.text_dim, W)
        self.blocks = nn.ModuleList(
            CrossDiTBlock(W, cfg.heads, cfg.mlp_ratio, cfg.layout, cfg.backend, cfg.sparse_k, cfg.qk_norm)
            for _ in range(cfg.depth))
        self.final = FinalLayer(W, cfg.patch[0] * cfg.patch[1] * cfg.patch[2], cfg.in_channels)
        # forward calls without an explicit generator so far: seeds caption dropout, saved with the weights
        self.register_buffer("dropout_calls", torch.zeros((), dtype=torch.int64))
        self.gradient_checkpointing = False
        initialize_weights(self)

    def _check_inputs(self, x, t, text, text_mask) -> tuple[int, int, int]:
        cfg = self.cfg
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be latents (B, {cfg.in_channels}, T, H, W), got {tuple(x.shape)}")
        B = x.shape[0]
        T, pt = x.shape[2], cfg.patch[0]
        if t.shape != (B,) and t.shape != (B, T):
            raise ValueError(f"t must have shape (B,) = ({B},) or, one noise level per latent frame, (B, T) = "
                             f"({B}, {T}), got {tuple(t.shape)}")
        if t.dim() == 2 and T % pt == 0 and not torch.equal(t, t[:, ::pt].repeat_interleave(pt, dim=1)):
            raise ValueError(f"per-frame t must be equal within each temporal patch of dit.patch[0]={pt} frames")
        if text.dim() != 3 or text.shape[0] != B or text.shape[2] != cfg.text_dim or text.shape[1] < 1:
            raise ValueError(f"text must be ({B}, L >= 1, dit.text_dim={cfg.text_dim}), got {tuple(text.shape)}; "
                             f"dit.text_dim must equal the text encoder's hidden size")
        if text_mask.shape != text.shape[:2] or text_mask.dtype != torch.bool:
            raise ValueError(f"text_mask must be bool {tuple(text.shape[:2])}, got {text_mask.dtype} "
                             f"{tuple(text_mask.shape)}")
        return cfg.grid(tuple(x.shape[2:]))

    def _caption_drop(self, B: int, device, generator: torch.Generator | None) -> torch.Tensor:
        """(B,) bool: which captions become the null caption in this call (training only)."""
        p = self.cfg.caption_dropout
        if not self.training or p == 0:
            return torch.zeros(B, dtype=torch.bool, device=device)
        if generator is None:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            call = int(self.dropout_calls)
            self.dropout_calls += 1
            # a fresh generator per call, seeded by hashing (seed, call, rank): ranks draw different flips
            entropy = np.random.SeedSequence([self.cfg.seed, call, rank]).generate_state(1, np.uint64)[0]
            generator = torch.Generator().manual_seed(int(entropy) >> 1)
        gen_device = generator.device
        return (torch.rand(B, generator=generator, device=gen_device) < p).to(device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (B, C, T, H, W), t: (B,) in [0, 1] (or (B, T), a noise level per latent frame, equal within
        each temporal patch), text: (B, L, D_text), text_mask: (B, L) bool -> (B, C, T, H, W).
        `generator` draws the caption-dropout flips (training only)."""
        gt, gh, gw = self._check_inputs(x, t, text, text_mask)
        pt, ph, pw = self.cfg.patch
        h = self.patch(x)  # (B, T', S, W), S = H'*W'
        h = h + sincos_3d(self.cfg.width, (gt, gh, gw), x.device).to(h.dtype)  # (B, T', S, W)
        drop = self._caption_drop(x.shape[0], x.device, generator)  # (B,)
        ctx, ctx_mask, pooled = self.text(text, text_mask, drop)  # (B, L, W), (B, L), (B, W)
        if t.dim() == 1:
            c = self.t_embed(t) + pooled  # (B, W)
        else:  # one noise level per token frame: per-frame modulation
            c = rearrange(self.t_embed(t[:, ::pt].flatten()), "(b t) w -> b t w", t=gt) + pooled[:, None]  # (B, T', W)
        rope = rope_rotation(self.cfg.width // self.cfg.heads, (gt, gh, gw), x.device) if self.cfg.rope else None  # (2, T', S, D)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, c, ctx, ctx_mask, rope, use_reentrant=False)  # (B, T', S, W)
            else:
                h = block(h, c, ctx, ctx_mask, rope)  # (B, T', S, W)
        h = self.final(h, c)  # (B, T', S, pt*ph*pw*C)
        return rearrange(h, "b t (h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
                         h=gh, pt=pt, ph=ph, pw=pw)  # (B, C, T, H, W)

    def flops_per_sample(self, latent_thw: tuple[int, int, int], text_len: int) -> float:
        """Training FLOPs (forward + backward = 3x the forward matmuls) of one sample of latent
        shape (T, H, W) with `text_len` text tokens; the training loop's throughput metric."""
        from osplab.models.estimate import train_flops

        return train_flops(self.cfg, latent_thw, text_len)


def initialize_weights(model: DiT) -> None:
    """DiT's init: Xavier-uniform Linears (zero bias), the patch Conv3d as a Linear, N(0, 0.02) for
    the timestep MLP and the null caption; then zero every adaLN modulation, the cross-attention
    output projections and the final layer, so the untrained DiT outputs exactly 0 and every block
    starts as the identity."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    w = model.patch.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.patch.proj.bias)
    for layer in (model.t_embed.mlp[0], model.t_embed.mlp[2]):
        nn.init.normal_(layer.weight, std=0.02)
    nn.init.normal_(model.text.null, std=0.02)
    for block in model.blocks:
        block.zero_modulation_()
        nn.init.zeros_(block.cross.proj.weight)
        nn.init.zeros_(block.cross.proj.bias)
    for layer in (model.final.ada[1], model.final.linear):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
