"""Train the toy task: the demo and test entry point of the training loop.

    python -m osplab.train.run train.steps=50 train.out_dir=runs/toy
    torchrun --nproc_per_node=2 -m osplab.train.run train.out_dir=runs/toy_ddp
    python -m osplab.train.run --conf path/to/conf toy.hidden=32

Values come from <conf>/train/default.yaml (key prefix `train.`) and <conf>/train/task/toy.yaml
(prefix `toy.`); `key=value` arguments override them (unknown keys are an error). Running the
same command again resumes from the newest checkpoint in train.out_dir. Prints the final metrics
as one JSON line on rank 0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from .config import TrainConfig
from .distributed import cleanup_distributed, init_distributed, setup_logging
from .loop import train
from .state import seed_everything
from .toy import ToyConfig, build_toy_task

DEFAULT_CONF = Path(__file__).resolve().parents[2] / "conf"


def load_configs(conf_dir: Path, overrides: Sequence[str]) -> tuple[TrainConfig, ToyConfig]:
    """Compose train/default.yaml and train/task/toy.yaml with `key=value` overrides."""
    files = {"train": conf_dir / "train" / "default.yaml", "toy": conf_dir / "train" / "task" / "toy.yaml"}
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; pass --conf pointing at the repo's conf/")
    base = OmegaConf.create({k: OmegaConf.load(p) for k, p in files.items()})
    OmegaConf.set_struct(base, True)  # an override of an unknown key raises, naming it
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    values = OmegaConf.to_container(merged, resolve=True)
    return TrainConfig.from_dict(values["train"]), ToyConfig(**values["toy"])


def _configs_or_exit(conf_dir: Path, overrides: Sequence[str]) -> tuple[TrainConfig, ToyConfig]:
    """`load_configs`, but a bad setting exits with one line naming it instead of a traceback."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return load_configs(conf_dir, overrides)
    except (ValueError, FileNotFoundError, OmegaConfBaseException) as err:
        line = str(err).strip().splitlines()[0]
        key = getattr(err, "full_key", None)  # OmegaConf names the key on a later line
        raise SystemExit(f"error: {line}" + (f": {key}" if key and key not in line else "")) from None


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", type=Path, default=DEFAULT_CONF, help="Hydra conf/ directory")
    parser.add_argument("overrides", nargs="*", help="train.KEY=VALUE or toy.KEY=VALUE")
    args = parser.parse_args(argv)
    train_cfg, toy_cfg = _configs_or_exit(args.conf, args.overrides)
    env = init_distributed()
    setup_logging(env)
    seed_everything(train_cfg.seed)  # identical initial weights on every rank
    metrics = train(train_cfg, build_toy_task(toy_cfg))
    if env.is_main:
        print(json.dumps(metrics), flush=True)
    cleanup_distributed()
    return metrics


if __name__ == "__main__":
    main()
