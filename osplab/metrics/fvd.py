"""Fréchet Video Distance (FVD) with the Kinetics-400 I3D, and the protocol that goes with it.

Protocol (every knob is in conf/eval/default.yaml and recorded in `FVDProtocol`):
1. Clips: `frames` frames taken every `stride`-th frame from the start of each clip or video
   (one clip per video / per stored clip); shorter clips are skipped and counted.
   At most `num_clips` per side, a seeded random subset when more are available.
2. uint8 RGB -> bilinear resize of every frame to `resolution` x `resolution` (aspect ratio is
   not kept) -> scale to [-1, 1] -> I3D -> 400 Kinetics logits per clip (the FVD features).
   `resize="tf1"`: TF1 `resize_bilinear` (half_pixel_centers=False), as in Google's original
   FVD code; `resize="pytorch"`: `F.interpolate(bilinear, align_corners=False)`, half-pixel
   centres, as in most PyTorch FVD code. They give different images and different numbers.
3. Gaussian fit in float64: mean and covariance; `covariance="unbiased"` divides by N - 1
   (TF-GAN's original FVD, numpy.cov), `"biased"` by N (StyleGAN-V, cd-fvd). ~0.4% apart at N=256.
4. Fréchet distance |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)) with scipy's sqrtm (real
   part). Fallback when the product is near singular (N < 400 makes both covariances singular):
   retry with eps*I added to both covariances, then the eigen-based trace (always real, stable).
5. Spread (`bootstrap_rounds` rounds; the record keys keep the name `bootstrap_*`): half-sampling
   without replacement. Each round draws a random half of the real and of the fake features (no
   clip twice) and computes their FVD. For statistics like FVD (smooth functions of means) the
   spread of half-sample values about their mean matches the spread of the N-clip FVD over fresh
   draws of N clips (delete-d jackknife with d = N/2; Shao & Wu 1989), so `bootstrap_std` is the
   std of the reported FVD over clip draws and [`bootstrap_p2_5`, `bootstrap_p97_5`] = FVD +
   (2.5, 97.5 percentiles of the centred half-sample values) is a 95% interval for the FVD at this
   clip count: it always contains the reported FVD. Resampling *with* replacement (the previous
   method) duplicates clips, shrinks the covariances and put the whole interval above the FVD.
   FVD is biased upward at finite N (bias ~ 1/N): halves are about twice as biased, so
   `fvd_debiased` = (k FVD - mean of halves) / (k - 1), k = N / (N/2) ~ 2, extrapolates to
   infinitely many clips (as in Chong & Forsyth's FID_inf), with the same interval widths
   (`fvd_debiased_p2_5`, `fvd_debiased_p97_5`). On Gaussian features its interval covers the
   closed-form Fréchet distance ~95% of the time (tests/test_fvd_spread.py).

Caveat (content bias): I3D logits respond mostly to per-frame appearance; FVD moves much less
for temporal corruption (frame shuffling, frozen frames) than for spatial corruption of similar
visual severity (Ge et al., "On the Content Bias in Fréchet Video Distance", CVPR 2024). Read FVD
together with the temporal metrics of `osplab.metrics.video`, and compare numbers only when
their protocol records agree (clip count alone shifts FVD: it is biased upward at small N).
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from osplab.io import atomic_path, atomic_write_text
from osplab.metrics.settings import COVARIANCE, RESIZE, check_eval_settings

NPY_EXT = (".npy",)
VIDEO_EXT = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".gif")


# ----------------------------------------------------------------------------- records
@dataclass
class FVDProtocol:
    """Everything that changes an FVD number. Saved with every result."""
    n_real: int
    n_fake: int
    frames: int
    stride: int
    resolution: int
    resize: str
    real_split: str
    weights_sha256: str
    seed: int
    covariance: str
    bootstrap_rounds: int
    features: str = "i3d-kinetics400-logits"  # what was fitted, not a setting
    spread: str = "half-sampling without replacement"  # how bootstrap_* were computed (module doc, step 5)


@dataclass
class FVDResult:
    """An FVD with its spread (module doc, step 5); spread fields are None when it was not computed."""
    fvd: float              # plug-in FVD of the N real vs N fake clips (the number papers report)
    bootstrap_std: float | None      # std of that FVD over clip draws (half-sampling); None: < 2 rounds
    bootstrap_p2_5: float | None     # 95% interval for the FVD at this clip count; contains `fvd`
    bootstrap_p97_5: float | None
    sqrtm_method: str       # "sqrtm", "sqrtm+eps" or "eigh" (see frechet_distance)
    skipped_real: int       # clips too short or unreadable, counted, never silently dropped
    skipped_fake: int
    protocol: FVDProtocol
    fvd_debiased: float | None = None        # extrapolated to infinitely many clips (bias ~ 1/N removed)
    fvd_debiased_p2_5: float | None = None   # its 95% interval; contains `fvd_debiased`
    fvd_debiased_p97_5: float | None = None

    def summary(self) -> str:
        p = self.protocol
        spread = ("(no spread: bootstrap_rounds < 2 or < 4 clips per side)" if self.bootstrap_std is None else
                  f"+- {self.bootstrap_std:.2f} (std over clip draws, half-sampling, {p.bootstrap_rounds} rounds; "
                  f"95% interval at this clip count: [{self.bootstrap_p2_5:.2f}, {self.bootstrap_p97_5:.2f}])\n"
                  f"extrapolated to infinitely many clips: {self.fvd_debiased:.2f} "
                  f"[{self.fvd_debiased_p2_5:.2f}, {self.fvd_debiased_p97_5:.2f}]")
        return (f"FVD {self.fvd:.2f} {spread}\n"
                f"protocol: {p.n_real} real ({p.real_split}) vs {p.n_fake} fake clips, {p.frames} frames "
                f"stride {p.stride}, {p.resize} bilinear to {p.resolution}, {p.covariance} covariance, "
                f"I3D sha256 {p.weights_sha256[:12]}, seed {p.seed}; sqrtm: {self.sqrtm_method}; "
                f"skipped {self.skipped_real} real / {self.skipped_fake} fake")

    def save(self, path: str | Path) -> None:
        """Write the result and its protocol as JSON, atomically."""
        atomic_write_text(Path(path), json.dumps(dataclasses.asdict(self), indent=2) + "\n")


# ----------------------------------------------------------------------------- statistics
def gaussian_stats(feats: np.ndarray, covariance: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and covariance (D, D) in float64; see module doc for `covariance`."""
    if covariance not in COVARIANCE:
        raise ValueError(f"covariance={covariance!r}; use one of {COVARIANCE}")
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {x.shape}")
    mu = x.mean(axis=0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - (1 if covariance == "unbiased" else 0))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)): symmetric, so real and stable."""
    a = _psd_sqrt(s1)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(a @ s2 @ a), 0.0, None)).sum())


def _trace_sqrtm(prod: np.ndarray, tol: float) -> float | None:
    """tr(sqrtm(prod)) with scipy, or None when the result is not trustworthy."""
    root = scipy.linalg.sqrtm(prod)
    if not np.all(np.isfinite(root)):
        return None
    scale = max(np.abs(root.real).max(), 1e-300)
    resid = np.linalg.norm(root @ root - prod) / max(np.linalg.norm(prod), 1e-300)
    if np.abs(root.imag).max() > 1e-3 * scale or resid > tol:  # complex part beyond rounding
        return None
    return float(np.trace(root.real))


def frechet_distance(mu1, s1, mu2, s2, eps: float = 1e-6, tol: float = 1e-5) -> tuple[float, str]:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2) in float64 -> (distance, method used).

    Method: scipy.linalg.sqrtm of s1 @ s2 (real part). If that is non-finite, has a real complex
    part or a residual |X X - A| / |A| > tol, retry on (s1 + eps I)(s2 + eps I); if still bad, use
    the eigen-based trace, which is exact for PSD inputs.
    """
    mu1, mu2, s1, s2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, s1, s2))
    diff = float(np.sum((mu1 - mu2) ** 2))
    base = float(np.trace(s1) + np.trace(s2))
    tr = _trace_sqrtm(s1 @ s2, tol)
    if tr is not None:
        return diff + base - 2.0 * tr, "sqrtm"
    off = eps * np.eye(s1.shape[0])
    tr = _trace_sqrtm((s1 + off) @ (s2 + off), tol)
    if tr is not None:
        return diff + base - 2.0 * tr, "sqrtm+eps"
    return diff + base - 2.0 * trace_sqrt_product_eigh(s1, s2), "eigh"


