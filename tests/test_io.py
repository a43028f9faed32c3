"""Atomic writes: a failure mid-write leaves the old file and no temporary behind."""

from __future__ import annotations

import json
import os
import stat

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
    with atomic_dir(target, family="osplab-test") as tmp:
        _store(tmp)
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target, family="osplab-test") as tmp:
            (tmp / "x").write_text("2")
            raise RuntimeError("crash")
    assert (target / "x").read_text() == "1"
    (tmp_path / ".store.partial-stale").mkdir()  # left by a kill -9
    with atomic_dir(target, family="osplab-test") as tmp:
        _store(tmp)
        (tmp / "x").write_text("3")
    assert (target / "x").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def _store(tmp, family="osplab-test/1"):
    (tmp / "manifest.json").write_text(json.dumps({"format": family}))


def test_atomic_dir_refuses_a_file_and_touches_nothing(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text("user: data\n")
    with pytest.raises(FileExistsError, match="params.yaml exists and is not a folder"):
        with atomic_dir(target, family="osplab-test") as tmp:
            _store(tmp)
    assert target.read_text() == "user: data\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing moved, no hidden copy


@pytest.mark.parametrize("content", [None, "osplab-other/1", "not json"])
def test_atomic_dir_refuses_a_folder_it_does_not_own(tmp_path, content):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    if content is not None:
        (target / "manifest.json").write_text(json.dumps({"format": content}) if "/" in content else content)
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(FileExistsError, match="refusing to replace"):
        with atomic_dir(target, family="osplab-test") as tmp:
            _store(tmp)
    assert sorted(p.name for p in target.iterdir()) == before
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_atomic_dir_replaces_own_store_and_empty_folder(tmp_path):
    target = tmp_path / "store"
    target.mkdir()  # an empty folder holds nothing to lose
    with atomic_dir(target, family="osplab-test") as tmp:
        _store(tmp)
        (tmp / "x").write_text("1")
    with atomic_dir(target, family="osplab-test") as tmp:  # its own store (another version) is replaced
        _store(tmp, "osplab-test/2")
        (tmp / "x").write_text("2")
    assert (target / "x").read_text() == "2"
    assert json.loads((target / "manifest.json").read_text())["format"] == "osplab-test/2"


def test_atomic_dir_follows_a_symlink(tmp_path):
    real = tmp_path / "disk" / "store"
    real.parent.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with atomic_dir(link, family="osplab-test") as tmp:
        _store(tmp)
    assert link.is_symlink() and (real / "manifest.json").is_file()


def test_atomic_dir_gives_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "store", family="osplab-test") as tmp:
            _store(tmp)
            (tmp / "sub").mkdir()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "store" / "manifest.json").stat().st_mode) == 0o644


def test_atomic_path_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644


def test_atomic_path_refuses_a_folder(tmp_path):
    (tmp_path / "m.json").mkdir()
    (tmp_path / "m.json" / "keep").write_text("1")
    with pytest.raises(IsADirectoryError, match="m.json is a folder"):
        atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json" / "keep").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
