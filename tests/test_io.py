"""Atomic writes: a failure mid-write leaves the old file and no temporary behind."""

from __future__ import annotations

import pytest

from osplab.io import atomic_dir, atomic_path, atomic_write_json


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_dir_swaps_only_when_complete(tmp_path):
    target = tmp_path / "store"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text("2")
            raise RuntimeError("crash")
    assert (target / "x").read_text() == "1"
    (tmp_path / ".store.partial-stale").mkdir()  # left by a kill -9
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("3")
    assert (target / "x").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
