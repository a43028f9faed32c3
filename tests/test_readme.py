"""README says only what is true of a fresh clone: its paths, modules, make targets and experiment
overrides exist, its cheap commands run as written, and every number of its results table is in the
committed file the row cites (or in params.yaml)."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from osplab.config import compose

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
# Not in a fresh clone by design (DVC outputs; README says so): data/, runs/, checkpoints/, Hydra folders.
GENERATED = ("data/", "runs/", "checkpoints/", "multirun/", "outputs/")


def code_spans() -> list[str]:
    """Inline `code` spans and the lines of fenced blocks, comments stripped."""
    fenced = re.findall(r"```\w*\n(.*?)```", README, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in fenced for line in block.splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", README, flags=re.S))
    return [s for s in lines + inline if s]


def test_every_repo_path_in_readme_exists():
    paths = {m for span in code_spans() for m in re.findall(r"(?:^|\s)((?:\.ci|conf|osplab|tests|notebooks|metrics|"
                                                            r"reports)/[\w./-]*)", span)}
    assert len(paths) > 20, paths  # the survey found the README's paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"README names files that are not in the repository: {missing}"


def test_every_module_and_make_target_exists():
    spans = code_spans()
    modules = {m for s in spans for m in re.findall(r"-m ([a-z_][\w.]*)", s) if m.startswith("osplab")}
    assert {"osplab.stages.raw", "osplab.stages.train_vqvae", "osplab.metrics.bench_i3d"} <= modules
    for name in modules:
        base = REPO.joinpath(*name.split("."))
        assert base.with_suffix(".py").is_file() or (base / "__main__.py").is_file(), f"README runs {name}: no such module"
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    used = {t for s in spans for t in re.findall(r"(?:^|\s)make ([\w-]+)", s)}
    assert used and used <= targets, f"README uses make targets the Makefile lacks: {used - targets}"


def test_every_experiment_override_composes():
    """`dvc exp run -S ...` lines: each set of overrides is a valid composition of conf/ (nothing runs)."""
    lines = [s for s in code_spans() if s.startswith("dvc exp run") and " -S " in s]
    assert len(lines) >= 3
    for line in lines:
        tokens = shlex.split(line)
        overrides = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "-S"]
        assert overrides, line
        compose(overrides)


def run(cmd: str, cwd: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    assert cmd in README, f"{cmd!r} is no longer in README: update this test"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    args = shlex.split(cmd) + list(extra)
    if args[0] == "python":
        args[0] = sys.executable
    else:  # the `osplab` console script
        args = [sys.executable, "-m", "osplab.cli", *args[1:]]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("cmd, expect", [
    ("osplab config profile=paper", "profile: paper"),
    ("python -m osplab.metrics.bench_i3d", "--out"),  # run with --help: the real run is the bench_i3d stage
    ("python -m osplab.train.run train.steps=50 train.out_dir=runs/toy", '"step": 50'),
])
def test_cheap_readme_commands_run_as_written(cmd, expect, tmp_path):
    proc = run(cmd, REPO if "config" in cmd else tmp_path, ("--help",) if cmd.endswith("bench_i3d") else ())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout


def numbers_in(obj) -> list[float]:
    """Every number in a parsed JSON/YAML value or a text (keys and strings included: 'S64', '128 val')."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in numbers_in(k) + numbers_in(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in numbers_in(v)]
    return [float(t) for t in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", str(obj))]


def matches(token: str, values: list[float]) -> bool:
    """A README number equals a file value at the README's precision (also as a percentage)."""
    x = float(token)
    if "e" in token:
        digits = len(token.split("e")[0].replace(".", "")) - 1
        return any(v and math.isclose(x, v, rel_tol=0.5 * 10 ** -digits) for v in values)
    decimals = len(token.split(".")[1]) if "." in token else 0
    return any(round(v, decimals) == x or round(100 * v, decimals) == x for v in values)


def results_rows() -> list[tuple[str, list[str], str]]:
    section = README.split("## Current results")[1].split("\n## ")[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.append((cells[0], re.findall(r"`((?:metrics|reports)/[^`]+)`", line), cells[2]))
    return rows


def test_results_table_numbers_are_in_the_cited_files():
    import yaml

    rows = results_rows()
    assert len(rows) >= 5
    params = numbers_in(yaml.safe_load((REPO / "params.yaml").read_text()))
    for stage, files, text in rows:
        values = list(params) + numbers_in(stage)
        for f in (f for f in files if f.endswith((".json", ".md"))):
            raw = (REPO / f).read_text()
            values += numbers_in(json.loads(raw) if f.endswith(".json") else raw)
        text = re.sub(r"\d+x\d+x\d+", lambda m: m.group(0).replace("x", " "), text)  # 16x224x224: three numbers
        tokens = re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?(?![\w])", text)
        unknown = [t for t in tokens if not matches(t, values)]
        assert not unknown, f"README results row {stage}: {unknown} not found in {files} or params.yaml"


def test_results_check_catches_a_number_from_elsewhere():
    metrics = json.loads((REPO / "metrics/eval.json").read_text())
    values = numbers_in(metrics)
    fvd, psnr = metrics["fvd"], metrics["psnr"]
    assert matches(f"{fvd:.1f}", values) and matches(f"{psnr:.1f}", values)
    assert not matches(f"{fvd + 8:.0f}", values) and not matches(f"{fvd - 0.1:.1f}", values)
