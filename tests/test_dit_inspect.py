"""osplab.models.inspect: shapes, adaLN modulation and cross-attention maps of a DiT forward pass."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from osplab.models.dit import DiT
from osplab.models.inspect import MODULATION, adaln_modulation, cross_attention_maps, trace_shapes
from osplab.models.testing import C, D_TEXT, inputs, randomize_, small_cfg  # noqa: F401


@pytest.mark.parametrize("patch, thw", [((1, 2, 2), (4, 6, 8)), ((2, 2, 2), (4, 8, 4)), ((1, 1, 1), (3, 2, 5))])
def test_trace_shapes_follow_the_patch_grid(patch, thw):
    model = DiT(small_cfg(patch=patch, depth=3))
    x, t, text, mask = inputs(B=2, thw=thw, L=5)
    rows = dict(trace_shapes(model, x, t, text, mask))
    grid = [n // p for n, p in zip(thw, patch)]
    tokens = (2, grid[0], grid[1] * grid[2], 32)
    assert rows["input latents x"] == (2, C, *thw)
    assert rows["patch"] == tokens
    assert rows["t_embed"] == (2, 32)
    assert rows["text"] == ((2, 5, 32), (2, 5), (2, 32))
    assert [rows[f"blocks.{i}"] for i in range(3)] == [tokens] * 3
    assert rows["final"] == (*tokens[:3], patch[0] * patch[1] * patch[2] * C)
    assert rows["unpatchify -> output"] == (2, C, *thw)
    assert [name for name, _ in trace_shapes(model, x, t, text, mask)][:2] == ["input latents x", "patch"]


def test_modulation_zero_at_init_and_equal_to_the_blocks_linear():
    model = DiT(small_cfg())
    x, t, text, mask = inputs()
    mod = adaln_modulation(model, x, t, text, mask)
    assert set(mod) == set(MODULATION)
    assert all(v.shape == (2, 2, 32) and v.abs().max() == 0 for v in mod.values())

    randomize_(model).train()
    mod = adaln_modulation(model, x, t, text, mask)
    assert model.training  # mode restored
    # reference: the conditioning c = t_embed(t) + pooled text, through each block's modulation Linear
    with torch.no_grad():
        _, _, pooled = model.text(text, mask, torch.zeros(2, dtype=torch.bool))
        c = model.t_embed(t) + pooled
        for i, block in enumerate(model.blocks):
            expected = block.ada(c).chunk(6, dim=-1)
            for name, ref in zip(MODULATION, expected):
                torch.testing.assert_close(mod[name][i], ref)


def test_cross_attention_maps_reproduce_the_block_output():
    model = randomize_(DiT(small_cfg(depth=2, heads=2, qk_norm=True)))
    x, t, text, mask = inputs(B=2, thw=(2, 4, 4), L=5)  # sample 0: 3 real tokens, 2 padded
    mask[1] = False  # sample 1: the null caption
    maps = cross_attention_maps(model, x, t, text, mask)
    N = 2 * 2 * 2  # patch (1, 2, 2): T'=2, H'=2, W'=2
    assert maps.shape == (2, 2, 2, N, 5)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 2, N))
    assert maps[:, 0, :, :, 3:].abs().max() == 0           # padded tokens get no weight
    assert torch.all(maps[:, 1, :, :, 0] == 1)              # null caption: everything on the null token
    assert maps[:, 0, :, :, :3].min() > 0

    # independent check: weights @ values through the output projection = what the block computed
    seen = {}
    block = model.blocks[1]
    handle = block.cross.register_forward_hook(lambda m, inp, out: seen.update(inp=inp, out=out))
    with torch.no_grad():
        model.eval()(x, t, text, mask)
    handle.remove()
    _, ctx, _ = seen["inp"]
    v = rearrange(block.cross.kv(ctx), "b l (two h d) -> two b h l d", two=2, h=2)[1]  # (B, H, L, D)
    out = block.cross.proj(rearrange(maps[1] @ v, "b h (t s) d -> b t s (h d)", t=2))
    torch.testing.assert_close(out, seen["out"], atol=1e-5, rtol=1e-5)


def test_helpers_leave_no_hooks_behind():
    model = DiT(small_cfg())
    x, t, text, mask = inputs()
    trace_shapes(model, x, t, text, mask)
    cross_attention_maps(model, x, t, text, mask)
    adaln_modulation(model, x, t, text, mask)
    assert all(not m._forward_hooks for m in model.modules())
