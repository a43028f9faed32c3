"""What is each caption fact worth in the DiT's loss? Counterfactual clips through the VQVAE.

The caption-use probe (osplab.diffusion.caption_use) asks how much the network *uses* a fact word. This
module asks the other half: how much a network *could* gain by using it. The synthetic generator draws a
one-object scene (background, object, path); the scene is rendered as drawn and with one fact changed,
the rest kept:

- `shape`: each of the other shapes;
- `colour`: each of the other colours;
- `direction`: the path reversed in time (the opposite direction over the same positions);
- `shift`: the path moved `shift_px` pixels right (a position change, for scale).

Every version is encoded by the VQVAE (its codes) and normalised like the DiT's training latents. Reported
per fact, in the unit of the DiT's x0 loss (mean squared error per normalised latent element):

- `distance`: mean ||x_changed - x_true||^2 per element, over scenes and changed versions;
- `excess`: what a prediction that knows everything but the fact loses against the true latents when it
  predicts the mean over the fact's values, ||x_true - mean_v x_v||^2 per element (shape: the 3 shapes;
  colour: all colours; direction: the path and its reversal). This is the loss the fact is worth in the
  t -> 0 limit; at higher noise the object's place is itself uncertain and a fact is worth less;
- `code_changed`: the share of latent cells whose code differs from the true version's, and
  `code_changed_outside`: the same over cells no version's object touches (the background);
- `distance_outside`: the share of the squared distance that lies in those background cells.

Run: `python -m osplab.diffusion.fact_stakes [--params params.yaml] [--scenes 48] [--out FILE.json]`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from osplab.data import synthetic as S
from osplab.data.render import render_clip

FACTS = ("shape", "colour", "direction", "shift")


@dataclass
class Scene:
    """One object over a background: background (H, W, 3) float64, obj (generator dict), path (T, 2) (y, x) px."""

    background: np.ndarray
    obj: dict
    path: np.ndarray


def draw_scene(seed: int, index: int, frames: int, height: int, width: int, p_textured: float) -> Scene:
    """Scene `index` of a stream seeded by `seed` (not a clip of any split): one object, drawn with no bounce
    asked for (the generator still bounces a path that cannot fit the frame)."""
    rng = np.random.default_rng([seed, 32, index])
    textured = bool(rng.random() < p_textured)
    background = S.sample_background(rng, height, width, textured)
    obj, path = S.sample_object(rng, height, width, frames, 0.0, set())
    return Scene(background, obj, path)


def versions(scene: Scene, shift_px: float) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """The scene as drawn, and per fact its changed versions: uint8 clips (T, H, W, 3). Shape and colour: every
    other value of the fact, in the generator's order; direction: the reversed path; shift: the shifted path."""
    def render(obj, path):
        return render_clip(scene.background, [obj], path[:, None, :])

    o, p = scene.obj, scene.path
    changed = {
        "shape": [render(dict(o, shape=s), p) for s in S.SHAPES if s != o["shape"]],
        "colour": [render(dict(o, colour=c, rgb=S.COLOURS[c]), p) for c in S.COLOURS if c != o["colour"]],
        "direction": [render(o, p[::-1].copy())],
        "shift": [render(o, p + np.array([0.0, shift_px]))],
    }
    return render(o, p), changed


