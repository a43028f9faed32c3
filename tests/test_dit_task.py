"""Stage 2's data path: the text cache, the latent normalisation, the DiT task's batches and losses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from osplab.data.latents import LatentDataset, write_latents
from osplab.data.text_cache import TextCache, check_identity, write_text_cache
from osplab.checks import SettingError
from osplab.tasks.dit import (LatentNorm, TextLatents, check_diffusion, collate, curriculum_subset, objective_loss,
                              val_batches)


class FakeEncoder:
    """Deterministic stand-in with the TextEncoder interface: token j of caption c is a hash of (c, j)."""

    identity = {"name": "fake", "path": "-", "dim": 4, "max_length": 6, "weights_sha256": "0" * 64}
    dim = 4

    def encode(self, captions, pad_to_max_length=False):
        L = self.identity["max_length"]
        mask = torch.zeros(len(captions), L, dtype=torch.bool)
        tokens = torch.zeros(len(captions), L, 4)
        for i, c in enumerate(captions):
            n = min(len(c.split()) + 2, L)
            mask[i, :n] = True
            g = torch.Generator().manual_seed(sum(map(ord, c)))
            tokens[i, :n] = torch.randn(n, 4, generator=g)
        return tokens, mask


@pytest.fixture()
def stores(tmp_path):
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(16, 3)).astype(np.float32) * 2 + 0.5
    shapes = [(2, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2)]
    records, splits = [], {"train": ([], []), "val": ([], [])}
    for n, shape in enumerate(shapes * 2):
        split = "train" if n < len(shapes) else "val"
        cid, caption = f"{split}{n:02d}", f"clip number {n} " + "word " * (n % 3)
        records.append((split, rng.integers(0, 16, size=shape), {"id": cid, "caption": caption}))
        splits[split][0].append(cid)
        splits[split][1].append(caption)
    write_latents(tmp_path / "latents", records, codebook, {"vqvae_sha256": "x"})
    manifest = write_text_cache(tmp_path / "text", FakeEncoder(), splits, batch=3, source={}, progress=False)
    return tmp_path, manifest


def test_text_cache_round_trip_trims_to_the_longest_caption(stores):
    root, manifest = stores
    cache = TextCache(root / "text", "train")
    enc = FakeEncoder()
    assert manifest["length"] == max(min(len(c.split()) + 2, 6) for c in ["clip number 2 word word"])
    tokens, mask = cache.lookup(["train02", "train00"])
    ref_t, ref_m = enc.encode(["clip number 2 word word ", "clip number 0 "])
    L = manifest["length"]
    assert torch.equal(tokens, ref_t[:, :L]) and torch.equal(mask, ref_m[:, :L])
    with pytest.raises(KeyError, match="dvc repro embed_text"):
        cache.lookup(["nope"])
    check_identity(cache.identity, enc.identity, "cache")
    with pytest.raises(ValueError, match="weights_sha256"):
        check_identity(cache.identity, {**enc.identity, "weights_sha256": "1" * 64}, "cache")


def test_latent_norm_equals_a_direct_computation(stores):
    root, _ = stores
    latents = LatentDataset(root / "latents", "train")
    norm = LatentNorm.measure(latents)
    every = torch.cat([latents.latents(latents[i]["indices"]).flatten() for i in range(len(latents))]).double()
    assert norm.mean == pytest.approx(float(every.mean()), rel=1e-9)
    assert norm.scale == pytest.approx(float(every.std(unbiased=False)), rel=1e-9)
    z = torch.randn(3, 5)
    assert torch.allclose(norm.denormalize(norm.normalize(z)), z, atol=1e-6)


def _continuous_copy(codes_root, out):
    """A continuous store whose latents are exactly the codes' vectors, codebook[indices] (t, h, w, D)."""
    records = []
    for split in ("train", "val"):
        latents = LatentDataset(codes_root, split)
        records += [(split, latents.codebook[latents[i]["indices"]].numpy(), {"id": latents[i]["id"],
                     "caption": latents[i]["caption"]}) for i in range(len(latents))]
    write_latents(out, records, LatentDataset(codes_root, "train").codebook.numpy(), {"vqvae_sha256": "x"},
                  kind="continuous")
    return out


