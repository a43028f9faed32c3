"""The motion probe: its x0 conversions, and what it reports for denoisers of known behaviour."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange, repeat

from osplab.config import compose
from osplab.data.synthetic import SynthConfig, make_clip
from osplab.diffusion import motion_probe as M
from osplab.diffusion.ddpm import DDPM


def test_reversed_direction():
    c = "a small red circle moves left slowly while a large blue square slides up quickly"
    assert M.reversed_direction(c) == "a small red circle moves right slowly while a large blue square slides down quickly"
    assert M.reversed_direction(M.reversed_direction(c)) == c
    with pytest.raises(ValueError, match="names no direction"):
        M.reversed_direction("a small red circle")


def fake_gen(objective: str, prediction: str, dit) -> object:
    d = {"rf": {"prediction": prediction}, "ddpm": {"num_train_timesteps": 1000, "schedule": "linear",
                                                      "prediction": prediction, "zero_terminal_snr": prediction == "v"},
         "noise_frame_corr": 0.0}
    return type("G", (), {"meta": {"objective": objective, "diffusion": d}, "dit": staticmethod(dit)})()


@pytest.mark.parametrize("objective, prediction", [("rf", "x0"), ("rf", "velocity"), ("ddpm", "v"), ("ddpm", "epsilon")])
def test_x0_estimate_of_an_oracle_is_the_clean_latent(objective, prediction):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 2, 2, generator=g), torch.randn(3, 4, 2, 2, 2, generator=g)
    ddpm = DDPM(1000, "linear", prediction, prediction == "v") if objective == "ddpm" else None

    def oracle(xt, t, text, mask):  # the exact target of each parameterisation
        if objective == "rf":
            return x0 if prediction == "x0" else noise - x0
        i = (t * 1000).round().long()
        assert torch.allclose(xt, ddpm.add_noise(x0, noise, i))  # the probe noised x0 as DDPM does
        return ddpm.target(x0, noise, i)

    est = M.x0_estimate(fake_gen(objective, prediction, oracle), x0, 0.7, None, None, noise)
    assert torch.allclose(est, x0, atol=1e-5)


@pytest.mark.parametrize("prediction", ["x0", "velocity"])
def test_an_anchored_estimate_noises_frame_0_to_its_own_level(prediction):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 2, 2, generator=g), torch.randn(2, 4, 3, 2, 2, generator=g)

    def oracle(xt, t, text, mask):
        assert t.shape == (2, 3) and torch.equal(t[:, 0], torch.full((2,), 0.05)) and torch.all(t[:, 1:] == 0.9)
        assert torch.allclose(xt[:, :, 0], 0.95 * x0[:, :, 0] + 0.05 * noise[:, :, 0])
        assert torch.allclose(xt[:, :, 1:], 0.1 * x0[:, :, 1:] + 0.9 * noise[:, :, 1:])
        return x0 if prediction == "x0" else noise - x0

    est = M.x0_estimate(fake_gen("rf", prediction, oracle), x0, 0.9, None, None, noise, anchor_t=0.05)
    assert torch.allclose(est, x0, atol=1e-5)
    with pytest.raises(ValueError, match="needs the RF objective"):
        M.x0_estimate(fake_gen("ddpm", "v", oracle), x0, 0.9, None, None, noise, anchor_t=0.05)


class Pixels:
    """Stand-ins for the latent store and the VQVAE: the 'latents' of a clip are its frames in [-1, 1]
    (3, T, H, W), and decoding maps them back to uint8 (N, T, H, W, 3)."""

    def __init__(self, clips):
        self.clips = clips
        self.latents = type("L", (), {"rows": [{"caption": c.caption} for c in clips]})()

    def __len__(self):
        return len(self.clips)

    def shapes(self):
        return [c.frames.shape[:3] for c in self.clips]

    def __getitem__(self, i):
        v = torch.from_numpy(self.clips[i].frames).float() / 127.5 - 1
        return {"x": rearrange(v, "t h w c -> c t h w")}

    @staticmethod
    def decode(x, snap):
        v = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return rearrange(v, "n c t h w -> n t h w c").numpy()


class Seen:
    """A text encoder that records the captions it was asked for."""

    def __init__(self):
        self.captions: list[str] = []

    def encode(self, captions):
        self.captions.extend(captions)
        return torch.zeros(len(captions), 1, 8), torch.ones(len(captions), 1, dtype=torch.bool)


@pytest.fixture(scope="module")
def one_object_clips():
    cfg = SynthConfig.from_conf(compose([]).data.synthetic)
    clips = (make_clip(cfg, "val", i) for i in range(200))
    picked = [c for c in clips if " while " not in c.caption and len(c.frames) >= 16]
    assert len(picked) >= 6
    return picked[:6]


def per_frame(t):
    """RF times (N,) or (N, T) -> broadcastable against (N, C, T, H, W)."""
    return t.view(-1, 1, 1, 1, 1) if t.dim() == 1 else t[:, None, :, None, None]


def run_probe(one_object_clips, monkeypatch, dit, anchor_t=None):
    """The probe at t = 0.5 and 0.9 with zero noise (x_t = (1 - t) x0), so a denoiser can be exact."""
    import osplab.diffusion.noise as noise_module

    monkeypatch.setattr(noise_module, "video_noise", lambda shape, rho, g, **kw: torch.zeros(shape))
    data, text = Pixels(one_object_clips), Seen()
    gen = fake_gen("rf", "x0", dit)
    gen.text, gen.decode = text, Pixels.decode
    return M.motion_probe(gen, data, clips=6, t_grid=(0.5, 0.9), latent_frames=16, batch=4, anchor_t=anchor_t), text


def test_an_exact_denoiser_keeps_the_reconstructions_motion(one_object_clips, monkeypatch):
    out, text = run_probe(one_object_clips, monkeypatch, lambda xt, t, c, m: xt / (1 - t.view(-1, 1, 1, 1, 1)))
    assert out["clips"] == 6 and [(r["t"], r["caption"]) for r in out["rows"]] == [
        (0.5, "true"), (0.5, "reversed"), (0.9, "true"), (0.9, "reversed")]
    assert out["recon"]["direction_accuracy"] >= 0.8 and out["recon"]["motion_px"] > 8
    for row in out["rows"]:
        assert row["x0_mse"] < 1e-10
        assert row["direction_accuracy"] == out["recon"]["direction_accuracy"]
        assert row["motion_px"] == out["recon"]["motion_px"]
    captions = [c.caption for c in one_object_clips]
    assert sorted(text.captions) == sorted(captions + [M.reversed_direction(c) for c in captions])  # once each


def test_a_static_denoiser_shows_no_travel(one_object_clips, monkeypatch):
    def static(xt, t, c, m):  # every frame replaced by the clip's first: the object stands still
        x0 = xt / (1 - t.view(-1, 1, 1, 1, 1))
        return repeat(x0[:, :, 0], "n c h w -> n c t h w", t=x0.shape[2])

    out, _ = run_probe(one_object_clips, monkeypatch, static)
    for row in out["rows"]:
        assert row["x0_mse"] > 0
        assert row["motion_px"] < 1 < out["recon"]["motion_px"] and row["direction_accuracy"] < out["recon"]["direction_accuracy"]
    assert "| 0.9 |" in M.table(out)


def test_an_anchored_probe_scores_the_later_frames(one_object_clips, monkeypatch):
    """Exact on frames 1+ and wrong on the anchor frame: the anchored x0 error covers the frames at t only."""
    def exact_after_frame_0(xt, t, c, m):
        assert t.dim() == 2 and torch.all(t[:, 0] == 0.05)
        x0 = xt / (1 - per_frame(t))
        x0[:, :, 0] = 0
        return x0

    out, _ = run_probe(one_object_clips, monkeypatch, exact_after_frame_0, anchor_t=0.05)
    assert out["anchor_t"] == 0.05 and all(row["x0_mse"] < 1e-10 for row in out["rows"])
    assert "| t of frames 1+ |" in M.table(out)
    with pytest.raises(ValueError, match="anchor frame"):
        run_probe(one_object_clips, monkeypatch, exact_after_frame_0, anchor_t=1.0)


@pytest.mark.parametrize("args, message", [(["--anchor-t", "0.05", "--variant", "ddpm"], "got ddpm"),
                                           (["--anchor-t", "0.05", "--latent-frames", "1"], "got rf, 1 latent frames"),
                                           (["--t", "0.5", "1.0"], "(0, 1)"), (["--clips", "0"], ">= 1"),
                                           (["--latent-frames", "0"], ">= 1")])
def test_the_command_line_rejects_bad_settings_before_loading_anything(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        M.main([*args, "--params", str(tmp_path / "missing.yaml")])
    assert message in capsys.readouterr().err
