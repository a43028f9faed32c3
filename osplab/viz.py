"""Figures shared by stages and notebooks."""

from __future__ import annotations

import numpy as np


def video_grid(videos: list[np.ndarray], labels: list[str], frames: int = 4, title: str | None = None):
    """One row per uint8 video (T, H, W, 3): `frames` evenly spaced frames, the label on the left."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(videos), frames, figsize=(1.5 * frames + 1.0, 1.45 * len(videos)), squeeze=False)
    for r, (video, label) in enumerate(zip(videos, labels)):
        for c, t in enumerate(np.linspace(0, len(video) - 1, frames).round().astype(int)):
            ax = axes[r, c]
            ax.imshow(video[t], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == len(videos) - 1:
                ax.set_xlabel(f"t={t}", fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig, path) -> None:
    """Save a figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from osplab.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
