"""Decode a UCF-101-style folder tree (`SRC/ClassName/video.avi`) into a clip store.

    osplab data video-folder UCF-101/ data/raw data=ucf101 [data.video_folder.size=[128,128] ...]

Each video is decoded with PyAV; every `stride`-th frame is kept, resized so its short side matches
the target and centre-cropped to (height, width); `clips_per_video` clips of `frames` frames are taken
at evenly spaced starts. Captions come from the class folder ("ApplyEyeMakeup" -> "a video of apply
eye makeup"). Splits are drawn per UCF group (`v_Class_g08_c01` -> group g08, one actor/scene), so
clips of one group never land in two splits.

A file that cannot be used (empty, unreadable, truncated, too short) is skipped with a warning naming
it. Truncated means fewer frames decode than the container declares (header count, or duration x
frame rate): such a file is skipped whole, not kept in part, because its last decodable frames may
already be damaged. The totals and reasons are printed and kept in the `source.report` entry of the
store's manifest.json. If no file can be used the run fails and nothing is written. The store
appears only when complete (see `osplab.io.atomic_dir`).
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osplab import checks


@dataclass(frozen=True)
class VideoFolderConfig:
    """Decoding settings (values come from conf/data/ucf101.yaml)."""

    frames: int
    stride: int
    clips_per_video: int
    size: list
    val_fraction: float
    test_fraction: float
    extensions: list

    def __post_init__(self) -> None:
        """Type and range checks naming the key (`data.video_folder.stride=0 is not allowed; ...`)."""
        key = "data.video_folder"
        for name in ("frames", "stride", "clips_per_video"):
            checks.integer(f"{key}.{name}", getattr(self, name), 1)
        checks.integers(f"{key}.size", self.size, 1, length=2)
        val = checks.probability(f"{key}.val_fraction", self.val_fraction)
        test = checks.probability(f"{key}.test_fraction", self.test_fraction)
        if val + test > 1.0:
            raise checks.SettingError(
                f"{key}.val_fraction={self.val_fraction} + {key}.test_fraction={self.test_fraction} "
                "is not allowed; allowed: a sum <= 1 (the rest is train)")
        for i, ext in enumerate(checks.sequence(f"{key}.extensions", self.extensions, min_length=1)):
            if not isinstance(ext, str) or not ext.startswith(".") or len(ext) < 2:
                raise checks.SettingError(
                    f"{key}.extensions[{i}]={ext!r} is not allowed; allowed: a file suffix such as '.avi'")

    @classmethod
    def from_conf(cls, node) -> "VideoFolderConfig":
        from omegaconf import OmegaConf

        return cls(**checks.known_keys("data.video_folder", OmegaConf.to_container(node, resolve=True), cls))


class SkipVideo(Exception):
    """A video that cannot be used; the message says why."""


def caption_for(class_name: str) -> str:
    """'ApplyEyeMakeup' -> 'a video of apply eye makeup'; underscores and dashes become spaces."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|[_\-]+", " ", class_name).split()
    return "a video of " + " ".join(w.lower() for w in words)


