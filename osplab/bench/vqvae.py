"""VQ-VAE throughput: encoder + decoder frames/s, and the FLOPs of a training step.

    from osplab.bench.vqvae import vqvae_throughput, train_flops
    vqvae_throughput(model, frames=16, height=64, width=64, batch=4)
    # {'frames_per_s': ..., 'encode_frames_per_s': ..., 'decode_frames_per_s': ..., ...}
    train_flops(model, 8, 64, 64)    # forward + backward FLOPs of one (8, 64, 64) clip

Times are medians over `repeats` after `warmup` untimed calls, in eval mode under no_grad (what
the `encode` stage and the metrics run). Nothing here asserts a speed.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode


def _median_seconds(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def vqvae_throughput(model, frames: int, height: int, width: int, batch: int, repeats: int = 5, warmup: int = 1,
                     dtype: torch.dtype | None = None, seed: int = 0) -> dict:
    """Encoder + decoder throughput on random clips (B, 3, frames, height, width).

    dtype: torch.bfloat16 to run under bf16 autocast (None: fp32). Returns frames/s of encode
    (incl. quantization), decode, and both in sequence (`frames_per_s`, the round trip), with the
    median seconds per batch, the shape, dtype and thread count used.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, 3, frames, height, width, generator=g) * 2 - 1).to(device)
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with amp:
        z_q = model.encode(x)[0]

        def enc():
            model.encode(x)
            sync()

        def dec():
            model.decode(z_q)
            sync()

        def both():
            model.decode(model.encode(x)[0])
            sync()

        t_enc, t_dec, t_both = (_median_seconds(f, repeats, warmup) for f in (enc, dec, both))
    model.train(was_training)
    n = batch * frames
    return {"frames_per_s": n / t_both, "encode_frames_per_s": n / t_enc, "decode_frames_per_s": n / t_dec,
            "seconds_per_batch": t_both, "shape": [batch, 3, frames, height, width],
            "dtype": str(dtype or torch.float32), "threads": torch.get_num_threads()}


def train_flops(model, frames: int, height: int, width: int) -> float:
    """FLOPs of forward + backward of one clip (1, 3, frames, height, width), counted by torch.

    Counted in eval mode so the codebook is not updated (the EMA step costs a negligible O(N D)).
    Use it as the training loop's `flops_per_sample` for clips of that shape.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, frames, height, width, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        _, losses = model(x)
        losses["loss"].backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return float(counter.get_total_flops())
