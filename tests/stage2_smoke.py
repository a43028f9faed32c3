"""The stage-2 smoke pipeline of the tests (conftest.py `stage2_pipeline`): every stage from raw clips
to metrics/generation.json on the smoke profile, run as dvc.yaml runs them, in a temporary folder.
Kept out of the osplab package: osplab/train is a dependency of DVC stages, test helpers are not."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from osplab.train.testing import run_env

REPO = Path(__file__).resolve().parents[1]


def run_python(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`python ARGS` in `cwd` with run_env(); `check`: fail the test with the stderr tail if it fails."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=run_env(), capture_output=True, text=True,
                          timeout=900)
    if check:
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


# Stage 2 end to end on the smoke profile, stage by stage as dvc.yaml runs them (tests/conftest.py
# `stage2_pipeline`), with a DiT step benchmark that takes a second instead of several. Each entry:
# (the dvc.yaml stage it stands for, its arguments).
STAGE2_OVERRIDES = ["profile=smoke", "diffusion.evaluate.bench.min_seconds=0", "diffusion.evaluate.bench.repeats=2"]
STAGE2_CHAIN = [
    ("raw", ["-m", "osplab.stages.raw", "--no-progress"]),
    ("train_vqvae", ["-m", "osplab.stages.train_vqvae"]),
    ("encode", ["-m", "osplab.stages.encode", "--no-progress", "--out", "data/smoke/latents"]),
    ("eval_real", ["-m", "osplab.stages.evaluate", "--real-only", "--no-progress",
                   "--real-cache", "data/smoke/eval/real_val_i3d.npz"]),
    ("evaluate", ["-m", "osplab.stages.evaluate", "--no-progress", "--real-cache", "data/smoke/eval/real_val_i3d.npz"]),
    ("embed_text", ["-m", "osplab.stages.embed_text", "--no-progress"]),
    ("train_dit@rf", ["-m", "osplab.stages.train_dit", "--objective", "rf"]),
    ("train_dit@ddpm", ["-m", "osplab.stages.train_dit", "--objective", "ddpm"]),
    ("sample@rf", ["-m", "osplab.stages.sample", "--variant", "rf", "--no-progress"]),
    ("sample@ddpm", ["-m", "osplab.stages.sample", "--variant", "ddpm", "--no-progress"]),
    ("sample@untrained", ["-m", "osplab.stages.sample", "--variant", "untrained", "--no-progress"]),
    ("evaluate_generation", ["-m", "osplab.stages.evaluate_generation", "--no-progress"]),
]


def declared_settings(stage: str) -> list[str]:
    """The settings dvc.yaml lets `stage` read: its `params:` entries and the `${...}` keys of its cmd,
    deps and outputs (paths, whose files DVC tracks). `stage` is a dvc.yaml name, `name@key` for foreach."""
    import yaml

    name, _, key = stage.partition("@")
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]
    if "foreach" in spec:
        each = spec["foreach"]
        item = each[key] if isinstance(each, dict) else key
        spec = yaml.safe_load(yaml.safe_dump(spec["do"]).replace("${item}", str(item)).replace("${key}", key))
    keys = [p if isinstance(p, str) else next(iter(p)) for p in spec.get("params", [])]
    templated = re.findall(r"\$\{([A-Za-z_][\w.]*)\}", yaml.safe_dump({k: v for k, v in spec.items() if k != "params"}))
    return sorted(set(keys) | set(templated))


def settings_subset(cfg: dict, keys: list[str]) -> dict:
    """The part of the composed settings `cfg` (a plain dict) under the dotted `keys`, nothing else."""
    out: dict = {}
    for dotted in keys:
        src, dst, parts = cfg, out, dotted.split(".")
        for part in parts[:-1]:
            src, dst = src[part], dst.setdefault(part, {})
        dst[parts[-1]] = src[parts[-1]]
    return out


def run_stage2_smoke(root: Path) -> Path:
    """Run STAGE2_CHAIN in `root` (params.yaml of STAGE2_OVERRIDES first); returns root.

    Each stage reads a params file cut down to what dvc.yaml declares for it (`declared_settings`), so a
    stage that reads a setting its `params:` do not list (one DVC would not re-run it for) fails here
    with the missing key named, instead of going stale silently after a change to that setting."""
    import yaml

    run_python(["-m", "osplab.cli", "params", *STAGE2_OVERRIDES, "--out", "params.yaml"], root)
    cfg = yaml.safe_load((root / "params.yaml").read_text())
    for stage, args in STAGE2_CHAIN:
        own = root / f"params.{stage.replace('@', '_')}.yaml"
        own.write_text(yaml.safe_dump(settings_subset(cfg, declared_settings(stage)), sort_keys=False))
        proc = run_python([*args, "--params", own.name], root, check=False)
        assert proc.returncode == 0, (
            f"dvc.yaml stage {stage} failed on the settings it declares ({own.name}: its params and the "
            f"${{...}} of its cmd, deps and outs); a missing key below is a setting to add to its params:\n"
            f"{proc.stderr[-3000:]}")
    return root
