"""FVD on in-memory clip lists, and the sanity sweep: does FVD rise as real clips are corrupted?

The sweep (notebooks/fvd_sanity.ipynb, reports/fvd_sanity.*): the usable real clips are split at
random into halves A and B; FVD(A, corrupt(B, kind, level)) is computed for every corruption kind
of `osplab.metrics.corrupt` and level. Level 0 is FVD(A, B), the floor set by sampling alone (two
disjoint real samples of the same distribution). A sound metric rises with the level for every
kind; by the content bias of I3D features (see `osplab.metrics.fvd`), expect it to rise far less
for the temporal corruptions (shuffle, freeze) than for the spatial ones (noise, blur).

Clips here are lists of uint8 (T, H, W, 3) arrays of any sizes; the FVD window of a clip is the one
`ClipSource` takes (`frames` frames every `stride`-th frame from the start), and every number is a
`FVDResult` with its protocol record, made with the `eval` settings (conf/eval/default.yaml).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from osplab.metrics.corrupt import KINDS, corrupt, strength
from osplab.metrics.fvd import FVDProtocol, FVDResult, extract_features, fvd_from_features


def window_length(frames: int, stride: int) -> int:
    """Stored frames a clip needs to give `frames` frames at `stride`."""
    return (frames - 1) * stride + 1


def fvd_window(clip: np.ndarray, frames: int, stride: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> the (frames, H, W, 3) clip FVD sees: frames 0, stride, ..., (frames-1)*stride."""
    if len(clip) < window_length(frames, stride):
        raise ValueError(f"clip of {len(clip)} frames is shorter than {frames} frames x stride {stride}")
    return np.ascontiguousarray(clip[: frames * stride : stride])


def usable_clips(ds, frames: int, stride: int, num_clips: int | None, seed: int) -> tuple[list[int], int]:
    """Indices of the clips to score (sorted) and the number of clips too short for the FVD window."""
    need = window_length(frames, stride)
    usable = [i for i, (t, _, _) in enumerate(ds.shapes()) if t >= need]
    if len(usable) < 2:
        raise ValueError(f"{ds.root} split {ds.split!r}: {len(usable)} of {len(ds)} clips have >= {need} frames "
                         f"(eval.frames={frames}, eval.stride={stride}); FVD needs 2 or more")
    if num_clips is not None and len(usable) > num_clips:
        keep = np.random.Generator(np.random.PCG64(seed)).choice(len(usable), num_clips, replace=False)
        usable = [usable[i] for i in sorted(keep)]
    return usable, sum(t < need for t, _, _ in ds.shapes())


def real_windows(ds, ecfg, limit: int | None) -> tuple[list[np.ndarray], int]:
    """FVD windows of at most `limit` usable clips of a ClipDataset (seeded subset) and the count of short ones."""
    indices, n_short = usable_clips(ds, ecfg["frames"], ecfg["stride"], limit, ecfg["seed"])
    return [fvd_window(ds[i]["video"], ecfg["frames"], ecfg["stride"]) for i in indices], n_short


class ClipList:
    """An in-memory list of uint8 (T, H, W, 3) clips in the shape `extract_features` iterates over."""

    def __init__(self, clips: list[np.ndarray]):
        self.clips, self.skipped = list(clips), []

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        return iter(self.clips)


def clip_features(clips: list[np.ndarray], model: torch.nn.Module, ecfg, desc: str = "I3D",
                  progress: bool = True) -> np.ndarray:
    """I3D logits (N, 400) float64 of clips that are already FVD windows (see `fvd_window`)."""
    return extract_features(ClipList(clips), model, ecfg["resolution"], ecfg["resize"], ecfg["batch_size"],
                            ecfg.get("device") or "cpu", ecfg.get("compile", False), desc, progress)


