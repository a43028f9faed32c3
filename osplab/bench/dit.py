"""The DiT training step against the matmul peak, timed in one interleaved run.

`dit_step_fraction` times one fwd+bwd of the DiT (fp32, the stage's batch of one common latent
shape, MSE to a random target: the cost of a training step without the optimizer) round by round
against a fp32 n x n torch.mm, so both see the same machine load, and returns the achieved rate
as a fraction of the matmul rate (osplab.bench.timing.fraction_of_peak). The FLOPs are the DiT's
own count (osplab.models.estimate, forward + backward = 3x forward).
"""

from __future__ import annotations

import torch

from osplab.bench.timing import Timing, fraction_of_peak, matmul_fns, median, time_interleaved
from osplab.models.dit import DiT


def dit_step_fraction(model: DiT, latent_thw: tuple[int, int, int], batch: int, text_len: int,
                      timing: Timing, matmul_n: int = 1024, seed: int = 0) -> dict:
    """{'fraction_of_peak', 'step_gflops_per_s', 'matmul_gflops_per_s', 'step_seconds', ...}."""
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    x = torch.randn(batch, cfg.in_channels, *latent_thw, generator=gen)
    t = torch.rand(batch, generator=gen)
    text = torch.randn(batch, text_len, cfg.text_dim, generator=gen)
    mask = torch.ones(batch, text_len, dtype=torch.bool)
    target = torch.randn(x.shape, generator=gen)
    model.train()

    def step() -> None:
        loss = (model(x, t, text, mask) - target).square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    mm, mm_flops = matmul_fns(matmul_n, 4)
    times = time_interleaved({"step": step, "mm": mm["mm_fp32"]}, timing)
    flops = batch * model.flops_per_sample(latent_thw, text_len)
    return {"fraction_of_peak": fraction_of_peak(flops, times["step"], mm_flops, times["mm"]),
            "step_seconds": median(times["step"]), "step_gflops_per_s": flops / median(times["step"]) / 1e9,
            "matmul_gflops_per_s": mm_flops / median(times["mm"]) / 1e9, "rounds": len(times["step"]),
            "batch": batch, "latent_shape": list(latent_thw)}
