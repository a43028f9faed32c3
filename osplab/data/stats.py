"""Dataset statistics and a preview figure for a clip store (the `data` stage's outputs).

The statistics are the ones later stages lean on: clips per split and per bucket, pixel mean and
std per channel (for normalisation checks), and the real data's mean absolute frame-to-frame
difference, the reference the flicker metric divides by.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from osplab.data.clips import ClipDataset
from osplab.data.store import read_manifest


def split_stats(ds: ClipDataset) -> dict:
    """Counts, frames, per-channel mean/std (0-255 scale) and mean |frame[t+1] - frame[t]| of a split."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels = 0
    diff_sum, diff_count = 0.0, 0
    for clips in _chunks(ds, 32):                               # (N, T, H, W, 3) float64
        total += clips.sum(axis=(0, 1, 2, 3))
        total_sq += np.square(clips).sum(axis=(0, 1, 2, 3))
        pixels += clips[..., 0].size
        diff = np.abs(np.diff(clips, axis=1))
        diff_sum += float(diff.sum())
        diff_count += diff.size
    mean = total / pixels
    buckets = Counter(ds.shapes())
    return {
        "clips": len(ds),
        "frames": int(sum(t for t, _, _ in ds.shapes())),
        "buckets": {f"{t}x{h}x{w}": n for (t, h, w), n in sorted(buckets.items())},
        "pixel_mean": [round(float(v), 4) for v in mean],
        "pixel_std": [round(float(v), 4) for v in np.sqrt(total_sq / pixels - mean**2)],
        "frame_diff_mean": round(diff_sum / max(diff_count, 1), 6),
    }


def _chunks(ds: ClipDataset, size: int):
    """Clips of a split as float64 arrays of at most `size` clips of one shard (bounded memory)."""
    by_shard: dict[str, list[int]] = {}
    for row in ds.rows:
        by_shard.setdefault(row["shard"], []).append(row["row"])
    for shard, rows in by_shard.items():
        for start in range(0, len(rows), size):
            yield ds._shard(shard)[rows[start:start + size]].astype(np.float64)


def store_stats(root: str | Path) -> dict:
    """Statistics of every split of a store plus its size on disk."""
    manifest = read_manifest(root)
    return {"bytes": manifest["bytes"], "shards": len(manifest["shards"]),
            "splits": {split: split_stats(ClipDataset(root, split)) for split in manifest["clips"]}}


def preview_figure(ds: ClipDataset, clips: int = 6, frames: int = 4):
    """A matplotlib figure: one row per clip (first clips of the split), `frames` evenly spaced frames."""
    import matplotlib.pyplot as plt

    n = min(clips, len(ds))
    fig, axes = plt.subplots(n, frames, figsize=(1.6 * frames, 1.5 * n), squeeze=False)
    for r in range(n):
        item = ds[r]
        video = item["video"]
        for c, t in enumerate(np.linspace(0, len(video) - 1, frames).round().astype(int)):
            ax = axes[r, c]
            ax.imshow(video[t], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"t={t}", fontsize=6)
        axes[r, 0].set_title(_wrap(item["caption"]), fontsize=6, loc="left")
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int = 60) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