def split_for(path: Path, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from a hash of (class, group); the group is `gNN` in UCF names, else the stem."""
    match = re.search(r"_(g\d+)_", path.stem)
    key = f"{path.parent.name}/{match.group(1) if match else path.stem}"
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def resize_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (bilinear, antialiased) so the frame covers (height, width), then centre-crop. uint8 (H, W, 3)."""
    from PIL import Image

    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    img = Image.fromarray(frame).resize((new_w, new_h), Image.BILINEAR)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.asarray(img)[top:top + height, left:left + width]


def declared_frames(container, stream) -> int | None:
    """Frame count the container declares for a video stream -> int, or None if it declares nothing.

    The stream header's count (AVI, MP4), else its duration x frame rate, else the container's
    duration (microseconds, the only one Matroska/WebM store up front) x frame rate."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate
    if stream.duration and stream.time_base and rate:
        return int(round(float(stream.duration * stream.time_base * rate)))
    if container.duration and rate:
        return int(round(container.duration / 1e6 * float(rate)))
    return None


def check_complete(decoded: int, declared: int | None) -> None:
    """Raise SkipVideo when fewer frames decode than the container declares (a truncated file).

    A tolerance of 1% (at least 1 frame) absorbs containers whose header is off by an edit list or a
    dropped last frame; a file cut in half is far beyond it."""
    if declared is not None and declared - decoded > max(1, declared // 100):
        raise SkipVideo(f"truncated: decoded {decoded} of the {declared} frames the container declares")


def decode_frames(path: Path, cfg: VideoFolderConfig) -> np.ndarray:
    """Every `stride`-th frame of a video, resized and cropped: uint8 (N, H, W, 3). Raises SkipVideo.

    Every frame is decoded and counted, so a truncated file (fewer decoded frames than declared) is
    skipped rather than kept with a silently shortened or corrupted tail."""
    import av

    if path.stat().st_size == 0:
        raise SkipVideo("empty file (0 bytes)")
    height, width = cfg.size
    kept, decoded = [], 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SkipVideo("no video stream")
            declared = declared_frames(container, container.streams.video[0])
            for i, frame in enumerate(container.decode(video=0)):
                decoded += 1
                if i % cfg.stride == 0:
                    kept.append(resize_crop(frame.to_ndarray(format="rgb24"), height, width))
    except SkipVideo:
        raise
    except (av.FFmpegError, ValueError, OSError) as err:  # unreadable or truncated mid-stream
        raise SkipVideo(f"cannot decode ({type(err).__name__}: {err})") from None
    check_complete(decoded, declared)
    if len(kept) < cfg.frames:
        raise SkipVideo(f"too short: {len(kept)} frames after stride {cfg.stride}, need {cfg.frames}")
    return np.stack(kept)


def clip_starts(available: int, frames: int, clips: int) -> list[int]:
    """`clips` evenly spaced start indices of `frames`-long windows in `available` frames (deduplicated)."""
    last = available - frames
    if clips == 1:
        return [last // 2]
    return sorted({round(k * last / (clips - 1)) for k in range(clips)})


def find_videos(src: Path, extensions: list[str]) -> list[Path]:
    """Videos two levels down (`class/file`), sorted, so the order never depends on the filesystem."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; expected SRC/ClassName/video.avi")
    exts = {e.lower() for e in extensions}
    return sorted(p for p in src.glob("*/*") if p.is_file() and p.suffix.lower() in exts)


def convert(src, dst, cfg: VideoFolderConfig, shard_size: int, progress: bool = True) -> dict:
    """Decode `src` into a clip store at `dst`. Returns the report (read, skipped, reasons, clips)."""
    from tqdm.auto import tqdm

    from osplab.data.store import write_store

    src = Path(src)
    videos = find_videos(src, cfg.extensions)
    if not videos:
        raise FileNotFoundError(f"no videos with extensions {cfg.extensions} under {src}/*/")
    report = {"source": str(src), "videos": len(videos), "read": 0, "skipped": 0, "reasons": {}}

    def records():
        for path in tqdm(videos, desc="decode", unit="video", disable=not progress):
            try:
                frames = decode_frames(path, cfg)
            except SkipVideo as why:
                report["skipped"] += 1
                report["reasons"][str(path.relative_to(src))] = str(why)
                tqdm.write(f"warning: skipping {path}: {why}", file=sys.stderr)
                continue
            report["read"] += 1
            split = split_for(path, cfg.val_fraction, cfg.test_fraction)
            for k, start in enumerate(clip_starts(len(frames), cfg.frames, cfg.clips_per_video)):
                meta = {"id": f"{path.parent.name}/{path.stem}/c{k}", "caption": caption_for(path.parent.name),
                        "source": str(path.relative_to(src)), "start_frame": start * cfg.stride}
                yield split, np.ascontiguousarray(frames[start:start + cfg.frames]), meta

    source = {"kind": "video_folder", **vars(cfg), "report": report}
    try:
        manifest = write_store(dst, records(), shard_size, source)
    except RuntimeError:
        if report["read"] == 0:
            raise RuntimeError(f"none of the {len(videos)} videos under {src} could be used: "
                               + "; ".join(f"{k}: {v}" for k, v in report["reasons"].items())) from None
        raise
    report["clips"] = manifest["clips"]
    return report
