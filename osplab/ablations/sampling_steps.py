"""Ablation: how many sampling steps each objective needs (notebooks/ablation_sampling_steps.ipynb).

The claim (Open-Sora-Plan, after SD3 / rectified flow): a rectified-flow model samples well in 50-100
steps where a DDPM needs about 1000. Here both DiTs of `train_dit` (same backbone, data and budget)
generate the same captions, shapes and seeds as the `sample` stages at every point of a grid

    rf:   euler / heun at a handful of steps ... 100
    ddpm: ancestral / ddim at a handful of steps ... 1000

and every set is scored like `evaluate_generation`: FVD against the cached real val features (with
its 95% bootstrap interval) and the caption judge. The x axis is function evaluations (NFE): one
guided model call per Euler / ancestral / DDIM step, two per Heun step (the corrector runs on every
step). A point whose settings equal a `sample` stage's (RF 50 Euler steps, DDPM 1000 ancestral steps
by default) reuses that stage's clips instead of generating them again.

    points = grid_points(cfg.ablation_sampling_steps.grid)
    rows = run_sweep(cfg, points, generators, clips=64)
    write_report(rows, "reports", "ablation_sampling_steps")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osplab.ablations.common import claims_table, fvd_text, interval, overlap, summary, write_files
from osplab.ablations.scoring import score
from osplab.config import plain

SAMPLERS = {"rf": ("euler", "heun"), "ddpm": ("ancestral", "ddim")}
NAME = "ablation_sampling_steps"


@dataclass(frozen=True)
class Point:
    """One sampler setting: objective (rf | ddpm), sampler and steps."""

    objective: str
    sampler: str
    steps: int

    def __post_init__(self):
        if self.objective not in SAMPLERS:
            raise ValueError(f"objective {self.objective!r} is unknown; use one of {list(SAMPLERS)}")
        if self.sampler not in SAMPLERS[self.objective]:
            raise ValueError(f"{self.objective} has no sampler {self.sampler!r}; use one of {SAMPLERS[self.objective]}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")

    @property
    def nfe(self) -> int:
        """Guided model calls (each is one batched conditional + null-caption forward)."""
        return self.steps * (2 if self.sampler == "heun" else 1)

    @property
    def label(self) -> str:
        return f"{self.objective} {self.sampler}"


def grid_points(grid) -> list[Point]:
    """{objective: {sampler: [steps, ...]}} (conf: ablation_sampling_steps.grid) -> Points, in order."""
    return [Point(str(obj), str(s), int(n)) for obj, by in dict(grid).items() for s, steps in dict(by).items()
            for n in steps]


@dataclass
class Row:
    """The scores of one point's sample set."""

    objective: str
    sampler: str
    steps: int
    nfe: int
    fvd: float
    fvd_p2_5: float | None   # 95% bootstrap interval (None: too few clips for a spread)
    fvd_p97_5: float | None
    clips: int
    caption_accuracy: float
    colour: float
    shape: float
    direction: float
    seconds: float          # generation time of the set (0 when reused from a sample stage)
    reused: str             # the sample stage whose clips were reused, or ""


def stage_settings(cfg, objective: str) -> tuple[str, int]:
    """(sampler, steps) of the `sample@<objective>` stage (conf/diffusion sample.*)."""
    s = cfg.diffusion.sample
    return (str(s.rf_sampler), int(s.rf_steps)) if objective == "rf" else (str(s.ddpm_sampler), int(s.ddpm_steps))


def reusable_store(cfg, point: Point, clips: int) -> str | None:
    """The sample stage's store whose clips are exactly what `point` would generate, or None.

    Same sampler and steps and the same clip count, guidance, seed and snapping (the store's manifest
    records the settings it was made with, so a stale store is never reused)."""
    from osplab.data.store import read_manifest

    if (point.sampler, point.steps) != stage_settings(cfg, point.objective):
        return None
    path = Path(str(cfg.diffusion.samples)) / point.objective
    try:
        made = read_manifest(path)["source"]["sample"]
    except (FileNotFoundError, KeyError):
        return None
    wanted = {k: v for k, v in plain(cfg.diffusion.sample).items() if k != "previews"}
    made = {k: v for k, v in made.items() if k != "previews"}
    return str(path) if made == wanted and int(made["clips"]) == clips else None


def run_sweep(cfg, points: list[Point], generators: dict, clips: int, feats_real, i3d,
              progress: bool = True) -> list[Row]:
    """Generate and score every point. generators: {objective: osplab.generate.Generator}."""
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from osplab.data.clips import ClipDataset
    from osplab.stages.sample import generate_set, reference_clips

    ecfg = OmegaConf.to_container(cfg.eval, resolve=True)
    ds, indices = reference_clips(cfg, clips)
    rows = []
    for point in tqdm(points, desc="sampling-steps sweep", disable=not progress):
        store = reusable_store(cfg, point, len(indices))
        started = time.perf_counter()
        if store:
            made = ClipDataset(store, "sample")
            if sorted(r["id"] for r in made.rows) != sorted(ds.rows[i]["id"] for i in indices):
                raise ValueError(f"{store} holds other clips than the reference set of the eval settings: "
                                 f"re-run `dvc repro sample@{point.objective}`")
            videos, captions = [made[i]["video"] for i in range(len(made))], made.captions()
        else:
            out = list(generate_set(generators[point.objective], cfg, ds, indices, False,
                                    steps=point.steps, sampler=point.sampler))
            videos, captions = [v for _, v, _ in out], [m["caption"] for _, _, m in out]
        seconds = 0.0 if store else time.perf_counter() - started
        rows.append(Row(point.objective, point.sampler, point.steps, point.nfe, **score(videos, captions, feats_real,
                                                                                      ecfg, i3d),
                        seconds=seconds, reused=f"sample@{point.objective}" if store else ""))
    return rows


