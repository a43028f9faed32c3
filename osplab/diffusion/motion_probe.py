"""At which noise level does a DiT decide the motion, and does it take it from the caption?

The caption-use probe (caption_use.py) asks whether the loss reacts to the direction word. This one asks
what the network *makes* of noisy video, in pixels. For one-object val clips:

1. x0: the clip's real latents (its first `latent_frames` latent frames), normalised as in training;
2. x_t: x0 noised to t with fixed noise by the objective's forward process (RF: (1 - t) x0 + t noise;
   DDPM: the step i = round(t * T));
3. the DiT's estimate of x0 from x_t (conditional, no guidance) under the clip's own caption (`true`) and
   under the caption with its direction word reversed (`reversed`: left <-> right, up <-> down);
4. each estimate decoded by the VQVAE (snapped to codes) and judged in pixels (osplab.metrics.judge):
   direction accuracy and travel (`motion_px`, how far the object moves along its caption's axis).

Row t = 0 judges x0 itself (the reconstructions): the ceiling. How to read it: at low t the motion is in
x_t itself and the estimate keeps it whichever word it is given. The t where travel collapses is where a
sampler that starts from noise has to decide the motion; there, a network that reads the word moves the
object the caption's way under `true` and the other way under `reversed`, and one that ignores it
draws both the same (static). Only the synthetic data's caption grammar is understood.

With `anchor_t` (RF only) latent frame 0 is noised to that level instead (0.05: nearly clean) and the later
frames to t: the continuation question, where does the object go from *here*, which a model trained with
per-frame noise levels (`diffusion.rf.frame_t`) is taught to answer; `x0_mse` then covers the later frames
only (docs/stage2_experiments.md, session 41).

    python -m osplab.diffusion.motion_probe --variant rf [--clips 48] [--anchor-t 0.05] [--out probe.json]
"""

from __future__ import annotations

import argparse
import re

import torch

from osplab.diffusion import rectified_flow
from osplab.diffusion.caption_use import one_object_rows
from osplab.metrics.judge import caption_accuracy, judge_clips

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
T_GRID = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def reversed_direction(caption: str) -> str:
    """`caption` with every direction word replaced by its opposite (left <-> right, up <-> down)."""
    out, n = re.subn(rf"\b({'|'.join(OPPOSITE)})\b", lambda m: OPPOSITE[m.group(1)], caption)
    if n == 0:
        raise ValueError(f"caption {caption!r} names no direction")
    return out


def check_anchor(objective: str, latent_frames: int, anchor_t: float | None) -> None:
    """Raise ValueError unless an anchor frame at `anchor_t` can be probed (None: no anchor, always fine)."""
    if anchor_t is not None and (objective != "rf" or latent_frames < 2 or not 0 <= anchor_t < 1):
        raise ValueError(f"an anchor frame needs the RF objective, >= 2 latent frames and 0 <= anchor_t < 1; got "
                         f"{objective}, {latent_frames} latent frames, anchor_t {anchor_t}")


def probe_times(n: int, frames: int, t: float, anchor_t: float | None = None) -> torch.Tensor:
    """RF times for n clips of `frames` latent frames: (n,) all at t, or with `anchor_t` (n, frames) with
    frame 0 at anchor_t and the others at t (the DiT's per-frame noise levels)."""
    if anchor_t is None:
        return torch.full((n,), float(t))
    tt = torch.full((n, frames), float(t))
    tt[:, 0] = float(anchor_t)
    return tt


def x0_estimate(gen, x: torch.Tensor, t: float, text: torch.Tensor, mask: torch.Tensor,
                noise: torch.Tensor, anchor_t: float | None = None) -> torch.Tensor:
    """The DiT's clean-latent estimate from x (N, C, T, H, W) noised to time t in (0, 1) with `noise`
    (latent frame 0 to `anchor_t` instead, if given; RF only)."""
    d = gen.meta["diffusion"]
    n = len(x)
    check_anchor(gen.meta["objective"], x.shape[2], anchor_t)
    if gen.meta["objective"] == "rf":
        tt = probe_times(n, x.shape[2], t, anchor_t)
        xt = rectified_flow.interpolate(x, noise, tt)
        out = gen.dit(xt, tt, text, mask)
        if str(d["rf"].get("prediction", "velocity")) == "x0":
            return out
        return xt - rectified_flow.interpolate(torch.zeros_like(x), out, tt)  # v = noise - x0; t * v per frame
    from osplab.tasks.dit import make_ddpm

    ddpm = make_ddpm(d["ddpm"])
    i = torch.full((n,), min(int(round(t * ddpm.num_train_timesteps)), ddpm.num_train_timesteps - 1))
    xt = ddpm.add_noise(x, noise, i)
    return ddpm.split(gen.dit(xt, ddpm.model_time(i), text, mask), xt, i)[0]


