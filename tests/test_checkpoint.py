"""Checkpoints: exact round trip, crash during save leaves the previous checkpoint intact with no
partial files visible, old ones are pruned, and loading never unpickles."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch

from osplab.train import checkpoint as ckpt_mod
from osplab.train.checkpoint import (CheckpointError, Checkpointer, latest_checkpoint,
                                     list_checkpoints, load_tensors, read_weights,
                                     save_tensors_atomic)
from osplab.train.distributed import init_distributed
from osplab.train.ema import EMA
from osplab.train.optim import build_optimizer, build_scheduler
from osplab.train.state import capture_rng
from osplab.train.testing import tiny_toy, tiny_train
from osplab.train.toy import ToyMLP, toy_loss


def _parts(seed: int):
    """Model, EMA, optimizer and scheduler after one real AdamW step (so moments exist)."""
    torch.manual_seed(seed)
    cfg = tiny_train("unused")
    model = ToyMLP(tiny_toy())
    opt, ema = build_optimizer(model, cfg), EMA(model, cfg.ema_decay)
    sched = build_scheduler(opt, cfg)
    x, y = torch.randn(8, 8), torch.randn(8, 2)
    toy_loss(model, (x, y))[0].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()
    ema.update(model)
    return model, ema, opt, sched


def _visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def _save(ck: Checkpointer, step: int, parts) -> Path:
    model, ema, opt, sched = parts
    return ck.save(step, model, ema, opt, sched, {"data": {"global_batch": step}})


def test_round_trip_is_exact_and_training_continues_identically(tmp_path: Path) -> None:
    env = init_distributed()
    ck = Checkpointer(tmp_path, keep=2, env=env)
    a = _parts(0)
    path = _save(ck, 1, a)
    rng = capture_rng()
    b = _parts(1)  # different weights and moments, overwritten by the load
    state = ck.load(path, *b)
    assert state["step"] == 1 and state["data"] == {"global_batch": 1}
    assert state["rng"] == [rng]
    for pa, pb in zip(a[0].state_dict().values(), b[0].state_dict().values()):
        assert torch.equal(pa, pb)
    assert all(torch.equal(a[1].shadow[k], b[1].shadow[k]) for k in a[1].shadow)
    assert a[3].state_dict() == b[3].state_dict()
    # One more identical step on both: bitwise equal (moments, step counts, lr all restored).
    x, y = torch.randn(8, 8), torch.randn(8, 2)
    for model, ema, opt, sched in (a, b):
        torch.manual_seed(5)  # same dropout masks
        toy_loss(model, (x, y))[0].backward()
        opt.step()
    for pa, pb in zip(a[0].parameters(), b[0].parameters()):
        assert torch.equal(pa, pb)
    # EMA file = EMA weights + buffers, loadable into a fresh model for sampling.
    fresh = ToyMLP(tiny_toy())
    fresh.load_state_dict(read_weights(tmp_path, "ema"))
    assert torch.equal(fresh.out.weight, a[1].shadow["out.weight"])


def test_crash_during_save_leaves_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    ck = Checkpointer(tmp_path, keep=3, env=init_distributed())
    parts = _parts(0)
    first = _save(ck, 1, parts)
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    real_save = safetensors.torch.save_file
    written = []

    def crash_midway(tensors, filename, metadata=None):
        if written:  # first file written in full, then a half-written second one, then crash
            Path(filename).write_bytes(b"partial")
            raise OSError("disk full (simulated)")
        written.append(filename)
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt_mod.safetensors.torch, "save_file", crash_midway)
    with pytest.raises(OSError, match="simulated"):
        _save(ck, 2, parts)
    assert written, "the crash hook never ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]
    assert (tmp_path / "latest").read_text().strip() == "step_00000001"
    assert latest_checkpoint(tmp_path) == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before

    # A crash at the final rename (after all files were written) is just as invisible.
    monkeypatch.setattr(ckpt_mod.safetensors.torch, "save_file", real_save)
    real_replace = os.replace

    def fail_rename(src, dst):
        if Path(dst).name == "step_00000002":
            raise OSError("power cut (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", fail_rename)
    with pytest.raises(OSError, match="power cut"):
        _save(ck, 2, parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]


def test_killed_save_leftovers_are_hidden_then_swept(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, keep=2, env=init_distributed())
    parts = _parts(0)
    _save(ck, 1, parts)
    # What a kill -9 in the middle of a save leaves behind: a hidden, incomplete directory.
    leftover = tmp_path / ".tmp-step_00000002-99999"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\x00" * 10)
    assert _visible(tmp_path) == ["latest", "step_00000001"]
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    for step in (2, 3, 4):
        _save(ck, step, parts)
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000003", "step_00000004"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    state = json.loads((tmp_path / "step_00000004" / "state.json").read_text())
    assert state["step"] == 4 and state["world_size"] == 1


class _Trap:
    """Unpickling this object would create `marker`: the loaders must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_refuses_pickles(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, keep=2, env=init_distributed())
    parts = _parts(0)
    path = _save(ck, 1, parts)
    marker = tmp_path / "pwned"
    # A pickle disguised as a safetensors file.
    with open(path / "model.safetensors", "wb") as f:
        pickle.dump({"inp.weight": _Trap(marker)}, f)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        ck.load(path, *parts)
    # A .pt with an arbitrary object: torch.load(weights_only=True) refuses to build it.
    torch.save({"w": torch.ones(2), "x": _Trap(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_tensors(tmp_path / "evil.pt")
    assert not marker.exists()
    # Plain tensors in a .pt are fine; unknown suffixes are refused.
    torch.save({"w": torch.arange(3.0)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt")["w"], torch.arange(3.0))
    (tmp_path / "w.pkl").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(CheckpointError, match="unknown weight file type"):
        load_tensors(tmp_path / "w.pkl")


def test_save_tensors_atomic_shared_storage(tmp_path: Path) -> None:
    w = torch.randn(4, 4)
    tied = {"a.weight": w, "b.weight": w, "view": w[0]}  # shared storage: safetensors refuses as is
    save_tensors_atomic(tied, tmp_path / "w.safetensors")
    back = load_tensors(tmp_path / "w.safetensors")
    assert torch.equal(back["a.weight"], w) and torch.equal(back["view"], w[0])
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
