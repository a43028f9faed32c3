"""Stage 2 end to end on the smoke profile: embed_text -> train_dit (rf, ddpm) -> sample -> evaluate_generation,
then what a user does with the checkpoints: generate, refuse mismatched parts, the `osplab sample` CLI."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
import pytest
import safetensors.torch
import torch

from osplab.config import load_params
from stage2_smoke import STAGE2_OVERRIDES as OVERRIDES
from stage2_smoke import run_python as run


@pytest.fixture(scope="module")
def pipeline(stage2_pipeline) -> Path:
    """The folder in which the whole smoke stage-2 pipeline ran (tests/conftest.py, shared with test_demo)."""
    return stage2_pipeline


def test_generation_metrics_are_complete_and_sane(pipeline: Path) -> None:
    m = json.loads((pipeline / "metrics/generation.json").read_text())
    cfg = load_params(pipeline / "params.yaml")
    s = cfg.diffusion.sample
    for key in (f"fvd_rf{s.rf_steps}", f"fvd_ddpm{s.ddpm_steps}", "fvd_untrained", "fvd_floor", "rfvd_vqvae"):
        assert np.isfinite(m[key]) and m[key] > 0, key
    # the same real clips with their own captions are read right; with shuffled ones far less often
    assert m["caption_accuracy_real"] >= 0.95
    assert m["caption_accuracy_chance"] < m["caption_accuracy_real"]
    assert m["caption_accuracy_real_motion_px"] >= 5.0  # real objects travel 1-2 px per frame
    for v in ("rf", "ddpm", "untrained"):  # None when the judge found none of the named objects
        assert m[f"caption_accuracy_{v}_motion_px"] is None or m[f"caption_accuracy_{v}_motion_px"] >= 0
    assert 0 <= m["caption_accuracy"] <= 1 and m["caption_accuracy"] == m["caption_accuracy_rf"]
    # the decoder diagnostic: the real windows from their codes and with the quantizer skipped
    for name in ("recon", "unquantized"):
        assert 0 <= m[f"caption_accuracy_{name}"] <= 1 and 0 < m[f"psnr_{name}"] < 100, name
        assert np.isfinite(m[f"fvd_{name}"]) and m[f"fvd_{name}"] == m["fvd_detail"][f"fvd_{name}"]["fvd"], name
    assert 0 < m["dit_fraction_of_peak"] < 1.5 and m[f"sample_seconds_16f_{s.rf_steps}steps"] > 0
    for name, detail in m["fvd_detail"].items():  # every FVD carries its protocol record
        assert detail["protocol"]["frames"] == cfg.eval.frames and detail["clips"] == m["clips"], name
    assert (pipeline / "reports/samples.png").stat().st_size > 10_000
    for variant in ("rf", "ddpm"):  # the caption-use probe ran on both trained DiTs
        probe = m["caption_use_detail"][variant]
        assert probe["clips"] >= 1 and probe["t_grid"] == list(cfg.diffusion.val.t_grid)
        for fact in ("colour", "shape", "direction", "null"):
            assert np.isfinite(m[f"caption_use_{variant}_{fact}"]) and m[f"caption_use_{variant}_{fact}"] > -1


def test_samples_follow_the_reference_clips(pipeline: Path) -> None:
    from osplab.data.clips import ClipDataset
    from osplab.stages.sample import reference_clips

    cfg = load_params(pipeline / "params.yaml")
    real, indices = reference_clips(_abs(cfg, pipeline), int(cfg.diffusion.sample.clips))
    for variant in ("rf", "ddpm", "untrained"):
        ds = ClipDataset(pipeline / "samples/smoke" / variant, "sample")
        assert sorted(r["id"] for r in ds.rows) == sorted(real.rows[i]["id"] for i in indices)
        for i in range(len(ds)):
            j = next(k for k in indices if real.rows[k]["id"] == ds.rows[i]["id"])
            assert ds.rows[i]["caption"] == real.rows[j]["caption"]
            assert ds.shape_of(i) == (cfg.eval.frames, *real.shape_of(j)[1:])
        assert (pipeline / "samples/smoke" / variant / "previews" / "0.mp4").is_file()


def _abs(cfg, root: Path):
    """params with the data root made absolute (the tests do not run in the pipeline folder)."""
    cfg = cfg.copy()
    cfg.data.root = str(root / cfg.data.root)
    return cfg


def test_checkpoint_records_what_sampling_checks(pipeline: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(pipeline / "checkpoints/smoke/dit_rf.safetensors"), framework="pt") as f:
        meta = f.metadata()
    record = json.loads(meta["record"])
    assert record["packages"]["torch"] and record["git_commit"]
    text = json.loads(meta["text_encoder"])
    assert text["name"] == "minilm" and len(text["weights_sha256"]) == 64
    from osplab.io import sha256_file

    assert meta["vqvae_sha256"] == sha256_file(pipeline / "checkpoints/smoke/vqvae.safetensors")
    # the settings the stage ran on, as given: the smoke fixture hands each stage only its declared params
    import yaml

    assert json.loads(meta["config"]) == yaml.safe_load((pipeline / "params.train_dit_rf.yaml").read_text())
    assert json.loads(meta["config"])["dit"]["preset"] == "tiny"
    norm = json.loads(meta["latent_norm"])
    assert norm["scale"] > 0
    # the text standardisation fitted on the train captions travels in the weights
    from osplab.data.text_cache import TextCache
    from osplab.generate import read_dit

    dit, _ = read_dit(pipeline / "checkpoints/smoke/dit_rf.safetensors")
    assert dit.cfg.text_standardise
    cfg = load_params(pipeline / "params.yaml")
    cache = TextCache(pipeline / cfg.text.cache, "train")
    valid = cache.tokens[cache.mask].double()
    torch.testing.assert_close(dit.text.token_mean, valid.mean(0).float())
    assert (dit.text.token_std > 0).all() and not torch.equal(dit.text.token_std, torch.ones_like(dit.text.token_std))


def test_train_dit_refuses_a_broken_text_cache_naming_it(pipeline: Path, tmp_path: Path) -> None:
    """A text cache with non-finite tokens cannot give standardisation statistics: train_dit's task stops
    before training and names the cache folder and the stage that rewrites it."""
    from osplab.models.dit import DiT, DiTConfig
    from osplab.tasks.dit import build_task
    from osplab.config import plain

    cfg = _abs(load_params(pipeline / "params.yaml"), pipeline)
    cfg.vqvae.latents = str(pipeline / cfg.vqvae.latents)
    broken = tmp_path / "text"
    shutil.copytree(pipeline / load_params(pipeline / "params.yaml").text.cache, broken)
    tensors = safetensors.torch.load_file(str(broken / "train.safetensors"))
    tensors["tokens"][0, 0, 0] = float("nan")
    safetensors.torch.save_file(tensors, str(broken / "train.safetensors"))
    cfg.text.cache = str(broken)
    with pytest.raises(ValueError, match=rf"text cache {re.escape(str(broken))}.*not finite.*dvc repro embed_text"):
        build_task(DiT(DiTConfig.from_dict(plain(cfg.dit))), "rf", cfg)


def test_curriculum_task_draws_the_simple_clips_first(pipeline: Path) -> None:
    """diffusion.curriculum.fraction=0.5 of a 4-step run: the task's sampler gives 2 global batches of
    one-object, no-bounce clips, then batches of the whole split (the smoke latents)."""
    from osplab.config import plain
    from osplab.data.synthetic import is_simple_caption
    from osplab.models.dit import DiT, DiTConfig
    from osplab.tasks.dit import build_task

    cfg = _abs(load_params(pipeline / "params.yaml"), pipeline)
    for key in ("vqvae.latents", "text.cache"):
        OmegaConf.update(cfg, key, str(pipeline / OmegaConf.select(cfg, key)))
    cfg.diffusion.curriculum.fraction = 0.5
    task = build_task(DiT(DiTConfig.from_dict(plain(cfg.dit))), "rf", cfg, steps=4)
    captions = [r["caption"] for r in task.dataset.latents.rows]
    it = iter(task.batch_sampler(0, 1, 2, 1, 0))
    stream = [i for _ in range(40) for i in next(it)]  # 2 easy global batches of 2, then 18 of every clip
    assert all(is_simple_caption(captions[i]) for i in stream[:4])
    assert not all(is_simple_caption(captions[i]) for i in stream[4:])
    cfg.diffusion.curriculum.fraction = 0.1
    with pytest.warns(RuntimeWarning, match="rounds to 0 steps"):  # 0.4 of a step: said, not silently dropped
        build_task(DiT(DiTConfig.from_dict(plain(cfg.dit))), "rf", cfg, steps=4)


def test_sampling_refuses_a_dit_of_another_vqvae_or_text_encoder(pipeline: Path, tmp_path: Path) -> None:
    from osplab.generate import load_generator

    cfg = load_params(pipeline / "params.yaml")
    dit, vq = pipeline / "checkpoints/smoke/dit_rf.safetensors", pipeline / "checkpoints/smoke/vqvae.safetensors"
    other = tmp_path / "other_vqvae.safetensors"
    from safetensors import safe_open

    with safe_open(str(vq), framework="pt") as f:
        meta = f.metadata()
    tensors = safetensors.torch.load_file(str(vq))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1
    safetensors.torch.save_file(tensors, str(other), metadata=meta)
    with pytest.raises(ValueError, match=r"sha256 .*other_vqvae"):
        load_generator(dit, other, cfg.text)
    text = cfg.text.copy()
    text.max_length = 16
    with pytest.raises(ValueError, match="max_length: 64 vs 16"):
        load_generator(dit, vq, text)
    with pytest.raises(FileNotFoundError, match="dvc repro train_dit"):
        load_generator(tmp_path / "none.safetensors", vq, cfg.text)


def test_generate_shapes_warnings_and_bad_sizes(pipeline: Path) -> None:
    from osplab.generate import load_generator

    cfg = load_params(pipeline / "params.yaml")
    gen = load_generator(pipeline / "checkpoints/smoke/dit_rf.safetensors", pipeline / "checkpoints/smoke/vqvae.safetensors",
                         cfg.text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16 frames at 32x32 is a trained shape: no warning
        a = gen.generate(["a small red circle moves left slowly"] * 2, 16, 32, 32, steps=2, cfg_scale=3.0, seed=1)
    assert a.shape == (2, 16, 32, 32, 3) and a.dtype == np.uint8
    b = gen.generate(["a small red circle moves left slowly"] * 2, 16, 32, 32, steps=2, cfg_scale=3.0, seed=1)
    assert np.array_equal(a, b)  # seeded
    with pytest.warns(UserWarning, match="never seen in training"):
        gen.generate(["a small red circle moves left slowly"], 8, 64, 64, steps=1, cfg_scale=1.0, seed=0)
    with pytest.raises(ValueError, match="frames=10 .* nearest valid frames: 8 or 12"):
        gen.generate(["x"], 10, 32, 32, steps=1, cfg_scale=1.0, seed=0)
    with pytest.raises(ValueError, match="caption 0 is empty"):
        gen.generate([" "], 8, 32, 32, steps=1, cfg_scale=1.0, seed=0)


def test_guidance_interval_reaches_the_sampler(pipeline: Path) -> None:
    """RF Euler evaluates the model at t = 1 first and never at t = 0: an interval holding every step is full
    guidance, one holding none is the conditional model, one holding the first step only lands in between."""
    from osplab.generate import guidance_interval, load_generator
    from osplab.models.testing import randomize_

    cfg = load_params(pipeline / "params.yaml")
    gen = load_generator(pipeline / "checkpoints/smoke/dit_rf.safetensors", pipeline / "checkpoints/smoke/vqvae.safetensors",
                         cfg.text)
    randomize_(gen.dit)  # the smoke DiT barely reads its caption yet (adaLN-Zero after a few steps)
    shape, caption = gen.latent_shape(16, 32, 32), ["a small red circle moves left slowly"]

    def latents(scale, interval):
        return gen.sample_latents(caption, shape, 4, scale, None, 0, cfg_interval=interval)

    full, plain = latents(3.0, None), latents(1.0, None)
    assert (full - plain).abs().max() > 1e-3  # guidance changes the sample, so the equalities below mean something
    assert torch.equal(latents(3.0, (0.0, 1.0)), full)
    assert torch.equal(latents(3.0, (0.0, 0.0)), plain)
    part = latents(3.0, (0.99, 1.0))
    assert not torch.equal(part, full) and not torch.equal(part, plain)
    assert guidance_interval(OmegaConf.create({"cfg_interval": None})) is None
    assert guidance_interval(OmegaConf.create({"cfg_interval": [0.7, 1]})) == (0.7, 1.0)
    with pytest.raises(ValueError, match=r"null or \[lo, hi\]"):
        guidance_interval(OmegaConf.create({"cfg_interval": [0.7]}))


def test_cli_writes_a_playable_mp4(pipeline: Path) -> None:
    from osplab.media import read_video

    out = pipeline / "clip.mp4"
    proc = run(["-m", "osplab.cli", "sample", "a small green square moves up quickly", "--frames", "16",
                "--size", "32", "32", "--steps", "3", "--cfg", "4", "--cfg-interval", "0.7", "1", "--upscale", "2",
                "--out", str(out)], pipeline)
    assert f"wrote {out}" in proc.stdout
    video = read_video(out)
    assert video.shape == (16, 64, 64, 3)
    bad = run(["-m", "osplab.cli", "sample", "x", "--frames", "10", "--out", str(pipeline / "bad.mp4")], pipeline,
              check=False)
    assert bad.returncode == 2 and "nearest valid frames" in bad.stderr and not (pipeline / "bad.mp4").exists()
    bad = run(["-m", "osplab.cli", "sample", "x", "--cfg-interval", "0.9", "0.5", "--out", str(pipeline / "bad.mp4")],
              pipeline, check=False)
    assert bad.returncode == 2 and "0 <= lo <= hi <= 1" in bad.stderr and not (pipeline / "bad.mp4").exists()


def test_train_dit_rerun_resumes_and_a_changed_setting_starts_afresh(pipeline: Path, tmp_path: Path) -> None:
    """The run folder is persisted by DVC: the same inputs resume (nothing to do, same export), other
    inputs clear the stale checkpoints instead of continuing them."""
    work = tmp_path / "w"
    shutil.copytree(pipeline, work, symlinks=True)
    before = (work / "checkpoints/smoke/dit_rf.safetensors").read_bytes()
    proc = run(["-m", "osplab.stages.train_dit", "--objective", "rf"], work)
    assert "resumed from" in proc.stderr
    a = safetensors.torch.load(before)
    b = safetensors.torch.load((work / "checkpoints/smoke/dit_rf.safetensors").read_bytes())
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    run(["-m", "osplab.cli", "params", *OVERRIDES, "train_dit.lr=1e-3", "--out", "params.yaml"], work)
    proc = run(["-m", "osplab.stages.train_dit", "--objective", "rf"], work)
    assert "holds a run of other inputs" in proc.stderr and "resumed from" not in proc.stderr


def test_sampling_precision_wraps_the_dit_only(monkeypatch) -> None:
    """bf16 on a CPU with native bf16 (forced, so the test means the same on every machine)."""
    import torch

    import osplab.hardware as hardware
    import osplab.train.loop as loop
    from osplab.generate import with_precision
    from osplab.models.dit import DiT
    from osplab.models.testing import inputs, randomize_, small_cfg

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    model = randomize_(DiT(small_cfg()))
    x, t, text, mask = inputs(2, (2, 4, 4))
    assert with_precision(model, "fp32", x.device) is model  # plain fp32: untouched
    with torch.no_grad():
        full, half = model(x, t, text, mask), with_precision(model, "bf16", x.device)(x, t, text, mask)
    assert half.dtype == torch.float32  # guidance and sampler arithmetic stay fp32
    rel = float((half - full).norm() / full.norm())
    assert 0 < rel < 3e-2, rel  # bf16 matmuls: close, not identical
    with pytest.raises(ValueError, match="diffusion.sample.precision"):
        with_precision(model, "fp16", x.device)
    # without native bf16 the sampler runs the DiT in fp32 (emulated bf16 is 40-80x slower) and says so
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(loop, "_warned_emulated", set())
    with pytest.warns(RuntimeWarning, match="diffusion.sample.precision=bf16, but this CPU"):
        assert with_precision(model, "bf16", x.device) is model


def test_each_smoke_stage_ran_on_only_the_settings_dvc_yaml_declares(stage2_pipeline):
    """The fixture ran every stage on its own cut-down params file (tests/stage2_smoke.py). The check has
    teeth: a stage given less than it reads fails with the missing key named."""
    import yaml
    from stage2_smoke import declared_settings, run_python, settings_subset

    own = yaml.safe_load((stage2_pipeline / "params.train_dit_rf.yaml").read_text())
    assert "dit" in own and "diffusion" in own and "vqvae" in own and "eval" not in own  # vqvae: only latents
    assert set(own["vqvae"]) == {"latents"} and set(own["diffusion"]) >= {"rf", "ddpm", "val", "checkpoints"}
    assert "diffusion.sample" in declared_settings("sample@untrained")
    assert "diffusion.checkpoints" in declared_settings("sample@untrained")  # ${diffusion.checkpoints}/dit_rf...
    cfg = yaml.safe_load((stage2_pipeline / "params.yaml").read_text())
    keys = [k for k in declared_settings("embed_text") if k != "text"]  # keeps text.cache (a templated path)
    (stage2_pipeline / "params.short.yaml").write_text(yaml.safe_dump(settings_subset(cfg, keys)))
    proc = run_python(["-m", "osplab.stages.embed_text", "--no-progress", "--params", "params.short.yaml"],
                      stage2_pipeline, check=False)
    assert proc.returncode != 0 and "text.name" in proc.stderr
