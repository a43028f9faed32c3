"""3-D rotary positions (osplab/models/rope.py) and the DiT with them."""

import pytest
import torch

from osplab.models.dit import DiT
from osplab.models.dit import DiTConfig
from osplab.models.rope import apply_rope, rope_rotation
from osplab.models.testing import inputs, randomize_, small_cfg


def test_scores_depend_on_the_offset_only():
    g = torch.Generator().manual_seed(0)
    angles = rope_rotation(24, (3, 4, 5))  # (2, T, S, D)
    q1, k1 = torch.randn(24, generator=g), torch.randn(24, generator=g)
    q = apply_rope(q1.expand(1, 1, 3, 20, 24).contiguous(), angles)
    k = apply_rope(k1.expand(1, 1, 3, 20, 24).contiguous(), angles)
    s = torch.einsum("tsd,uzd->tsuz", q[0, 0], k[0, 0])  # scores of every query / key pair
    pos = lambda t, h, w: (t, h * 5 + w)  # noqa: E731
    # the same (dt, dh, dw) = (1, 1, -2) offset from two different places
    assert float(s[pos(0, 0, 3) + pos(1, 1, 1)]) == pytest.approx(float(s[pos(1, 2, 4) + pos(2, 3, 2)]), rel=1e-5)
    # position (0, 0, 0) is not rotated; norms are kept
    assert torch.allclose(q[0, 0, 0, 0], q1) and torch.allclose(q.norm(dim=-1), q1.norm().expand(1, 1, 3, 20))


def test_rotation_of_channel_pairs_is_complex_multiplication():
    """Channel pair (2i, 2i+1) times exp(i angle): values against complex float64, and in bf16 (the
    training dtype) the same bits as the plain pairwise formula, gradients included."""
    g = torch.Generator().manual_seed(0)
    rotation = rope_rotation(12, (2, 3, 2))  # (2, T, S, D)
    x = torch.randn(2, 3, 2, 6, 12, generator=g, dtype=torch.float64)
    angle = torch.atan2(rotation[1, ..., 1::2], rotation[0, ..., 0::2]).double()  # (T, S, D/2)
    assert torch.equal(rotation[0, ..., 0::2], rotation[0, ..., 1::2])
    assert torch.equal(rotation[1, ..., 0::2], -rotation[1, ..., 1::2])
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (6, 2)).contiguous())
                                  * torch.polar(torch.ones_like(angle), angle)).flatten(-2)
    torch.testing.assert_close(apply_rope(x, rotation), expected)

    def pairwise(x, rotation):
        cos, sin = rotation[0, ..., 0::2].to(x.dtype), rotation[1, ..., 1::2].to(x.dtype)  # (T, S, D/2)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)

    a = x.to(torch.bfloat16).requires_grad_()
    b = a.detach().clone().requires_grad_()
    out_a, out_b = apply_rope(a, rotation), pairwise(b, rotation)
    assert torch.equal(out_a, out_b)
    weight = torch.randn(out_a.shape, generator=g).to(torch.bfloat16)
    (out_a * weight).sum().backward()
    (out_b * weight).sum().backward()
    assert torch.equal(a.grad, b.grad)  # each product and sum is the same IEEE operation


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        apply_rope(torch.zeros(1, 1, 2, 4, 8), rope_rotation(8, (2, 2, 3)))


def test_a_head_dim_too_small_for_rope_names_the_setting():
    with pytest.raises(ValueError, match="dit.rope"):
        DiTConfig(**{**vars(small_cfg(rope=True)), "width": 16, "heads": 4})  # head dim 4 < 6
    DiTConfig(**{**vars(small_cfg(rope=False)), "width": 16, "heads": 4})  # fine without rope


def test_dit_with_rope_runs_and_differs_from_without():
    cfg = small_cfg(rope=True)
    model = randomize_(DiT(cfg))  # away from the zero init, so that positions matter
    x, t, text, mask = inputs(2, (2, 4, 4))
    with_rope = model(x, t, text, mask)
    model.cfg.rope = False
    assert with_rope.shape == x.shape and not torch.allclose(with_rope, model(x, t, text, mask))
