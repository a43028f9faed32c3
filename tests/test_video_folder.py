"""The video-folder reader on videos encoded here with PyAV, broken ones included."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from osplab.cli import main as cli_main
from osplab.data import video_folder
from osplab.data.clips import ClipDataset
from osplab.data.video_folder import VideoFolderConfig, caption_for, clip_starts, convert, split_for


def encode(path: Path, frames: int, height: int = 48, width: int = 64, seed: int = 0) -> None:
    """A small MPEG-4 AVI: a bright bar sweeping right over a seeded dark background."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        base = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        for t in range(frames):
            img = base.copy()
            img[:, (3 * t) % width:(3 * t) % width + 6] = (230, 200, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def config(**kw) -> VideoFolderConfig:
    base = dict(frames=8, stride=2, clips_per_video=2, size=[32, 32], val_fraction=0.3, test_fraction=0.3,
                extensions=[".avi"])
    return VideoFolderConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ucf_tree(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("ucf")
    for c, cls in enumerate(["ApplyEyeMakeup", "YoYo"]):
        for g in range(1, 4):
            encode(src / cls / f"v_{cls}_g{g:02d}_c01.avi", frames=40, seed=10 * c + g)
    good = (src / "YoYo" / "v_YoYo_g01_c01.avi").read_bytes()
    (src / "YoYo" / "v_YoYo_g07_c01.avi").write_bytes(b"")                      # zero bytes
    (src / "YoYo" / "v_YoYo_g08_c01.avi").write_bytes(b"not a video at all" * 50)  # unreadable
    (src / "YoYo" / "v_YoYo_g09_c01.avi").write_bytes(good[: len(good) // 4])     # truncated
    encode(src / "YoYo" / "v_YoYo_g10_c01.avi", frames=5)                        # too short
    (src / "YoYo" / "notes.txt").write_text("ignored: not a video extension")
    return src


def test_caption_and_split_helpers():
    assert caption_for("ApplyEyeMakeup") == "a video of apply eye makeup"
    assert caption_for("YoYo") == "a video of yo yo"
    assert caption_for("jumping_jack") == "a video of jumping jack"
    a, b = Path("C/v_C_g03_c01.avi"), Path("C/v_C_g03_c05.avi")
    assert split_for(a, 0.3, 0.3) == split_for(b, 0.3, 0.3)  # same group, same split
    assert clip_starts(20, 8, 1) == [6] and clip_starts(20, 8, 3) == [0, 6, 12] and clip_starts(8, 8, 4) == [0]


def test_convert_reads_good_and_reports_bad(ucf_tree, tmp_path, capsys):
    report = convert(ucf_tree, tmp_path / "store", config(), shard_size=4, progress=False)
    assert report["videos"] == 10 and report["read"] == 6 and report["skipped"] == 4
    reasons = report["reasons"]
    assert "empty" in reasons["YoYo/v_YoYo_g07_c01.avi"]
    assert "cannot decode" in reasons["YoYo/v_YoYo_g08_c01.avi"]
    assert reasons["YoYo/v_YoYo_g09_c01.avi"]  # truncated: undecodable or too short, but named
    assert "too short" in reasons["YoYo/v_YoYo_g10_c01.avi"]
    warnings = capsys.readouterr().err
    assert all(f"skipping {ucf_tree / name}" in warnings for name in reasons)
    assert sum(report["clips"].values()) == 12  # 6 videos x 2 clips
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["source"]["report"]["skipped"] == 4
    rows = [json.loads(line) for line in (tmp_path / "store" / "captions.jsonl").read_text().splitlines()]
    assert {r["caption"] for r in rows} == {"a video of apply eye makeup", "a video of yo yo"}
    split = next(s for s in ("train", "val", "test") if s in manifest["clips"])
    item = ClipDataset(tmp_path / "store", split)[0]
    assert item["video"].shape == (8, 32, 32, 3) and item["video"].dtype == np.uint8


def test_stride_and_crop_follow_the_bar(tmp_path):
    """The yellow bar moves 3 px per source frame; with stride 2 it moves 6 px (x 32/64 scale) per clip frame."""
    encode(tmp_path / "src" / "Bar" / "v_Bar_g01_c01.avi", frames=30, height=64, width=64)
    convert(tmp_path / "src", tmp_path / "out", config(size=[32, 32], clips_per_video=1, val_fraction=0,
            test_fraction=0), shard_size=4, progress=False)
    video = ClipDataset(tmp_path / "out", "train")[0]["video"].astype(int)
    bar = (video[..., 0] > 150) & (video[..., 2] < 120)
    xs = np.array([np.argwhere(f)[:, 1].mean() for f in bar])
    assert np.allclose(np.diff(xs), 3.0, atol=0.5), xs


def test_all_bad_fails_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "src" / "Cls"
    src.mkdir(parents=True)
    (src / "a.avi").write_bytes(b"")
    (src / "b.avi").write_bytes(b"garbage" * 10)
    code = cli_main(["data", "video-folder", str(tmp_path / "src"), str(tmp_path / "dst")])
    assert code == 1
    err = capsys.readouterr().err
    assert "none of the 2 videos" in err and "a.avi" in err and "b.avi" in err
    assert not (tmp_path / "dst").exists()
    assert not list(tmp_path.glob(".dst.partial-*"))


def test_interrupted_run_leaves_nothing(ucf_tree, tmp_path, monkeypatch):
    real = video_folder.decode_frames
    calls = {"n": 0}

    def dying(path, cfg):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill")
        return real(path, cfg)

    monkeypatch.setattr(video_folder, "decode_frames", dying)
    with pytest.raises(KeyboardInterrupt):
        convert(ucf_tree, tmp_path / "store", config(), shard_size=2, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected SRC/ClassName/video.avi"):
        convert(tmp_path / "nope", tmp_path / "dst", config(), shard_size=2, progress=False)


@pytest.mark.parametrize("ext", [".avi", ".mkv"])  # frame count in the header / only a duration
def test_truncated_video_is_reported_and_skipped(tmp_path, ext):
    """A real 200-frame video cut to half its bytes still opens but decodes only part of its frames."""
    whole = tmp_path / "Cls" / f"v_Cls_g01_c01{ext}"
    encode(whole, frames=200)
    frames = video_folder.decode_frames(whole, config(stride=1))
    assert len(frames) == 200  # the intact file decodes completely: no false alarm
    half = tmp_path / "Cls" / f"v_Cls_g02_c01{ext}"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with av.open(str(half)) as box:  # the header still declares every frame, fewer decode
        declared = video_folder.declared_frames(box, box.streams.video[0])
        decoded = sum(1 for _ in box.decode(video=0))
    assert declared == 200 and 8 <= decoded < 190  # long enough for a clip: only the new check catches it
    with pytest.raises(video_folder.SkipVideo, match=f"truncated: decoded {decoded} of the 200 frames"):
        video_folder.decode_frames(half, config(stride=1))
    report = convert(tmp_path, tmp_path / "store", config(stride=1, val_fraction=0, test_fraction=0,
                     extensions=[ext]), shard_size=2, progress=False)
    assert report["read"] == 1 and report["skipped"] == 1 and "truncated" in report["reasons"][str(half.relative_to(tmp_path))]


def test_check_complete_tolerance():
    video_folder.check_complete(199, 200)      # one frame short: a header off by one is tolerated
    video_folder.check_complete(5, None)       # nothing declared: nothing to compare
    video_folder.check_complete(990, 1000)     # 1%
    with pytest.raises(video_folder.SkipVideo, match="decoded 989 of the 1000"):
        video_folder.check_complete(989, 1000)
    with pytest.raises(video_folder.SkipVideo, match="decoded 197 of the 200"):
        video_folder.check_complete(197, 200)


def test_skip_warnings_get_their_own_line_beside_the_progress_bar(ucf_tree, tmp_path, capsys):
    convert(ucf_tree, tmp_path / "store", config(), shard_size=4, progress=True)
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if "warning: skipping" in line]
    assert len(lines) == 4
    for line in lines:  # what the terminal shows after the last carriage return: the warning alone
        assert line.split("\r")[-1].startswith("warning: skipping"), repr(line)
