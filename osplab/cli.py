"""The `osplab` command line.

    osplab data synth [OVERRIDES...]                 generate the embedded dataset into data.root
    osplab data video-folder SRC DST [OVERRIDES...]  decode a UCF-101-style tree into a clip store
    osplab params [OVERRIDES...]                     write params.yaml, the composition of conf/
    osplab config [OVERRIDES...]                     print the composed config
    osplab estimate [OVERRIDES...] [--frames F --size H W --batch B] [--json]
                                                     DiT parameters, FLOPs per step, activation memory
    osplab sample "CAPTION" [--frames 16 --steps 50 --cfg 4 --out clip.mp4]
                                                     text to video with the trained checkpoints
    osplab demo [--checkpoint DIT ...] [--port 7860] [--host 127.0.0.1] [--share]
                                                     the same in a Gradio page (osplab.demo)

OVERRIDES are Hydra overrides of conf/, e.g. `profile=smoke` or `data.synthetic.seed=7`.
A config error (unknown profile or key) prints one line; `--trace` (or OSPLAB_TRACE=1) shows the trace.
"""

from __future__ import annotations

import argparse
import sys
import time

from omegaconf import OmegaConf

from osplab.config import compose, load_params, run_with_config_errors, write_params


def _synth(args) -> int:
    from osplab.data.synthetic import SynthConfig, generate_store

    cfg = compose(args.overrides)
    if cfg.data.kind != "synthetic":
        raise SystemExit(f"data group is {cfg.data.kind!r}; `osplab data synth` needs data=synthetic")
    start = time.perf_counter()
    try:
        manifest = generate_store(cfg.data.root, SynthConfig.from_conf(cfg.data.synthetic), cfg.data.shard_size)
    except FileExistsError as err:  # data.root is a file or someone else's folder: nothing was touched
        print(f"error: {err}", file=sys.stderr)
        return 1
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


def _sample(args) -> int:
    """`osplab sample CAPTION...`: generate clips with the trained checkpoints and write mp4/gif."""
    import numpy as np

    from osplab.generate import guidance_interval, load_generator
    from osplab.media import write_video
    from osplab.tasks.dit import checkpoint_path

    cfg = compose(args.override) if args.override else load_params(args.params)
    dit = args.dit or checkpoint_path(cfg, args.objective)
    try:
        gen = load_generator(dit, cfg.vqvae.checkpoint, cfg.text)
        sample = cfg.diffusion.sample
        steps = args.steps or int(sample.rf_steps if gen.meta["objective"] == "rf" else sample.ddpm_steps)
        cfg_scale = float(sample.cfg) if args.cfg is None else args.cfg
        height, width = args.size
        videos = gen.generate(args.captions, args.frames, height, width, steps, cfg_scale, args.seed,
                              sampler=args.sampler, snap=bool(sample.snap_to_codebook), progress=True,
                              precision=str(sample.precision),
                              cfg_interval=guidance_interval(sample) if args.cfg_interval is None else args.cfg_interval)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    outs = [args.out] if len(videos) == 1 else [_numbered(args.out, i) for i in range(len(videos))]
    for video, out in zip(videos, outs):
        write_video(out, np.asarray(video), fps=args.fps, upscale=args.upscale)
        print(f"wrote {out} ({video.shape[0]} frames, {video.shape[1]}x{video.shape[2]})")
    return 0


def _demo(args) -> int:
    """`osplab demo`: serve the Gradio page until Ctrl-C."""
    from osplab.demo import launch

    cfg = compose(args.override) if args.override else load_params(args.params)
    launch(cfg, args.checkpoint or None, host=args.host, port=args.port, share=args.share)
    return 0


def _numbered(path: str, i: int) -> str:
    from pathlib import Path

    p = Path(path)
    return str(p.with_name(f"{p.stem}_{i}{p.suffix}"))


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
    smp = sub.add_parser("sample", help="generate clips from captions with the trained DiT and VQVAE")
    smp.add_argument("captions", nargs="+", metavar="CAPTION", help="one clip per caption")
    smp.add_argument("--frames", type=int, default=16, help="frames per clip (multiple of the VQVAE's 4)")
    smp.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"), help="pixels")
    smp.add_argument("--steps", type=int, default=None, help="sampler steps (default: diffusion.sample)")
    smp.add_argument("--cfg", type=float, default=None, help="guidance scale (default: diffusion.sample.cfg)")
    smp.add_argument("--cfg-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                     help="guide only at noise levels (RF times) in [LO, HI]; 0 1 = every step "
                          "(default: diffusion.sample.cfg_interval)")
    smp.add_argument("--sampler", default=None, help="euler|heun (rf) or ancestral|ddim (ddpm)")
    smp.add_argument("--objective", default="rf", choices=["rf", "ddpm"], help="which trained DiT")
    smp.add_argument("--dit", default=None, help="DiT checkpoint (default: <diffusion.checkpoints>/dit_<objective>.safetensors)")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--fps", type=int, default=8)
    smp.add_argument("--upscale", type=int, default=4, help="pixel repetition for viewing (64 px -> 256 px)")
    smp.add_argument("--out", default="clip.mp4", help=".mp4 or .gif (several captions: NAME_i.mp4)")
    smp.add_argument("--params", default="params.yaml", help="settings the checkpoints were trained with")
    smp.add_argument("-O", "--override", action="append", default=[], metavar="KEY=VALUE",
                     help="compose conf/ with this Hydra override instead of reading --params (repeatable)")
    smp.set_defaults(run=_sample)
    demo = sub.add_parser("demo", help="a Gradio page for text to video with the trained checkpoints")
    demo.add_argument("--checkpoint", action="append", default=[], metavar="DIT",
                      help="DiT checkpoint to serve (repeatable; default: dit_rf and dit_ddpm of diffusion.checkpoints)")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    demo.add_argument("--params", default="params.yaml", help="settings the checkpoints were trained with")
    demo.add_argument("-O", "--override", action="append", default=[], metavar="KEY=VALUE",
                      help="compose conf/ with this Hydra override instead of reading --params (repeatable)")
    demo.set_defaults(run=_demo)
    for p in (synth, folder, params, show, est):
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. profile=smoke")
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
