"""DVC stage `raw`: build the clip store `data.root` that every other stage reads.

    python -m osplab.stages.raw [--params params.yaml] [OVERRIDES...]

`data.kind` says what the store is made from (`data.source` is the stage's input):
- `synthetic` (the embedded default): rendered from `data.synthetic` by osplab.data.synthetic, byte
  for byte the same on any machine, so the hash dvc.lock records for `data.root` is reproducible.
- `video_folder` (e.g. `data=ucf101`): decoded from the videos under `data.source`
  (`class/name.avi`, tracked with `dvc add data/UCF-101`) with the `data.video_folder` settings.

`data.shard_size` sets the clips per shard. The store is written atomically (osplab.data.store).
With OVERRIDES the settings are composed from conf/ instead of read from params.yaml.
"""

from __future__ import annotations

import argparse
import sys
import time

from osplab.config import add_config_arguments, run_with_config_errors, stage_config


def build_store(data, progress: bool = True) -> dict:
    """Write the store described by the `data` config node -> a summary (kind, clips per split, bytes)."""
    if data.kind == "synthetic":
        from osplab.data.synthetic import SynthConfig, generate_store

        manifest = generate_store(data.root, SynthConfig.from_conf(data.synthetic), data.shard_size, progress)
        return {"kind": "synthetic", "clips": manifest["clips"], "bytes": manifest["bytes"],
                "shards": len(manifest["shards"])}
    if data.kind == "video_folder":
        from osplab.data.video_folder import VideoFolderConfig, convert

        report = convert(data.source, data.root, VideoFolderConfig.from_conf(data.video_folder), data.shard_size,
                         progress)
        return {"kind": "video_folder", **report}
    raise ValueError(f"data.kind is {data.kind!r}; expected 'synthetic' or 'video_folder' (conf/data/)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    start = time.perf_counter()
    try:
        summary = build_store(cfg.data, not args.no_progress)
    except (RuntimeError, FileNotFoundError) as err:  # no usable videos / no source folder: say which
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {cfg.data.root} ({summary['kind']}): clips {summary['clips']} in {time.perf_counter() - start:.1f} s")
    for name, why in summary.get("reasons", {}).items():
        print(f"  skipped {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(run_with_config_errors(main))
