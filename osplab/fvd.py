"""`python -m osplab.fvd REAL FAKE`: print the FVD between two clip sets, with protocol and spread.

REAL / FAKE: a folder of .npy clip shards (uint8 (N, T, H, W, 3)) and/or videos, a single such
file, or a features .npz saved earlier by `--real-cache` (refused if its protocol differs).
Defaults come from conf/eval/default.yaml (the one source of settings); flags override them.
Example: python -m osplab.fvd data/raw/val samples/ --num-clips 256 --out metrics/fvd.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "eval" / "default.yaml"
FLAGS = {  # flag -> (type, help)
    "num_clips": (int, "max clips per side"), "frames": (int, "frames per clip"),
    "stride": (int, "frame step"), "resolution": (int, "I3D input size"),
    "resize": (str, "tf1 | pytorch"), "covariance": (str, "unbiased | biased"),
    "bootstrap_rounds": (int, "bootstrap resamplings"), "batch_size": (int, "clips per I3D batch"),
    "seed": (int, "subset / bootstrap seed"), "real_split": (str, "what REAL is, recorded (default: the REAL path)"),
    "device": (str, "cpu | cuda"),
}


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m osplab.fvd", description=__doc__.split("\n")[0])
    ap.add_argument("real")
    ap.add_argument("fake")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="eval settings YAML (default: %(default)s)")
    for name, (typ, text) in FLAGS.items():
        ap.add_argument("--" + name.replace("_", "-"), type=typ, default=None, help=f"{text} (overrides --config)")
    ap.add_argument("--compile", action="store_true", default=None, help="torch.compile the I3D (long runs)")
    ap.add_argument("--out", type=Path, help="write the result + protocol JSON here")
    ap.add_argument("--real-cache", type=Path, help="reuse / save the real features in this .npz")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def settings(args: argparse.Namespace) -> dict:
    """The eval settings: --config, then the flags given; checked before any clip is read.

    `real_split` records what REAL was: the --real-split flag if given, else the REAL argument
    itself (a folder or file is no split of a store, so the config's `real_split` is not used)."""
    from omegaconf import OmegaConf

    from osplab.metrics.settings import check_eval_settings

    if not args.config.is_file():
        raise FileNotFoundError(f"eval config {args.config} not found; pass --config conf/eval/default.yaml "
                                "from an osplab checkout")
    cfg = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True)
    cfg.update({k: getattr(args, k) for k in [*FLAGS, "compile"] if getattr(args, k) is not None})
    if args.real_split is None:
        cfg["real_split"] = str(args.real)

    def name(key: str) -> str:
        top = key.split(".")[0]
        return "--" + top.replace("_", "-") if getattr(args, top, None) is not None else f"{key} (in {args.config})"

    check_eval_settings(cfg, name)
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one `error: ...` line for a bad setting or input (no traceback)."""
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg = settings(args)
        from osplab.metrics.fvd import compute_fvd

        result = compute_fvd(args.real, args.fake, cfg, progress=not args.quiet, real_cache=args.real_cache)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    if args.out:
        result.save(args.out)
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
