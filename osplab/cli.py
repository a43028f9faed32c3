"""The `osplab` command line.

    osplab data synth [OVERRIDES...]                 generate the embedded dataset into data.root
    osplab data video-folder SRC DST [OVERRIDES...]  decode a UCF-101-style tree into a clip store
    osplab params [OVERRIDES...]                     write params.yaml, the composition of conf/
    osplab config [OVERRIDES...]                     print the composed config
    osplab estimate [OVERRIDES...] [--frames F --size H W --batch B] [--json]
                                                     DiT parameters, FLOPs per step, activation memory

OVERRIDES are Hydra overrides of conf/, e.g. `profile=smoke` or `data.synthetic.seed=7`.
A config error (unknown profile or key) prints one line; `--trace` (or OSPLAB_TRACE=1) shows the trace.
"""

from __future__ import annotations

import argparse
import sys
import time

from omegaconf import OmegaConf

from osplab.config import compose, run_with_config_errors, write_params


def _synth(args) -> int:
    from osplab.data.synthetic import SynthConfig, generate_store

    cfg = compose(args.overrides)
    if cfg.data.kind != "synthetic":
        raise SystemExit(f"data group is {cfg.data.kind!r}; `osplab data synth` needs data=synthetic")
    start = time.perf_counter()
    manifest = generate_store(cfg.data.root, SynthConfig.from_conf(cfg.data.synthetic), cfg.data.shard_size)
    print(f"wrote {sum(manifest['clips'].values())} clips {manifest['clips']} ({manifest['bytes'] / 1e6:.1f} MB, "
          f"{len(manifest['shards'])} shards) to {cfg.data.root} in {time.perf_counter() - start:.1f} s")
    return 0


def _video_folder(args) -> int:
    from osplab.data.video_folder import VideoFolderConfig, convert

    cfg = compose(["data=ucf101", *args.overrides])
    try:
        report = convert(args.src, args.dst, VideoFolderConfig.from_conf(cfg.data.video_folder), cfg.data.shard_size)
    except (RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"videos: {report['videos']}, read: {report['read']}, skipped: {report['skipped']}, clips: {report['clips']}")
    for name, why in report["reasons"].items():
        print(f"  skipped {name}: {why}")
    return 0


def _estimate(args) -> int:
    import json

    from osplab.models.estimate import report

    try:
        est, table = report(args.overrides, args.frames, args.size, args.batch)
    except ValueError as err:  # a clip shape or DiT setting that does not fit: say which
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(est, indent=2) if args.json else table)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `osplab` command; config errors become one `error: ...` line (exit 2) unless --trace."""
    return run_with_config_errors(_main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="osplab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate the embedded synthetic dataset")
    synth.set_defaults(run=_synth)
    folder = data.add_parser("video-folder", help="decode SRC/class/video.avi into a clip store at DST")
    folder.add_argument("src")
    folder.add_argument("dst")
    folder.set_defaults(run=_video_folder)
    params = sub.add_parser("params", help="write params.yaml (the composition of conf/)")
    params.add_argument("--out", default="params.yaml")
    params.set_defaults(run=lambda a: write_params(compose(a.overrides), a.out) or 0)
    show = sub.add_parser("config", help="print the composed config")
    show.set_defaults(run=lambda a: print(OmegaConf.to_yaml(compose(a.overrides))) or 0)
    est = sub.add_parser("estimate", help="parameters, FLOPs per step and activation memory of the DiT config")
    est.add_argument("--frames", type=int, help="clip frames (default: the data config's longest)")
    est.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="clip size in pixels (default: largest)")
    est.add_argument("--batch", type=int, help="samples per step (default: train_dit.micro_batch, else 1)")
    est.add_argument("--json", action="store_true", help="print the numbers as JSON")
    est.set_defaults(run=_estimate)
    for p in (synth, folder, params, show, est):
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=smoke")
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
