"""Clip store reading, the bucketing sampler, verification and the `data` stage."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from osplab.data.clips import BucketBatchSampler, ClipDataset, CurriculumBatchSampler
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


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_bucket_sampler_batches_one_shape_and_covers_each_epoch(smoke_store):
    shapes = ClipDataset(smoke_store, "train").shapes()
    sampler = BucketBatchSampler(shapes, rank=0, world_size=1, global_batch=4, micro_batch=2, seed=3)
    per_epoch = sampler.batches_per_epoch
    micro = take(sampler, 2 * per_epoch)
    assert all(len({shapes[i] for i in m}) == 1 for m in micro)
    assert all(shapes[a[0]] == shapes[b[0]] for a, b in zip(micro[::2], micro[1::2]))  # one shape per global batch
    epoch0 = [i for m in micro[:per_epoch] for i in m]
    assert len(set(epoch0)) == len(epoch0) == per_epoch * 2  # no clip twice in an epoch
    assert micro[:per_epoch] != micro[per_epoch:]             # a new shuffle each epoch


def test_bucket_sampler_resumes_and_shards(smoke_store):
    shapes = ClipDataset(smoke_store, "train").shapes()
    one = BucketBatchSampler(shapes, rank=0, world_size=1, global_batch=4, micro_batch=2, seed=3)
    full = take(one, 12)
    one.start = 3  # resume at global batch 3
    assert take(one, 6) == full[6:12]
    ranks = [BucketBatchSampler(shapes, rank=r, world_size=2, global_batch=4, micro_batch=2, seed=3) for r in (0, 1)]
    zipped = [m for pair in zip(take(ranks[0], 6), take(ranks[1], 6)) for m in pair]
    assert zipped == full[:12]  # two ranks together see exactly the one-process stream
    with pytest.raises(ValueError, match="no shape bucket holds a full global batch of 64"):
        BucketBatchSampler(shapes, rank=0, world_size=1, global_batch=64, micro_batch=8, seed=0)


def test_curriculum_sampler_phases_resume_and_shards():
    shapes = [(2, 4, 4)] * 20 + [(4, 4, 4)] * 12  # two buckets
    first = list(range(0, 32, 3))                 # the 'easy' clips: 7 of the first bucket, 4 of the second
    one = CurriculumBatchSampler(shapes, first, 5, rank=0, world_size=1, global_batch=4, micro_batch=2, seed=1)
    stream = take(one, 20)                        # 10 global batches: 5 easy, then 5 from every clip
    assert all(i in first for m in stream[:10] for i in m)
    assert any(i not in first for m in stream[10:] for i in m)
    assert all(len({shapes[i] for i in m}) == 1 for m in stream)
    whole = BucketBatchSampler(shapes, rank=0, world_size=1, global_batch=4, micro_batch=2, seed=1)
    assert stream[10:] == take(whole, 10)         # phase 2 is the whole split's stream from its start
    for start in (2, 5, 7):                       # resume inside phase 1, at the switch, inside phase 2
        one.start = start
        assert take(one, 20 - 2 * start) == stream[2 * start:]
    ranks = [CurriculumBatchSampler(shapes, first, 5, rank=r, world_size=2, global_batch=4, micro_batch=2, seed=1)
             for r in (0, 1)]
    zipped = [m for pair in zip(take(ranks[0], 10), take(ranks[1], 10)) for m in pair]
    assert [i for m in zipped for i in m] == [i for m in stream for i in m]  # the same clips per step on 2 ranks
    off = CurriculumBatchSampler(shapes, [], 0, rank=0, world_size=1, global_batch=4, micro_batch=2, seed=1)
    whole.start = 0
    assert take(off, 12) == take(whole, 12)      # switch 0: the plain bucketing stream
    with pytest.raises(ValueError, match=r"curriculum's subset \(2 clips\): no shape bucket"):
        CurriculumBatchSampler(shapes, [0, 1], 5, rank=0, world_size=1, global_batch=4, micro_batch=2, seed=1)


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