def fvd_result(real: np.ndarray, fake: np.ndarray, ecfg, weights_sha256: str, skipped_real: int = 0,
               skipped_fake: int = 0, progress: bool = False) -> FVDResult:
    """FVD of two (N, 400) feature sets with its spread and protocol record (`eval` settings ecfg).

    The linear algebra runs with one BLAS thread: on a shared 2-core machine a multi-threaded
    OpenBLAS eigh of 400 x 400 was measured ~200x slower (3 s instead of 0.015 s) while other
    processes held the cores.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        nums = fvd_from_features(real, fake, ecfg["covariance"], ecfg["bootstrap_rounds"], ecfg["seed"], progress)
    protocol = FVDProtocol(
        n_real=len(real), n_fake=len(fake), frames=ecfg["frames"], stride=ecfg["stride"],
        resolution=ecfg["resolution"], resize=ecfg["resize"], real_split=str(ecfg["real_split"]),
        weights_sha256=weights_sha256, seed=ecfg["seed"], covariance=ecfg["covariance"],
        bootstrap_rounds=ecfg["bootstrap_rounds"])
    return FVDResult(**nums, skipped_real=skipped_real, skipped_fake=skipped_fake, protocol=protocol)


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n) into halves A and B (sorted index arrays, sizes n//2 and n - n//2)."""
    if n < 4:
        raise ValueError(f"{n} clips cannot be split into two halves of >= 2 clips (FVD needs 2 per side)")
    perm = np.random.Generator(np.random.PCG64([seed, 1])).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def corruption_sweep(clips: list[np.ndarray], kinds, levels, model: torch.nn.Module, ecfg,
                     progress: bool = True, reference: np.ndarray | None = None) -> list[dict]:
    """FVD(A, corrupt(B)) for every kind and level -> rows {kind, level, strength, fvd, std, p2_5, p97_5, ...}.

    clips: FVD windows (frames, H, W, 3) of real clips. Without `reference` they are split into
    seeded halves A and B; with `reference` (I3D features (N, 400) of other real clips, e.g. the
    cached val features of the `eval_real` stage) A is the reference and B is all of `clips`,
    which must then come from clips disjoint from the reference's (another split).
    The corruptions are seeded by ecfg["seed"]. Level 0 (uncorrupted B) is computed once and
    shared by every kind.
    """
    if isinstance(kinds, str) or isinstance(levels, str):
        raise ValueError(f"kinds={kinds!r}, levels={levels!r}: give lists (papermill: -y 'levels: [0, 0.5, 1]')")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not len(levels) or min(levels) < 0 or max(levels) > 1:
        raise ValueError(f"kinds {list(kinds)} / levels {list(levels)}: kinds from {KINDS}, levels in [0, 1]")
    sha = model.weights_sha256
    if reference is None:
        a_idx, b_idx = split_halves(len(clips), ecfg["seed"])
        feats_a = clip_features([clips[i] for i in a_idx], model, ecfg, "I3D A", progress)
        b = [clips[i] for i in b_idx]
    else:
        if reference.ndim != 2 or len(reference) < 2 or len(clips) < 2:
            raise ValueError(f"reference features {reference.shape} and {len(clips)} clips: need (N >= 2, F) "
                             "features and >= 2 clips")
        feats_a, b = np.asarray(reference, dtype=np.float64), list(clips)
    t, h, w = b[0].shape[:3]
    base = None
    rows = []
    for kind in kinds:
        for level in sorted(set(float(x) for x in levels)):
            if level == 0 and base is not None:
                res = base
            else:
                feats = clip_features(corrupt(b, kind, level, ecfg["seed"]), model, ecfg, f"I3D {kind} {level:g}",
                                      progress)
                res = fvd_result(feats_a, feats, ecfg, sha)
                base = res if level == 0 else base
            rows.append(dict(kind=kind, level=level, strength=strength(kind, level, h, w, t), fvd=res.fvd,
                             std=res.bootstrap_std, p2_5=res.bootstrap_p2_5, p97_5=res.bootstrap_p97_5,
                             sqrtm_method=res.sqrtm_method, protocol=res.protocol))
    return rows


def spearman_by_kind(rows: list[dict]) -> dict[str, float]:
    """Spearman rank correlation of FVD with level, per kind (1.0 = strictly monotone rise)."""
    from scipy.stats import spearmanr

    out = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        lv = [r["level"] for r in rows if r["kind"] == kind]
        fv = [r["fvd"] for r in rows if r["kind"] == kind]
        out[kind] = float(spearmanr(lv, fv).statistic) if len(set(lv)) > 1 else float("nan")
    return out


