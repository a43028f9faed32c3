"""What this machine can run fast: the one place that decides where bf16 is native.

CPU autocast to bf16 is only worth it on CPUs with bf16 matmul instructions (AVX512_BF16 or AMX).
Elsewhere PyTorch emulates bf16, tens of times slower than fp32. On a 2-core AVX2 EPYC, a 1024 x 1024
torch.mm ran at 0.73 GFLOP/s in bf16 against 61 in fp32 (84x), and `python -m osplab.hardware`
(512 x 512) at 1.6 against 71-75 (45x); the AVX512-bf16 Xeons of shared/FACTS.md run bf16 ~2.4x
faster than fp32. The training loop, the samplers and the benchmarks ask here before they use bf16.
"""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 matmul instructions (AVX512_BF16 or AMX) for PyTorch's kernels.

    The probes are private torch.cpu functions, so a torch without them counts as no native bf16
    (the safe side: fp32)."""
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)()) for name in
               ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def native_bf16(device: torch.device | str) -> bool:
    """bf16 runs at hardware speed on `device`: a CUDA GPU with bf16 support, or a CPU with native bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def describe_cpu() -> dict:
    """{'cpu_capability': PyTorch's CPU kernel level (e.g. AVX2, AVX512), 'cpu_native_bf16': bool}."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": cpu_has_native_bf16()}


def matmul_gflops(dtype: torch.dtype, n: int = 512, seconds: float = 1.0) -> float:
    """GFLOP/s of torch.mm on two n x n matrices of `dtype` on the CPU (one warm-up call, then calls for
    at least `seconds`, at least 3). A quick check of this machine, not a benchmark
    (`bench_attention` times the peak interleaved with the workloads)."""
    import time

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    return 2.0 * n**3 * calls / (time.perf_counter() - start) / 1e9


def main() -> None:
    """`python -m osplab.hardware`: does this CPU run bf16 natively, and what each precision costs here."""
    info = describe_cpu()
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"CPU kernels {info['cpu_capability']}, {torch.get_num_threads()} threads; native bf16 (AVX512_BF16 or AMX): "
          f"{'yes' if info['cpu_native_bf16'] else 'no'}")
    print(f"torch.mm 512^2: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.2f} GFLOP/s ({bf16 / fp32:.3g}x fp32)")
    print("precision: bf16 settings " + ("run bf16 here" if info["cpu_native_bf16"] else
                                        "run fp32 here, with a warning (emulated bf16 would be slower)"))


if __name__ == "__main__":
    main()
