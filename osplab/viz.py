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


def samples_figure(columns: dict[str, list[np.ndarray]], captions: list[str], verdicts: dict[str, list[str]],
                   frames: int = 4, title: str | None = None):
    """One block per caption: the caption, then one row per column name (e.g. real / rf / ddpm) of
    `frames` evenly spaced frames, and that clip's judge verdict in a text column on the right."""
    import matplotlib.pyplot as plt

    names = list(columns)
    rows = len(captions) * len(names)
    fig, axes = plt.subplots(rows, frames + 1, figsize=(1.25 * frames + 3.2, 1.25 * rows + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * frames + [2.6]})
    for c, caption in enumerate(captions):
        for n, name in enumerate(names):
            video, r = columns[name][c], c * len(names) + n
            for k, t in enumerate(np.linspace(0, len(video) - 1, frames).round().astype(int)):
                axes[r, k].imshow(video[t], interpolation="nearest")
                axes[r, k].set_xticks([])
                axes[r, k].set_yticks([])
            axes[r, 0].set_ylabel(name, fontsize=7)
            axes[r, -1].axis("off")
            axes[r, -1].text(0.0, 0.5, "\n".join(verdicts[name][c].split("; ")), fontsize=5.5, va="center",
                             transform=axes[r, -1].transAxes)
        axes[c * len(names), 0].set_title(caption, fontsize=7, loc="left")
    if title:
        fig.suptitle(title, fontsize=8)
    top = 1 - 0.75 / fig.get_figheight()  # room for the title and the first caption, in inches
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.01, top=top, hspace=0.3, wspace=0.05)
    return fig
