"""What the ablation reports share: FVD intervals, verdict tables, and writing md / csv / png (scoring a
sample set of generated clips is `osplab.ablations.scoring`, which imports stage 2)."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

from osplab.io import atomic_write_json, atomic_write_text


def interval(r) -> tuple[float, float]:
    """A row's FVD 95% interval, or the point itself when there was no spread (too few clips)."""
    return (r.fvd if r.fvd_p2_5 is None else r.fvd_p2_5, r.fvd if r.fvd_p97_5 is None else r.fvd_p97_5)


def fvd_text(r) -> str:
    if r.fvd is None:
        return "-"
    lo, hi = interval(r)
    return f"{r.fvd:.0f} [{lo:.0f}, {hi:.0f}]" if r.fvd_p2_5 is not None else f"{r.fvd:.0f} (no spread)"


def overlap(a, b) -> bool:
    """Two FVDs count as different only when their 95% intervals do not overlap."""
    (a_lo, a_hi), (b_lo, b_hi) = interval(a), interval(b)
    return not (a_hi < b_lo or b_hi < a_lo)


def claims_table(verdicts: list[dict]) -> list[str]:
    """Markdown lines of a claims table ({'claim', 'holds', 'evidence'} each); none if no verdicts."""
    if not verdicts:
        return []
    return (["", "| claim | holds here | evidence |", "|---|---|---|"]
            + [f"| {c['claim']} | {'yes' if c['holds'] else '**no**'} | {c['evidence']} |" for c in verdicts])


def csv_text(rows: list) -> str:
    """Dataclass rows -> CSV with one column per field."""
    out = io.StringIO()
    writer = csv.DictWriter(out, [f.name for f in fields(rows[0])], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    return out.getvalue()


def summary(rows: list, key: Callable[[object], str], fields_: tuple[str, ...]) -> dict[str, dict]:
    """{key(row): {field: value}} of numeric fields: the `<name>.json` that `dvc metrics show` and
    `dvc exp show` read (a JSON list would not be shown; NaN and None become null)."""
    def clean(v):
        return None if v is None or (isinstance(v, float) and v != v) else v
    return {key(r): {f: clean(getattr(r, f)) for f in fields_} for r in rows}


def write_files(out_dir: str | Path, name: str, md: str, rows: list, fig, metrics: dict) -> dict[str, Path]:
    """<out_dir>/<name>.md, .csv (of `rows`), .png (of `fig`) and .json (`metrics`, see `summary`),
    written atomically; returns the paths."""
    from osplab.viz import save_figure

    out = Path(out_dir)
    paths = {k: out / f"{name}.{k}" for k in ("md", "csv", "png", "json")}
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["csv"], csv_text(rows))
    atomic_write_json(paths["json"], metrics)
    save_figure(fig, paths["png"])
    return paths
