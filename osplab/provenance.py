"""What produced an artefact: git commit, package versions, machine. Saved with checkpoints."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("osplab", "torch", "transformers", "einops", "numpy", "safetensors")
REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """HEAD of the checkout osplab runs from, with `-dirty` if tracked files changed; 'unknown'
    outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_record() -> dict:
    """Commit, versions and machine; `cpu_native_bf16` says whether `precision: bf16` really ran in bf16 on
    the CPU (osplab.train.loop.autocast_dtype falls back to fp32 on CPUs without native bf16)."""
    from osplab.hardware import describe_cpu

    return {"git_commit": git_commit(), "packages": package_versions(), "python": platform.python_version(),
            "machine": platform.machine(), **describe_cpu()}
