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
import sys
from collections.abc import Callable
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


def plain(node):
    """A config node as plain Python containers, interpolations resolved (for JSON, dataclasses)."""
    return OmegaConf.to_container(node, resolve=True)


def add_config_arguments(parser) -> None:
    """`--params PATH` (what DVC runs) and optional Hydra OVERRIDES (compose conf/ instead)."""
    parser.add_argument("--params", default="params.yaml", help="composed settings (default: params.yaml)")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides, e.g. profile=smoke: compose conf/ instead of reading --params")


def stage_config(args) -> DictConfig:
    """The settings of a stage run: params.yaml for DVC, a fresh composition when overrides are given."""
    return compose(args.overrides) if args.overrides else load_params(args.params)


def write_params(cfg: DictConfig, path: str | os.PathLike = "params.yaml") -> None:
    """Write a composed config as YAML, atomically, with a header saying where it comes from."""
    from osplab.io import atomic_write_text

    header = "# Generated from conf/ by `make params` (or `dvc exp run`); edit conf/, not this file.\n"
    atomic_write_text(path, header + OmegaConf.to_yaml(cfg, resolve=True))


# --- config errors: one clear line by default, the full trace on request --------------------------

TRACE_ENV = "OSPLAB_TRACE"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the key, the value and what is allowed."""


def _config_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from osplab.checks import SettingError

    return ConfigError, SettingError, HydraException, OmegaConfBaseException


def describe_config_error(err: BaseException) -> str:
    """One line for a Hydra/OmegaConf/ConfigError message (those span 3-10 lines with search paths).

    "Could not find 'profile/smok'" gains the available options; "Could not override 'foo.bar'"
    gains its cause ("Key 'foo' is not in struct") and Hydra's hint (`+foo.bar=1`)."""
    text = str(err).split("Config search path:")[0]
    head, _, options = text.partition("Available options in")
    parts = [" ".join(line.strip() for line in head.splitlines() if line.strip())]
    if options:
        group, _, names = options.partition(":")
        parts.append(f"options for{group.rstrip()}: " + ", ".join(names.split()))
    cause = err.__cause__
    if isinstance(cause, _config_error_types()) and str(cause).strip():
        first = str(cause).strip().splitlines()[0]
        if first not in parts[0]:
            parts.append(first)
    return "; ".join(p.rstrip(".") for p in parts if p)


def run_with_config_errors(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run an entry point; a config error prints `error: <one line>` to stderr and returns 2.

    The full trace is shown when `--trace` is in argv (removed before `main` sees it) or when the
    environment variable OSPLAB_TRACE is 1: then the exception propagates unchanged."""
    argv = list(sys.argv[1:] if argv is None else argv)
    trace = os.environ.get(TRACE_ENV, "") not in ("", "0")
    if "--trace" in argv:
        argv.remove("--trace")
        trace = True
    try:
        result = main(argv)
    except _config_error_types() as err:
        if trace:
            raise
        print(f"error: {describe_config_error(err)} (full trace: --trace or {TRACE_ENV}=1)", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


# --- Hydra entry points: the same stage code, composed from conf/ (launchers, sweeps, SLURM) ------

def wants_hydra(argv: list[str]) -> bool:
    """True when a stage's arguments are Hydra's (overrides `k=v`, `hydra/launcher=...`, --multirun)."""
    flags = {"--multirun", "-m", "--cfg", "-c", "--info", "--hydra-help", "--resolve"}
    return any(a in flags or ("=" in a and not a.startswith("-")) for a in argv)


def run_hydra(task: Callable[[DictConfig], object], argv: list[str]) -> int:
    """Run `task(cfg)` as a Hydra app over conf/ with Hydra's command line `argv`.

    `--multirun hydra/launcher=submitit_local ...` (or `=slurm`, conf/hydra/launcher/) hands each
    job to a launcher; without --multirun the task runs here. Config errors propagate (so
    run_with_config_errors prints one line) instead of Hydra's own multi-line report."""
    import hydra

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    app = hydra.main(config_path=str(conf_dir().resolve()), config_name="config", version_base="1.3")(task)
    saved = sys.argv
    sys.argv = [saved[0], *argv]
    try:
        app()
    finally:
        sys.argv = saved
    return 0
