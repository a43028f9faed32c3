"""Which inputs a run directory's checkpoints belong to, so a re-run resumes only its own run.

DVC stages declare their run folder (`runs/<stage>`) with `persist: true`, so that `dvc repro`
after a kill or preemption resumes from the newest checkpoint instead of starting over. But a
persisted folder may hold checkpoints of *other* inputs (changed params, data or code: the reason
DVC re-runs the stage); resuming those would silently mix two experiments. `claim_run_dir`
compares a fingerprint of the stage's inputs with the one saved in the folder and clears stale
checkpoints (the stage's own declared output, which DVC would otherwise have deleted) before
training starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from osplab.io import atomic_write_json, sha256_file

log = logging.getLogger(__name__)
FINGERPRINT_FILE = "inputs.json"


def settings_of(cfg, keys: Iterable[str]) -> dict[str, Any]:
    """{dotted key: plain value} of the composed settings `cfg` (an OmegaConf config or a dict) for `keys`,
    e.g. a stage's dvc.yaml params: what a run depends on, and nothing else. A key that is not there
    raises KeyError naming it."""
    from omegaconf import OmegaConf

    out = {}
    for key in keys:
        node = cfg
        for part in key.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError, AttributeError) as err:  # OmegaConf's missing-key error is a KeyError
                raise KeyError(f"setting {key!r} is not in the composed config") from err
        out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return out


def fingerprint(settings: dict[str, Any], files: Iterable[str | os.PathLike]) -> dict[str, str]:
    """{'settings': sha256 of the settings as sorted JSON, 'files': sha256 over the files'
    paths and contents (sorted), e.g. a data manifest and the package sources}."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in files):
        digest.update(f"{path.as_posix()}\0{sha256_file(path)}\n".encode())
    text = json.dumps(settings, sort_keys=True, default=str)
    return {"settings": hashlib.sha256(text.encode()).hexdigest(), "files": digest.hexdigest()}


def package_sources() -> list[Path]:
    """The osplab package's .py files (the code a stage runs)."""
    root = Path(__file__).resolve().parents[1]
    return sorted(root.rglob("*.py"))


def claim_run_dir(out_dir: str | os.PathLike, inputs: dict[str, str]) -> bool:
    """Make `out_dir` a run of `inputs`. Returns True if it already was one (resume), False if
    it was empty or held another run, whose `checkpoints/` and `live/` are then removed.
    Call on the main rank before training (a collective barrier follows in `train`)."""
    out_dir = Path(out_dir)
    saved_path = out_dir / FINGERPRINT_FILE
    saved = None
    if saved_path.is_file():
        try:
            saved = json.loads(saved_path.read_text())
        except json.JSONDecodeError:
            saved = None  # written atomically, so only a hand edit gets here: treat as foreign
    if saved == inputs:
        return True
    stale = [out_dir / name for name in ("checkpoints", "live") if (out_dir / name).exists()]
    if stale:
        log.warning("%s holds a run of other inputs (settings, data or code changed): removing "
                    "its %s and starting afresh", out_dir, " and ".join(p.name for p in stale))
        for path in stale:
            shutil.rmtree(path)
    atomic_write_json(saved_path, inputs)
    return False


def claim_stage_run(out_dir: str | os.PathLike, settings: dict[str, Any], files: Iterable[str | os.PathLike],
                    is_main: bool) -> None:
    """`claim_run_dir` for a training stage: its settings, the given data files and the package
    code; on the main rank, then a barrier so no rank reads checkpoints before the claim."""
    from osplab.train.distributed import barrier

    if is_main:
        claim_run_dir(out_dir, fingerprint(settings, [*files, *package_sources()]))
    barrier()
