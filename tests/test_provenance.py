"""A persisted run folder is resumed only by a run of the same inputs (osplab.train.provenance), and
checkpoints say what made them (osplab.provenance)."""

from __future__ import annotations

import json
from pathlib import Path

from osplab.provenance import git_commit, package_versions, run_record
from osplab.train.provenance import claim_run_dir, fingerprint


def test_same_inputs_resume_other_inputs_start_afresh(tmp_path: Path) -> None:
    data = tmp_path / "manifest.json"
    data.write_text('{"clips": 3}')
    run = tmp_path / "run"
    inputs = fingerprint({"lr": 1e-3, "steps": 10}, [data])
    assert claim_run_dir(run, inputs) is False  # empty folder: a new run
    (run / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run / "live").mkdir()
    (run / "notes.txt").write_text("mine")
    assert claim_run_dir(run, inputs) is True   # the same inputs: resume, nothing removed
    assert (run / "checkpoints" / "step_00000010").is_dir()
    # key order does not matter, values do
    assert fingerprint({"steps": 10, "lr": 1e-3}, [data]) == inputs
    changed = fingerprint({"lr": 2e-3, "steps": 10}, [data])
    assert changed["settings"] != inputs["settings"] and changed["files"] == inputs["files"]
    data.write_text('{"clips": 4}')
    other_data = fingerprint({"lr": 1e-3, "steps": 10}, [data])
    assert other_data["files"] != inputs["files"]
    assert claim_run_dir(run, other_data) is False  # other data: stale checkpoints and logs go
    assert not (run / "checkpoints").exists() and not (run / "live").exists()
    assert (run / "notes.txt").read_text() == "mine"  # nothing else is touched
    assert json.loads((run / "inputs.json").read_text()) == other_data
    (run / "inputs.json").write_text("{half")
    (run / "checkpoints").mkdir()
    assert claim_run_dir(run, other_data) is False and not (run / "checkpoints").exists()


def test_run_record_names_commit_and_versions() -> None:
    commit = git_commit()
    assert commit == "unknown" or len(commit.split("-")[0]) == 40
    versions = package_versions()
    import torch

    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"].startswith(torch.__version__[:4])
    record = run_record()
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(record["cpu_native_bf16"], bool)
