"""DVC stage `data`: check the clip store against its manifest, write statistics and a preview.

    python -m osplab.stages.data [--params params.yaml]

Reads `data.root` from params.yaml; writes metrics/data.json, reports/data.md and
reports/data_preview.png. Fails (naming the files) if any shard is missing or differs from its hash.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from osplab.config import load_params, run_with_config_errors
from osplab.data.clips import ClipDataset
from osplab.data.stats import preview_figure, store_stats
from osplab.data.store import verify_store
from osplab.io import atomic_path, atomic_write_json, atomic_write_text


def report_markdown(stats: dict) -> str:
    lines = ["# Dataset", "", f"{stats['bytes'] / 1e6:.1f} MB in {stats['shards']} shards.", "",
             "| split | clips | frames | buckets (T x H x W: clips) | frame diff (0-255) |", "|---|---|---|---|---|"]
    for split, s in stats["splits"].items():
        buckets = ", ".join(f"{k}: {v}" for k, v in s["buckets"].items())
        lines.append(f"| {split} | {s['clips']} | {s['frames']} | {buckets} | {s['frame_diff_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", default="metrics/data.json")
    parser.add_argument("--reports", default="reports")
    args = parser.parse_args(argv)

    root = Path(load_params(args.params).data.root)
    problems = verify_store(root)
    if problems:
        print(f"{root} does not match its manifest:\n  " + "\n  ".join(problems)
              + "\nRebuild it with `dvc repro raw` (or `dvc checkout raw`).", file=sys.stderr)
        return 1
    stats = store_stats(root)
    atomic_write_json(args.metrics, stats)
    reports = Path(args.reports)
    atomic_write_text(reports / "data.md", report_markdown(stats))
    fig = preview_figure(ClipDataset(root, "train"))
    with atomic_path(reports / "data_preview.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    print(report_markdown(stats))
    return 0


if __name__ == "__main__":
    sys.exit(run_with_config_errors(main))
