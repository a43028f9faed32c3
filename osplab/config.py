"""Settings: compose `conf/` with Hydra, or read the composed `params.yaml`.

`conf/` is the one source of settings. Two ways to get a composed config:

- `compose(overrides)`: Hydra composition of `conf/config.yaml` plus command-line style overrides
  (`["profile=smoke", "data.synthetic.seed=3"]`). Used by the `osplab` CLI and notebooks.
- `load_params(path)`: the `params.yaml` that DVC stages read. `dvc exp run -S ...` (with
  `hydra.enabled`) and `make params` write it as the composition of `conf/`; reading it back (instead
  of recomposing) is what makes `dvc exp run -S key=value` reach the stage.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent


def conf_dir() -> Path:
    """The `conf/` folder: `$OSPLAB_CONF` if set, else the one beside the package."""
    path = Path(os.environ.get("OSPLAB_CONF", REPO_ROOT / "conf"))
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no config.yaml in {path}; run from an osplab checkout or set OSPLAB_CONF to its conf/ folder"
        )
    return path


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose `conf/config.yaml` with Hydra overrides, e.g. `["profile=smoke"]`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(conf_dir().resolve()), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def load_params(path: str | os.PathLike = "params.yaml") -> DictConfig:
    """Read a composed config (the DVC `params.yaml`) with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; write it with `make params` (composes conf/)")
    return OmegaConf.load(path)


def write_params(cfg: DictConfig, path: str | os.PathLike = "params.yaml") -> None:
    """Write a composed config as YAML, atomically, with a header saying where it comes from."""
    from osplab.io import atomic_write_text

    header = "# Generated from conf/ by `make params` (or `dvc exp run`); edit conf/, not this file.\n"
    atomic_write_text(path, header + OmegaConf.to_yaml(cfg, resolve=True))
