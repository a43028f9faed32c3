"""Where does the VQVAE lose detail: in the codes, or in the decoder?

    python -m osplab.bench.quantization [--checkpoint checkpoints/vqvae.safetensors] [--root data/raw]
                                        [--split val] [--clips 200] [--out FILE]

Every clip is encoded once and decoded twice by the same decoder: (a) from its codes, what
`encode` stores and the DiT learns, and (b) from the encoder's unquantized outputs, which the
decoder never saw in training. If (b) looks like the clip and (a) does not, the detail is lost
where each 4x8x8 block of pixels becomes one of the codebook's K codes, and no decoder can bring
it back from the codes alone. For both it reports PSNR (dB of the uint8 clips, the mean over clips of
the per-frame mean, as train_vqvae's val_psnr) and the caption judge's accuracies (osplab/metrics/judge.py); for the codes,
how the squared quantization error |z_e - z_q|^2 and the codes in use split between object cells
(blocks whose largest per-channel pixel std exceeds OBJECT_STD: an object or its edge is in the
block) and background cells. Runs on the CPU in about a minute for the 200 val clips.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

from osplab.metrics.judge import caption_accuracy, judge_clip
from osplab.metrics.video import psnr
from osplab.models.vqvae import VQVAE, patch_rows, tensor_to_video, video_to_tensor

# Largest per-channel pixel std (on [-1, 1]) of a block that counts it as an object cell: the
# textured backgrounds stay below ~0.05 inside a block, a block with an object edge is far above.
OBJECT_STD = 0.15


@torch.no_grad()
def decode_twice(model: VQVAE, video) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """One uint8 clip (T, H, W, 3) encoded once and decoded twice by `model` (eval mode).

    Returns ({"codes": decoded from its codes, "continuous": decoded from the unquantized encoder
    outputs}, both uint8 (T, H, W, 3)), and the tensors on the way: x (1, 3, T, H, W) in [-1, 1], z_e and
    z_q (1, D, T', H', W'), indices (1, T', H', W'). With an l2-normalised codebook the continuous latents
    are projected onto the sphere first, where the codes live.
    """
    x = video_to_tensor(video)
    z_e = model.encoder(x)
    if model.quantizer.l2_normalize:
        z_e = F.normalize(z_e, dim=1)
    z_q, indices, _ = model.quantizer(z_e)
    clips = {name: tensor_to_video(model.decoder(z))[0].numpy() for name, z in (("codes", z_q), ("continuous", z_e))}
    return clips, {"x": x, "z_e": z_e, "z_q": z_q, "indices": indices}


@torch.no_grad()
def compare(model: VQVAE, clips, captions: list[str], progress: bool = False) -> dict:
    """clips: uint8 videos (T, H, W, 3); captions: one per clip. Returns the summary described above
    (keys codes_* and continuous_* for the two decodes, object_* and background_* for the split)."""
    from tqdm.auto import tqdm

    model.eval()
    decoded = {"codes": [], "continuous": []}
    gain = {"codes": [], "continuous": []}
    err, is_object, used = [], [], []
    for video in tqdm(clips, desc="encode/decode", unit="clip", disable=not progress):
        both, z = decode_twice(model, video)                                      # uint8, as the stages score
        blocks = patch_rows(z["x"], model.cfg.downsample)                         # (cells, 3 ft fh fw)
        is_object.append(blocks.view(len(blocks), 3, -1).std(-1).amax(-1) > OBJECT_STD)
        err.append((z["z_e"] - z["z_q"]).pow(2).sum(1).flatten())                 # same (t h w) order
        used.append(z["indices"].flatten())
        for name, v in both.items():
            gain[name].append(psnr(v[None], np.asarray(video)[None], data_range=255.0))
            decoded[name].append(v)
    err, is_object, used = torch.cat(err), torch.cat(is_object), torch.cat(used)
    out: dict = {"clips": len(clips)}
    for name in decoded:
        acc = caption_accuracy([judge_clip(v, c) for v, c in zip(decoded[name], captions)])
        out[f"{name}_psnr"] = float(torch.cat(gain[name]).mean())
        for kind in ("caption", "colour", "shape", "direction"):
            out[f"{name}_{kind}_accuracy"] = acc[f"{kind}_accuracy"]
    for name, cells in (("object", is_object), ("background", ~is_object)):
        out[f"{name}_cells"] = float(cells.double().mean())                         # share of all latents
        out[f"{name}_error_share"] = float(err[cells].sum() / err.sum().clamp_min(1e-30))
        out[f"{name}_codes"] = int(torch.unique(used[cells]).numel())
    out["codes_in_both"] = int(torch.isin(torch.unique(used[is_object]), used[~is_object]).sum())
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m osplab.bench.quantization", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/vqvae.safetensors", help="written by train_vqvae")
    ap.add_argument("--root", default="data/raw", help="clip store")
    ap.add_argument("--split", default="val")
    ap.add_argument("--clips", type=int, default=None, help="the first N clips of the split (default: all)")
    ap.add_argument("--out", help="also write the summary as JSON here")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.clips is not None and args.clips < 1:
        ap.error(f"--clips {args.clips}: give at least 1 clip (or leave it out for the whole split)")
    from osplab.generate import _require
    from osplab.metrics.judge import store_clips
    from osplab.stages.encode import load_vqvae

    model = load_vqvae(str(_require(args.checkpoint, "vqvae")))
    clips, captions, _ = store_clips(args.root, args.split, args.clips)
    summary = compare(model, clips, captions, progress=True)
    summary = {**summary, "checkpoint": args.checkpoint, "split": args.split}
    print(json.dumps(summary, indent=1))
    if args.out:
        from osplab.io import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