def is_monotone(rows: list[dict], kind: str) -> bool:
    """FVD strictly rises from each level to the next for this kind."""
    fv = [r["fvd"] for r in sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["level"])]
    return all(b > a for a, b in zip(fv, fv[1:]))


# ----------------------------------------------------------------------------- report
def sweep_figure(rows: list[dict]):
    """FVD vs corruption level, one line per kind, bars = spread std (half-sampling; nothing when absent)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    for j, kind in enumerate(kinds):
        sel = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["level"])
        dx = 0.006 * (j - (len(kinds) - 1) / 2)  # small offsets so that the shared level-0 bars stay visible
        ax.errorbar([r["level"] + dx for r in sel], [r["fvd"] for r in sel], yerr=[r["std"] or 0.0 for r in sel],
                    marker="o", ms=4, capsize=3, label=kind)
    p = rows[0]["protocol"]
    ax.set_xlabel("corruption level (0 = uncorrupted B)")
    ax.set_ylabel("FVD(A, corrupt(B))")
    ax.set_title(f"FVD sanity: A {p.n_real} vs B {p.n_fake} real clips, {p.frames} frames, "
                 f"{p.resolution}px", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def sweep_markdown(rows: list[dict], title: str = "FVD sanity check", sets: str | None = None) -> str:
    """The sweep as a markdown report: protocol, table (FVD, its std and 95% interval over clip draws), Spearman.

    sets: what A and B are; None = the halves of `corruption_sweep` without a reference."""
    p = rows[0]["protocol"]
    rho = spearman_by_kind(rows)
    sets = sets or f"A and B are two disjoint random halves of the real `{p.real_split}` clips"
    lines = [f"# {title}", "",
             f"FVD(A, corrupt(B)), where {sets} ({p.n_real} vs {p.n_fake} clips). "
             "Level 0 is FVD(A, B): the floor set by sampling alone.", "",
             f"Protocol: {p.frames} frames, stride {p.stride}, {p.resize} bilinear to {p.resolution}, "
             f"{p.covariance} covariance, spread by {p.spread} ({p.bootstrap_rounds} rounds), seed {p.seed}, "
             f"I3D sha256 {p.weights_sha256[:12]}.", "",
             "| kind | level | strength | FVD | std | 95% interval |", "|---|---:|---|---:|---:|---|"]
    for r in rows:
        std = "-" if r["std"] is None else f"{r['std']:.2f}"
        ci = "-" if r.get("p2_5") is None else f"[{r['p2_5']:.2f}, {r['p97_5']:.2f}]"
        lines.append(f"| {r['kind']} | {r['level']:g} | {r['strength']} | {r['fvd']:.2f} | {std} | {ci} |")
    lines += ["", "| kind | Spearman(level, FVD) | strictly monotone |", "|---|---:|---|"]
    lines += [f"| {k} | {v:.3f} | {'yes' if is_monotone(rows, k) else 'no'} |" for k, v in rho.items()]
    return "\n".join(lines) + "\n"


def sweep_record(rows: list[dict]) -> dict:
    """The sweep as plain data: protocol, Spearman and monotonicity per kind, and every row."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    return {"protocol": dataclasses.asdict(rows[0]["protocol"]), "spearman": spearman_by_kind(rows),
            "monotone": {k: is_monotone(rows, k) for k in kinds},
            "rows": [{k: v for k, v in r.items() if k != "protocol"} for r in rows]}


def write_report(rows: list[dict], md_path, png_path, json_path=None, title: str = "FVD sanity check",
                 sets: str | None = None) -> None:
    """Write the markdown table, the figure and (if json_path) the record, atomically (sets: see sweep_markdown)."""
    from osplab.io import atomic_write_json, atomic_write_text
    from osplab.viz import save_figure

    atomic_write_text(md_path, sweep_markdown(rows, title, sets))
    save_figure(sweep_figure(rows), png_path)
    if json_path:
        atomic_write_json(json_path, sweep_record(rows))
