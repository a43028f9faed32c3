"""The embedded dataset: captioned clips of moving shapes, generated deterministically.

Each clip is drawn from its own random stream, seeded by (dataset seed, split, clip index), so a clip
does not depend on how many others are generated or in which order. A scene has one or two objects
(shape, colour, size, direction, speed, optional bounce) over a plain or textured background; its
caption is written from what the trajectory really does (an object whose path does not fit in the
frame bounces, and the caption says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from osplab import checks
from osplab.data.render import render_clip

SPLITS = ("train", "val", "test")
COLOURS = {
    "red": (220, 50, 50), "green": (50, 190, 70), "blue": (60, 90, 230), "yellow": (235, 210, 50),
    "orange": (240, 140, 40), "purple": (160, 70, 210), "white": (235, 235, 235), "cyan": (50, 200, 210),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.09, "large": 0.16}      # half-extent as a fraction of min(H, W)
SPEEDS = {"slowly": 1.0, "quickly": 2.0}    # pixels per frame at min(H, W) = 64
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (dy, dx) unit steps
VERBS = ("moves", "slides", "glides")
PLAIN_BACKGROUNDS = ((16, 16, 20), (30, 30, 46), (40, 24, 24), (20, 40, 30))


@dataclass(frozen=True)
class SynthConfig:
    """Generator settings (values come from conf/data/synthetic.yaml)."""

    seed: int
    num_clips: dict
    frames: list
    resolutions: list
    p_two_objects: float
    p_bounce: float
    p_textured: float

    def __post_init__(self) -> None:
        """Type and range checks naming the key (`data.synthetic.frames[0]=0 is not allowed; ...`).

        Values are checked, not converted: they are written to the store's manifest as given."""
        key = "data.synthetic"
        checks.integer(f"{key}.seed", self.seed, 0)
        if not isinstance(self.num_clips, Mapping) or not set(self.num_clips) <= set(SPLITS):
            raise checks.SettingError(
                f"{key}.num_clips={self.num_clips!r} is not allowed; allowed: a mapping of splits "
                f"{SPLITS} to clip counts, e.g. {{train: 2000, val: 200, test: 200}}")
        counts = [checks.integer(f"{key}.num_clips.{s}", n, 0) for s, n in self.num_clips.items()]
        if sum(counts) < 1:
            raise checks.SettingError(
                f"{key}.num_clips={self.num_clips!r} is not allowed; allowed: at least one clip in total")
        checks.integers(f"{key}.frames", self.frames, 1)
        resolutions = checks.sequence(f"{key}.resolutions", self.resolutions, min_length=1)
        for i, hw in enumerate(resolutions):
            checks.integers(f"{key}.resolutions[{i}]", hw, 1, length=2)
        for name in ("p_two_objects", "p_bounce", "p_textured"):
            checks.probability(f"{key}.{name}", getattr(self, name))

    @classmethod
    def from_conf(cls, node) -> "SynthConfig":
        """From the `data.synthetic` node of a composed config (OmegaConf -> plain python)."""
        from omegaconf import OmegaConf

        return cls(**checks.known_keys("data.synthetic", OmegaConf.to_container(node, resolve=True), cls))


@dataclass
class Clip:
    """One generated clip: uint8 frames (T, H, W, 3), its caption and the scene description."""

    frames: np.ndarray
    caption: str
    scene: dict


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one clip, independent of every other clip's."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))


def fold(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect positions into [lo, hi] (a ball bouncing off two walls)."""
    span = hi - lo
    q = np.mod(u - lo, 2.0 * span)
    return lo + np.where(q > span, 2.0 * span - q, q)


def _start_along(rng, lo, hi, step, frames, bounce) -> float:
    """Start coordinate along the motion axis, moving by `step` px/frame (signed).

    A non-bouncing object starts where its whole path fits; a bouncing one where it meets the wall
    ahead after at least two frames and before the clip ends. Falls back to bouncing when the path
    cannot fit, and to not bouncing when the clip is too short to reach a wall.
    """
    travel, speed = abs(step) * (frames - 1), abs(step)
    room = hi - lo
    if not bounce and travel <= room:
        ahead = rng.uniform(travel, room)          # free distance in front of the object
    else:
        ahead = rng.uniform(min(2 * speed, room), min(max(travel - speed, 2 * speed), room))
    return hi - ahead if step > 0 else lo + ahead


def sample_object(rng: np.random.Generator, height: int, width: int, frames: int, p_bounce: float, taken: set):
    """One object's description and centre trajectory (T, 2) in pixels."""
    colour = str(rng.choice(sorted(set(COLOURS) - taken)))
    shape, size = str(rng.choice(SHAPES)), str(rng.choice(sorted(SIZES)))
    direction, speed = str(rng.choice(sorted(DIRECTIONS))), str(rng.choice(sorted(SPEEDS)))
    want_bounce = bool(rng.random() < p_bounce)
    unit = min(height, width)
    radius = SIZES[size] * unit
    step = SPEEDS[speed] * unit / 64.0
    axis_step = np.asarray(DIRECTIONS[direction], dtype=np.float64) * step
    lo = np.array([radius, radius])
    hi = np.array([height - radius, width - radius])
    axis = 0 if axis_step[0] != 0 else 1
    start = np.array([rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1])])
    start[axis] = _start_along(rng, lo[axis], hi[axis], axis_step[axis], frames, want_bounce)
    free = start[None, :] + np.arange(frames, dtype=np.float64)[:, None] * axis_step[None, :]
    outside = (free < lo) | (free > hi)                      # (T, 2): where the wall reflects the path
    path = np.where(outside, np.stack([fold(free[:, a], lo[a], hi[a]) for a in range(2)], axis=1), free)
    bounces = bool(outside.any())
    obj = {"shape": shape, "colour": colour, "rgb": COLOURS[colour], "size": size, "radius": radius,
           "direction": direction, "speed": speed, "bounces": bounces, "verb": str(rng.choice(VERBS))}
    return obj, path


