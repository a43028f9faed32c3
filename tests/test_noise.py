"""The frame-correlated noise prior (osplab/diffusion/noise.py)."""

import pytest
import torch

from osplab.diffusion.noise import video_noise


def test_zero_correlation_is_plain_randn():
    a = video_noise((2, 3, 4, 5, 6), 0.0, torch.Generator().manual_seed(1))
    b = torch.randn((2, 3, 4, 5, 6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("rho", [0.3, 0.7])
def test_unit_variance_and_frame_correlation(rho):
    x = video_noise((4000, 2, 3, 2, 2), rho, torch.Generator().manual_seed(0))  # (B, C, T, H, W)
    assert float(x.var()) == pytest.approx(1.0, abs=0.03)
    a, b = x[:, :, 0].flatten(), x[:, :, 2].flatten()  # two different frames, same (c, h, w)
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) == pytest.approx(rho, abs=0.03)
    # no correlation across space or channels
    c, d = x[:, 0, 0, 0, 0], x[:, 1, 1, 1, 1]
    assert abs(float(torch.corrcoef(torch.stack([c, d]))[0, 1])) < 0.05


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        video_noise((1, 1, 2, 1, 1), 1.0, None)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        video_noise((1, 1, 2, 1, 1), -0.1, None)
    with pytest.raises(ValueError, match="needs latent videos"):
        video_noise((8, 2), 0.5, None)
