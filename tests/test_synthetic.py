"""The embedded dataset: determinism, captions that tell the truth about the pixels, disjoint splits."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from osplab.config import compose
from osplab.data import synthetic
from osplab.data.store import read_manifest
from osplab.data.synthetic import COLOURS, SPEEDS, SynthConfig, generate_store, make_clip

OBJECT = re.compile(r"a (small|large) (\w+) (circle|square|triangle) \w+ (left|right|up|down) (slowly|quickly)"
                    r"( and bounces off the walls)?")
STEP = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path, smoke_cfg, smoke_store):
    cfg = SynthConfig.from_conf(smoke_cfg.data.synthetic)
    generate_store(tmp_path / "again", cfg, smoke_cfg.data.shard_size, progress=False)
    assert tree_digest(tmp_path / "again") == tree_digest(smoke_store)
    generate_store(tmp_path / "other", replace(cfg, seed=cfg.seed + 1), smoke_cfg.data.shard_size, progress=False)
    assert tree_digest(tmp_path / "other") != tree_digest(smoke_store)


def test_golden_manifest_hash(smoke_store):
    """The smoke store's bytes are pinned: a change here means the raw stage hash in dvc.lock would break on some machine."""
    digest = hashlib.sha256((smoke_store / "manifest.json").read_bytes()).hexdigest()
    golden = (Path(__file__).parent / "fixtures" / "smoke_manifest.sha256").read_text().split()[0]
    assert digest == golden, "generator output changed: if intended, update the fixture and dvc.lock (`make data`)"


def test_store_has_buckets_splits_and_captions(smoke_store, smoke_cfg):
    manifest = read_manifest(smoke_store)
    assert manifest["clips"] == dict(smoke_cfg.data.synthetic.num_clips)
    shapes = {(s["frames"], s["height"], s["width"]) for s in manifest["shards"]}
    assert {t for t, _, _ in shapes} == set(smoke_cfg.data.synthetic.frames)
    assert {(h, w) for _, h, w in shapes} == {tuple(r) for r in smoke_cfg.data.synthetic.resolutions}
    for shard in manifest["shards"]:
        arr = np.load(smoke_store / shard["path"])
        assert arr.dtype == np.uint8 and arr.shape == (shard["clips"], shard["frames"], shard["height"], shard["width"], 3)


def test_splits_are_disjoint(smoke_store):
    from osplab.data.clips import ClipDataset

    seen = {}
    for split in ("train", "val", "test"):
        ds = ClipDataset(smoke_store, split)
        hashes = {hashlib.sha256(ds[i]["video"].tobytes()).hexdigest() for i in range(len(ds))}
        assert len(hashes) == len(ds), f"duplicate clips inside {split}"
        for other, other_hashes in seen.items():
            assert not hashes & other_hashes, f"{split} and {other} share clips"
        seen[split] = hashes


def colour_centroids(video: np.ndarray, rgb) -> np.ndarray:
    """(T, 2) centroid (y, x) of pixels within 30 of `rgb` per channel, NaN where absent."""
    mask = np.all(np.abs(video.astype(int) - np.asarray(rgb)) <= 30, axis=-1)
    out = np.full((len(video), 2), np.nan)
    for t, m in enumerate(mask):
        if m.sum() >= 4:
            out[t] = np.argwhere(m).mean(axis=0)
    return out


def default_clips(n: int):
    cfg = SynthConfig.from_conf(compose(["profile=default"]).data.synthetic)
    return [make_clip(cfg, "val", i) for i in range(n)]


def test_captions_match_motion():
    checked = 0
    for clip in default_clips(80):
        objects = OBJECT.findall(clip.caption)
        assert objects, clip.caption
        if len(objects) > 1:
            continue  # the other object could occlude this one and drag its centroid
        size, colour, _, direction, speed, bounces = objects[0]
        track = colour_centroids(clip.frames, COLOURS[colour])
        axis = 0 if direction in ("up", "down") else 1
        unit = min(clip.frames.shape[1:3])
        want = np.asarray(STEP[direction]) * SPEEDS[speed] * unit / 64       # pixels per frame
        along = np.diff(track[:, axis])
        # the first two frames always move as the caption says (bouncers start >= 2 steps from a wall)
        assert np.sign(track[2, axis] - track[0, axis]) == want[axis] / abs(want[axis]), clip.caption
        reverses = bool(np.any(np.sign(along) == -np.sign(along[0])))
        assert reverses == bool(bounces), (clip.caption, along)
        if not bounces:  # mean velocity over the clip (thresholded centroids wobble by < 1 px per frame)
            velocity = (track[-1] - track[0]) / (len(track) - 1)
            assert np.allclose(velocity, want, atol=0.15), (clip.caption, velocity, want)
        checked += 1
    assert checked >= 20


def test_sizes_in_captions_match_area():
    areas = {"small": [], "large": []}
    for clip in default_clips(60):
        objects = OBJECT.findall(clip.caption)
        if len(objects) == 1 and objects[0][2] == "square":
            mask = np.all(np.abs(clip.frames[0].astype(int) - COLOURS[objects[0][1]]) <= 30, axis=-1)
            areas[objects[0][0]].append(mask.sum() / mask.size)
    assert areas["small"] and areas["large"]
    assert min(areas["large"]) > 2 * max(areas["small"])


def test_failed_generation_leaves_previous_store(tmp_path, smoke_cfg, monkeypatch):
    cfg = SynthConfig.from_conf(smoke_cfg.data.synthetic)
    root = tmp_path / "raw"
    generate_store(root, cfg, smoke_cfg.data.shard_size, progress=False)
    before = tree_digest(root)
    real = synthetic.make_clip

    def broken(cfg, split, index):
        if split == "val":
            raise KeyboardInterrupt("simulated kill")
        return real(cfg, split, index)

    monkeypatch.setattr(synthetic, "make_clip", broken)
    with pytest.raises(KeyboardInterrupt):
        generate_store(root, replace(cfg, seed=99), smoke_cfg.data.shard_size, progress=False)
    assert tree_digest(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]
