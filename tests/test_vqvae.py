"""Video VQ-VAE: shapes, errors, causality, gradients, uint8 helpers, configs, and a tiny overfit."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import OmegaConf

from osplab import checks
from osplab.models.vqvae import (VQVAE, AxialAttention, FrameGroupNorm, Upsample, VQVAEConfig, tensor_to_video,
                                 video_to_tensor)

CONF = Path(__file__).resolve().parents[1] / "conf" / "vqvae"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a shared 2-core machine (10-50x here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(**over) -> VQVAEConfig:
    """A tiny hierarchical model (the patch architecture has its own helper, patch_cfg)."""
    settings = dict(arch="hierarchical", base_channels=8, channel_mult=(1, 2, 2, 2), num_res_blocks=1, downsample=(4, 8, 8),
                    attn_blocks=1, attn_heads=2, codebook_size=64, embed_dim=8, l2_normalize=True,
                    commitment=0.25, ema_decay=0.9, restart_every=20, error_sampling=0.0, norm_groups=4, decoder_causal=True,
                    unpatch_kernel=1, refiner_channels=0, refiner_features=0, tdiff_weight=0.0, grad_weight=0.0)
    settings.update(over)
    return VQVAEConfig(**settings)


def patch_cfg(**over) -> VQVAEConfig:
    settings = dict(arch="patch", base_channels=16, channel_mult=(1,), num_res_blocks=1, downsample=(4, 8, 8),
                    attn_blocks=1, attn_heads=2, codebook_size=64, embed_dim=8, l2_normalize=False,
                    commitment=0.25, ema_decay=0.9, restart_every=20, error_sampling=0.0, norm_groups=4, decoder_causal=True,
                    unpatch_kernel=1, refiner_channels=0, refiner_features=0, tdiff_weight=0.0, grad_weight=0.0)
    settings.update(over)
    return VQVAEConfig(**settings)


def rand_video(b, t, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


@pytest.mark.parametrize("arch", ["hierarchical", "patch"])
@pytest.mark.parametrize("thw", [(4, 8, 8), (8, 16, 24), (12, 24, 16), (16, 32, 32)])
def test_shapes_through_encoder_and_decoder(thw, arch):
    torch.manual_seed(0)
    model = VQVAE(tiny_cfg() if arch == "hierarchical" else patch_cfg()).eval()
    t, h, w = thw
    x = rand_video(2, t, h, w)
    z_q, idx, stats = model.encode(x)
    assert z_q.shape == (2, 8, t // 4, h // 8, w // 8) == (2, *model.latent_shape(t, h, w))
    assert idx.shape == (2, t // 4, h // 8, w // 8) and idx.dtype == torch.int64
    with torch.no_grad():
        recon = model.decode(z_q)
        assert recon.shape == x.shape
        torch.testing.assert_close(model.decode_indices(idx), recon)  # eval: z_q are exactly the codes
        recon2, losses = model(x)
    torch.testing.assert_close(recon2, recon)
    assert set(losses) >= {"loss", "recon_loss", "commit_loss", "psnr", "perplexity", "usage"}
    torch.testing.assert_close(losses["recon_loss"], F.mse_loss(recon, x))


@pytest.mark.parametrize("factors,mult", [((1, 4, 2), (1, 2, 2)), ((2, 2, 8), (1, 1, 2, 2)), ((8, 1, 1), (1, 2, 2, 2)),
                                          ((1, 1, 1), (1,)), ((2, 4, 4), (1, 2, 2, 4))])
def test_any_power_of_two_factors_per_axis(factors, mult):
    torch.manual_seed(0)
    model = VQVAE(tiny_cfg(downsample=factors, channel_mult=mult)).eval()
    ft, fh, fw = factors
    x = rand_video(1, 2 * ft, 2 * fh, 3 * fw)
    z_q, idx, _ = model.encode(x)
    assert z_q.shape == (1, 8, 2, 2, 3)
    with torch.no_grad():
        assert model.decode(z_q).shape == x.shape


def test_per_level_res_blocks_and_cheap_full_resolution():
    torch.manual_seed(0)
    cfg = tiny_cfg(num_res_blocks=(0, 1, 0, 2))
    assert cfg.num_res_blocks == (0, 1, 0, 2) and tiny_cfg(num_res_blocks=2).num_res_blocks == (2, 2, 2, 2)
    model = VQVAE(cfg).eval()
    count = sum(1 for m in model.encoder.modules() if type(m).__name__ == "ResBlock")
    assert count == 0 + 1 + 0 + 2 + (1 + cfg.attn_blocks)          # levels + mid stack
    x = rand_video(1, 8, 16, 16)
    with torch.no_grad():
        assert model.decode(model.encode(x)[0]).shape == x.shape
    with pytest.raises(ValueError, match="one count >= 0 per level"):
        tiny_cfg(num_res_blocks=(1, 1))


def test_bench_helpers_measure_something_consistent():
    from osplab.bench.vqvae import train_flops, vqvae_throughput

    torch.manual_seed(0)
    model = VQVAE(tiny_cfg(attn_blocks=0))
    before = model.quantizer.codebook.clone()
    f8, f16 = train_flops(model, 8, 16, 16), train_flops(model, 16, 16, 16)
    assert f8 > 0 and f16 == pytest.approx(2 * f8, rel=0.02)      # convolutions: linear in frames
    assert torch.equal(model.quantizer.codebook, before) and model.training  # no codebook update, mode kept
    out = vqvae_throughput(model, frames=4, height=16, width=16, batch=1, repeats=2, warmup=0)
    assert all(out[k] > 0 for k in ("frames_per_s", "encode_frames_per_s", "decode_frames_per_s"))
    assert out["shape"] == [1, 3, 4, 16, 16]


@pytest.mark.parametrize("thw,needle", [((6, 16, 16), r"T \(frames\)=6 .* factor 4"),
                                        ((8, 12, 16), r"H \(height\)=12 .* factor 8"),
                                        ((8, 16, 20), r"W \(width\)=20 .* factor 8"),
                                        ((0, 16, 16), r"T \(frames\)=0")])
def test_bad_clip_shapes_name_the_shape_and_factor(thw, needle):
    for model in (VQVAE(tiny_cfg()).eval(), VQVAE(patch_cfg()).eval()):
        with pytest.raises(ValueError, match=needle) as err:
            model.encode(torch.zeros(1, 3, *thw))
        assert str(thw).replace(" ", "") in str(err.value).replace(" ", "")


def test_bad_inputs_and_configs():
    model = VQVAE(tiny_cfg()).eval()
    with pytest.raises(ValueError, match="video_to_tensor"):
        model.encode(torch.zeros(1, 8, 16, 16, 3))             # channels-last uint8 layout
    with pytest.raises(ValueError, match="floating point"):
        model.encode(torch.zeros(1, 3, 8, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 8, T', H', W'\)"):
        model.decode(torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match="power of two"):
        tiny_cfg(downsample=(3, 8, 8))
    with pytest.raises(ValueError, match="needs 3"):
        tiny_cfg(channel_mult=(1, 2))
    with pytest.raises(ValueError, match="norm_groups"):
        tiny_cfg(norm_groups=3)
    with pytest.raises(ValueError, match="vqvae.model.arch='unet' is not allowed; allowed: one of 'patch', 'hierarchical'"):
        tiny_cfg(arch="unet")
    with pytest.raises(ValueError, match="one channel_mult entry"):
        patch_cfg(channel_mult=(1, 2))
    with pytest.raises(ValueError, match=r"vqvae.model: unknown keys \['depth'\]"):
        VQVAEConfig.from_dict({**vars(tiny_cfg()), "depth": 3})


def test_uint8_roundtrip_and_range():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(2, 4, 8, 8, 3), dtype=np.uint8)
    x = video_to_tensor(u8)
    assert x.shape == (2, 3, 4, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert x[0, 1, 2, 3, 4].item() == pytest.approx(u8[0, 2, 3, 4, 1] / 127.5 - 1)
    assert np.array_equal(tensor_to_video(x).numpy(), u8)
    assert video_to_tensor(u8[0]).shape == (1, 3, 4, 8, 8)      # a single clip gets a batch axis
    with pytest.raises(ValueError, match="uint8"):
        video_to_tensor(u8.astype(np.float32))


@pytest.mark.parametrize("arch", ["hierarchical", "patch"])
def test_encoder_and_decoder_are_causal_in_time(arch):
    torch.manual_seed(0)
    cfg = tiny_cfg(downsample=(4, 4, 4), channel_mult=(1, 2, 2)) if arch == "hierarchical" else \
        patch_cfg(downsample=(4, 4, 4))
    model = VQVAE(cfg).eval()
    for m in model.modules():  # non-zero residual branches, so the test sees every path
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.normal_(m.weight, std=0.1)
    x = rand_video(1, 16, 8, 8)
    y = x.clone()
    y[:, :, 8:] = rand_video(1, 8, 8, 8, seed=1)               # change the future (frames 8..15)
    with torch.no_grad():
        zx, zy = model.encoder(x), model.encoder(y)
        torch.testing.assert_close(zx[:, :, :2], zy[:, :, :2], rtol=1e-4, atol=1e-5)  # latents of frames < 8 unchanged
        assert (zx[:, :, 2:] - zy[:, :, 2:]).abs().max() > 1e-3
        torch.testing.assert_close(model.encoder(x[:, :, :8]), zx[:, :, :2], rtol=1e-4, atol=1e-5)  # prefix property
        torch.testing.assert_close(model.decoder(zx[:, :, :2]), model.decoder(zx)[:, :, :8], rtol=1e-4, atol=1e-5)


def test_frame_group_norm_matches_per_frame_reference():
    torch.manual_seed(0)
    norm = FrameGroupNorm(2, 6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, 3, 4, 5) * 3 + 1
    ref = torch.stack([F.group_norm(x[:, :, t], 2, norm.weight, norm.bias, norm.eps) for t in range(3)], dim=2)
    torch.testing.assert_close(norm(x), ref)


def test_axial_attention_is_causal_in_time_and_starts_as_identity():
    torch.manual_seed(0)
    attn = AxialAttention(8, 2, 4)
    x = torch.randn(1, 8, 4, 3, 3)
    torch.testing.assert_close(attn(x), x)                      # zero-initialised output projections
    for lin in (attn.out_s, attn.out_t):
        torch.nn.init.normal_(lin.weight)
    y = x.clone()
    y[:, :, 3] += 1.0
    out_x, out_y = attn(x), attn(y)
    torch.testing.assert_close(out_x[:, :, :3], out_y[:, :, :3])
    assert (out_x[:, :, 3] - out_y[:, :, 3]).abs().max() > 1e-3


def test_upsample_depth_to_space_starts_as_nearest_neighbour():
    """Reference written with plain F ops: a causal 3x3x3 conv with the shared (ICNR) filters, then
    nearest-neighbour upsampling by repeating every voxel 2x2x2."""
    torch.manual_seed(0)
    up = Upsample(4, 3, (2, 2, 2))
    x = torch.randn(2, 4, 3, 5, 4)
    w, b = up.conv.conv.weight[::8], up.conv.conv.bias[::8]                  # (3, 4, 3, 3, 3): sub-position 0
    past = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)                   # 2 replicated past frames
    small = F.conv3d(past, w, b, padding=(0, 1, 1))                          # (2, 3, 3, 5, 4)
    ref = small.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    with torch.no_grad():
        y = up(x)
    assert y.shape == (2, 3, 6, 10, 8)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_upsample_puts_each_sub_position_channel_at_its_voxel():
    """Depth-to-space order: channel c * 8 + 4 i + 2 j + k lands at (2t + i, 2h + j, 2w + k)."""
    up = Upsample(2, 2, (2, 2, 2))
    with torch.no_grad():
        up.conv.conv.weight.zero_()
        up.conv.conv.bias.copy_(torch.arange(16.0))                          # output = bias, a channel's label
        y = up(torch.randn(1, 2, 2, 3, 3))
    for c, i, j, k in np.ndindex(2, 2, 2, 2):
        assert torch.all(y[0, c, i::2, j::2, k::2] == c * 8 + 4 * i + 2 * j + k), (c, i, j, k)


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = VQVAE(tiny_cfg(commitment=0.0)).train()            # no commitment: the only path is through z_q
    x = rand_video(2, 8, 16, 16)
    _, losses = model(x)
    losses["recon_loss"].backward()
    for p in (model.encoder.net[0].conv.weight, model.encoder.net[-1].conv.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_requantize_snaps_to_codes():
    torch.manual_seed(0)
    model = VQVAE(tiny_cfg()).eval()
    z_q, idx, _ = model.encode(rand_video(1, 8, 16, 16))
    noisy = z_q + 0.01 * torch.randn_like(z_q)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(noisy, requantize=True), model.decode_indices(idx))


def smooth_video(n, t, h, w, seed):
    """Random smooth colour videos (N, 3, T, H, W) in [-1, 1]: bilinearly upsampled coarse noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, t // 2 + 1, h // 4 + 1, w // 4 + 1, generator=g) * 1.6 - 0.8
    return F.interpolate(coarse, size=(t, h, w), mode="trilinear", align_corners=True)