TEXTURE_CELL = 16  # pixels between the random grey levels of a textured background


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """(H, W) float64 value noise: random grey levels on a `cell`-pixel grid, bilinearly interpolated.

    Smooth on the scale of the VQVAE's 8x8 latent cells, so a textured background is compressible
    (random per-pixel blocks are not at 8x8x4 compression). Only +, *, / are used: exact everywhere.
    """
    grid = rng.integers(25, 76, size=(height // cell + 2, width // cell + 2)).astype(np.float64)

    def axis(n):
        pos = (np.arange(n, dtype=np.float64) + 0.5) / cell
        lo = np.floor(pos).astype(int)
        return lo, pos - lo

    (y0, fy), (x0, fx) = axis(height), axis(width)
    fy, fx = fy[:, None], fx[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def sample_background(rng: np.random.Generator, height: int, width: int, textured: bool) -> np.ndarray:
    """(H, W, 3) float64 background: a dark plain colour, or dark tinted smooth value noise."""
    if not textured:
        colour = PLAIN_BACKGROUNDS[int(rng.integers(len(PLAIN_BACKGROUNDS)))]
        return np.broadcast_to(np.asarray(colour, np.float64), (height, width, 3)).copy()
    gray = smooth_noise(rng, height, width, TEXTURE_CELL)
    tint = rng.integers(-8, 9, size=3).astype(np.float64)
    return gray[..., None] + tint


CLAUSE_JOIN = " while "  # joins the clauses of a two-object caption
BOUNCE_TEXT = " and bounces off the walls"


def describe(obj: dict) -> str:
    """'a small red circle moves left slowly' (+ ' and bounces off the walls')."""
    text = f"a {obj['size']} {obj['colour']} {obj['shape']} {obj['verb']} {obj['direction']} {obj['speed']}"
    return text + (BOUNCE_TEXT if obj["bounces"] else "")


def is_simple_caption(caption: str) -> bool:
    """True when a caption of this generator names one object that does not bounce (the easy clips
    of a training curriculum, osplab.tasks.dit). Any other text (e.g. UCF-101 class names) is also
    'simple' by this test; callers check that the subset is a proper one."""
    return CLAUSE_JOIN not in caption and BOUNCE_TEXT not in caption


def make_clip(cfg: SynthConfig, split: str, index: int) -> Clip:
    """Generate clip `index` of `split`: frames, caption and scene (JSON-serialisable)."""
    rng = clip_rng(cfg.seed, split, index)
    frames = int(rng.choice(cfg.frames))
    height, width = (int(v) for v in cfg.resolutions[int(rng.integers(len(cfg.resolutions)))])
    textured = bool(rng.random() < cfg.p_textured)
    n_objects = 2 if rng.random() < cfg.p_two_objects else 1
    background = sample_background(rng, height, width, textured)
    objects, paths, taken = [], [], set()
    for _ in range(n_objects):
        obj, path = sample_object(rng, height, width, frames, cfg.p_bounce, taken)
        taken.add(obj["colour"])
        objects.append(obj)
        paths.append(path)
    video = render_clip(background, objects, np.stack(paths, axis=1))
    caption = CLAUSE_JOIN.join(describe(o) for o in objects)
    if textured:
        caption += " on a textured background"
    scene = {"background": "textured" if textured else "plain",
             "objects": [{k: o[k] for k in ("shape", "colour", "size", "direction", "speed", "bounces")}
                         for o in objects]}
    return Clip(frames=video, caption=caption, scene=scene)


def _make_record(cfg: SynthConfig, split: str, index: int) -> tuple[str, np.ndarray, dict]:
    clip = make_clip(cfg, split, index)
    return split, clip.frames, {"id": f"{split}/{index:06d}", "index": index, "caption": clip.caption, **clip.scene}


def generate_store(root, cfg: SynthConfig, shard_size: int, progress: bool = True) -> dict:
    """Render every clip of every split into a clip store at `root` (atomically); returns the manifest.

    One process renders about 100 default-size clips per second; the default set of 2400 clips
    (about 500 MB) takes about 20 s.
    """
    from tqdm.auto import tqdm

    from osplab.data.store import write_store

    jobs = [(split, i) for split in SPLITS for i in range(int(cfg.num_clips.get(split, 0)))]
    source = {"kind": "synthetic", **vars(cfg)}
    records = (_make_record(cfg, split, i) for split, i in tqdm(jobs, desc="synth clips", unit="clip", disable=not progress))
    return write_store(root, records, shard_size, source)
