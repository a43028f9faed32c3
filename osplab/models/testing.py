"""Small DiTs and inputs for tests and notebooks: explicit tiny configs, non-zero weights, masked text."""

from __future__ import annotations

import torch

from osplab.models.dit import DiTConfig

C, D_TEXT = 8, 16  # latent channels and text-token size of the small test DiTs


def small_cfg(**over) -> DiTConfig:
    """A 2-block, 32-wide DiT config (every value explicit); `over` replaces any of them."""
    base = dict(preset="tiny", in_channels=C, text_dim=D_TEXT, width=32, depth=2, heads=2, layout="full",
                backend="sdpa", sparse_k=2, qk_norm=False, caption_dropout=0.0, text_standardise=False, seed=0)
    return DiTConfig.from_dict({**base, **over})


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (the zero init would make every output and modulation 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def inputs(B: int = 2, thw=(4, 6, 8), L: int = 5, seed: int = 1):
    """(x (B, C, T, H, W), t (B,), text (B, L, D_TEXT), mask (B, L)); sample 0 has 3 real tokens."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, *thw, generator=gen)
    t = torch.rand(B, generator=gen)
    text = torch.randn(B, L, D_TEXT, generator=gen)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False
    return x, t, text, mask
