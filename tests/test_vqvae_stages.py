"""The train_vqvae and encode stages end to end on the smoke store (tiny model, a few steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from osplab.checks import SettingError
from osplab.config import compose, load_params, write_params
from osplab.data.clips import ClipDataset
from osplab.data.latents import LatentDataset
from osplab.models.vqvae import VQVAE, VQVAEConfig, video_to_tensor
from osplab.stages import encode, train_vqvae
from osplab.stages.encode import load_vqvae
from osplab.tasks.vqvae import ClipCrops


@pytest.fixture(scope="module")
def trained(smoke_store, tmp_path_factory):
    """Run train_vqvae then encode in a scratch folder; returns that folder."""
    work = tmp_path_factory.mktemp("stage")
    write_params(compose(["profile=smoke", f"data.root={smoke_store}", f"train_vqvae.out_dir={work / 'runs'}",
                          f"vqvae.checkpoint={work / 'vqvae.safetensors'}"]), work / "params.yaml")
    args = ["--params", str(work / "params.yaml"), "--metrics", str(work / "vqvae.json"),
            "--recon", str(work / "recon.png")]
    train_vqvae.main(args)
    encode.main(["--params", str(work / "params.yaml"), "--out", str(work / "latents"), "--no-progress"])
    return work


def test_train_stage_writes_weights_metrics_and_preview(trained):
    metrics = json.loads((trained / "vqvae.json").read_text())
    for key in ("val_psnr", "val_ssim", "codebook_usage", "perplexity", "stage_seconds", "frames_per_s"):
        assert np.isfinite(metrics[key]), key
    assert 0 < metrics["codebook_usage"] <= 1 and 1 <= metrics["perplexity"] <= 64  # tiny codebook: 64 codes
    assert metrics["val_clips"] == 4 and metrics["train_steps"] == 4
    assert metrics["resumed_from_step"] == 0 and 0 < metrics["train_seconds"] <= metrics["stage_seconds"]
    assert (trained / "recon.png").read_bytes()[:4] == b"\x89PNG"


def test_exported_weights_are_the_final_live_weights(trained):
    """Reference: the training loop's own last checkpoint files, read directly (not via the stage)."""
    exported = load_file(str(trained / "vqvae.safetensors"))
    root = trained / "runs" / "checkpoints"
    last = max((d for d in root.iterdir() if (d / "state.json").is_file()),
               key=lambda d: json.loads((d / "state.json").read_text())["step"])
    assert json.loads((last / "state.json").read_text())["step"] == 4  # the final step, not an earlier one
    live, ema = load_file(str(last / "model.safetensors")), load_file(str(last / "ema.safetensors"))
    assert exported.keys() == live.keys()
    assert all(torch.equal(exported[k], live[k]) for k in live)
    # EMA (decay 0.99 over 4 steps) still sits near the initial weights: exporting it (or the untrained
    # weights) would differ from the live ones by what training changed.
    moved = max((live[k].float() - ema[k].float()).abs().max().item() for k in live if live[k].is_floating_point())
    assert moved > 1e-4, moved


def test_latents_are_the_nearest_codes_of_the_exported_encoder(trained, smoke_store):
    """Reference: a brute-force nearest-code search (float64 cdist) on the encoder output."""
    exported = load_file(str(trained / "vqvae.safetensors"))
    with safe_open(str(trained / "vqvae.safetensors"), framework="pt") as f:
        cfg = VQVAEConfig.from_dict(json.loads(f.metadata()["config"]))
    model = VQVAE(cfg).eval()
    model.load_state_dict(exported)
    codebook = exported["quantizer.codebook"].double()                     # (K, D)
    latents = LatentDataset(trained / "latents", "val")
    np.testing.assert_array_equal(latents.codebook.numpy(), exported["quantizer.codebook"].numpy())
    clips = ClipDataset(smoke_store, "val")
    assert len(latents) == len(clips)
    for i in range(len(clips)):
        assert latents[i]["id"] == clips.rows[i]["id"] and latents[i]["caption"] == clips.rows[i]["caption"]
        with torch.no_grad():
            z_e = model.encoder(video_to_tensor(clips[i]["video"]))[0].double()   # (D, t, h, w)
        z = z_e.flatten(1).t()                                              # (t*h*w, D)
        if cfg.l2_normalize:
            z, codebook_n = F.normalize(z, dim=1), F.normalize(codebook, dim=1)
        else:
            codebook_n = codebook
        nearest = torch.cdist(z, codebook_n).argmin(dim=1).view(z_e.shape[1:])
        assert torch.equal(latents[i]["indices"], nearest)


def test_continuous_latents_snap_to_the_stored_codes(trained):
    """vqvae.latent_kind=continuous stores the encoder's outputs; their nearest codes are the codes store's."""
    params = trained / "params_continuous.yaml"
    cfg = load_params(trained / "params.yaml")
    cfg.vqvae.latent_kind = "continuous"
    write_params(cfg, params)
    encode.main(["--params", str(params), "--out", str(trained / "latents_cont"), "--no-progress"])
    model = load_vqvae(str(trained / "vqvae.safetensors"))
    codes = LatentDataset(trained / "latents", "val")
    cont = LatentDataset(trained / "latents_cont", "val")
    assert cont.kind == "continuous" and cont.manifest["source"] == codes.manifest["source"]
    assert [r["id"] for r in cont.rows] == [r["id"] for r in codes.rows]
    for i in range(len(codes)):
        z = cont.latent(i)                                                   # (D, t, h, w)
        assert z.shape == codes.latent(i).shape
        with torch.no_grad():
            snapped = model.quantizer.snap(z[None])[0]
        assert torch.equal(snapped, codes.latent(i))
    cfg.vqvae.latent_kind = "indices"
    write_params(cfg, params)
    with pytest.raises(SettingError, match="vqvae.latent_kind"):
        encode.main(["--params", str(params), "--out", str(trained / "latents_bad"), "--no-progress"])
    assert not (trained / "latents_bad").exists()


def test_crops_are_a_pure_function_of_the_index(smoke_store):
    crops = ClipCrops(ClipDataset(smoke_store, "train"), frames=8, seed=0)
    assert all(np.array_equal(crops[i], crops[i]) for i in range(len(crops)))
    assert all(crops[i].shape[0] == 8 for i in range(len(crops)))
    with pytest.raises(ValueError, match="fewer than 32 frames"):
        ClipCrops(ClipDataset(smoke_store, "train"), frames=32, seed=0)
