"""Classifier-free guidance wrapper: scale 1 is the conditional model, one batched call otherwise."""

from __future__ import annotations

import pytest
import torch

from osplab.diffusion.guidance import cfg


class CountingBackbone(torch.nn.Module):
    """A text backbone whose output depends on x, t and the masked caption; records each call's batch."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 4)
        self.calls: list[int] = []

    def forward(self, x, t, text, mask):  # x: (B, 4, T, H, W), t: (B,), text: (B, L, 8), mask: (B, L)
        self.calls.append(x.shape[0])
        pooled = (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, 8); 0 if all masked
        return x * t[:, None, None, None, None] + self.proj(pooled)[:, :, None, None, None]


def _inputs(batch=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 2, 3, 3, generator=g)
    t = torch.rand(batch, generator=g)
    text = torch.randn(batch, 5, 8, generator=g)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True, False, False, False, False]])[:batch]
    return x, t, text, mask


def test_scale_one_is_the_conditional_model_bitwise():
    torch.manual_seed(0)
    model = CountingBackbone()
    x, t, text, mask = _inputs()
    out = cfg(model, text, mask, 1.0)(x, t)
    assert torch.equal(out, model(x, t, text, mask))
    assert model.calls == [3, 3]  # one call from cfg (no unconditional pass), one from the reference


def test_guided_prediction_in_one_batched_call():
    torch.manual_seed(0)
    model = CountingBackbone()
    x, t, text, mask = _inputs()
    out = cfg(model, text, mask, 4.0)(x, t)
    assert model.calls == [6]  # cond and uncond in one batch of 2B
    cond = model(x, t, text, mask)
    uncond = model(x, t, text, torch.zeros_like(mask))
    torch.testing.assert_close(out, uncond + 4.0 * (cond - uncond))
    assert (cond - uncond).abs().max() > 0.01  # the caption matters, so the check above is not trivial
    torch.testing.assert_close(cfg(model, text, mask, 0.0)(x, t), uncond)


def test_cfg_bad_inputs():
    model = CountingBackbone()
    x, t, text, mask = _inputs()
    with pytest.raises(ValueError, match="bool mask"):
        cfg(model, text, mask.float(), 2.0)
    with pytest.raises(ValueError, match="batch of 3 captions"):
        cfg(model, text, mask, 2.0)(x[:2], t[:2])
    with pytest.raises(ValueError, match="batch of 3 captions"):
        cfg(model, text, mask, 1.0)(x, t[:2])


@pytest.mark.parametrize("sampler,calls_per_step", [("euler", 1), ("heun", 2)])
def test_samplers_drive_a_guided_backbone_on_latent_video_shapes(sampler, calls_per_step):
    from osplab.diffusion import rectified_flow as rf
    from osplab.diffusion.ddpm import DDPM

    torch.manual_seed(0)
    model = CountingBackbone()
    x, _, text, mask = _inputs()  # x: (B, C, T, H, W) = (3, 4, 2, 3, 3)
    fn = cfg(model, text, mask, 3.0)
    out = rf.sample(fn, x, 4, sampler)
    assert out.shape == x.shape and model.calls == [6] * (4 * calls_per_step)
    model.calls.clear()
    out = DDPM(1000, "linear", "v").sample(fn, x, 5, "ancestral", generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and model.calls == [6] * 5


def test_guidance_interval_guides_inside_and_runs_the_conditional_model_outside():
    torch.manual_seed(0)
    model = CountingBackbone()
    x, _, text, mask = _inputs()
    fn = cfg(model, text, mask, 4.0, interval=(0.5, 0.9))
    full = cfg(model, text, mask, 4.0)
    for level, guided in ((0.7, True), (0.5, True), (0.9, True), (0.3, False), (0.95, False)):
        t = torch.full((3,), level)
        model.calls.clear()
        out = fn(x, t)
        assert model.calls == ([6] if guided else [3])  # outside: no unconditional pass at all
        reference = full(x, t) if guided else model(x, t, text, mask)
        assert torch.equal(out, reference)
    # per-sample times across an edge: each sample gets its own rule (the mean over frames when per frame)
    t = torch.tensor([0.2, 0.6, 0.95])
    out = fn(x, t)
    for b, guided in enumerate((False, True, False)):
        reference = (full if guided else cfg(model, text, mask, 1.0))(x, t)
        torch.testing.assert_close(out[b], reference[b])
    # per-frame times (B, T): a sample is guided when its mean time is inside
    def per_frame_model(x, t, text, mask):
        return model(x, t.mean(1), text, mask)

    per_frame = torch.tensor([[0.4, 0.8], [0.1, 0.2], [0.9, 1.0]])  # means 0.6 (in), 0.15 (out), 0.95 (out)
    out = cfg(per_frame_model, text, mask, 4.0, interval=(0.5, 0.9))(x, per_frame)
    means = per_frame.mean(1)
    torch.testing.assert_close(out[0], full(x, means)[0])
    torch.testing.assert_close(out[1:], model(x, means, text, mask)[1:])


def test_guidance_interval_bad_values():
    model = CountingBackbone()
    _, _, text, mask = _inputs()
    for bad in ((0.9, 0.5), (-0.1, 0.5), (0.5, 1.2)):
        with pytest.raises(ValueError, match="0 <= lo <= hi <= 1"):
            cfg(model, text, mask, 2.0, interval=bad)


def test_ddpm_noise_level_is_the_rf_time_of_the_same_snr():
    from osplab.diffusion import rectified_flow as rf
    from osplab.diffusion.ddpm import DDPM
    from osplab.generate import ddpm_noise_level

    ddpm = DDPM(1000, "linear", "v", zero_terminal_snr=True)
    level = ddpm_noise_level(ddpm)
    i = torch.tensor([0, 100, 400, 700, 999])
    t = level(ddpm.model_time(i))
    assert torch.all(t[1:] > t[:-1]) and t[-1] == 1.0  # more noise, later RF time; zero terminal SNR = pure noise
    # the DDPM point, divided by (a + s), is the RF interpolation at t: same x0 and noise, same mixture
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    ab = ddpm.alphas_cumprod[i]
    a, s = ab.sqrt()[:, None], (1 - ab).sqrt()[:, None]
    torch.testing.assert_close(ddpm.add_noise(x0, noise, i) / (a + s), rf.interpolate(x0, noise, t.double()))
    # the interval reads that level: a DDPM step at RF time about 0.9 is guided by (0.8, 1), one at 0.25 is not
    levels = level(ddpm.model_time(torch.arange(1000)))
    inside, outside = int(torch.nonzero(levels > 0.9)[0]), 100
    assert 0.8 < levels[inside] < 1.0 and levels[outside] < 0.8 and ddpm.model_time(torch.tensor(inside)) < 0.8
    model = CountingBackbone()
    x, _, text, mask = _inputs()
    fn = cfg(model, text, mask, 4.0, interval=(0.8, 1.0), noise_level=level)
    for index, guided in ((inside, True), (outside, False)):
        model.calls.clear()
        fn(x, ddpm.model_time(torch.full((3,), index)))
        assert model.calls == ([6] if guided else [3])
