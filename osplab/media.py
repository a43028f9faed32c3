"""Writing clips as files people can play: mp4 (H.264 through PyAV) and animated GIF (Pillow).

Both are written atomically (osplab.io): a killed run leaves the old file or none, never half.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from osplab.io import atomic_path


def _check_video(video: np.ndarray) -> None:
    if not (isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3):
        raise ValueError(f"expected a uint8 video (T, H, W, 3), got {getattr(video, 'dtype', type(video))} "
                         f"{getattr(video, 'shape', '')}")
    if len(video) == 0:
        raise ValueError("the video has no frames")


def write_mp4(path: str | os.PathLike, video: np.ndarray, fps: int = 8, upscale: int = 1) -> None:
    """uint8 (T, H, W, 3) -> H.264 mp4 (yuv420p, crf 18). `upscale` repeats pixels (nearest), so a
    64x64 clip is not a blur in a player; H.264 needs even sizes, which upscale >= 2 guarantees."""
    import av

    _check_video(video)
    if upscale > 1:
        video = video.repeat(upscale, axis=1).repeat(upscale, axis=2)
    _, h, w, _ = video.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 needs even frame sizes, got {h}x{w}; pass upscale=2")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as box:
            stream = box.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": "18"}
            for frame in video:
                box.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            box.mux(stream.encode())


def write_gif(path: str | os.PathLike, video: np.ndarray, fps: int = 8, upscale: int = 1) -> None:
    """uint8 (T, H, W, 3) -> looping animated GIF."""
    from PIL import Image

    _check_video(video)
    if upscale > 1:
        video = video.repeat(upscale, axis=1).repeat(upscale, axis=2)
    frames = [Image.fromarray(f) for f in video]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def write_video(path: str | os.PathLike, video: np.ndarray, fps: int = 8, upscale: int = 1) -> None:
    """By suffix: .mp4 or .gif."""
    suffix = Path(path).suffix.lower()
    if suffix == ".mp4":
        write_mp4(path, video, fps, upscale)
    elif suffix == ".gif":
        write_gif(path, video, fps, upscale)
    else:
        raise ValueError(f"{path}: unknown video type {suffix!r}; use .mp4 or .gif")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a video file -> uint8 (T, H, W, 3) (for checks and tests)."""
    import av

    with av.open(str(path)) as box:
        return np.stack([f.to_ndarray(format="rgb24") for f in box.decode(video=0)])
