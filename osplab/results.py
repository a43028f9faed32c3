"""The main results table (notebooks/results.ipynb, DVC stage `results`): every trained model of the
default pipeline in one table, read from the metrics files the stages write, never typed by hand.

    rows = results_rows(".")                       # metrics/*.json and params.yaml of the last `dvc repro`
    write_results(rows, "reports", results_notes("."))   # reports/results.md, results.csv, results.png

Rows: real clips (the judge's ceiling and the FVD floor), VQVAE reconstructions (the decoder's
ceiling), the RF and DDPM DiTs and the untrained DiT, and shuffled captions (the judge's chance
level). Columns: FVD with its 95% bootstrap interval, caption accuracy per fact, PSNR and flicker
(reconstructions only: a generated clip has no real counterpart), parameters, seconds per clip.
Figures that other projects report on UCF-101 stay in a separate table (`REPORTED`), marked with
their source: they are not measured here and use other data, resolution and protocol.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from osplab.io import atomic_write_text

FACTS = ("colour", "shape", "direction")


@dataclass
class ResultRow:
    """One line of the main table; None = not measured for this row (shown as a dash)."""

    model: str
    what: str
    fvd: float | None = None
    fvd_p2_5: float | None = None
    fvd_p97_5: float | None = None
    fvd_clips: int | None = None
    caption_accuracy: float | None = None
    colour: float | None = None
    shape: float | None = None
    direction: float | None = None
    psnr_db: float | None = None
    flicker_ratio: float | None = None
    parameters: int | None = None
    seconds_per_clip: float | None = None
    sampling_steps: int | None = None


# (model, figure, value, conditions, source). Reported, not measured: never mixed into the main table.
REPORTED = [
    ("Latte (latent DiT)", "FVD, UCF-101", 477.97, "16 frames at 256x256, trained on UCF-101",
     "Ma et al. 2024, Latte, arXiv:2401.03048, comparison table"),
]


def _load(root: Path, name: str) -> dict:
    path = root / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `dvc repro` (the stage that writes it) first")
    return json.loads(path.read_text())


def _params(root: Path) -> dict:
    """params.yaml under root: the settings the stages ran with."""
    import yaml

    return yaml.safe_load((root / "params.yaml").read_text())


def _fvd_key(g: dict, variant: str) -> str:
    """The FVD key of a sample variant (`fvd_rf50`, `fvd_ddpm1000`, `fvd_untrained`): steps are in the name."""
    keys = [k for k in g["fvd_detail"] if k == f"fvd_{variant}" or
            (k.startswith(f"fvd_{variant}") and k[len(f"fvd_{variant}"):].isdigit())]
    if len(keys) != 1:
        raise KeyError(f"metrics/generation.json: expected one FVD entry for {variant!r}, found {keys}")
    return keys[0]


def _judge(g: dict, prefix: str) -> dict:
    return {"caption_accuracy": g[prefix], **{f: g[f"{prefix}_{f}"] for f in FACTS if f"{prefix}_{f}" in g}}


def _fvd(detail: dict) -> dict:
    return {"fvd": detail["fvd"], "fvd_p2_5": detail["p2_5"], "fvd_p97_5": detail["p97_5"], "fvd_clips": detail["clips"]}


def results_rows(root: str | Path = ".") -> list[ResultRow]:
    """The main table from metrics/{generation,eval,vqvae,dit_*,sample_*}.json under `root`."""
    root = Path(root)
    g, e, v = (_load(root, f"metrics/{n}.json") for n in ("generation", "eval", "vqvae"))
    rows = [
        ResultRow("real clips", "val clips with their own captions; FVD: as many real test clips vs val (the floor)",
                  **_fvd(g["fvd_detail"]["fvd_floor"]), **_judge(g, "caption_accuracy_real")),
        ResultRow("VQVAE reconstruction", f"val clips through the VQVAE ({v['train_steps']} steps); FVD on {e['clips']} clips",
                  fvd=e["fvd"], fvd_p2_5=e["fvd_bootstrap_p2_5"], fvd_p97_5=e["fvd_bootstrap_p97_5"], fvd_clips=e["clips"],
                  psnr_db=e["psnr"], flicker_ratio=e["flicker_ratio"], **_judge(g, "caption_accuracy_recon")),
    ]
    if "fvd_unquantized" in g["fvd_detail"]:  # evaluate_generation's decoder diagnostic (older metrics lack it)
        rows.append(ResultRow("VQVAE, quantizer skipped", "the samples' real val windows decoded from the encoder's "
                              "latents without the codebook (a diagnostic, not a usable model)",
                              **_fvd(g["fvd_detail"]["fvd_unquantized"]), psnr_db=g["psnr_unquantized"],
                              **_judge(g, "caption_accuracy_unquantized")))
    names = {"rf": "DiT, rectified flow", "ddpm": "DiT, DDPM baseline", "untrained": "DiT, untrained"}
    for variant in g["variants"]:
        key = _fvd_key(g, variant)
        train = _load(root, f"metrics/dit_{'ddpm' if variant == 'ddpm' else 'rf'}.json")
        sample = _load(root, f"metrics/sample_{variant}.json")
        if variant == "untrained":
            steps = int(_params(root)["diffusion"]["sample"]["rf_steps"])
            what = f"the RF DiT at initialisation; {steps} sampling steps"
        else:
            steps = int(key[len(f"fvd_{variant}"):])
            what = f"{train['steps']} steps x {train['global_batch']}; {steps} sampling steps"
        rows.append(ResultRow(names[variant], what, **_fvd(g["fvd_detail"][key]), **_judge(g, f"caption_accuracy_{variant}"),
                              parameters=train["params"], seconds_per_clip=sample["seconds"] / sample["clips"],
                              sampling_steps=steps))
    rows.append(ResultRow("shuffled captions", "real val clips judged against another clip's caption (chance level)",
                          **_judge(g, "caption_accuracy_chance")))
    return rows


def results_notes(root: str | Path = ".") -> list[str]:
    """What the table does not say by itself, with the numbers from the same files."""
    root = Path(root)
    g, p = _load(root, "metrics/generation.json"), _params(root)
    s = p["diffusion"]["sample"]
    one = [k for k in g if k.startswith("sample_seconds_16f_")]
    return [
        f"Samples: {g['clips']} per DiT, the captions and shapes of the first val clips of the FVD reference set, "
        f"CFG {s['cfg']:g}; RF {s['rf_sampler']}, DDPM {s['ddpm_sampler']}. Seconds per clip: the sample stage's "
        f"time over its clips (batches of {s['batch']}, text encoding and decoding included, "
        f"{p['train_dit']['num_threads']} CPU threads)"
        + (f"; one 16-frame RF clip alone takes {g[one[0]]:.2f} s." if one else "."),
        f"FVD: I3D (Kinetics-400) features of {p['eval']['frames']}-frame windows vs {p['eval']['num_clips']} "
        f"{p['eval']['real_split']} clips (`eval_real`); the interval is "
        "the 2.5-97.5% range of half-sampling bootstrap rounds. Rows with other clip counts are not comparable "
        "point for point (FVD is biased upwards at small counts).",
        "Caption accuracy: the fraction of caption facts (colour, shape, direction of each named object) that the "
        "pixel judge (osplab/metrics/judge.py) finds in the clip. PSNR and flicker need a real counterpart, so only "
        "reconstructions have them.",
        "Limits: a tiny model trained for minutes on 2 CPU cores on the embedded synthetic dataset; the numbers "
        "rank variants of this kit, they do not say how the method does at scale.",
    ] + _bottleneck_note(g) + _motion_note(g) + _caption_use_note(g)


def _bottleneck_note(g: dict) -> list[str]:
    """Where the VQVAE loses detail: its codes or its decoder (evaluate_generation via
    osplab.bench.quantization.decode_twice), if measured."""
    d = g["fvd_detail"]
    if "fvd_unquantized" not in d or "fvd_recon" not in d:
        return []

    def side(name: str) -> str:
        k = f"caption_accuracy_{name}"
        return (f"FVD {d[f'fvd_{name}']['fvd']:.0f} [{d[f'fvd_{name}']['p2_5']:.0f}, {d[f'fvd_{name}']['p97_5']:.0f}], "
                f"PSNR {g[f'psnr_{name}']:.1f} dB, shape {g[f'{k}_shape']:.2f}, caption accuracy {g[k]:.3f}")

    return [f"Where the VQVAE loses detail (the {d['fvd_recon']['clips']} real windows behind the samples): decoded from "
            f"their codes, as every generated clip is: {side('recon')}; from the encoder's latents with the quantizer "
            f"skipped: {side('unquantized')}. What the second gains over the first is lost in the one-of-8192 code per "
            "latent, not by the decoder."]


def _motion_note(g: dict) -> list[str]:
    """How far generated and real objects travel (the judge's motion_px), if evaluate_generation measured it."""
    names = {"rf": "RF", "ddpm": "DDPM", "real": "the real clips behind the captions"}
    parts = [f"{name} {g[f'caption_accuracy_{v}_motion_px']:.1f} px" for v, name in names.items()
             if g.get(f"caption_accuracy_{v}_motion_px") is not None]
    if not parts:
        return []
    jumps = [f"{name} {g[f'caption_accuracy_{v}_jump_share']:.1%}" for v, name in names.items()
             if g.get(f"caption_accuracy_{v}_jump_share") is not None]
    jumps = (" Jumps (`jump_share`): the share of the named objects' frame-to-frame moves longer than twice the "
             "fastest caption speed, re-placements that the judge takes out of the track before it reads a "
             "direction: " + "; ".join(jumps) + ".") if jumps else ""
    return ["Motion (osplab/metrics/judge.py, `motion_px`): how far the named objects travel along their caption's "
            "axis (median over objects of the 5-95 percentile spread of the centroid with its jumps taken out); a "
            "static object shows its jitter, 1-3 px, and a travel under a quarter of the slowest object's path "
            "(3.75 px in 16 frames) is read as no direction. Direction accuracy near chance with little travel "
            "means the objects do not move, not that they move the wrong way. " + "; ".join(parts) + "." + jumps]


def _caption_use_note(g: dict) -> list[str]:
    """The caption-use probe's line (osplab/diffusion/caption_use.py), if evaluate_generation measured it."""
    names = {"rf": "RF", "ddpm": "DDPM"}
    parts = [f"{names[v]}: colour {g[f'caption_use_{v}_colour']:+.1%}, shape {g[f'caption_use_{v}_shape']:+.1%}, "
             f"direction {g[f'caption_use_{v}_direction']:+.1%}, no caption {g[f'caption_use_{v}_null']:+.1%}"
             for v in names if f"caption_use_{v}_direction" in g]
    if not parts:
        return []
    return ["Caption use (osplab/diffusion/caption_use.py): how much each DiT's training loss on one-object val "
            "clips rises when one caption fact is swapped for another value, or the caption is dropped (mean over "
            "the validation times); near 0 means the network ignores that word. " + "; ".join(parts) + "."]


def results_claims(rows: list[ResultRow]) -> list[dict]:
    """The claims the main table tests, each with whether it holds here and the evidence.

    Two FVDs are called different only when their 95% intervals do not overlap."""
    by = {r.model: r for r in rows}
    rf, ddpm, untrained = by.get("DiT, rectified flow"), by.get("DiT, DDPM baseline"), by.get("DiT, untrained")
    chance = by["shuffled captions"].caption_accuracy
    out = []
    if rf and ddpm:
        ratio = rf.fvd / ddpm.fvd
        overlap = rf.fvd_p2_5 <= ddpm.fvd_p97_5 and ddpm.fvd_p2_5 <= rf.fvd_p97_5
        out.append({"claim": "rectified flow with few steps matches DDPM with 1000 (FVD ratio <= 1.10)",
                    "holds": ratio <= 1.10,
                    "evidence": f"FVD RF / DDPM = {ratio:.2f}; intervals {'overlap' if overlap else 'do not overlap'}; "
                                f"{rf.sampling_steps} sampling steps vs {ddpm.sampling_steps} sampling steps"})
    if rf and untrained:
        out.append({"claim": "training moves the RF DiT far from its initialisation (FVD at most half of the untrained DiT's)",
                    "holds": rf.fvd <= 0.5 * untrained.fvd,
                    "evidence": f"FVD {rf.fvd:.0f} vs {untrained.fvd:.0f} (ratio {rf.fvd / untrained.fvd:.2f})"})
    for r in (rf, ddpm):
        if r:
            out.append({"claim": f"{r.model} follows captions above chance", "holds": r.caption_accuracy > chance,
                        "evidence": f"caption accuracy {r.caption_accuracy:.3f} vs {chance:.3f} with shuffled captions"})
    return out


def _cell(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x / 1e6:.2f} M" if x >= 1e5 else str(x)
    return f"{x:.{digits}f}"


def results_markdown(rows: list[ResultRow], notes: list[str] = ()) -> str:
    """The main table, its notes, the claims and the reported-elsewhere table, as Markdown."""
    lines = ["| model | FVD [95% interval] (clips) | caption accuracy (colour / shape / direction) | PSNR dB | flicker | "
             "parameters | s per clip |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        fvd = "-" if r.fvd is None else f"{r.fvd:.0f} [{r.fvd_p2_5:.0f}, {r.fvd_p97_5:.0f}] ({r.fvd_clips})"
        acc = ("-" if r.caption_accuracy is None else
               f"{r.caption_accuracy:.3f} ({' / '.join(_cell(getattr(r, f)) for f in FACTS)})")
        lines.append(f"| **{r.model}**: {r.what} | {fvd} | {acc} | {_cell(r.psnr_db, 1)} | {_cell(r.flicker_ratio)} | "
                     f"{_cell(r.parameters)} | {_cell(r.seconds_per_clip)} |")
    lines += [""] + [f"- {n}" for n in notes]
    lines += ["", "| claim | holds here | evidence |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {'yes' if c['holds'] else '**no**'} | {c['evidence']} |" for c in results_claims(rows)]
    lines += ["", "Reported by other projects (not measured here: other data, resolution and protocol; for scale only):",
              "", "| model | figure | value | conditions | source |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {f} | {v:g} | {c} | {s} |" for m, f, v, c, s in REPORTED]
    return "\n".join(lines) + "\n"


def results_csv(rows: list[ResultRow]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, [f.name for f in fields(ResultRow)], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    return out.getvalue()


def results_figure(rows: list[ResultRow]):
    """Left: FVD per row with its 95% interval (lower is better). Right: caption accuracy per fact."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.8))
    with_fvd = [r for r in rows if r.fvd is not None]
    y = np.arange(len(with_fvd))
    err = np.array([[r.fvd - r.fvd_p2_5, r.fvd_p97_5 - r.fvd] for r in with_fvd]).T
    a.barh(y, [r.fvd for r in with_fvd], xerr=err, color="tab:blue", alpha=0.8)
    a.set_yticks(y, [r.model for r in with_fvd]); a.invert_yaxis()
    a.set_xlabel("FVD vs real val clips (lower is better)"); a.set_title("FVD, 95% bootstrap interval")
    judged = [r for r in rows if r.caption_accuracy is not None]
    y = np.arange(len(judged))
    for k, fact in enumerate(FACTS):
        b.barh(y + (k - 1) * 0.27, [getattr(r, fact) for r in judged], height=0.27, label=fact)
    b.set_yticks(y, [r.model for r in judged]); b.invert_yaxis(); b.set_xlim(0, 1)
    b.set_xlabel("fraction of caption facts the judge finds"); b.set_title("caption accuracy per fact")
    b.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def write_results(rows: list[ResultRow], out_dir: str | Path, notes: list[str] = ()) -> dict[str, Path]:
    """Write results.md, results.csv and results.png into out_dir (atomically); returns their paths."""
    from osplab.viz import save_figure

    out = Path(out_dir)
    paths = {"md": out / "results.md", "csv": out / "results.csv", "png": out / "results.png"}
    atomic_write_text(paths["md"], results_markdown(rows, notes))
    atomic_write_text(paths["csv"], results_csv(rows))
    save_figure(results_figure(rows), paths["png"])
    return paths
