"""Chaos test of crash consistency (outside the CI suite: minutes, not seconds).

    python -m osplab.train.chaos toy   --kills 200   # `make chaos` runs both
    python -m osplab.train.chaos stage --kills 20

`toy`: one toy training run (frequent checkpoints and log rows, so kills land in every phase:
start-up, training, dvclive writes, checkpoint saves, pruning) is SIGKILLed at random instants
and started again with the same command, `--kills` times; then it runs to the end. Its final
weights, EMA and optimizer files must equal an uninterrupted run's byte for byte, and its loss
curve and summary must match.

`stage`: the same through DVC: `dvc repro train_vqvae` (smoke profile, more steps) in a fresh clone
of this repository, its whole process group (dvc, torchrun, workers) killed at random instants;
then `checkpoints/vqvae.safetensors` must equal that of an uninterrupted `dvc repro` in a second
clone. Prints how many kills it survived and how many of them left a temporary file behind (i.e.
landed in the middle of a write). Exits non-zero on the first failure, with the run's log.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from osplab.train.testing import REPO, read_curve, run_env, toy_command

TOY_ARGS = ["train.steps=240", "train.global_batch=16", "train.micro_batch=4", "train.checkpoint_every=3",
            "train.keep_checkpoints=2", "train.log_every=1", "train.lr=1e-3", "train.lr_schedule=cosine",
            "train.warmup_steps=5", "train.ema_decay=0.9", "train.precision=fp32", "train.num_threads=1",
            "train.num_workers=0", "train.seed=5", "toy.n_samples=200", "toy.hidden=64", "toy.depth=3"]
STAGE_PARAMS = ["profile=smoke", "train_vqvae.steps=60", "train_vqvae.checkpoint_every=3", "train_vqvae.log_every=1"]


def temporaries(folder: Path) -> int:
    """Files or folders a killed write leaves: osplab's `.NAME.*.tmp`, checkpoint `.tmp-*`."""
    return sum(1 for p in folder.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-"))


def run_killed(cmd: list[str], cwd: Path, env: dict, delay: float, log: Path) -> int | None:
    """Run `cmd` in its own process group; SIGKILL the group after `delay` s. Returns None if it
    was killed, else its exit code."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=out, start_new_session=True)
        try:
            return proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def chaos_loop(cmd: list[str], cwd: Path, env: dict, kills: int, delays: tuple[float, float], seed: int,
               watch: Path, compare, reset) -> dict[str, int]:
    """SIGKILL `cmd` `kills` times at random instants (uniform in `delays` s after its start),
    re-running it after each kill. Whenever a run completes, `compare()` checks it against the
    uninterrupted one and `reset()` clears it, so the next attempt starts a new run; after the last
    kill the run is completed and compared. `watch` is scanned for temporaries after each kill."""
    rng, log = random.Random(seed), cwd / "chaos.log"
    done = {"kills": 0, "mid_write": 0, "runs_completed": 0}

    def finish(code: int | None) -> None:
        if code != 0:
            sys.exit(f"\nrun failed (exit code {code}) after {done['kills']} kills; log: {log}")
        compare()
        done["runs_completed"] += 1

    while done["kills"] < kills:
        code = run_killed(cmd, cwd, env, rng.uniform(*delays), log)
        if code is None:
            done["kills"] += 1
            done["mid_write"] += temporaries(watch) > 0
            print(f"\rkills survived: {done['kills']}/{kills} (mid-write: {done['mid_write']})", end="", flush=True)
        else:
            finish(code)
            reset()
    print()
    finish(run_killed(cmd, cwd, env, 3600.0, log))
    return done


def chaos_toy(kills: int, seed: int, work: Path) -> dict:
    env, ref, run = run_env(), work / "reference", work / "killed"
    start = time.perf_counter()
    subprocess.run(toy_command(TOY_ARGS + [f"train.out_dir={ref}"]), cwd=work, env=env, check=True,
                   capture_output=True)
    # Kill instants spread over a whole run as long as this machine takes now (start-up included),
    # so kills land in every phase, not mostly in `import torch`.
    duration = time.perf_counter() - start
    return chaos_loop(toy_command(TOY_ARGS + [f"train.out_dir={run}"]), work, env, kills, (0.1, duration), seed,
                      run, compare=lambda: compare_toy(ref, run), reset=lambda: shutil.rmtree(run))


def compare_toy(ref: Path, run: Path) -> None:
    """Final checkpoint files byte-identical; same loss curve and dvclive summary (timings aside)."""
    from osplab.train.checkpoint import latest_checkpoint

    a, b = latest_checkpoint(ref / "checkpoints"), latest_checkpoint(run / "checkpoints")
    if a.name != b.name:
        sys.exit(f"final checkpoints differ: {a} vs {b}")
    for part in ("model", "ema", "optimizer"):
        if (a / f"{part}.safetensors").read_bytes() != (b / f"{part}.safetensors").read_bytes():
            sys.exit(f"{part}.safetensors differs between {a} and {b}")
    if read_curve(ref) != read_curve(run):
        sys.exit(f"the logged loss curves of {ref} and {run} differ")
    sa, sb = (json.loads((p / "live" / "metrics.json").read_text()) for p in (ref, run))
    if sa["train"] != sb["train"] or sa["step"] != sb["step"]:
        sys.exit(f"the dvclive summaries of {ref} and {run} differ")


def stage_clone(work: Path, name: str) -> tuple[Path, dict]:
    """A fresh clone of this repository (committed HEAD) with smoke params (dvc repro makes the data)."""
    clone = work / name
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    env = run_env() | {"PYTHONPATH": str(clone), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "osplab.cli", "params", *STAGE_PARAMS], cwd=clone, env=env, check=True,
                   capture_output=True)
    return clone, env


def chaos_stage(kills: int, seed: int, work: Path) -> dict:
    from omegaconf import OmegaConf

    cmd = [sys.executable, "-m", "dvc", "repro", "train_vqvae"]
    ref, env = stage_clone(work, "reference")
    weights = OmegaConf.load(ref / "params.yaml").vqvae.checkpoint
    subprocess.run(cmd, cwd=ref, env=env, check=True, capture_output=True)
    run, env = stage_clone(work, "killed")

    def compare() -> None:
        if (ref / weights).read_bytes() != (run / weights).read_bytes():
            sys.exit(f"{weights} differs between the uninterrupted and the killed dvc repro ({work})")

    def reset() -> None:  # a completed stage: remove its outputs so that dvc repro runs it again
        for out in ("runs", "checkpoints", "metrics/vqvae.json"):
            subprocess.run(["rm", "-rf", str(run / out)], check=True)

    return chaos_loop(cmd, run, env, kills, (1.0, 30.0), seed, run / "runs", compare, reset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["toy", "stage"])
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs (default: 200 toy, 20 stage)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill instants")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)
    kills = args.kills if args.kills is not None else {"toy": 200, "stage": 20}[args.what]
    if kills < 1:
        parser.error(f"--kills must be >= 1, got {kills}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"osplab-chaos-{args.what}-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        stats = (chaos_toy if args.what == "toy" else chaos_stage)(kills, args.seed, work)
    print(f"chaos {args.what}: survived {stats['kills']} SIGKILLs ({stats['mid_write']} left a temporary file, i.e. "
          f"landed mid-write) over {stats['runs_completed']} completed runs, each byte-identical to the "
          f"uninterrupted run; {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