def object_cells(clips: list[np.ndarray], background: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """(t, h, w) bool: latent cells (downsampling `factors` (ft, fh, fw)) where any clip differs from the bare
    background."""
    bare = render_clip(background, [], np.zeros((clips[0].shape[0], 0, 2)))
    touched = np.stack([np.abs(c.astype(np.int16) - bare.astype(np.int16)).sum(-1) > 0 for c in clips]).any(0)
    T, H, W = touched.shape
    ft, fh, fw = factors
    return touched.reshape(T // ft, ft, H // fh, fh, W // fw, fw).any(axis=(1, 3, 5))


def measure(encode, scenes: list[Scene], factors: tuple[int, int, int], shift_px: float = 4.0) -> dict:
    """The stakes of every fact over `scenes` (see the module docstring).

    encode: list of uint8 clips (T, H, W, 3) -> (normalised latents (N, C, t, h, w), codes (N, t, h, w)).
    factors: the VQVAE's downsampling (ft, fh, fw), to map pixels to latent cells."""
    sums = {f: {k: [] for k in ("distance", "excess", "code_changed", "code_changed_outside", "inside", "outside")}
            for f in FACTS}
    for scene in scenes:
        true, changed = versions(scene, shift_px)
        x, codes = encode([true] + [c for fact in FACTS for c in changed[fact]])  # (N, C, t, h, w), (N, t, h, w)
        start = 1
        for fact in FACTS:
            n = len(changed[fact])
            xs, cs = x[start:start + n], codes[start:start + n]                 # this fact's changed versions
            start += n
            bg = torch.from_numpy(~object_cells([true, *changed[fact]], scene.background, factors))  # (t, h, w)
            s = sums[fact]
            for j in range(n):
                sq = (xs[j] - x[0]).square()                  # (C, t, h, w)
                s["distance"].append(float(sq.mean()))
                s["inside"].append(float(sq.sum(0)[~bg].sum()))
                s["outside"].append(float(sq.sum(0)[bg].sum()))
                recoded = cs[j] != codes[0]
                s["code_changed"].append(float(recoded.float().mean()))
                if bg.any():
                    s["code_changed_outside"].append(float(recoded[bg].float().mean()))
            if fact != "shift":  # the mean over every value of the fact, the true one included
                s["excess"].append(float((x[0] - torch.cat([x[:1], xs]).mean(0)).square().mean()))
    out = {}
    for fact, s in sums.items():
        total = sum(s["inside"]) + sum(s["outside"])
        out[fact] = {"distance": float(np.mean(s["distance"])), "distance_sd": float(np.std(s["distance"])),
                     "code_changed": float(np.mean(s["code_changed"])),
                     "code_changed_outside": float(np.mean(s["code_changed_outside"])),
                     "distance_outside": sum(s["outside"]) / total if total > 0 else 0.0}
        if s["excess"]:
            out[fact]["excess"] = float(np.mean(s["excess"]))
    return out


def vqvae_encoder(vqvae, norm):
    """`encode` for `measure` from a VQVAE and the DiT's LatentNorm (codes, as the DiT trains on them)."""
    from osplab.models.vqvae import video_to_tensor

    @torch.no_grad()
    def encode(clips):
        z, codes, _ = vqvae.encode(video_to_tensor(np.stack(clips)))  # (N, 3, T, H, W) in [-1, 1]
        return norm.normalize(z), codes

    return encode


def main(argv: list[str] | None = None) -> dict:
    from osplab.config import load_params
    from osplab.data.latents import LatentDataset
    from osplab.io import atomic_write_json
    from osplab.stages.encode import load_vqvae
    from osplab.tasks.dit import LatentNorm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    parser.add_argument("--shift-px", type=float, default=4.0)
    parser.add_argument("--out", default=None, help="write the stakes as JSON here")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error(f"--scenes={args.scenes} must be >= 1")
    cfg = load_params(args.params)
    vqvae = load_vqvae(cfg.vqvae.checkpoint).eval()
    vqvae.latent_shape(args.frames, *args.size)  # a clear error for a size the VQVAE cannot take
    cap = cfg.diffusion.latent_max_channel_std
    norm = LatentNorm.measure(LatentDataset(cfg.vqvae.latents, "train"), None if cap is None else float(cap))
    synth = S.SynthConfig.from_conf(cfg.data.synthetic)
    scenes = [draw_scene(synth.seed, i, args.frames, *args.size, synth.p_textured) for i in range(args.scenes)]
    result = measure(vqvae_encoder(vqvae, norm), scenes, tuple(vqvae.cfg.downsample), args.shift_px)
    print(f"{args.scenes} one-object scenes, {args.frames} frames at {args.size[0]}x{args.size[1]}; "
          "per normalised latent element:")
    print(f"{'fact':10s} {'distance':>9s} {'excess':>7s} {'cells recoded':>14s} {'(background)':>13s}")
    for fact, r in result.items():
        excess = f"{r['excess']:.3f}" if "excess" in r else "-"
        print(f"{fact:10s} {r['distance']:9.3f} {excess:>7s} {r['code_changed']:14.2f} {r['code_changed_outside']:13.2f}")
    if args.out:
        atomic_write_json(args.out, {"scenes": args.scenes, "frames": args.frames, "size": list(args.size),
                                     "shift_px": args.shift_px, "stakes": result})
    return result


if __name__ == "__main__":
    main()
