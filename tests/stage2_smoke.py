"""The stage-2 smoke pipeline of the tests (conftest.py `stage2_pipeline`): every stage from raw clips
to metrics/generation.json on the smoke profile, run as dvc.yaml runs them, in a temporary folder.
Kept out of the osplab package: osplab/train is a dependency of DVC stages, test helpers are not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from osplab.train.testing import run_env


def run_python(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`python ARGS` in `cwd` with run_env(); `check`: fail the test with the stderr tail if it fails."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=run_env(), capture_output=True, text=True,
                          timeout=900)
    if check:
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


# Stage 2 end to end on the smoke profile, stage by stage as dvc.yaml runs them (tests/conftest.py
# `stage2_pipeline`), with a DiT step benchmark that takes a second instead of several.
STAGE2_OVERRIDES = ["profile=smoke", "diffusion.evaluate.bench.min_seconds=0", "diffusion.evaluate.bench.repeats=2"]
STAGE2_CHAIN = [
    ["-m", "osplab.stages.raw", "--no-progress"],
    ["-m", "osplab.stages.train_vqvae"],
    ["-m", "osplab.stages.encode", "--no-progress", "--out", "data/smoke/latents"],
    ["-m", "osplab.stages.evaluate", "--real-only", "--no-progress", "--real-cache", "data/smoke/eval/real_val_i3d.npz"],
    ["-m", "osplab.stages.evaluate", "--no-progress", "--real-cache", "data/smoke/eval/real_val_i3d.npz"],
    ["-m", "osplab.stages.embed_text", "--no-progress"],
    ["-m", "osplab.stages.train_dit", "--objective", "rf"],
    ["-m", "osplab.stages.train_dit", "--objective", "ddpm"],
    ["-m", "osplab.stages.sample", "--variant", "rf", "--no-progress"],
    ["-m", "osplab.stages.sample", "--variant", "ddpm", "--no-progress"],
    ["-m", "osplab.stages.sample", "--variant", "untrained", "--no-progress"],
    ["-m", "osplab.stages.evaluate_generation", "--no-progress"],
]


def run_stage2_smoke(root: Path) -> Path:
    """Run STAGE2_CHAIN in `root` (params.yaml of STAGE2_OVERRIDES first); returns root."""
    run_python(["-m", "osplab.cli", "params", *STAGE2_OVERRIDES, "--out", "params.yaml"], root)
    for args in STAGE2_CHAIN:
        run_python(args, root)
    return root