# ----------------------------------------------------------------------------- clips
def resize_frames(x: torch.Tensor, size: int, method: str) -> torch.Tensor:
    """Bilinear resize of (M, C, H, W) float frames to (M, C, size, size); see module doc for `method`."""
    if method == "pytorch":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if method != "tf1":
        raise ValueError(f"resize={method!r}; use one of {RESIZE}")
    for axis in (2, 3):  # separable: rows then columns
        n = x.shape[axis]
        src = torch.arange(size, dtype=torch.float64) * (n / size)  # TF1: no half-pixel offset
        i0 = src.floor().long().clamp(max=n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        w = (src - i0).to(x.dtype).view([-1 if d == axis else 1 for d in range(4)])
        x = torch.lerp(x.index_select(axis, i0), x.index_select(axis, i1), w)
    return x


def preprocess(clips: np.ndarray | torch.Tensor, resolution: int, resize: str) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> I3D input float32 (B, 3, T, resolution, resolution) in [-1, 1]."""
    x = torch.tensor(np.asarray(clips))  # a copy: memory-mapped shards are read-only
    if x.dtype != torch.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB clips (B, T, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    b, t = x.shape[:2]
    frames = x.flatten(0, 1).permute(0, 3, 1, 2).float()                  # (B*T, 3, H, W)
    frames = resize_frames(frames, resolution, resize) / 127.5 - 1.0
    return frames.view(b, t, 3, resolution, resolution).transpose(1, 2)  # (B, 3, T, R, R)


class ClipSource:
    """uint8 clips (frames, H, W, 3) from an array, a .npy file, a video file or a folder of them.

    Arrays/.npy: (N, T, H, W, 3) or one (T, H, W, 3) clip, memory-mapped. Videos: decoded with
    PyAV, one clip from the first frame. Each clip keeps frames 0, stride, ..., (frames-1)*stride;
    shorter ones are skipped and counted in `skipped`. With more than `num_clips` clips, a random
    subset (seeded) is kept, in file order.
    """

    def __init__(self, source, frames: int, stride: int, num_clips: int | None = None, seed: int = 0):
        self.frames, self.stride, self.skipped = frames, stride, []
        self.refs = self._index(source)
        if not self.refs:
            raise FileNotFoundError(f"no clips in {source!r}: expected an array, .npy files or videos {VIDEO_EXT}")
        if num_clips is not None and len(self.refs) > num_clips:
            keep = np.random.Generator(np.random.PCG64(seed)).choice(len(self.refs), num_clips, replace=False)
            self.refs = [self.refs[i] for i in sorted(keep)]

    def _index(self, source) -> list:
        if isinstance(source, (np.ndarray, torch.Tensor)):
            arr = np.asarray(source)
            arr = arr[None] if arr.ndim == 4 else arr
            return [(arr, i) for i in range(len(arr))]
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"clip source {path} does not exist; give a folder of .npy shards/videos or a file")
        known = NPY_EXT + VIDEO_EXT
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in known) if path.is_dir() else [path]
        refs = []
        for f in files:
            if f.suffix.lower() in NPY_EXT:
                arr = np.load(f, mmap_mode="r")
                arr = arr[None] if arr.ndim == 4 else arr
                if arr.ndim != 5 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
                    raise ValueError(f"{f}: expected uint8 (N, T, H, W, 3) clips, got {arr.dtype} {arr.shape}")
                refs += [(arr, i) for i in range(len(arr))]
            elif f.suffix.lower() in VIDEO_EXT:
                refs.append((f, None))
            else:
                raise ValueError(f"{f}: unsupported file; give .npy clip shards or videos {VIDEO_EXT}")
        return refs

    def __len__(self) -> int:
        return len(self.refs)

    def _decode(self, path: Path) -> np.ndarray | None:
        import av

        need, out = (self.frames - 1) * self.stride + 1, []
        try:
            with av.open(str(path)) as box:
                for frame in box.decode(video=0):
                    out.append(frame.to_ndarray(format="rgb24"))
                    if len(out) == need:
                        break
        except (av.error.FFmpegError, OSError) as err:
            self.skipped.append((str(path), f"unreadable: {err}"))
            return None
        return np.stack(out) if out else np.zeros((0, 1, 1, 3), np.uint8)

    def __iter__(self) -> Iterator[np.ndarray]:
        for item, index in self.refs:
            clip = self._decode(item) if index is None else item[index]
            if clip is None:
                continue
            if len(clip) < (self.frames - 1) * self.stride + 1:
                name = item if index is None else f"clip {index}"
                self.skipped.append((str(name), f"{len(clip)} frames < {self.frames} x stride {self.stride}"))
                continue
            yield np.ascontiguousarray(clip[: self.frames * self.stride : self.stride])


# ----------------------------------------------------------------------------- features and FVD
def extract_features(clips: ClipSource, model: torch.nn.Module, resolution: int, resize: str, batch_size: int,
                     device: str = "cpu", compile: bool = False, desc: str = "I3D",
                     progress: bool = True) -> np.ndarray:
    """I3D logits of every clip -> (N, 400) float64; clips of different sizes share a batch after resize.

    Runs fp32 in channels_last_3d, the fastest layout within the 1e-3 reference tolerance on CPU
    (bf16 misses it by 20x; see metrics/fvd_bench.json). `compile`: torch.compile with weight
    freezing, worth its ~1 min compile only for long runs; the last batch is zero-padded to the
    full batch size so that the compiled graph is never rebuilt.
    """
    from tqdm.auto import tqdm

    fmt = torch.channels_last_3d
    net = model.to(memory_format=fmt)
    if compile:
        net = torch.compile(net, dynamic=False, options={"freezing": True})
    feats, batch = [], []

    def flush():
        n = len(batch)
        pad = [torch.zeros_like(batch[0])] * (batch_size - n if compile else 0)
        x = torch.cat(batch + pad).to(device).contiguous(memory_format=fmt)
        with torch.inference_mode():
            feats.append(net(x)[:n].double().cpu().numpy())
        batch.clear()

    for clip in tqdm(clips, total=len(clips), desc=desc, unit="clip", disable=not progress):
        batch.append(preprocess(clip[None], resolution, resize))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not feats:
        raise ValueError(f"no usable clips ({len(clips.skipped)} skipped, e.g. {clips.skipped[:3]})")
    return np.concatenate(feats)


def save_features(path: str | Path, feats: np.ndarray, meta: dict) -> None:
    """Cache features with the protocol fields they depend on (checked again by `load_features`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, i3d_logits=feats, meta=json.dumps(meta, sort_keys=True))


def load_features(path: str | Path, expect: dict) -> tuple[np.ndarray, dict]:
    """Load cached features; refuse them if their protocol differs from `expect` on any shared key."""
    with np.load(path) as z:
        feats, meta = z["i3d_logits"], json.loads(str(z["meta"]))
    bad = {k: (meta[k], v) for k, v in expect.items() if k in meta and meta[k] != v}
    if bad:
        raise ValueError(f"{path}: cached features were made with a different protocol {bad} "
                         "(cached, wanted); recompute them from the clips")
    return feats, meta


def fvd_from_features(real: np.ndarray, fake: np.ndarray, covariance: str, bootstrap_rounds: int,
                      seed: int, progress: bool = True) -> dict:
    """FVD and its spread (half-sampling, module doc step 5) of two (N, 400) feature sets -> dict of
    the numeric result fields; no spread (None) when bootstrap_rounds < 2 or a side has < 4 clips.

    BLAS runs single-threaded here: on a busy 2-core machine a multi-threaded 400x400 eigh took
    3.2 s instead of 0.015 s (measured), and the bootstrap does hundreds of them.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        return _fvd_from_features(real, fake, covariance, bootstrap_rounds, seed, progress)


def _fvd_from_features(real, fake, covariance, bootstrap_rounds, seed, progress) -> dict:
    (m1, s1), (m2, s2) = gaussian_stats(real, covariance), gaussian_stats(fake, covariance)
    fvd, method = frechet_distance(m1, s1, m2, s2)
    out = dict(fvd=float(fvd), bootstrap_std=None, bootstrap_p2_5=None, bootstrap_p97_5=None, sqrtm_method=method,
               fvd_debiased=None, fvd_debiased_p2_5=None, fvd_debiased_p97_5=None)
    if bootstrap_rounds >= 2 and min(len(real), len(fake)) >= 4:
        from osplab.metrics.spread import half_sample_fvd, spread_from_halves

        halves = half_sample_fvd(real, fake, bootstrap_rounds, seed, covariance, progress)
        out.update(spread_from_halves(out["fvd"], halves, len(real), len(fake)))
    return out


def _features(source, model, cfg, side: str, progress: bool, cache: str | Path | None = None) -> tuple[np.ndarray, int]:
    """Features of one side -> (feats (N, 400), n_skipped).

    `source` may be a cached .npz (from `save_features`); `cache` names a .npz to reuse if it
    exists, else to write (e.g. the real split's features, computed once per protocol). A cache
    made under another protocol (frames, stride, resolution, resize, clip count, seed, weights)
    is refused, never silently reused.
    """
    expect = dict(frames=cfg["frames"], stride=cfg["stride"], resolution=cfg["resolution"], resize=cfg["resize"],
                  num_clips=cfg["num_clips"], seed=cfg["seed"], weights_sha256=model.weights_sha256)
    if isinstance(source, (str, Path)) and str(source).endswith(".npz"):
        cache = source
    if cache is not None and Path(cache).is_file():
        feats, meta = load_features(cache, expect)
        return feats, int(meta.get("skipped", 0))
    clips = ClipSource(source, cfg["frames"], cfg["stride"], cfg["num_clips"], cfg["seed"])
    feats = extract_features(clips, model, cfg["resolution"], cfg["resize"], cfg["batch_size"],
                             cfg.get("device") or "cpu", cfg.get("compile", False), f"I3D {side}", progress)
    if clips.skipped:
        warnings.warn(f"{side}: skipped {len(clips.skipped)} of {len(clips)} clips, e.g. {clips.skipped[:3]}")
    if cache is not None:
        save_features(cache, feats, dict(expect, skipped=len(clips.skipped), source=str(source)))
    return feats, len(clips.skipped)


def warn_rank_deficient(n_real: int, n_fake: int, dim: int) -> None:
    """Warn when a side has fewer clips than feature dimensions: its covariance is then rank-deficient."""
    small = [f"{side} {n}" for side, n in (("real", n_real), ("fake", n_fake)) if n < dim]
    if small:
        warnings.warn(f"only {', '.join(small)} clips for {dim}-dimensional features: the covariance has rank "
                      f"< {dim}, so this FVD is strongly biased upward and comparable only with FVDs at the same "
                      f"clip counts (see fvd_debiased); use >= {dim} clips per side for a full-rank estimate",
                      stacklevel=2)


def compute_fvd(real, fake, cfg, model: torch.nn.Module | None = None, progress: bool = True,
                real_cache: str | Path | None = None) -> FVDResult:
    """FVD between two clip sources (see `ClipSource`; or cached feature .npz files).

    cfg: the `eval` settings (conf/eval/default.yaml): frames, stride, resolution, resize,
    num_clips, batch_size, covariance, bootstrap_rounds, seed, real_split (device, compile optional).
    real_cache: optional .npz path where the real features are reused from / saved to.
    """
    from osplab.metrics.i3d import load_i3d

    check_eval_settings(cfg)
    model = model or load_i3d(cfg.get("device"))
    fr, skip_r = _features(real, model, cfg, "real", progress, real_cache)
    ff, skip_f = _features(fake, model, cfg, "fake", progress)
    warn_rank_deficient(len(fr), len(ff), fr.shape[1])
    nums = fvd_from_features(fr, ff, cfg["covariance"], cfg["bootstrap_rounds"], cfg["seed"], progress)
    protocol = FVDProtocol(
        n_real=len(fr), n_fake=len(ff), frames=cfg["frames"], stride=cfg["stride"],
        resolution=cfg["resolution"], resize=cfg["resize"], real_split=str(cfg["real_split"]),
        weights_sha256=model.weights_sha256, seed=cfg["seed"], covariance=cfg["covariance"],
        bootstrap_rounds=cfg["bootstrap_rounds"])
    return FVDResult(**nums, skipped_real=skip_r, skipped_fake=skip_f, protocol=protocol)
