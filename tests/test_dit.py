"""The text-conditioned video DiT: shapes, init, masks, caption dropout, positions, checkpointing."""

from __future__ import annotations

import pytest
import torch

from osplab.config import compose
from osplab.models.dit import PRESETS, DiT, DiTConfig
from osplab.models.embeddings import TextConditioner, axis_dims, sincos_1d, sincos_3d
from osplab.models.testing import C, D_TEXT, inputs, randomize_, small_cfg  # noqa: F401


def test_conf_default_is_the_tiny_preset():
    cfg = DiTConfig.from_dict(compose([]).dit)
    assert (cfg.width, cfg.depth, cfg.heads, cfg.patch) == (256, 6, 4, (1, 2, 2))
    assert cfg.in_channels == 64 and cfg.text_dim == 384 and cfg.caption_dropout == 0.1


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_a_config(preset):
    cfg = DiTConfig.from_dict(dict(small_cfg().__dict__, preset=preset, width=None, depth=None, heads=None))
    assert cfg.width == PRESETS[preset]["width"] and cfg.width % cfg.heads == 0


@pytest.mark.parametrize("bad, match", [({"preset": "huge"}, "preset"), ({"widht": 8}, "unknown key"),
                                        ({"heads": 3}, "divisible"), ({"caption_dropout": 1.0}, "caption_dropout"),
                                        ({"layout": "diagonal"}, "layout"), ({"patch": (1, 2)}, "patch")])
def test_bad_config_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        small_cfg(**bad)


@pytest.mark.parametrize("patch, thw", [((1, 2, 2), (4, 6, 8)), ((1, 2, 2), (2, 8, 8)), ((1, 2, 2), (1, 8, 4)),
                                        ((2, 2, 2), (8, 6, 8)), ((1, 1, 1), (3, 5, 7))])
def test_shapes_for_buckets(patch, thw):
    model = randomize_(DiT(small_cfg(patch=patch)))
    x, t, text, mask = inputs(thw=thw)
    out = model(x, t, text, mask)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0


@pytest.mark.parametrize("thw, axis, near", [((4, 7, 8), "H", "6 or 8"), ((4, 6, 9), "W", "8 or 10"),
                                             ((3, 6, 8), "T", "2 or 4"), ((1, 6, 8), "T", "2")])
def test_bad_shape_names_axis_and_nearest(thw, axis, near):
    model = DiT(small_cfg(patch=(2, 2, 2)))
    x, t, text, mask = inputs(thw=thw)
    with pytest.raises(ValueError, match=rf"latent {axis}={thw['THW'.index(axis)]} .*nearest valid {axis}: {near}"):
        model(x, t, text, mask)


def test_zero_init_outputs_zero_and_blocks_are_identity():
    model = DiT(small_cfg())
    x, t, text, mask = inputs()
    assert torch.equal(model(x, t, text, mask), torch.zeros_like(x))
    h = torch.randn(2, 4, 12, 32)
    ctx, ctx_mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool)
    assert torch.equal(model.blocks[0](h, torch.randn(2, 32), ctx, ctx_mask), h)


@pytest.mark.parametrize("layout", ["full", "spatial", "temporal", "factorized", "sparse"])
def test_attention_layouts_run_and_differ(layout):
    x, t, text, mask = inputs(thw=(4, 4, 4))
    out = randomize_(DiT(small_cfg(layout=layout)))(x, t, text, mask)
    full = randomize_(DiT(small_cfg(layout="full")))(x, t, text, mask) if layout != "full" else None
    assert out.shape == x.shape and torch.isfinite(out).all()
    if layout != "factorized" and full is not None:  # same weights, other keys: another function
        assert (out - full).abs().max() > 1e-3