def test_continuous_store_of_the_code_vectors_gives_the_same_norm_and_items(stores, tmp_path):
    root, _ = stores
    codes = LatentDataset(root / "latents", "train")
    cont = LatentDataset(_continuous_copy(root / "latents", tmp_path / "cont"), "train")
    assert (codes.kind, cont.kind) == ("codes", "continuous") and "indices" not in cont[0]
    for i in range(len(codes)):
        assert torch.equal(cont.latent(i), codes.latent(i)) and cont.latent(i).dtype == torch.float32
    cap = 1.1  # below the largest channel std, so the per-channel path runs too
    for max_std in (None, cap):
        a, b = LatentNorm.measure(codes, max_std), LatentNorm.measure(cont, max_std)
        assert b.mean == pytest.approx(a.mean, rel=1e-9, abs=1e-12) and b.scale == pytest.approx(a.scale, rel=1e-9)
        assert (a.channel is None) == (b.channel is None) == (max_std is None)
        if max_std is not None:
            assert any(c > 1 for c in a.channel) and b.channel == pytest.approx(a.channel, rel=1e-9)
    x_codes = TextLatents(root / "latents", root / "text", "train", max_channel_std=cap)
    x_cont = TextLatents(tmp_path / "cont", root / "text", "train", max_channel_std=cap)
    assert torch.allclose(x_codes[3]["x"], x_cont[3]["x"], atol=1e-6)
    TextLatents(tmp_path / "cont", root / "text", "train", norm=x_codes.norm, expect_kind="continuous")
    with pytest.raises(ValueError, match="holds continuous latents, but the DiT was trained on codes"):
        TextLatents(tmp_path / "cont", root / "text", "train", norm=x_codes.norm, expect_kind="codes")


def test_latent_store_refuses_mismatched_records(tmp_path):
    book = np.zeros((4, 3), np.float32)
    meta = {"id": "a", "caption": "c"}
    with pytest.raises(ValueError, match="kind 'pixels'"):
        write_latents(tmp_path / "s", [("train", np.zeros((1, 2, 2), np.int64), meta)], book, {}, kind="pixels")
    with pytest.raises(ValueError, match="integer indices"):
        write_latents(tmp_path / "s", [("train", np.zeros((1, 2, 2, 3), np.float32), meta)], book, {})
    with pytest.raises(ValueError, match=r"\(t, h, w, 3\)"):
        write_latents(tmp_path / "s", [("train", np.zeros((1, 2, 2, 5), np.float32), meta)], book, {}, kind="continuous")
    assert not (tmp_path / "s").exists()


def test_latent_norm_caps_only_the_channels_above_the_limit(stores):
    root, _ = stores
    latents = LatentDataset(root / "latents", "train")
    plain = LatentNorm.measure(latents)
    every = torch.cat([latents.latents(latents[i]["indices"]).flatten(1) for i in range(len(latents))], dim=1)
    std_c = every.double().std(dim=1, unbiased=False) / plain.scale  # (C,) in global units
    cap = float(std_c.sort().values[-2])  # the largest channel is above it, the others at or below
    norm = LatentNorm.measure(latents, max_channel_std=cap)
    assert (norm.mean, norm.scale) == (plain.mean, plain.scale)
    x = norm.normalize(every.double()[:, :, None, None, None].movedim(1, 0)).movedim(0, 1).flatten(1)
    after = x.std(dim=1, unbiased=False)
    top = int(std_c.argmax())
    assert float(after[top]) == pytest.approx(cap, rel=1e-6)  # scaled down to the cap exactly
    others = torch.arange(len(std_c)) != top
    assert torch.allclose(after[others], std_c[others], rtol=1e-6)  # the rest keep the global scale
    again = LatentNorm(**json.loads(json.dumps(norm.to_dict())))  # as sampling reads it from a checkpoint
    assert again == norm
    z = torch.randn(2, len(std_c), 1, 2, 2)
    assert torch.allclose(again.denormalize(again.normalize(z)), z, atol=1e-6)
    with pytest.raises(ValueError, match="C="):
        norm.normalize(torch.randn(3, 5))
    with pytest.raises(ValueError, match="max_channel_std"):
        LatentNorm.measure(latents, max_channel_std=0.0)


def test_items_batches_and_validation_set(stores):
    root, _ = stores
    train = TextLatents(root / "latents", root / "text", "train")
    item = train[0]
    assert item["x"].shape == (3, 2, 2, 2) and item["mask"].dtype == torch.bool
    assert torch.equal(train[3]["x"], train[3]["x"])  # a pure function of the index
    batch = collate([train[0], train[1]])
    assert batch["x"].shape == (2, 3, 2, 2, 2) and batch["text"].shape[:2] == batch["mask"].shape
    val = TextLatents(root / "latents", root / "text", "val", norm=train.norm)
    a, b = val_batches(val, 3, seed=0), val_batches(val, 3, seed=0)
    assert sum(len(x["x"]) for x in a) == 3 and len(a) == 2  # round-robin over both shapes
    assert all(torch.equal(x["noise"], y["noise"]) for x, y in zip(a, b))


