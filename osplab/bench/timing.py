"""Timing primitives for the benchmark notebooks: interleaved rounds, paired ratios, the matmul
peak measured under the same load, and the run conditions (threads, load, environment).

Why interleaved: other processes share the 2 cores of the CI machines. Every variant of one
comparison runs once per round, in an order rotated from round to round, so load drift and
position effects (who runs right after a large free) hit all variants alike; a ratio is the
median of the per-round ratios. Nothing here asserts a speed.
"""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Callable, NamedTuple

import torch


def median(xs: list[float]) -> float:
    """Median (mean of the two middle values for an even count)."""
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def sync() -> None:
    """Wait for queued GPU work (CUDA calls are asynchronous); a no-op on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timing(NamedTuple):
    """repeats: at least this many timed rounds (rounded up to a multiple of the number of variants);
    warmup: untimed rounds first; min_seconds: add rounds (up to max_repeats) until the timed rounds
    take about this long (short calls are noisy)."""

    repeats: int
    warmup: int
    min_seconds: float = 0.0
    max_repeats: int = 100


def time_interleaved(fns: dict[str, Callable[[], object]], timing: Timing) -> dict[str, list[float]]:
    """Seconds per call of each fn, interleaved round by round (A B C, B C A, C A B, ...), so load
    drift and position effects (e.g. who runs right after a big free) hit every variant alike.
    Returns {name: [t_1 .. t_n]}, t_i from round i."""
    n_warm = max(timing.warmup, 1 if timing.min_seconds else 0)
    t0 = time.perf_counter()
    for _ in range(n_warm):
        for fn in fns.values():
            fn()
    sync()
    rounds = timing.repeats
    if timing.min_seconds:  # the warm-up rounds estimate one round's time
        per_round = max((time.perf_counter() - t0) / n_warm, 1e-9)
        rounds = max(rounds, min(math.ceil(timing.min_seconds / per_round), timing.max_repeats))
    names = list(fns)
    rounds = math.ceil(rounds / len(names)) * len(names)  # every variant takes every position equally often
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no variant always first
            fn = fns[name]
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median of per-repeat ratios num_i / den_i (robust to load drift between repeats)."""
    return median([a / b for a, b in zip(num, den, strict=True)])


def ratio_quartiles(num: list[float], den: list[float]) -> tuple[float, float]:
    """(25th, 75th) percentile of the per-repeat ratios: the noise band of a paired ratio."""
    r = sorted(a / b for a, b in zip(num, den, strict=True))
    return r[(len(r) - 1) // 4], r[(3 * (len(r) - 1) + 3) // 4]


def time_first_call(fn: Callable[[], object]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def fwd_bwd(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor], grad: torch.Tensor) -> Callable[[], None]:
    """A closure running forward then the gradients w.r.t. `inputs` (no .grad accumulation)."""

    def step() -> None:
        torch.autograd.grad(forward(), inputs, grad)

    return step


def no_grad(forward: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            return forward()

    return run


def matmul_fns(n: int, calls: int,
               dtypes: tuple[str, ...] = ("fp32", "bf16")) -> tuple[dict[str, Callable[[], None]], float]:
    """{"mm_fp32": fn, "mm_bf16": fn} (the `dtypes` asked for), each fn running `calls` torch.mm of two
    n x n matrices, and the FLOPs of one fn call (2 n^3 calls). Timed inside a comparison's rounds they
    give the matmul peak under the same load as the workload."""
    def run(a: torch.Tensor, b: torch.Tensor) -> Callable[[], None]:
        def mm() -> None:
            for _ in range(calls):
                a @ b

        return mm

    kinds = {"fp32": torch.float32, "bf16": torch.bfloat16}
    mats = {name: (torch.randn(n, n).to(kinds[name]), torch.randn(n, n).to(kinds[name])) for name in dtypes}
    fns = {f"mm_{name}": run(*mats[name]) for name in dtypes}
    return fns, 2.0 * n**3 * calls


def fraction_of_peak(flops: float, times: list[float], mm_flops: float, mm_times: list[float]) -> float:
    """Median over rounds of (flops / t_i) / (mm_flops / mm_t_i): the achieved rate as a fraction of
    the matmul rate measured in the same round, so that both see the same load."""
    return flops / mm_flops * paired_ratio(mm_times, times)


def matmul_peak(n: int, dtype: torch.dtype, timing: Timing) -> dict:
    """torch.mm on n x n matrices on its own: GFLOP/s of the median and of the fastest call."""
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    fns, flops = matmul_fns(n, 1, (name,))
    times = time_interleaved({"mm": fns[f"mm_{name}"]}, timing)["mm"]
    return {"median": flops / median(times) / 1e9, "best": flops / min(times) / 1e9}


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; the benchmark never requires a GPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"benchmark device={name!r} is not supported; use auto, cpu or cuda")
    return name


def conditions() -> dict:
    """What the numbers depend on: threads, CPU, load, allocator tunables, versions."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""), "device": str(torch.get_default_device()),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def inductor_cache_hits() -> list[int]:
    """[hits, misses] of inductor's FX-graph cache so far in this process."""
    from torch._dynamo.utils import counters

    return [counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]]
