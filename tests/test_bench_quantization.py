"""osplab.bench.quantization: the same decoder on the codes and on the unquantized latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from einops import rearrange
from omegaconf import OmegaConf

from osplab.bench.quantization import compare
from osplab.models.vqvae import VQVAE, VQVAEConfig, video_to_tensor


@pytest.fixture()
def model(smoke_cfg):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return VQVAE(VQVAEConfig.from_dict(OmegaConf.to_container(smoke_cfg.vqvae.model, resolve=True))).eval()


def clip_with_one_object_block() -> np.ndarray:
    """uint8 (4, 16, 16, 3): dark background, a red 8x8 square in the top-left of the 2x2 latent cells."""
    video = np.full((4, 16, 16, 3), 30, dtype=np.uint8)
    video[:, 0:8, 0:8] = (220, 40, 40)
    video[:, 4:8, 4:8] = (30, 30, 30)          # not flat inside the block: its pixel std is large
    return video


def test_split_between_object_and_background_cells(model):
    out = compare(model, [clip_with_one_object_block()], ["a small red square moves left slowly"])
    assert out["clips"] == 1
    assert out["object_cells"] == pytest.approx(0.25) and out["background_cells"] == pytest.approx(0.75)
    assert out["object_error_share"] + out["background_error_share"] == pytest.approx(1.0)
    assert out["object_codes"] == 1 and 1 <= out["background_codes"] <= 3
    assert out["codes_psnr"] != out["continuous_psnr"]        # a random codebook loses something


def test_lossless_codebook_gives_the_same_decode(model):
    video = clip_with_one_object_block()
    with torch.no_grad():
        z_e = model.encoder(video_to_tensor(video))                  # (1, D, 1, 2, 2)
        model.quantizer.codebook[:4] = rearrange(z_e, "b d t h w -> (b t h w) d")
    out = compare(model, [video], ["a small red square moves left slowly"])
    assert out["codes_psnr"] == out["continuous_psnr"]
    for kind in ("caption", "colour", "shape", "direction"):
        assert out[f"codes_{kind}_accuracy"] == out[f"continuous_{kind}_accuracy"]
    assert out["object_error_share"] == 0.0 and out["background_error_share"] == 0.0


def test_cli_bad_input_names_the_problem(tmp_path):
    from osplab.bench.quantization import main

    with pytest.raises(FileNotFoundError, match="dvc repro train_vqvae"):
        main(["--checkpoint", str(tmp_path / "missing.safetensors"), "--root", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--clips", "0", "--checkpoint", str(tmp_path / "missing.safetensors")])
    assert not list(tmp_path.iterdir())          # nothing written


def test_decode_twice_skips_only_the_quantizer(model):
    from osplab.bench.quantization import decode_twice
    from osplab.models.vqvae import tensor_to_video

    video = clip_with_one_object_block()
    with torch.no_grad():  # two codes for every latent: the codes lose almost everything
        model.quantizer.codebook[:] = 0.0
        model.quantizer.codebook[1] = 1.0
    both, z = decode_twice(model, video)
    assert both["codes"].dtype == np.uint8 and both["codes"].shape == both["continuous"].shape == video.shape
    assert (both["codes"] != both["continuous"]).any()
    with torch.no_grad():  # continuous: the decoder on the encoder's output; codes: on their lookup
        np.testing.assert_array_equal(both["continuous"], tensor_to_video(model.decoder(model.encoder(video_to_tensor(video))))[0].numpy())
        np.testing.assert_array_equal(both["codes"], tensor_to_video(model.decode_indices(z["indices"]))[0].numpy())


def test_mean_psnr_is_per_clip_and_takes_clips_of_different_shapes():
    from osplab.stages.evaluate_generation import mean_psnr

    a, b = np.full((4, 8, 8, 3), 100, np.uint8), np.full((4, 16, 8, 3), 100, np.uint8)
    expected = (10 * np.log10(255.0**2 / 1) + 10 * np.log10(255.0**2 / 100)) / 2  # MSE 1 and 100
    assert mean_psnr([a + 1, b + 10], [a, b]) == pytest.approx(expected, abs=1e-9)