def test_objective_losses_at_fixed_draws(stores):
    """With the exact answer the loss is 0; with zero output it is the target's mean square."""
    root, _ = stores
    from osplab.config import compose

    cfg = compose([])
    train = TextLatents(root / "latents", root / "text", "train")
    batch = collate([train[0], train[1]])
    noise, t = torch.randn(batch["x"].shape), torch.tensor([0.3, 0.8])

    class Exact(torch.nn.Module):
        def forward(self, x, tt, text, mask):  # the true velocity of these draws
            return noise - batch["x"]

    velocity = compose(["diffusion.rf.prediction=velocity"]).diffusion
    assert float(objective_loss("rf", velocity, Exact(), batch, None, t, noise)) == pytest.approx(0, abs=1e-10)
    zero = lambda x, tt, text, mask: torch.zeros_like(x)  # noqa: E731
    expected = (noise - batch["x"]).square().mean()
    assert float(objective_loss("rf", velocity, zero, batch, None, t, noise)) == pytest.approx(float(expected))
    # x0 prediction: the clean latents are the exact answer; a zero output means v = x_t / t, so the loss
    # is the mean square of x_t / t - (noise - x0) = x0 / t (the path x_t = (1 - t) x0 + t noise)
    x0_cfg = compose(["diffusion.rf.prediction=x0"]).diffusion
    clean = lambda x, tt, text, mask: batch["x"]  # noqa: E731
    assert float(objective_loss("rf", x0_cfg, clean, batch, None, t, noise)) == pytest.approx(0, abs=1e-10)
    x0_over_t = (batch["x"] / t.view(-1, 1, 1, 1, 1)).square().mean()
    assert float(objective_loss("rf", x0_cfg, zero, batch, None, t, noise)) == pytest.approx(float(x0_over_t), rel=1e-5)
    # DDPM: time t is the training index round(t * T); with zero output the loss is the target's mean square
    from osplab.tasks.dit import make_ddpm

    ddpm = make_ddpm(cfg.diffusion.ddpm)
    i = torch.tensor([300, 800])
    a = ddpm.alphas_cumprod[i].float().view(-1, 1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * batch["x"]  # v-prediction target (the default)
    assert cfg.diffusion.ddpm.prediction == "v"
    ddpm_loss = objective_loss("ddpm", cfg.diffusion, zero, batch, None, t, noise)
    assert float(ddpm_loss) == pytest.approx(float(v.square().mean()), rel=1e-5)


def test_text_cache_replaces_its_own_store_but_not_a_user_folder(stores, tmp_path):
    root, _ = stores
    splits = {"val": (["a"], ["a red circle moves left"])}
    write_text_cache(root / "text", FakeEncoder(), splits, batch=2, source={}, progress=False)  # over the old cache
    assert TextCache(root / "text", "val").lookup(["a"])[0].shape[0] == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        write_text_cache(mine, FakeEncoder(), splits, batch=2, source={}, progress=False)
    assert (mine / "notes.txt").read_text() == "keep" and not (mine / "manifest.json").exists()


@pytest.mark.parametrize("override, key", [
    ("diffusion.rf.prediction=eps", "diffusion.rf.prediction"),
    ("diffusion.rf.timesteps=lognormal", "diffusion.rf.timesteps"),
    ("diffusion.rf.t_min=0", "diffusion.rf.t_min"),
    ("diffusion.rf.frame_t=1.5", "diffusion.rf.frame_t"),
    ("diffusion.ddpm.prediction=x0", "diffusion.ddpm.prediction"),
    ("diffusion.curriculum.fraction=1.0", "diffusion.curriculum.fraction"),
    ("diffusion.curriculum.subset=hard", "diffusion.curriculum.subset"),
])
def test_bad_diffusion_settings_are_refused_before_a_run(override, key):
    from osplab.config import compose

    check_diffusion(compose([]).diffusion)  # the shipped settings pass
    with pytest.raises(SettingError, match=rf"^{key}="):
        check_diffusion(compose([override]).diffusion)


def test_curriculum_subset_reads_the_synthetic_captions():
    from osplab.data.synthetic import SynthConfig, make_clip
    from osplab.config import compose

    synth = SynthConfig.from_conf(compose([]).data.synthetic)
    clips = [make_clip(synth, "train", i) for i in range(40)]
    captions = [c.caption for c in clips]
    simple = [i for i, c in enumerate(clips)
              if len(c.scene["objects"]) == 1 and not c.scene["objects"][0]["bounces"]]  # the scene's truth
    assert 0 < len(simple) < len(clips)
    assert curriculum_subset(captions, "simple") == simple
    with pytest.raises(ValueError, match="selects 3 of 3 train clips"):  # e.g. UCF-101 class captions
        curriculum_subset(["a person playing violin", "a person diving", "a person rowing"], "simple")
    with pytest.raises(ValueError, match="unknown"):
        curriculum_subset(captions, "hard")
