"""Turn training state into (tensors, JSON) and back, without pickle.

Tensors are gathered to full CPU tensors on every rank (FSDP2 DTensor shards via `full_tensor`,
a collective: every rank must call these functions in the same order). Loading lays each full
tensor out like the live one again (sharded under FSDP). Optimizer state is keyed by parameter
name, not by position, so a checkpoint moves freely between 1 process, DDP and FSDP.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import shard_like, unwrap


def full_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full (unsharded), detached, contiguous CPU copies, in sorted key order (collective under FSDP)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for key in sorted(tensors):
        t = tensors[key].detach()
        t = t.full_tensor() if isinstance(t, DTensor) else t
        # clone: safetensors refuses tensors that share storage (tied weights, views).
        out[key] = t.to("cpu", copy=True).contiguous()
    return out


def load_model_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Strictly load full tensors into `model` (wrapped or not); names must match exactly."""
    module = unwrap(model)
    current = module.state_dict()
    missing, unexpected = sorted(set(current) - set(tensors)), sorted(set(tensors) - set(current))
    if missing or unexpected:
        raise KeyError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]} "
                       f"(checkpoint written for a different model?)")
    for k in current:
        if tuple(tensors[k].shape) != tuple(current[k].shape):
            raise ValueError(f"{what}: {k} has shape {tuple(tensors[k].shape)} in the checkpoint "
                             f"but {tuple(current[k].shape)} in the model")
    module.load_state_dict({k: shard_like(tensors[k], current[k]) for k in current})


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Name of each optimizer parameter, in the order optimizer.state_dict() numbers them."""
    by_id = {id(p): n for n, p in unwrap(model).named_parameters()}
    names = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in by_id:
                raise ValueError("optimizer holds a parameter that is not in the model")
            names.append(by_id[id(p)])
    return names


def optimizer_to_flat(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(tensors keyed 'param_name::state_key', JSON with param_groups and non-tensor state)."""
    names = _param_names(model, optimizer)
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{names[index]}::{key}"] = value
            else:
                scalars.setdefault(names[index], {})[key] = value
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in sd["param_groups"]]
    return full_cpu(tensors), {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(model: nn.Module, optimizer: torch.optim.Optimizer,
                        tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of `optimizer_to_flat` into a live optimizer built over the same parameters."""
    names = _param_names(model, optimizer)
    index = {n: i for i, n in enumerate(names)}
    params = {n: p for n, p in unwrap(model).named_parameters()}
    state: dict[int, dict[str, Any]] = {}
    for flat_key, value in tensors.items():
        name, key = flat_key.rsplit("::", 1)
        if name not in index:
            raise KeyError(f"optimizer checkpoint has state for unknown parameter {name!r}")
        p = params[name]
        # Moments have the parameter's (global) shape: shard them like it; 'step' stays as saved.
        value = shard_like(value, p) if value.ndim and tuple(value.shape) == tuple(p.shape) else value
        state.setdefault(index[name], {})[key] = value
    for name, extra in meta["scalars"].items():
        state.setdefault(index[name], {}).update(extra)
    groups = []
    for live, saved in zip(optimizer.param_groups, meta["param_groups"], strict=True):
        group = {k: (tuple(v) if isinstance(live.get(k), tuple) else v) for k, v in saved.items()}
        group["params"] = [index[n] for n in saved["params"]]
        groups.append(group)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def capture_rng() -> dict[str, Any]:
    """Python, NumPy (legacy global), torch CPU and CUDA generator states as JSON values."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def seed_everything(seed: int, *salt: int) -> None:
    """Seed python, numpy and torch from (seed, *salt), e.g. salt = (rank,) so ranks draw
    different dropout masks. Different salts give unrelated streams (NumPy SeedSequence)."""
    s = int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
