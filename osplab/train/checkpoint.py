"""Atomic, pickle-free checkpoints for exact resume.

Layout of `<out_dir>/checkpoints/`:

    step_00000200/            one complete checkpoint (a directory appears only when complete)
        model.safetensors     model weights (full tensors)
        ema.safetensors       EMA weights + model buffers: load straight into the model to sample
        optimizer.safetensors AdamW moments and step counts, keyed 'param_name::exp_avg' etc.
        state.json            step, LR scheduler, param groups, RNG states per rank, data position,
                              non-finite counters, config, last logged metrics
    latest                    text file naming the newest checkpoint directory
    .tmp-step_...-<pid>/      a save in progress (hidden; swept by the next save)

A save writes everything into the hidden temporary directory, fsyncs it, renames it into place
(`os.replace` is atomic on POSIX), then rewrites `latest` the same way, then prunes old ones. A crash
at any instant leaves either the old set or the new one, never a half checkpoint. Loading reads
only safetensors and JSON: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from osplab.io import atomic_path, atomic_write_text

from .distributed import DistEnv, all_gather_objects, barrier, unwrap
from .ema import EMA
from .state import capture_rng, full_cpu, load_model_tensors, optimizer_from_flat, optimizer_to_flat

FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint or weight file that cannot be read safely."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file atomically (osplab.io: temporary file, fsync, os.replace)."""
    atomic_write_text(path, text)


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path,
                        metadata: dict[str, str] | None = None) -> None:
    """One safetensors file written atomically (e.g. final weights for a DVC output)."""
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(full_cpu(tensors), str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file without running pickled code.

    `.safetensors` is parsed by safetensors; `.pt/.pth/.bin` only through
    `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(
                f"{path} is not a valid safetensors file ({e}); osplab never unpickles "
                "checkpoints, so convert it with safetensors.torch.save_file") from e
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"refused to load {path}: it holds more than plain tensors "
                                  f"and weights_only=True loading failed ({e})") from e
        if not (isinstance(obj, dict) and all(torch.is_tensor(v) for v in obj.values())):
            raise CheckpointError(f"{path} is not a flat {{name: tensor}} state dict")
        return obj
    raise CheckpointError(f"{path}: unknown weight file type {path.suffix!r}; use .safetensors")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read checkpoint state {path}: {e}") from e


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint directories under root, oldest first (temporary ones are hidden)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    """Newest complete checkpoint, or None. Directories appear only when complete, so the scan
    is authoritative; the `latest` file is the same answer for tools and humans."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_weights(checkpoint: str | Path, which: str = "ema") -> dict[str, torch.Tensor]:
    """Weights of a checkpoint directory (or the newest one under a checkpoints root).

    which: "ema" (for sampling/evaluation) or "model" (raw weights). Returns {name: tensor} for
    `model.load_state_dict`.
    """
    path = Path(checkpoint)
    if not (path / "state.json").is_file():
        newest = latest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(f"no checkpoint in {path}; train first")
        path = newest
    if which not in ("ema", "model"):
        raise ValueError(f"which={which!r}; choose 'ema' or 'model'")
    return load_tensors(path / f"{which}.safetensors")


class Checkpointer:
    """Saves and restores the whole training state under one checkpoints root."""

    def __init__(self, root: str | Path, keep: int, env: DistEnv) -> None:
        self.root, self.keep, self.env = Path(root), keep, env

    def save(self, step: int, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
             scheduler: Any, extra: dict[str, Any]) -> Path:
        """Collective: every rank calls it; rank 0 writes. Returns the checkpoint directory."""
        module = unwrap(model)
        files = {
            "model": full_cpu(module.state_dict()),
            "ema": full_cpu(ema.state_dict(module)),
        }
        files["optimizer"], optim_meta = optimizer_to_flat(model, optimizer)
        rngs = all_gather_objects(capture_rng())
        final = self.root / f"step_{step:08d}"
        if self.env.is_main:
            state = {"format": FORMAT, "step": step, "world_size": self.env.world_size,
                     "scheduler": scheduler.state_dict(), "optimizer": optim_meta, "rng": rngs,
                     **extra}
            self._write(final, files, state)
        barrier()
        return final

    def _write(self, final: Path, files: dict[str, dict[str, torch.Tensor]],
               state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        tmp.mkdir()
        try:
            for name, tensors in files.items():
                safetensors.torch.save_file(tensors, str(tmp / f"{name}.safetensors"))
            (tmp / "state.json").write_text(json.dumps(state))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(tmp)
            if final.exists():  # re-saving a step (resumed run): move the old copy aside first
                os.replace(final, self.root / f".tmp-old-{final.name}-{os.getpid()}")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        write_text_atomic(self.root / "latest", final.name + "\n")
        self._prune()

    def _sweep(self) -> None:
        """Delete temporary directories left by saves that were killed."""
        for p in self.root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def _prune(self) -> None:
        # Rename before deleting: a kill during rmtree then leaves a hidden .tmp-* folder (swept
        # by the next save), never a half `step_*` directory that looks complete.
        for old in list_checkpoints(self.root)[:-self.keep]:
            os.replace(old, self.root / f".tmp-prune-{old.name}-{os.getpid()}")
        self._sweep()

    def load(self, path: Path, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer,
             scheduler: Any) -> dict[str, Any]:
        """Restore model, EMA, optimizer and scheduler in place; returns the JSON state
        (step, rng, data position, ...). Collective under FSDP."""
        state = read_json(path / "state.json")
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {state.get('format')} != {FORMAT}")
        load_model_tensors(model, load_tensors(path / "model.safetensors"), f"{path}/model")
        ema.load_shadow(load_tensors(path / "ema.safetensors"))
        optimizer_from_flat(model, optimizer, load_tensors(path / "optimizer.safetensors"),
                            state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return state
