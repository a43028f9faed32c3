"""The train_vqvae and encode stages end to end on the smoke store (tiny model, a few steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from osplab.config import compose, write_params
from osplab.data.clips import ClipDataset
from osplab.data.latents import LatentDataset
from osplab.models.vqvae import video_to_tensor
from osplab.stages import encode, train_vqvae
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
    assert (trained / "recon.png").read_bytes()[:4] == b"\x89PNG"


def test_exported_weights_reload_and_match_the_latents(trained, smoke_store):
    model = encode.load_vqvae(str(trained / "vqvae.safetensors"))
    latents = LatentDataset(trained / "latents", "val")
    clips = ClipDataset(smoke_store, "val")
    assert len(latents) == len(clips)
    for i in range(len(clips)):
        assert latents[i]["id"] == clips.rows[i]["id"] and latents[i]["caption"] == clips.rows[i]["caption"]
        with torch.no_grad():
            z_q, indices, _ = model.encode(video_to_tensor(clips[i]["video"]))
        assert torch.equal(latents[i]["indices"], indices[0])
        assert torch.allclose(latents.latents(latents[i]["indices"]), z_q[0], atol=1e-6)
        assert latents[i]["indices"].shape == model.latent_shape(*clips.shape_of(i))[1:]


def test_crops_are_a_pure_function_of_the_index(smoke_store):
    crops = ClipCrops(ClipDataset(smoke_store, "train"), frames=8, seed=0)
    assert all(np.array_equal(crops[i], crops[i]) for i in range(len(crops)))
    assert all(crops[i].shape[0] == 8 for i in range(len(crops)))
    with pytest.raises(ValueError, match="fewer than 32 frames"):
        ClipCrops(ClipDataset(smoke_store, "train"), frames=32, seed=0)
