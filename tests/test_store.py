"""Clip store reading, the bucketing sampler, verification and the `data` stage."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from osplab.data.clips import BucketBatchSampler, ClipDataset
from osplab.data.store import read_manifest, verify_store
from osplab.io import atomic_write_text
from osplab.stages import data as data_stage


def test_dataset_items(smoke_store):
    ds = ClipDataset(smoke_store, "train")
    assert len(ds) == 24
    item = ds[3]
    assert item["video"].shape == ds.shape_of(3) + (3,) and item["video"].dtype == np.uint8
    assert item["caption"] == ds.captions()[3] and item["id"].startswith("train/")
    with pytest.raises(ValueError, match="no split 'bogus'"):
        ClipDataset(smoke_store, "bogus")


def test_bucket_sampler_batches_one_shape_each_and_covers_all(smoke_store):
    shapes = ClipDataset(smoke_store, "train").shapes()
    sampler = BucketBatchSampler(shapes, batch_size=5, seed=3, epoch=0)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(len(shapes)))
    assert all(len({shapes[i] for i in b}) == 1 for b in batches)
    assert batches == BucketBatchSampler(shapes, 5, seed=3, epoch=0).batches()
    assert batches != BucketBatchSampler(shapes, 5, seed=3, epoch=1).batches()
    dropped = BucketBatchSampler(shapes, 5, seed=3, drop_last=True).batches()
    assert all(len(b) == 5 for b in dropped)


def test_verify_detects_corruption(smoke_store, tmp_path):
    copy = tmp_path / "raw"
    shutil.copytree(smoke_store, copy)
    assert verify_store(copy) == []
    shard = copy / read_manifest(copy)["shards"][0]["path"]
    arr = np.load(shard)
    arr[0, 0, 0, 0, 0] ^= 1
    np.save(shard, arr)
    (copy / read_manifest(copy)["shards"][1]["path"]).unlink()
    problems = verify_store(copy)
    assert len(problems) == 2 and "sha256" in problems[0] and "missing" in problems[1]


def test_data_stage_writes_stats_and_preview(smoke_store, tmp_path):
    params = tmp_path / "params.yaml"
    atomic_write_text(params, f"data:\n  root: {smoke_store}\n")
    code = data_stage.main(["--params", str(params), "--metrics", str(tmp_path / "m.json"),
                            "--reports", str(tmp_path / "r")])
    assert code == 0
    import json

    stats = json.loads((tmp_path / "m.json").read_text())
    assert stats["splits"]["train"]["clips"] == 24
    assert sum(stats["splits"]["val"]["buckets"].values()) == 8
    assert 0 < stats["splits"]["train"]["frame_diff_mean"] < 50
    assert (tmp_path / "r" / "data_preview.png").read_bytes()[:4] == b"\x89PNG"


def test_data_stage_refuses_a_corrupt_store(smoke_store, tmp_path, capsys):
    copy = tmp_path / "raw"
    shutil.copytree(smoke_store, copy)
    (copy / read_manifest(copy)["shards"][0]["path"]).write_bytes(b"")
    params = tmp_path / "params.yaml"
    atomic_write_text(params, f"data:\n  root: {copy}\n")
    assert data_stage.main(["--params", str(params), "--metrics", str(tmp_path / "m.json"),
                            "--reports", str(tmp_path / "r")]) == 1
    assert "does not match its manifest" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
