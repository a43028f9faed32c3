"""DiTBlock (adaLN-Zero) and BlockStack: identity at init, modulation order and broadcast,
per-sample conditioning, and backend equivalence of a whole stack (fwd and bwd)."""

import pytest
import torch
import torch.nn.functional as F

from osplab.models.blocks import BlockStack, DiTBlock, Mlp, modulate

ATTN = dict(layout="full", backend="sdpa", sparse_k=None, qk_norm=False)


def block(**attn):
    torch.manual_seed(0)
    return DiTBlock(16, 2, cond_dim=8, mlp_ratio=4, **(ATTN | attn))


def set_modulation(b, **values):
    """Zero weights; bias chunks shift1, scale1, gate1, shift2, scale2, gate2 set to constants."""
    names = ["shift1", "scale1", "gate1", "shift2", "scale2", "gate2"]
    torch.nn.init.zeros_(b.ada[1].weight)
    bias = torch.zeros(6, b.ada[1].weight.shape[0] // 6)
    for name, value in values.items():
        bias[names.index(name)] = value
    b.ada[1].bias.data.copy_(bias.flatten())


def test_adaln_zero_block_is_identity_at_init():
    b = block()
    x, c = torch.randn(2, 3, 4, 16), torch.randn(2, 8)
    assert torch.equal(b(x, c), x)
    assert b.ada[1].weight.abs().sum() == 0 and b.ada[1].bias.abs().sum() == 0


def test_modulation_chunks_are_shift_scale_gate_in_dit_order():
    b = block()
    x, c = torch.randn(2, 3, 4, 16), torch.randn(2, 8)
    ln = lambda t: F.layer_norm(t, (16,), eps=1e-6)  # noqa: E731
    set_modulation(b, gate1=1.0)
    torch.testing.assert_close(b(x, c), x + b.attn(ln(x)))
    set_modulation(b, gate2=2.0, shift2=0.5, scale2=1.0)
    torch.testing.assert_close(b(x, c), x + 2.0 * b.mlp(ln(x) * 2.0 + 0.5))


def test_modulate_broadcasts_per_sample():
    x = torch.randn(2, 3, 4, 5)
    shift, scale = torch.randn(2, 5), torch.randn(2, 5)
    out = modulate(x, shift, scale)
    for i in range(2):
        torch.testing.assert_close(out[i], x[i] * (1 + scale[i]) + shift[i])


def test_conditioning_is_per_sample():
    b = block()
    torch.nn.init.normal_(b.ada[1].weight, std=0.5)
    x, c = torch.randn(3, 2, 4, 16), torch.randn(3, 8)
    together = b(x, c)
    for i in range(3):
        torch.testing.assert_close(together[i : i + 1], b(x[i : i + 1], c[i : i + 1]), atol=2e-6, rtol=1e-5)


def test_mlp_shape_and_gelu_tanh():
    m = Mlp(8, 32)
    assert m.fc1.out_features == 32 and m.fc2.out_features == 8
    x = torch.randn(5, 8)
    torch.testing.assert_close(m(x), m.fc2(F.gelu(m.fc1(x), approximate="tanh")))


@pytest.mark.parametrize("layout", ["sparse", "factorized"])
def test_stack_backends_agree_fwd_bwd(layout):
    stacks = {}
    for be in ("eager", "sdpa"):
        torch.manual_seed(0)
        stacks[be] = BlockStack(2, 16, 2, 8, 4, layout=layout, backend=be, sparse_k=2, qk_norm=True)
        for blk in stacks[be].blocks:
            torch.nn.init.normal_(blk.ada[1].weight, std=0.3)  # non-zero gates: every branch matters
    x, c = torch.randn(2, 5, 4, 16, requires_grad=True), torch.randn(2, 8)
    grad = torch.randn(2, 5, 4, 16)
    res = {}
    for be, s in stacks.items():
        out = s(x, c)
        res[be] = (out, *torch.autograd.grad(out, (x, *s.parameters()), grad))
    for a, b in zip(res["sdpa"], res["eager"], strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert all(g.abs().sum() > 0 for g in res["sdpa"][1:])  # every parameter receives gradient