@torch.no_grad()
def motion_probe(gen, data, clips: int = 48, t_grid=T_GRID, latent_frames: int = 4, seed: int = 0,
                 batch: int = 16, anchor_t: float | None = None) -> dict:
    """The probe on the first `clips` one-object clips of `data` (osplab.tasks.dit.TextLatents, normalised
    with `gen.norm`) that have at least `latent_frames` latent frames; clips of one (h, w) run together.
    `anchor_t`: latent frame 0's noise level (RF only; None: every frame at t).

    Returns {"clips": n, "latent_frames": k, "anchor_t", "recon": judged x0, "rows": [{"t", "caption":
    "true" | "reversed", "direction_accuracy", "motion_px", "shape_accuracy", "colour_accuracy", "x0_mse"}]},
    the accuracies pooled over all picked clips, `x0_mse` the mean squared error of the estimate (latents;
    over the frames at t only when anchored).
    """
    from osplab.diffusion.noise import video_noise

    check_anchor(gen.meta["objective"], latent_frames, anchor_t)  # before any work

    shapes = data.shapes()
    picked = [i for i in one_object_rows(data.latents.rows, len(data)) if shapes[i][0] >= latent_frames][:clips]
    if not picked:
        raise ValueError(f"no one-object clips with >= {latent_frames} latent frames in this split")
    rho = float(gen.meta["diffusion"].get("noise_frame_corr", 0.0))
    g = torch.Generator().manual_seed(seed)
    groups: dict[tuple, list[int]] = {}
    for i in picked:
        groups.setdefault(tuple(shapes[i][1:]), []).append(i)
    chunks = [members[s:s + batch] for _, members in sorted(groups.items()) for s in range(0, len(members), batch)]
    inputs = []
    for chunk in chunks:  # one fixed noise draw per clip, shared by every t and caption
        x = torch.stack([data[i]["x"][:, :latent_frames] for i in chunk])
        captions = [data.latents.rows[i]["caption"] for i in chunk]
        texts = {"true": gen.text.encode(captions), "reversed": gen.text.encode(list(map(reversed_direction, captions)))}
        inputs.append((x, captions, video_noise(x.shape, rho, g), texts))

    def judge_all(make) -> dict:
        """Pool the judge over all chunks: make(x, noise, texts) -> latents like x."""
        videos, captions = [], []
        for x, caps, noise, texts in inputs:
            videos.extend(gen.decode(make(x, noise, texts), snap=True))
            captions.extend(caps)
        acc = caption_accuracy(judge_clips(videos, captions))
        return {k: acc[k] for k in ("direction_accuracy", "motion_px", "shape_accuracy", "colour_accuracy")}

    out = {"clips": len(picked), "latent_frames": latent_frames, "anchor_t": anchor_t,
           "recon": judge_all(lambda x, n, tx: x), "rows": []}
    first = 0 if anchor_t is None else 1  # the anchored frame's error is not the question
    for t in t_grid:
        for name in ("true", "reversed"):
            errors = []

            def estimate(x, noise, texts):
                est = x0_estimate(gen, x, float(t), *texts[name], noise, anchor_t)
                errors.append((float((est - x)[:, :, first:].square().mean()), len(x)))
                return est

            row = {"t": float(t), "caption": name, **judge_all(estimate)}
            row["x0_mse"] = sum(e * n for e, n in errors) / sum(n for _, n in errors)
            out["rows"].append(row)
    return out


def table(result: dict) -> str:
    """The probe as a markdown table: per t, direction accuracy and travel under both captions."""
    r = result["recon"]
    anchored = result.get("anchor_t") is not None
    first = "| t of frames 1+ |" if anchored else "| t |"
    lines = [first + " direction accuracy (true / reversed word) | travel px (true / reversed) | x0 MSE (true / reversed) |",
             "|---|---|---|---|",
             f"| 0 (x0 decoded) | {r['direction_accuracy']:.2f} | {r['motion_px']:.1f} | 0 |"]
    by_t: dict[float, dict] = {}
    for row in result["rows"]:
        by_t.setdefault(row["t"], {})[row["caption"]] = row
    for t, rows in by_t.items():
        a, b = rows["true"], rows["reversed"]
        lines.append(f"| {t:g} | {a['direction_accuracy']:.2f} / {b['direction_accuracy']:.2f} | "
                     f"{a['motion_px']:.1f} / {b['motion_px']:.1f} | {a['x0_mse']:.4f} / {b['x0_mse']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--variant", choices=("rf", "ddpm"), default="rf")
    p.add_argument("--clips", type=int, default=48, help="one-object val clips (default 48)")
    p.add_argument("--t", type=float, nargs="+", default=list(T_GRID), help="noise levels in (0, 1)")
    p.add_argument("--latent-frames", type=int, default=4, help="latent frames per clip (4 = 16 video frames)")
    p.add_argument("--seed", type=int, default=0, help="the fixed noise")
    p.add_argument("--anchor-t", type=float, help="noise level of latent frame 0 (RF only; e.g. 0.05, nearly "
                                                  "clean): the later frames at t continue it")
    p.add_argument("--out", help="also write the result as JSON here")
    a = p.parse_args(argv)
    if not all(0 < t < 1 for t in a.t):
        p.error(f"--t values must be in (0, 1), got {a.t}")
    if a.clips < 1 or a.latent_frames < 1:
        p.error(f"--clips and --latent-frames must be >= 1, got {a.clips} and {a.latent_frames}")
    try:
        check_anchor(a.variant, a.latent_frames, a.anchor_t)
    except ValueError as e:
        p.error(f"--anchor-t: {e}")

    from osplab.config import load_params
    from osplab.io import atomic_write_json
    from osplab.stages.sample import load_variant
    from osplab.tasks.dit import TextLatents

    cfg = load_params(a.params)
    gen = load_variant(cfg, a.variant)
    data = TextLatents(cfg.vqvae.latents, cfg.text.cache, "val", norm=gen.norm, expect_kind=gen.latent_kind)
    result = motion_probe(gen, data, a.clips, a.t, a.latent_frames, a.seed, anchor_t=a.anchor_t)
    anchor = "" if a.anchor_t is None else f", latent frame 0 at t = {a.anchor_t:g}"
    print(f"{result['clips']} one-object val clips, {result['latent_frames']} latent frames{anchor}, variant {a.variant}")
    print(table(result))
    if a.out:
        atomic_write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
