"""Figures shared by stages and notebooks."""

from __future__ import annotations

import textwrap

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
    # a caption runs across the whole block at 7 pt (about 0.6 x 7 pt per character): wrap what would run off
    # the figure's right edge; two lines fit in the gap above a block
    chars = int((fig.get_figwidth() - 0.3) * 72 / (0.6 * 7))
    captions = [textwrap.fill(caption, chars) for caption in captions]
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
    lines = captions[0].count("\n") if captions else 0
    top = 1 - (0.75 + 0.12 * lines) / fig.get_figheight()  # room for the title and the first caption, in inches
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.01, top=top, hspace=0.3, wspace=0.05)
    return fig


def reconstruction_figure(real: list[np.ndarray], fake: list[np.ndarray], frames: int = 8, block: int = 4,
                          title: str | None = None):
    """Per clip: rows real, recon and |recon - real| over the first `frames` consecutive frames, and on
    the right the frame-to-frame change mean |x[t+1] - x[t]| (0-255) of both over the whole clip.

    real, fake: uint8 clips (T, H, W, 3) in pairs. Consecutive frames (not evenly spaced ones) show
    what flicker looks like: the recon row jumping where the real row moves smoothly, and the error
    pattern changing at every latent block of `block` frames (dashed lines in the plot).
    """
    import matplotlib.pyplot as plt

    n = len(real)
    fig, axes = plt.subplots(3 * n, frames + 1, figsize=(1.05 * frames + 3.4, 1.1 * 3 * n + 0.5), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * frames + [3.0]})
    fig.subplots_adjust(left=0.04, right=0.98, bottom=0.06, top=1 - 0.45 / fig.get_figheight(), hspace=0.08,
                        wspace=0.05)
    for c, (r, f) in enumerate(zip(real, fake, strict=True)):
        r16, f16 = r.astype(np.int16), f.astype(np.int16)
        diff = np.abs(f16 - r16).mean(-1)                                   # (T, H, W), 0-255
        rows = {"real": r, "recon": f, "|recon-real|": diff}
        for k, (name, video) in enumerate(rows.items()):
            row = 3 * c + k
            for t in range(min(frames, len(r))):
                ax = axes[row, t]
                if name == "|recon-real|":
                    ax.imshow(video[t], cmap="magma", vmin=0, vmax=64, interpolation="nearest")
                else:
                    ax.imshow(video[t], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 3 * n - 1:
                    ax.set_xlabel(f"t={t}", fontsize=6)
            for t in range(min(frames, len(r)), frames):
                axes[row, t].axis("off")
            axes[row, 0].set_ylabel(name, fontsize=6)
        for k in (1, 2):
            axes[3 * c + k, -1].axis("off")
        ax = axes[3 * c, -1]
        steps = np.arange(1, len(r))
        ax.plot(steps, np.abs(np.diff(r16, axis=0)).mean(axis=(1, 2, 3)), label="real", color="k", lw=1)
        ax.plot(steps, np.abs(np.diff(f16, axis=0)).mean(axis=(1, 2, 3)), label="recon", color="C3", lw=1)
        for b in range(block, len(r), block):
            ax.axvline(b, color="0.7", ls="--", lw=0.6)
        ax.set_title(f"clip {c}: frame-to-frame change", fontsize=6)
        ax.tick_params(labelsize=5)
        ax.set_xlabel("t (change from t-1 to t; dashed: latent frame borders)", fontsize=5)
        ax.legend(fontsize=5, frameon=False)
        pos = ax.get_position()  # stretch the plot over its clip's three rows
        bottom = axes[3 * c + 2, -1].get_position().y0
        ax.set_position([pos.x0, bottom, pos.width, pos.y1 - bottom])
    if title:
        fig.suptitle(title, fontsize=8)
    return fig
