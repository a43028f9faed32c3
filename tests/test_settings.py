"""Bad settings are refused where they enter, with one line naming the key, the value and what is allowed."""
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from osplab import checks
from osplab.config import compose
from osplab.data.synthetic import SynthConfig
from osplab.data.video_folder import VideoFolderConfig
from osplab.metrics.settings import check_eval_settings
from osplab.models.vqvae import VQVAEConfig
from osplab.train.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent


def test_check_helpers_refuse_wrong_types_and_ranges():
    assert checks.integer("k", 3, 1) == 3 and checks.number("k", 2, 0.0) == 2.0
    for value in ("3", 2.5, True, None):
        with pytest.raises(ValueError, match=rf"^k={value!r} is not allowed; allowed: an integer >= 1$"):
            checks.integer("k", value, 1)
    with pytest.raises(ValueError, match=r"^k=0 is not allowed; allowed: an integer >= 1$"):
        checks.integer("k", 0, 1)
    for value in ("0.5", float("nan"), float("inf"), False, 1.5):
        with pytest.raises(ValueError, match="allowed: a finite number >= 0 and <= 1"):
            checks.probability("k", value)
    with pytest.raises(ValueError, match=r"k=\[1\] is not allowed; allowed: a list of exactly 2 items"):
        checks.integers("k", [1], 1, length=2)
    with pytest.raises(ValueError, match=r"k\[1\]=0 is not allowed"):
        checks.integers("k", [4, 0], 1, length=2)
    with pytest.raises(ValueError, match="k='yes' is not allowed; allowed: true or false"):
        checks.boolean("k", "yes")


def synth(**override):
    node = compose(["profile=smoke"]).data.synthetic
    return {**OmegaConf.to_container(node, resolve=True), **override}


@pytest.mark.parametrize("override,needle", [
    ({"num_clips": {"train": -5, "val": 2}}, "data.synthetic.num_clips.train=-5 is not allowed"),
    ({"num_clips": {"train": 0, "val": 0}}, "at least one clip in total"),
    ({"num_clips": {"trian": 3}}, "a mapping of splits"),
    ({"frames": [0]}, r"data.synthetic.frames\[0\]=0 is not allowed; allowed: an integer >= 1"),
    ({"frames": []}, "data.synthetic.frames=\\[\\] is not allowed; allowed: a list of at least 1 item"),
    ({"resolutions": [[0, 0]]}, r"data.synthetic.resolutions\[0\]\[0\]=0 is not allowed"),
    ({"resolutions": [64, 64]}, r"data.synthetic.resolutions\[0\]=64 is not allowed; allowed: a list of exactly 2"),
    ({"p_textured": 1.5}, "data.synthetic.p_textured=1.5 is not allowed; allowed: a finite number >= 0 and <= 1"),
    ({"seed": "abc"}, "data.synthetic.seed='abc' is not allowed"),
])
def test_synth_config_refuses_bad_values(override, needle):
    SynthConfig(**synth())  # the smoke values pass
    with pytest.raises(ValueError, match=needle):
        SynthConfig(**synth(**override))


def test_from_conf_names_unknown_keys():
    node = OmegaConf.create({**synth(), "p_texture": 0.3})
    with pytest.raises(ValueError, match=r"data.synthetic: unknown keys \['p_texture'\], missing keys \[\]"):
        SynthConfig.from_conf(node)


@pytest.mark.parametrize("key,value,needle", [
    ("frames", 0, "data.video_folder.frames=0 is not allowed; allowed: an integer >= 1"),
    ("frames", -4, "data.video_folder.frames=-4"), ("stride", 0, "data.video_folder.stride=0"),
    ("clips_per_video", 0, "clips_per_video=0"), ("size", [64], r"size=\[64\] is not allowed"),
    ("val_fraction", 0.7, r"val_fraction=0.7 \+ data.video_folder.test_fraction=0.4"),
    ("extensions", ["avi"], r"extensions\[0\]='avi' is not allowed"),
])
def test_video_folder_config_refuses_bad_values(key, value, needle):
    base = OmegaConf.to_container(compose(["data=ucf101"]).data.video_folder, resolve=True)
    VideoFolderConfig(**base)
    bad = {**base, key: value, **({"test_fraction": 0.4} if key == "val_fraction" else {})}
    with pytest.raises(ValueError, match=needle):
        VideoFolderConfig(**bad)


