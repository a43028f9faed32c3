"""The cluster path: train_vqvae as a Hydra app driven by a launcher (submitit's local executor, no SLURM).

The same `--multirun hydra/launcher=...` command line that conf/hydra/launcher/slurm.yaml documents
for SLURM runs here with `hydra/launcher=submitit_local`: submitit pickles the job, starts it in a
new process and collects its result. Smoke profile, 3 steps, 1 thread.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from osplab.config import conf_dir, wants_hydra

REPO = Path(__file__).resolve().parent.parent


def run_stage(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop("OSPLAB_TRACE", None)
    return subprocess.run([sys.executable, "-m", "osplab.stages.train_vqvae", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_stage(smoke_store, tmp_path):
    sweep = tmp_path / "multirun"
    proc = run_stage(["--multirun", "hydra/launcher=submitit_local", "profile=smoke", f"data.root={smoke_store}",
                      f"train_vqvae.out_dir={tmp_path / 'runs'}", f"vqvae.checkpoint={tmp_path / 'vqvae.safetensors'}",
                      f"hydra.sweep.dir={sweep}", "train_vqvae.steps=3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr  # the launcher ran it, not Hydra's basic one
    job = sweep / "0"
    metrics = json.loads((job / "vqvae.json").read_text())
    assert metrics["train_steps"] == 3 and metrics["val_clips"] == 4  # the override and the smoke profile reached the job
    assert (job / "vqvae_recon.png").read_bytes()[:4] == b"\x89PNG"
    assert "train_vqvae.steps=3" in (job / ".hydra" / "overrides.yaml").read_text()
    assert (tmp_path / "vqvae.safetensors").stat().st_size > 0
    assert list((sweep / ".submitit").glob("*/*_result.pkl")), "no submitit job result"


def test_stage_config_error_is_one_line(tmp_path):
    proc = run_stage(["profile=smok"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "options for 'profile': default, paper, smoke" in proc.stderr


def test_hydra_arguments_are_told_apart_from_the_dvc_ones():
    assert wants_hydra(["--multirun", "hydra/launcher=slurm"]) and wants_hydra(["profile=smoke"])
    assert not wants_hydra([]) and not wants_hydra(["--params", "params.yaml", "--metrics=m.json"])


def test_slurm_launcher_config_composes_and_names_an_existing_module():
    text = (conf_dir() / "hydra" / "launcher" / "slurm.yaml").read_text()
    modules = re.findall(r"python -m ([\w.]+)", text)
    assert modules, "slurm.yaml should show the command it is for"
    for name in modules:
        assert (REPO / Path(*name.split("."))).with_suffix(".py").is_file(), f"slurm.yaml names {name}, which does not exist"
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["hydra/launcher=slurm", "profile=paper"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node  # one rank per GPU, as osplab.train.distributed expects
