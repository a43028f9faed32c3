"""DVC stage `embed_text`: per-token embeddings and masks of every caption, cached once.

    python -m osplab.stages.embed_text [--params params.yaml] [--no-progress]

Reads the captions of every split of the clip store at `data.root`, encodes them with the text
encoder of `text` (osplab/models/text.py; MiniLM by default, offline) and writes the cache at
`text.cache` (osplab/data/text_cache.py), keyed by the encoder's identity.
"""

from __future__ import annotations

import argparse
import time

from osplab.config import load_params
from osplab.data.clips import ClipDataset
from osplab.data.store import read_manifest as read_clip_manifest
from osplab.data.text_cache import write_text_cache
from osplab.models.text import encoder_from_conf


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_params(args.params)
    started = time.perf_counter()
    encoder = encoder_from_conf(cfg.text, "cpu")
    splits = {}
    for split in sorted(read_clip_manifest(cfg.data.root)["clips"]):
        clips = ClipDataset(cfg.data.root, split)
        splits[split] = ([r["id"] for r in clips.rows], clips.captions())
    manifest = write_text_cache(cfg.text.cache, encoder, splits, int(cfg.text.batch),
                                {"data_root": str(cfg.data.root)}, progress=not args.no_progress)
    print(f"embedded {manifest['clips']} captions ({manifest['length']} tokens x {encoder.dim}) with "
          f"{encoder.name} into {cfg.text.cache} in {time.perf_counter() - started:.1f} s")
    return manifest


if __name__ == "__main__":
    main()
