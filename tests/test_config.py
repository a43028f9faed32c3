"""conf/ is the one source of settings: every profile composes, params.yaml is its composition."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from osplab.config import compose, load_params

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_every_profile_composes(profile):
    cfg = compose([f"profile={profile}"])
    assert cfg.profile == profile
    assert cfg.data.kind in ("synthetic", "video_folder")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # no ??? left


def test_paper_profile_is_ucf101_at_256():
    cfg = compose(["profile=paper"])
    assert cfg.data.kind == "video_folder" and list(cfg.data.video_folder.size) == [256, 256]


def test_params_yaml_is_the_composition_of_conf():
    """`dvc repro` reads params.yaml; it must not drift from conf/ (regenerate with `make params`)."""
    committed = OmegaConf.to_container(load_params(REPO / "params.yaml"))
    fresh = OmegaConf.to_container(compose([]), resolve=True)
    assert committed == fresh, "params.yaml is stale: run `make params` and commit it"


def test_dvc_stage_params_exist_in_conf():
    cfg = OmegaConf.to_container(compose([]), resolve=True)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for entry in stage.get("params", []):
            keys = entry if isinstance(entry, str) else next(iter(entry.values()))
            for key in [keys] if isinstance(keys, str) else keys:
                node = cfg
                for part in key.split("."):
                    assert part in node, f"stage {name}: param {key} not in conf/"
                    node = node[part]


def test_bad_override_is_a_clear_error():
    with pytest.raises(Exception, match="profile"):
        compose(["profile=nonexistent"])


@pytest.mark.parametrize("override, expected", [
    ("profile=smok", "Could not find 'profile/smok'; options for 'profile': default, paper, smoke"),
    ("data.synthetic.nope=2", "Could not override 'data.synthetic.nope'"),
])
def test_config_error_is_one_line(capsys, monkeypatch, override, expected):
    from osplab.cli import main

    monkeypatch.delenv("OSPLAB_TRACE", raising=False)
    assert main(["config", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert err.count("\n") == 1, err  # one line, no trace, no Hydra search path


def test_config_error_trace_on_request(monkeypatch):
    from hydra.errors import MissingConfigException

    from osplab.cli import main

    with pytest.raises(MissingConfigException):
        main(["config", "profile=smok", "--trace"])
    monkeypatch.setenv("OSPLAB_TRACE", "1")
    with pytest.raises(MissingConfigException):
        main(["config", "profile=smok"])
