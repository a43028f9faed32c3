"""How the video VQVAE plugs into the training loop, and how it is evaluated.

Training sees fixed-length temporal crops (`frames` frames; the start is a pure function of the clip
index, which exact resume needs), batched by shape bucket so no clip is padded. Evaluation runs the
whole val clips through encoder and decoder: PSNR, SSIM, flicker ratio, codebook usage and
perplexity over the whole split, and throughput in frames/s.

The exported weights are the *live* weights, not the loop's weight EMA: the codebook is itself an
EMA buffer that follows the live encoder (and restarts dead codes), so an averaged encoder would be
matched against a codebook it never produced.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from osplab.bench.vqvae import train_flops
from osplab.data.clips import BucketBatchSampler, ClipDataset
from osplab.models.quantizer import codebook_stats
from osplab.models.vqvae import VQVAE, tensor_to_video, video_to_tensor
from osplab.train import Task


class ClipCrops:
    """A split of clips cut to `frames` frames; item i is uint8 (frames, H, W, 3), a pure function of i."""

    def __init__(self, clips: ClipDataset, frames: int, seed: int):
        too_short = [r["id"] for r in clips.rows if r["frames"] < frames]
        if too_short:
            raise ValueError(f"{len(too_short)} clips of {clips.root} ({too_short[:3]}...) have fewer than "
                             f"{frames} frames; lower vqvae.train_frames")
        self.clips, self.frames, self.seed = clips, frames, seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> np.ndarray:
        video = self.clips[index]["video"]
        start = int(np.random.default_rng([self.seed, index]).integers(0, len(video) - self.frames + 1))
        return video[start:start + self.frames]

    def shapes(self) -> list[tuple[int, int, int]]:
        return [(self.frames, h, w) for _, h, w in self.clips.shapes()]


def collate(videos: list[np.ndarray]) -> torch.Tensor:
    """uint8 clips (T, H, W, 3) of one shape -> float (B, 3, T, H, W) in [-1, 1]."""
    return video_to_tensor(np.stack(videos))


def init_batches(data: ClipCrops, count: int, seed: int) -> list[torch.Tensor]:
    """A seeded subset of `count` training crops as float batches (one per clip shape), for
    `VQVAE.init_from_data`. Depends only on (data, count, seed): every DDP rank gets the same."""
    rng = np.random.Generator(np.random.PCG64([seed, 2]))
    picks = np.sort(rng.choice(len(data), min(count, len(data)), replace=False))
    groups: dict[tuple, list[np.ndarray]] = {}
    for i in picks:
        crop = data[int(i)]
        groups.setdefault(crop.shape, []).append(crop)
    return [collate(crops) for _, crops in sorted(groups.items())]


def vqvae_loss(model: nn.Module, batch: torch.Tensor):
    """The loop's loss: reconstruction MSE + commitment; logs PSNR, usage and perplexity of the batch."""
    _, losses = model(batch)
    metrics = {k: v.detach() if torch.is_tensor(v) else v for k, v in losses.items() if k != "loss"}
    return losses["loss"], metrics


def build_task(model: VQVAE, root: str, frames: int, seed: int) -> Task:
    """The training-loop Task for the VQVAE on the train split of the clip store at `root`."""
    data = ClipCrops(ClipDataset(root, "train"), frames, seed)
    shapes = data.shapes()
    common = max(set(shapes), key=shapes.count)

    def sampler(rank, world_size, global_batch, micro_batch, sampler_seed):
        return BucketBatchSampler(shapes, rank, world_size, global_batch, micro_batch, sampler_seed)

    return Task(model=model, loss=vqvae_loss, dataset=data, collate=collate,
                flops_per_sample=train_flops(model, *common), batch_sampler=sampler)


@torch.no_grad()
def reconstruct(model: VQVAE, clips: ClipDataset, limit: int | None = None):
    """Encode and decode whole clips one at a time (eval mode).

    Returns (originals, reconstructions) as lists of uint8 (T, H, W, 3), the code histogram (K,)
    over all latents, and the frames/s of encoder + decoder.
    """
    model.eval()
    counts = torch.zeros(model.cfg.codebook_size, dtype=torch.float64)
    real, fake, frames, seconds = [], [], 0, 0.0
    for i in range(len(clips) if limit is None else min(limit, len(clips))):
        video = clips[i]["video"]
        x = video_to_tensor(video)
        start = time.perf_counter()
        z_q, indices, _ = model.encode(x)
        recon = model.decode(z_q)
        seconds += time.perf_counter() - start
        frames += len(video)
        counts += torch.bincount(indices.flatten(), minlength=model.cfg.codebook_size).double()
        real.append(video)
        fake.append(tensor_to_video(recon)[0].numpy())
    return real, fake, counts, frames / max(seconds, 1e-9)


def evaluate(model: VQVAE, clips: ClipDataset, ssim_cfg: dict, limit: int | None = None) -> dict[str, float]:
    """Val metrics: psnr (dB), ssim, flicker_ratio, codebook_usage (0-1), perplexity, frames_per_s."""
    from osplab.metrics.video import video_metrics

    real, fake, counts, fps = reconstruct(model, clips, limit)
    quality = {"psnr": [], "ssim": [], "flicker_ratio": []}
    weights = []
    for r, f in zip(real, fake):  # clips differ in shape: score each, weight by its frames
        for k, v in video_metrics(f[None], r[None], data_range=255.0, ssim_cfg=ssim_cfg).items():
            quality[k].append(v)
        weights.append(len(r))
    mean = {k: float(np.average(v, weights=weights)) for k, v in quality.items()}
    stats = codebook_stats(counts)
    return {"val_psnr": mean["psnr"], "val_ssim": mean["ssim"], "val_flicker_ratio": mean["flicker_ratio"],
            "codebook_usage": stats["usage"], "perplexity": stats["perplexity"], "frames_per_s": fps,
            "val_clips": len(real)}