def fewest_steps_to_match(rows: list[Row], label: str, target: Row) -> Row | None:
    """The point of sampler `label` with the fewest NFE whose FVD is not worse than `target`'s
    (lower, or inside the bootstrap spread), or None."""
    mine = sorted((r for r in rows if f"{r.objective} {r.sampler}" == label), key=lambda r: r.nfe)
    return next((r for r in mine if r.fvd <= target.fvd or overlap(r, target)), None)


def claims(rows: list[Row]) -> list[dict]:
    """The claim's two halves, each {'claim', 'holds', 'evidence'}; empty if a needed point is missing.

    Reference: DDPM ancestral at its most steps (1000 by default). RF holds if an RF sampler matches it
    (FVD lower or inside the spread) within 100 NFE; DDPM's half holds if DDPM at <= 100 steps does not."""
    out = []
    ddpm = [r for r in rows if (r.objective, r.sampler) == ("ddpm", "ancestral")]
    if not ddpm:
        return out
    ref = max(ddpm, key=lambda r: r.steps)
    where = f"DDPM ancestral {ref.steps} steps: FVD {fvd_text(ref)}"
    for label in ("rf euler", "rf heun"):
        hit = fewest_steps_to_match(rows, label, ref)
        if any(f"{r.objective} {r.sampler}" == label for r in rows):
            ev = (f"fewest NFE that match {where}: {hit.nfe} (FVD {fvd_text(hit)})" if hit
                  else f"no {label} point matches {where}")
            out.append({"claim": f"{label} matches 1000-step DDPM within 100 function evaluations",
                        "holds": hit is not None and hit.nfe <= 100, "evidence": ev})
    few = [r for r in rows if r.objective == "ddpm" and r.steps <= 100]
    if few:
        best = min(few, key=lambda r: r.fvd)
        worse = best.fvd > ref.fvd and not overlap(best, ref)
        out.append({"claim": "DDPM needs about 1000 steps (100 or fewer are clearly worse)", "holds": worse,
                    "evidence": f"best DDPM point with <= 100 steps: {best.sampler} {best.steps} steps, FVD "
                                f"{fvd_text(best)} vs {where}"
                                + ("" if worse else " (inside the spread or better)")})
    return out


def markdown(rows: list[Row], notes: list[str] = ()) -> str:
    lines = ["| objective | sampler | steps | NFE | FVD [95% interval] | caption accuracy (colour / shape / direction) "
             "| s per set |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = f"reused ({r.reused})" if r.reused else f"{r.seconds:.0f}"
        lines.append(f"| {r.objective} | {r.sampler} | {r.steps} | {r.nfe} | {fvd_text(r)} | {r.caption_accuracy:.3f} ({r.colour:.2f} / {r.shape:.2f} / "
                     f"{r.direction:.2f}) | {secs} |")
    lines += [""] + [f"- {n}" for n in notes]
    lines += claims_table(claims(rows))
    return "\n".join(lines) + "\n"


def figure(rows: list[Row]):
    """FVD (with 95% intervals) and caption accuracy vs NFE (log axis), one line per sampler."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    styles = {"rf euler": ("tab:blue", "o"), "rf heun": ("tab:cyan", "s"),
              "ddpm ancestral": ("tab:red", "o"), "ddpm ddim": ("tab:orange", "s")}
    for label, (colour, marker) in styles.items():
        mine = sorted((r for r in rows if f"{r.objective} {r.sampler}" == label), key=lambda r: r.nfe)
        if not mine:
            continue
        x = [r.nfe for r in mine]
        err = np.array([[r.fvd - interval(r)[0], interval(r)[1] - r.fvd] for r in mine]).T
        a.errorbar(x, [r.fvd for r in mine], yerr=err, color=colour, marker=marker, capsize=3, label=label)
        b.plot(x, [r.caption_accuracy for r in mine], color=colour, marker=marker, label=label)
    for ax in (a, b):
        ax.set_xscale("log"); ax.set_xlabel("function evaluations (guided model calls)"); ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.set_ylabel("FVD vs real val clips (lower is better)"); a.set_title("FVD, 95% bootstrap interval")
    b.set_ylabel("caption accuracy"); b.set_ylim(0, 1); b.set_title("caption facts the judge finds")
    fig.tight_layout()
    return fig


def write_report(rows: list[Row], out_dir: str | Path, notes: list[str] = (), name: str = NAME) -> dict[str, Path]:
    """<out_dir>/<name>.md, .csv and .png (atomic writes); returns their paths."""
    metrics = summary(rows, lambda r: f"{r.objective}_{r.sampler}_{r.steps}",
                      ("nfe", "fvd", "fvd_p2_5", "fvd_p97_5", "caption_accuracy", "seconds"))
    return write_files(out_dir, name, markdown(rows, notes), rows, figure(rows), metrics)
