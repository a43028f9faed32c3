"""Ablation: one model, every length (notebooks/ablation_length.ipynb).

The claim (Open-Sora-Plan trains on mixed durations and resolutions): one DiT generates any length of
its training buckets at the same quality, and a length it never trained on is not free. Here the RF
DiT of `train_dit` generates the captions and frame sizes of the `sample` stage's clips at every
length of `ablation_length.lengths` (the training buckets and one length beyond them), with the
sample stage's steps, guidance and seeds, and each set is scored by

- FVD of its first 16-frame window (the `eval` window) against the real val clips, with the 95%
  bootstrap interval (none for clips shorter than the window);
- the caption judge;
- the flicker ratio: mean frame-to-frame change over that of the real reference clips (1 = as real);
- the latent-border ratio: mean frame-to-frame change across the VQVAE's 4-frame latent borders over
  the change inside them. Real clips score about 1; a model that re-places its objects at every latent
  frame scores far above it (what `reports/samples.png` shows);
- seconds per clip (generation with text encoding and decoding, in batches).

    rows = run_sweep(cfg, gen, [8, 16, 24, 32, 40], clips, feats_real, i3d, real_clips)
    write_report(rows, "reports")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osplab.ablations.common import claims_table, fvd_text, overlap, summary, write_files
from osplab.ablations.scoring import judge_scores, score

NAME = "ablation_length"


@dataclass
class Row:
    """The scores of the clips generated at one length."""

    frames: int
    latent_frames: int
    trained: bool               # every latent shape of the set was a training shape
    clips: int
    fvd: float | None           # first eval window vs the real val clips (None: clip shorter than the window)
    fvd_p2_5: float | None
    fvd_p97_5: float | None
    caption_accuracy: float
    colour: float
    shape: float
    direction: float
    flicker_ratio: float        # vs the real reference clips (1 = as much frame-to-frame change)
    border_ratio: float         # change across latent-frame borders / change inside them (real clips ~ 1)
    seconds_per_clip: float
    reused: str                 # the sample stage whose clips were reused, or ""


def frame_changes(clips: list[np.ndarray]) -> list[np.ndarray]:
    """Per clip, the mean |frame[t+1] - frame[t]| / 255 for t = 0 .. T-2: (T-1,) float64 each."""
    return [np.abs(np.diff(np.asarray(c, np.float64), axis=0)).mean(axis=(1, 2, 3)) / 255.0 for c in clips]


def border_ratio(clips: list[np.ndarray], temporal_factor: int) -> float:
    """Mean change across latent borders (frame t to t+1 with (t + 1) % factor == 0) over the mean
    change inside latent frames, pooled over the clips. NaN if a clip set has no border or no inside."""
    across, inside = [], []
    for d in frame_changes(clips):
        t = np.arange(len(d))
        border = (t + 1) % temporal_factor == 0
        across.append(d[border]); inside.append(d[~border])
    a, i = np.concatenate(across), np.concatenate(inside)
    if not len(a) or not len(i) or i.mean() == 0:
        return float("nan")
    return float(a.mean() / i.mean())


def flicker_ratio(clips: list[np.ndarray], real: list[np.ndarray]) -> float:
    """Mean frame-to-frame change of `clips` over that of `real` (any lengths; means over all frame pairs)."""
    fake_c, real_c = np.concatenate(frame_changes(clips)), np.concatenate(frame_changes(real))
    if real_c.mean() == 0:
        raise ValueError("the real clips have no frame-to-frame change: the flicker ratio is undefined")
    return float(fake_c.mean() / real_c.mean())


def run_sweep(cfg, gen, lengths: list[int], clips: int, feats_real, i3d, real: list[np.ndarray],
              progress: bool = True) -> list[Row]:
    """Generate `clips` clips at every length (captions, sizes and seeds of the sample stage) and score them.

    gen: osplab.generate.Generator (RF); real: the real reference clips (uint8, any lengths) for the
    flicker ratio. The eval-window length reuses the `sample@rf` store when its settings match."""
    import warnings

    from omegaconf import OmegaConf
    from tqdm import tqdm

    from osplab.ablations.sampling_steps import Point, reusable_store, stage_settings
    from osplab.data.clips import ClipDataset
    from osplab.metrics.sanity import window_length
    from osplab.stages.sample import generate_set, reference_clips

    ecfg = OmegaConf.to_container(cfg.eval, resolve=True)
    window = window_length(int(ecfg["frames"]), int(ecfg["stride"]))
    ds, indices = reference_clips(cfg, clips)
    seen = [list(s) for s in gen.meta["train_shapes"]] if gen.meta["train_shapes"] is not None else None
    sampler, steps = stage_settings(cfg, "rf")
    temporal = int(gen.vqvae.cfg.downsample[0])
    rows = []
    for frames in tqdm(lengths, desc="length sweep", disable=not progress):
        sizes = sorted({tuple(ds.shape_of(i)[1:]) for i in indices})
        shapes = [list(gen.vqvae.latent_shape(frames, h, w)[1:]) for h, w in sizes]
        trained = seen is None or all(s in seen for s in shapes)
        store = reusable_store(cfg, Point("rf", sampler, steps), len(indices)) if frames == window else None
        started = time.perf_counter()
        if store:
            made = ClipDataset(store, "sample")
            videos, captions = [made[i]["video"] for i in range(len(made))], made.captions()
        else:
            with warnings.catch_warnings():  # an untrained length warns once per batch; the row says it
                warnings.simplefilter("ignore")
                out = list(generate_set(gen, cfg, ds, indices, False, frames=frames))
            videos, captions = [v for _, v, _ in out], [m["caption"] for _, _, m in out]
        seconds = 0.0 if store else (time.perf_counter() - started) / len(videos)
        if frames >= window:
            s = score(videos, captions, feats_real, ecfg, i3d)
        else:  # shorter than the FVD window: the judge only
            s = {"fvd": None, "fvd_p2_5": None, "fvd_p97_5": None, **judge_scores(videos, captions)}
        rows.append(Row(frames, shapes[0][0], trained, **s, flicker_ratio=flicker_ratio(videos, real),
                        border_ratio=border_ratio(videos, temporal), seconds_per_clip=seconds,
                        reused="sample@rf" if store else ""))
    return rows



def claims(rows: list[Row]) -> list[dict]:
    """Two verdicts against the clips of the FVD window's length (16 frames by default):

    - every other trained length with an FVD scores inside its spread or better, and keeps at least 80%
      of its caption accuracy (quality holds across the trained lengths);
    - the lengths never trained on score clearly worse (outside the spread), i.e. the warning that
      `osplab sample` prints for them is warranted."""
    ref = next((r for r in rows if r.trained and r.fvd is not None and r.reused), None) or next(
        (r for r in rows if r.trained and r.fvd is not None), None)
    if ref is None:
        return []
    where = f"{ref.frames} frames: FVD {fvd_text(ref)}, caption accuracy {ref.caption_accuracy:.3f}"
    out = []
    others = [r for r in rows if r.trained and r is not ref]
    if others:
        bad = [r for r in others if (r.fvd is not None and r.fvd > ref.fvd and not overlap(r, ref))
               or r.caption_accuracy < 0.8 * ref.caption_accuracy]
        ev = "; ".join(f"{r.frames} frames: FVD {fvd_text(r)}, accuracy {r.caption_accuracy:.3f}" for r in others)
        out.append({"claim": "one DiT generates every trained length at the same quality", "holds": not bad,
                    "evidence": f"{ev} (vs {where})" + (f"; worse: {', '.join(str(r.frames) for r in bad)} frames"
                                                         if bad else "")})
    unseen = [r for r in rows if not r.trained]
    if unseen:
        worse = [r for r in unseen if r.fvd is not None and r.fvd > ref.fvd and not overlap(r, ref)]
        ev = "; ".join(f"{r.frames} frames: FVD {fvd_text(r)}, accuracy {r.caption_accuracy:.3f}" for r in unseen)
        out.append({"claim": "a length never trained on is clearly worse", "holds": len(worse) == len(unseen),
                    "evidence": f"{ev} (vs {where})"})
    return out


def markdown(rows: list[Row], notes: list[str] = ()) -> str:
    lines = ["| frames | latent frames | trained length | FVD (first 16 frames) [95% interval] | caption accuracy "
             "(colour / shape / direction) | flicker ratio | latent-border ratio | s per clip |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = f"reused ({r.reused})" if r.reused else f"{r.seconds_per_clip:.2f}"
        lines.append(f"| {r.frames} | {r.latent_frames} | {'yes' if r.trained else '**no**'} | {fvd_text(r)} | "
                     f"{r.caption_accuracy:.3f} ({r.colour:.2f} / {r.shape:.2f} / {r.direction:.2f}) | "
                     f"{r.flicker_ratio:.2f} | {r.border_ratio:.2f} | {secs} |")
    lines += [""] + [f"- {n}" for n in notes]
    lines += claims_table(claims(rows))
    return "\n".join(lines) + "\n"


def figure(rows: list[Row]):
    """FVD, caption accuracy and the two flicker measures against the generated length."""
    import matplotlib.pyplot as plt

    from osplab.ablations.common import interval

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 3.8))
    x = [r.frames for r in rows]
    with_fvd = [r for r in rows if r.fvd is not None]
    err = np.array([[r.fvd - interval(r)[0], interval(r)[1] - r.fvd] for r in with_fvd]).T.reshape(2, -1)
    a.errorbar([r.frames for r in with_fvd], [r.fvd for r in with_fvd], yerr=err, marker="o", capsize=3)
    a.set_ylabel("FVD, first 16 frames (lower is better)")
    b.plot(x, [r.caption_accuracy for r in rows], marker="o", label="all facts")
    for fact in ("colour", "shape", "direction"):
        b.plot(x, [getattr(r, fact) for r in rows], marker=".", alpha=0.7, label=fact)
    b.set_ylim(0, 1); b.set_ylabel("caption accuracy"); b.legend(fontsize=8)
    c.plot(x, [r.flicker_ratio for r in rows], marker="o", label="flicker ratio (vs real)")
    c.plot(x, [r.border_ratio for r in rows], marker="s", label="latent-border ratio")
    c.axhline(1.0, color="grey", lw=0.8, ls="--"); c.set_ylabel("ratio (real clips: 1)"); c.legend(fontsize=8)
    for ax in (a, b, c):
        ax.set_xlabel("generated frames"); ax.grid(alpha=0.3)
        for r in rows:
            if not r.trained:
                ax.axvspan(r.frames - 2, r.frames + 2, color="tab:red", alpha=0.1)
    fig.suptitle("shaded: a length never trained on")
    fig.tight_layout()
    return fig


def write_report(rows: list[Row], out_dir: str | Path, notes: list[str] = (), name: str = NAME) -> dict[str, Path]:
    """<out_dir>/<name>.md, .csv and .png (atomic writes); returns their paths."""
    metrics = summary(rows, lambda r: f"frames_{r.frames}", ("fvd", "fvd_p2_5", "fvd_p97_5", "caption_accuracy",
                                                            "flicker_ratio", "border_ratio", "seconds_per_clip"))
    return write_files(out_dir, name, markdown(rows, notes), rows, figure(rows), metrics)