def test_eager_backend_matches_sdpa():
    x, t, text, mask = inputs(thw=(4, 4, 4))
    a = randomize_(DiT(small_cfg(layout="sparse", backend="eager")))(x, t, text, mask)
    b = randomize_(DiT(small_cfg(layout="sparse", backend="sdpa")))(x, t, text, mask)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_padded_text_tokens_do_not_matter():
    model = randomize_(DiT(small_cfg()))
    x, t, text, mask = inputs()
    ref = model(x, t, text, mask)
    garbage = text.clone()
    garbage[0, 3:] = torch.randn(2, D_TEXT) * 100  # only padded positions of sample 0 change
    torch.testing.assert_close(model(x, t, garbage, mask), ref, atol=1e-5, rtol=1e-5)
    real = text.clone()
    real[0, 1] += 1.0  # a real token changes: the output must change
    assert (model(x, t, real, mask) - ref)[0].abs().max() > 1e-3


def test_text_standardisation_is_fitted_on_valid_tokens_and_applied_in_forward():
    """fit_standardisation: per-dimension mean / std of the real tokens only (padding may hold anything),
    std floored for constant dimensions; forward then equals the identity model fed standardised tokens."""
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randn(6, 5, D_TEXT, generator=gen) * torch.linspace(0.5, 3, D_TEXT) + torch.arange(D_TEXT)
    tokens[..., 0] = 7.0  # a constant dimension
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, 3:] = False
    tokens[~mask] = 1e6  # padding must not enter the statistics
    model = randomize_(DiT(small_cfg(text_standardise=True)))
    model.text.fit_standardisation(tokens, mask)
    valid = tokens[mask]
    z = (valid - model.text.token_mean) / model.text.token_std
    torch.testing.assert_close(z[:, 1:].mean(0), torch.zeros(D_TEXT - 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, 1:].std(0), torch.ones(D_TEXT - 1), atol=1e-5, rtol=0)
    floor = TextConditioner.STD_FLOOR * float(valid.std(0).median())
    assert float(model.text.token_std[0]) == pytest.approx(floor, rel=1e-5) and z[:, 0].abs().max() == 0
    identity = randomize_(DiT(small_cfg()))  # same weights, buffers left at mean 0 / std 1
    x, t, text, mask2 = inputs()
    torch.testing.assert_close(model(x, t, text, mask2),
                               identity(x, t, (text - model.text.token_mean) / model.text.token_std, mask2))
    assert torch.equal(DiT(small_cfg()).state_dict()["text.token_std"], torch.ones(D_TEXT))
    with pytest.raises(ValueError, match="at least 2 valid tokens"):
        model.text.fit_standardisation(tokens, torch.zeros_like(mask))


def test_all_false_mask_is_the_learned_null_caption():
    model = randomize_(DiT(small_cfg()))
    x, t, text, _ = inputs()
    none = torch.zeros(2, 5, dtype=torch.bool)
    a = model(x, t, text, none)
    b = model(x, t, torch.randn_like(text), none)  # content is ignored when nothing is real
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    with torch.no_grad():
        model.text.null.add_(1.0)
    assert (model(x, t, text, none) - a).abs().max() > 1e-3  # ... and the null embedding is used


def test_caption_dropout_reproducible_and_training_only():
    x, t, text, mask = inputs(B=16, L=5)
    mask[:] = True
    model = randomize_(DiT(small_cfg(caption_dropout=0.5))).train()
    null = model(x, t, text, torch.zeros_like(mask), generator=torch.Generator().manual_seed(0))
    cond = model.eval()(x, t, text, mask)
    model.train()
    a = model(x, t, text, mask, generator=torch.Generator().manual_seed(3))
    b = model(x, t, text, mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    dropped = [torch.allclose(a[i], null[i], atol=1e-6) for i in range(16)]
    kept = [torch.allclose(a[i], cond[i], atol=1e-6) for i in range(16)]
    assert all(d != k for d, k in zip(dropped, kept))  # each sample is either null or conditional
    assert 2 <= sum(dropped) <= 14  # p = 0.5 over 16 samples (P(outside) < 0.5%)
    assert torch.equal(model.eval()(x, t, text, mask), cond)  # eval: never dropped


def test_caption_dropout_without_generator_resumes_exactly():
    x, t, text, mask = inputs(B=16, L=5)
    model = randomize_(DiT(small_cfg(caption_dropout=0.5))).train()
    model(x, t, text, mask)  # one call before the "checkpoint"
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)  # the global RNG plays no part
    first = [model(x, t, text, mask) for _ in range(3)]
    resumed = DiT(small_cfg(caption_dropout=0.5)).train()
    resumed.load_state_dict(saved)
    torch.manual_seed(999)
    again = [resumed(x, t, text, mask) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], first[1])  # successive calls draw new flips


