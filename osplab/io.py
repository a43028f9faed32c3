"""Atomic file writes: a temporary file in the same folder, fsync, then `os.replace`.

A process killed mid-write leaves either the old file or the new one, never half of one. The
temporary names start with `.` and end with `.tmp` so they are easy to recognise and clean up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    `path` may be absent or a file (replaced); a folder there is refused before anything is written."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; refusing to replace it with a file. Give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # after the writer: some (safetensors) replace the file rather than write into it.
        # mkstemp makes 0600 files; give the result ordinary permissions.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Deterministic JSON (sorted keys, fixed indent, trailing newline), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _check_replaceable(path: Path, family: str | None) -> None:
    """Raise unless `path` is absent, an empty folder, or a store of `family` (manifest.json "format": "FAMILY/...")."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; refusing to replace it with a store. "
                              "Choose another destination (or remove the file yourself)")
    if not any(path.iterdir()):
        return
    manifest = path / "manifest.json"
    fmt = None
    if manifest.is_file():
        try:
            fmt = json.loads(manifest.read_text()).get("format")
        except (ValueError, OSError, AttributeError):
            fmt = None
    if family is None or not isinstance(fmt, str) or fmt.split("/")[0] != family:
        what = f"a store of format {fmt!r}" if isinstance(fmt, str) else "not an osplab store (no readable manifest.json)"
        raise FileExistsError(f"{path} is a non-empty folder and {what}; refusing to replace it"
                              + (f" with a {family!r} store" if family else "")
                              + ". Choose another destination (or remove the folder yourself)")


@contextmanager
def atomic_dir(path: str | os.PathLike, family: str | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name, then swap it in place of `path`.

    `path` may be absent, an empty folder, or a store this writer owns: a folder whose manifest.json
    has `"format": "FAMILY/<version>"` with FAMILY == `family`. Anything else (a file, a user's folder,
    another kind of store) raises FileExistsError before anything is touched. A symlink is followed:
    the store is written where it points. The old store is replaced only after the new one is
    complete. Stale partial folders left by a killed run (`.NAME.partial-*`) are removed first. The
    new folder gets ordinary permissions (0777 minus the umask; `mkdtemp` alone makes it 0700).
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    _check_replaceable(path, family)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _check_replaceable(path, family)  # the destination may have appeared while the store was built
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.partial-old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