def test_train_config_names_key_for_wrong_types():
    values = OmegaConf.to_container(compose([]).train_vqvae, resolve=True)
    assert TrainConfig.from_dict(values, prefix="train_vqvae").steps == values["steps"]
    for key, value, needle in [("steps", "abc", "train_vqvae.steps='abc' is not allowed; allowed: an integer >= 1"),
                               ("steps", 2.5, "train_vqvae.steps=2.5"), ("lr", "fast", "train_vqvae.lr='fast'"),
                               ("betas", [0.9], r"train_vqvae.betas=\[0.9\]"), ("fsdp", "no", "train_vqvae.fsdp='no'"),
                               ("betas", [0.9, "x"], r"train_vqvae.betas\[1\]='x'")]:
        with pytest.raises(ValueError, match=needle):
            TrainConfig.from_dict({**values, key: value}, prefix="train_vqvae")


def test_train_cli_prints_one_line_for_a_bad_setting(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "osplab.train.run", f"train.out_dir={tmp_path / 'run'}",
                           "train.steps=abc"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == "error: train.steps='abc' is not allowed; allowed: an integer >= 1"
    assert not (tmp_path / "run").exists()


def test_vqvae_config_refuses_bad_values():
    values = OmegaConf.to_container(compose([]).vqvae.model, resolve=True)
    VQVAEConfig.from_dict(values)
    for key, value in [("codebook_size", 0), ("embed_dim", "64"), ("commitment", -1.0), ("ema_decay", 1.0),
                       ("l2_normalize", "false"), ("downsample", [4, 8]), ("attn_heads", 0)]:
        with pytest.raises(ValueError) as err:
            VQVAEConfig.from_dict({**values, key: value})
        assert str(err.value).startswith(f"vqvae.model.{key}={value!r} is not allowed; allowed: ")
    with pytest.raises(ValueError, match=r"vqvae.model: unknown keys \[\], missing keys \['arch'\]"):
        VQVAEConfig.from_dict({k: v for k, v in values.items() if k != "arch"})


def test_eval_settings_refuse_bad_values():
    values = OmegaConf.to_container(compose([]).eval, resolve=True)
    check_eval_settings(values)
    for key, value, allowed in [("num_clips", 1, "an integer >= 2"), ("frames", 8, "an integer >= 9"),
                                ("resolution", 256, "an integer >= 193 and <= 224"),
                                ("bootstrap_rounds", -1, "an integer >= 0"), ("resize", "cubic", "one of 'tf1'"),
                                ("compile", "no", "true or false")]:
        with pytest.raises(ValueError, match=rf"^eval.{key}={value!r} is not allowed; allowed: {allowed}"):
            check_eval_settings({**values, key: value})
    with pytest.raises(ValueError, match=r"eval.ssim.sigma=0 is not allowed"):
        check_eval_settings({**values, "ssim": {**values["ssim"], "sigma": 0}})


def test_setting_errors_are_one_recognisable_type():
    """Entry points catch SettingError to print one line; it stays a ValueError for other callers."""
    assert issubclass(checks.SettingError, ValueError)
    for bad in (lambda: VideoFolderConfig(frames=8, stride=0, clips_per_video=1, size=[8, 8], val_fraction=0,
                                          test_fraction=0, extensions=[".avi"]),
                lambda: VQVAEConfig.from_dict({"arch": "unet"}),
                lambda: check_eval_settings({})):
        with pytest.raises(checks.SettingError):
            bad()


def test_the_real_side_needs_only_the_settings_it_reads():
    """`eval_real` (real I3D features) declares the protocol keys, not the FVD statistics' ones."""
    from osplab.metrics.settings import REAL_SIDE, REQUIRED

    ecfg = OmegaConf.to_container(compose(["profile=smoke"]).eval, resolve=True)
    real = {k: v for k, v in ecfg.items() if k not in ("covariance", "bootstrap_rounds")}
    check_eval_settings(real, required=REAL_SIDE)
    with pytest.raises(ValueError, match=r"missing keys \['covariance', 'bootstrap_rounds'\]"):
        check_eval_settings(real)
    assert set(REAL_SIDE) < set(REQUIRED)
    with pytest.raises(ValueError, match=r"^eval.batch_size=0 is not allowed"):
        check_eval_settings({**real, "batch_size": 0}, required=REAL_SIDE)