def test_positional_embedding_values():
    emb = sincos_3d(36, (3, 4, 5))  # (T, H*W, C)
    assert emb.shape == (3, 20, 36)
    flat = emb.reshape(60, 36)
    assert torch.cdist(flat, flat).add(torch.eye(60) * 1e3).min() > 0.1  # every position distinct
    assert torch.equal(emb, sincos_3d(36, (3, 4, 5)))  # deterministic
    dt, dh, dw = axis_dims(36)
    assert (dt, dh, dw) == (12, 12, 12)
    t, h, w = 2, 3, 1  # token (2, 3, 1): the concatenation of 1-D embeddings, checked by formula
    pos = emb[t, h * 5 + w]
    omega = 10_000.0 ** (-torch.arange(6, dtype=torch.float64) / 6)
    expect_h = torch.cat([(h * omega).sin(), (h * omega).cos()]).float()
    torch.testing.assert_close(pos[dt:dt + dh], expect_h)
    torch.testing.assert_close(pos[:dt], sincos_1d(dt, torch.tensor([float(t)]))[0])
    bigger = sincos_3d(36, (4, 6, 7))  # the same token in a larger grid keeps its embedding
    torch.testing.assert_close(bigger[t, h * 7 + w], pos)


def test_gradient_checkpointing_same_gradients():
    x, t, text, mask = inputs()
    grads = []
    for flag in (False, True):
        model = randomize_(DiT(small_cfg()))
        model.gradient_checkpointing = flag
        model(x, t, text, mask).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_bad_inputs_are_clear_errors():
    model = DiT(small_cfg())
    x, t, text, mask = inputs()
    with pytest.raises(ValueError, match="text_dim=16"):
        model(x, t, torch.randn(2, 5, 7), mask)
    with pytest.raises(ValueError, match="text_mask must be bool"):
        model(x, t, text, mask.float())
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        model(x, t[:1], text, mask)
    with pytest.raises(ValueError, match="latents"):
        model(x[:, :3], t, text, mask)


def test_per_frame_t_equal_in_every_frame_is_the_per_clip_t():
    model = randomize_(DiT(small_cfg(patch=(2, 1, 1))))
    x, t, text, mask = inputs(thw=(4, 4, 4))
    per_clip = model(x, t, text, mask)
    same = model(x, t[:, None].expand(-1, 4).contiguous(), text, mask)
    torch.testing.assert_close(same, per_clip, rtol=1e-4, atol=1e-5)  # other matmul shapes: float rounding
    ramp = torch.stack([t, t, torch.ones_like(t), torch.ones_like(t)], dim=1)  # later token frame noisier
    assert (model(x, ramp, text, mask) - per_clip).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"equal within each temporal patch of dit.patch\[0\]=2"):
        model(x, torch.stack([t, torch.ones_like(t), t, t], dim=1), text, mask)
    with pytest.raises(ValueError, match=r"one noise level per latent frame, \(B, T\) = \(2, 4\)"):
        model(x, torch.rand(2, 3), text, mask)


def test_half_precision_text_tokens_are_accepted():
    model = randomize_(DiT(small_cfg()))
    x, t, text, mask = inputs()
    ref = model(x, t, text.half().float(), mask)
    torch.testing.assert_close(model(x, t, text.half(), mask), ref)