def pca_reference(clips: list[torch.Tensor], dim: int) -> list[torch.Tensor]:
    """The best rank-`dim` linear reconstruction of the clips' 4x8x8 blocks, by numpy (independent of the model)."""
    pattern = "n c (t a) (h b) (w d) -> (n t h w) (c a b d)"
    rows = [rearrange(x.double(), pattern, a=4, b=8, d=8).numpy() for x in clips]
    allrows = np.concatenate(rows)
    mean = allrows.mean(0)
    _, _, vt = np.linalg.svd(allrows - mean, full_matrices=False)
    out = []
    for x, r in zip(clips, rows):
        rec = torch.from_numpy((r - mean) @ vt[:dim].T @ vt[:dim] + mean).float()
        n, _, t, h, w = x.shape
        out.append(rearrange(rec, "(n t h w) (c a b d) -> n c (t a) (h b) (w d)",
                             n=n, t=t // 4, h=h // 8, w=w // 8, a=4, b=8, d=8))
    return out


def test_init_from_data_starts_the_patch_model_as_the_pca_autoencoder():
    torch.manual_seed(0)
    model = VQVAE(patch_cfg(embed_dim=8, codebook_size=32))
    clips = [smooth_video(6, 8, 16, 16, seed=1), smooth_video(4, 8, 8, 16, seed=2)]
    stats = model.init_from_data(clips, kmeans_iters=5, seed=0)
    model.eval()
    with torch.no_grad():  # without the quantizer, encoder + decoder is exactly the PCA reconstruction
        for x, ref in zip(clips, pca_reference(clips, 8), strict=True):
            torch.testing.assert_close(model.decoder(model.encoder(x)), ref, atol=2e-4, rtol=0)
    refs = pca_reference(clips, 8)
    mse = sum(((r - x) ** 2).sum().item() for r, x in zip(refs, clips)) / sum(x.numel() for x in clips)
    assert stats["pca_psnr"] == pytest.approx(10 * math.log10(4 / mse), rel=1e-4)
    assert stats["kmeans_vectors"] == 6 * 2 * 2 * 2 + 4 * 2 * 1 * 2
    assert 0 < stats["kmeans_usage"] <= 1
    with pytest.raises(ValueError, match=r"8 components \(embed_dim\) through 4 stem channels"):
        VQVAE(patch_cfg(base_channels=4, norm_groups=2, attn_heads=2)).init_from_data(clips, 1, 0)
    again = VQVAE(patch_cfg(embed_dim=8, codebook_size=32))  # deterministic: same clips and seed, same init
    again.init_from_data(clips, kmeans_iters=5, seed=0)
    for name, value in again.state_dict().items():
        if name.startswith(("encoder.stem", "decoder.unpatch", "quantizer.codebook")):
            torch.testing.assert_close(value, model.state_dict()[name], rtol=0, atol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_pca_init_is_the_same_autoencoder_with_a_wider_unpatch_kernel_and_a_refiner(causal):
    """unpatch_kernel 3 and a refiner only add taps and layers that start at zero."""
    clips = [smooth_video(6, 8, 16, 16, seed=1)]
    ref = VQVAE(patch_cfg(embed_dim=8, codebook_size=32))
    wide = VQVAE(patch_cfg(embed_dim=8, codebook_size=32, unpatch_kernel=3, refiner_channels=4, decoder_causal=causal))
    for model in (ref, wide):
        torch.manual_seed(0)
        model.init_from_data(clips, kmeans_iters=5, seed=0)
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(wide.decoder(wide.encoder(clips[0])), ref.decoder(ref.encoder(clips[0])),
                                   atol=2e-4, rtol=0)
    w = wide.decoder.unpatch.weight
    own = w[(slice(None), slice(None), *wide.decoder.own_tap)]
    assert own.abs().sum() > 0 and (w.abs().sum() - own.abs().sum()).abs() < 1e-6  # only the latent's own tap


def test_refiner_features_start_as_the_same_autoencoder_and_learn():
    """refiner_features: the unpatch writes extra full-resolution channels for the refiner; after the PCA
    init the output is still the PCA autoencoder (the refiner's last conv is zero), the feature rows keep
    a random init, and one training step reaches them."""
    clips = [smooth_video(6, 8, 16, 16, seed=1)]
    ref = VQVAE(patch_cfg(embed_dim=8, codebook_size=32, refiner_channels=4))
    feat = VQVAE(patch_cfg(embed_dim=8, codebook_size=32, refiner_channels=4, refiner_features=5))
    for model in (ref, feat):
        torch.manual_seed(0)
        model.init_from_data(clips, kmeans_iters=5, seed=0)
    rgb_rows = feat.decoder.rgb_rows
    assert rgb_rows == 3 * math.prod(feat.cfg.downsample)
    assert feat.decoder.unpatch.weight.shape[0] == (3 + 5) * math.prod(feat.cfg.downsample)
    assert feat.decoder.unpatch.weight[rgb_rows:].std() > 0  # random, not zeroed by the PCA init
    ref.eval(), feat.eval()
    with torch.no_grad():
        out = feat.decoder(feat.encoder(clips[0]))
        assert out.shape == clips[0].shape
        torch.testing.assert_close(out, ref.decoder(ref.encoder(clips[0])), atol=2e-4, rtol=0)
    feat.train()
    opt = torch.optim.SGD(feat.parameters(), lr=0.1)
    for _ in range(2):  # step 1 moves the zero last conv, step 2 passes a gradient back to the feature rows
        opt.zero_grad()
        F.mse_loss(feat.decoder(feat.encoder(clips[0])), clips[0]).backward()
        opt.step()
    assert feat.decoder.unpatch.weight.grad[rgb_rows:].abs().sum() > 0


@pytest.mark.parametrize("arch, refiner", [("patch", 0), ("hierarchical", 4)])
def test_refiner_features_need_the_patch_arch_and_a_refiner(arch, refiner):
    with pytest.raises(checks.SettingError, match="refiner_features"):
        patch_cfg(arch=arch, refiner_channels=refiner, refiner_features=3)


def test_non_causal_decoder_sees_the_next_latent_frame_and_the_encoder_stays_causal():
    torch.manual_seed(0)
    model = VQVAE(patch_cfg(downsample=(4, 4, 4), decoder_causal=False, unpatch_kernel=3, refiner_channels=4)).eval()
    for m in model.modules():  # non-zero branches everywhere
        if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear)):
            torch.nn.init.normal_(m.weight, std=0.1)
    x = rand_video(1, 16, 8, 8)
    y = x.clone()
    y[:, :, 8:] = rand_video(1, 8, 8, 8, seed=1)
    with torch.no_grad():
        zx, zy = model.encoder(x), model.encoder(y)
        torch.testing.assert_close(zx[:, :, :2], zy[:, :, :2], rtol=1e-4, atol=1e-5)  # the encoder is still causal
        z = zx.clone()
        z[:, :, 2] += 1.0  # change latent frame 2 (frames 8..11)
        before, after = model.decoder(zx), model.decoder(z)
    assert (before[:, :, 4:8] - after[:, :, 4:8]).abs().max() > 1e-3  # frames of latent 1 now see latent 2


def test_temporal_difference_and_gradient_losses():
    torch.manual_seed(0)
    x = moving_square(t=8)
    plain, weighted = VQVAE(patch_cfg(downsample=(4, 4, 4))), VQVAE(patch_cfg(downsample=(4, 4, 4), tdiff_weight=2.0,
                                                                             grad_weight=0.5))
    weighted.load_state_dict(plain.state_dict())
    plain.eval(), weighted.eval()
    with torch.no_grad():
        recon, a = plain(x)
        _, b = weighted(x)
    want_t = (recon.diff(dim=2) - x.diff(dim=2)).abs().mean()
    want_g = (recon.diff(dim=3) - x.diff(dim=3)).abs().mean() + (recon.diff(dim=4) - x.diff(dim=4)).abs().mean()
    torch.testing.assert_close(a["tdiff_loss"], want_t)
    torch.testing.assert_close(a["grad_loss"], want_g)
    torch.testing.assert_close(a["loss"], a["recon_loss"] + a["commit_loss"])  # weights 0: the plain objective
    torch.testing.assert_close(b["loss"], a["loss"] + 2.0 * want_t + 0.5 * want_g)


def test_decoder_settings_are_checked():
    with pytest.raises(checks.SettingError, match="unpatch_kernel=2: use an odd kernel"):
        patch_cfg(unpatch_kernel=2)
    with pytest.raises(checks.SettingError, match="for arch=patch only"):
        tiny_cfg(unpatch_kernel=3)
    with pytest.raises(checks.SettingError, match="tdiff_weight"):
        patch_cfg(tdiff_weight=-1.0)


def test_patch_model_with_data_init_beats_random_init_at_once():
    """On unseen smooth video the initialised model (64 codes) beats a randomly initialised one.

    Five independent draws (data, weights, k-means seed). Measured gaps 3.18, 3.12, 2.58, 3.25, 3.04 dB
    (mean 3.03, spread ~0.25 per draw): the thresholds (every draw > 1.5 dB, mean > 2 dB) leave
    > 1 dB of margin, where the former single draw against 3 dB passed by 0.18 dB."""
    gaps = []
    for seed in range(5):
        torch.manual_seed(seed)
        clips = [smooth_video(8, 8, 16, 16, seed=3 + 10 * seed)]
        val = smooth_video(4, 8, 16, 16, seed=4 + 10 * seed)
        plain, init = VQVAE(patch_cfg()).eval(), VQVAE(patch_cfg())
        init.init_from_data(clips, kmeans_iters=5, seed=seed)
        init.eval()
        with torch.no_grad():
            gaps.append(float(init(val)[1]["psnr"] - plain(val)[1]["psnr"]))
    assert min(gaps) > 1.5 and sum(gaps) / len(gaps) > 2.0, gaps


@pytest.mark.parametrize("name", ["default", "tiny"])
def test_conf_files_build_valid_models(name):
    cfg = VQVAEConfig.from_dict(OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml").model))
    if name == "default":
        assert (cfg.codebook_size, cfg.embed_dim, cfg.downsample) == (8192, 64, (4, 8, 8))
        return
    model = VQVAE(cfg).eval()
    z_q, _, _ = model.encode(torch.zeros(1, 3, 8, 16, 16))
    assert z_q.shape[1] == cfg.embed_dim


def moving_square(t=4, h=16, w=16):
    """A red-ish square moving right by 2 pixels per frame on a plain background, (1, 3, T, H, W)."""
    x = torch.full((1, 3, t, h, w), -0.6)
    x[:, 0] = 0.2
    for i in range(t):
        x[0, :, i, 4:10, 2 + 2 * i:8 + 2 * i] = torch.tensor([0.9, -0.8, 0.5])[:, None, None]
    return x


def test_overfit_one_tiny_clip():
    """A tiny model memorises a moving square: far below the best static (temporal mean) prediction."""
    torch.manual_seed(0)
    model = VQVAE(tiny_cfg(downsample=(2, 4, 4), channel_mult=(1, 2, 2), attn_blocks=0))
    x = moving_square()
    static_mse = ((x - x.mean(2, keepdim=True)) ** 2).mean().item()  # the plateau of a model ignoring motion
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    first = None
    for _ in range(250):
        _, losses = model(x)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first if first is not None else losses["recon_loss"].item()
    model.eval()
    with torch.no_grad():
        _, losses = model(x)
    assert losses["recon_loss"].item() < 0.01 * first
    assert losses["recon_loss"].item() < 0.1 * static_mse
    assert losses["psnr"].item() > 10 * math.log10(4 / static_mse) + 10
