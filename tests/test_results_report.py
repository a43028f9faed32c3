"""The main results table (osplab/results.py): read from the committed metrics, claims computed."""

import json
import shutil
from pathlib import Path

import pytest

from osplab import results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def root(tmp_path):
    shutil.copytree(ROOT / "metrics", tmp_path / "metrics")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _row(rows, model):
    return next(r for r in rows if r.model == model)


def test_rows_carry_the_committed_numbers(root):
    g = json.loads((root / "metrics/generation.json").read_text())
    e = json.loads((root / "metrics/eval.json").read_text())
    rows = results.results_rows(root)
    rf = _row(rows, "DiT, rectified flow")
    key = next(k for k in g["fvd_detail"] if k.startswith("fvd_rf"))
    assert rf.fvd == g["fvd_detail"][key]["fvd"] and rf.caption_accuracy == g["caption_accuracy_rf"]
    assert rf.parameters == json.loads((root / "metrics/dit_rf.json").read_text())["params"]
    vq = _row(rows, "VQVAE reconstruction")
    assert (vq.fvd, vq.psnr_db, vq.flicker_ratio) == (e["fvd"], e["psnr"], e["flicker_ratio"])
    assert _row(rows, "shuffled captions").fvd is None  # nothing generated, no FVD


def test_claims_follow_the_numbers(root):
    path = root / "metrics/generation.json"
    g = json.loads(path.read_text())
    rf_key = next(k for k in g["fvd_detail"] if k.startswith("fvd_rf"))
    dd_key = next(k for k in g["fvd_detail"] if k.startswith("fvd_ddpm"))
    for factor, holds in ((1.0, True), (1.2, False)):
        d = g["fvd_detail"][rf_key]
        ref = g["fvd_detail"][dd_key]["fvd"]
        for k in ("fvd", "p2_5", "p97_5"):
            d[k] = ref * factor + (d[k] - d["fvd"])
        path.write_text(json.dumps(g))
        claim = next(c for c in results.results_claims(results.results_rows(root)) if "1000" in c["claim"])
        assert claim["holds"] is holds, claim


def test_write_results_files_agree(root, tmp_path):
    rows = results.results_rows(root)
    paths = results.write_results(rows, tmp_path / "out", results.results_notes(root))
    md, csv = paths["md"].read_text(), paths["csv"].read_text()
    assert len(csv.strip().splitlines()) == len(rows) + 1
    for r in rows:
        assert r.model in md and r.model in csv
    assert "Reported by other projects" in md and "arXiv:2401.03048" in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_a_missing_metrics_file_names_the_fix(root):
    (root / "metrics/generation.json").unlink()
    with pytest.raises(FileNotFoundError, match="generation.json is missing: run `dvc repro`"):
        results.results_rows(root)


def test_caption_use_note_carries_the_probe_numbers(root):
    path = root / "metrics/generation.json"
    g = json.loads(path.read_text())
    for k in [k for k in g if k.startswith("caption_use_")]:
        del g[k]
    path.write_text(json.dumps(g))
    assert not any("Caption use" in n for n in results.results_notes(root))  # not measured: no line
    g.update({f"caption_use_rf_{f}": v for f, v in (("colour", 0.2), ("shape", 0.01), ("direction", 0.0), ("null", 0.05))})
    path.write_text(json.dumps(g))
    note = next(n for n in results.results_notes(root) if n.startswith("Caption use"))
    assert "RF: colour +20.0%, shape +1.0%, direction +0.0%, no caption +5.0%" in note and "DDPM" not in note


def test_the_quantizer_row_and_note_come_from_the_diagnostic(root):
    path = root / "metrics/generation.json"
    g = json.loads(path.read_text())
    free = _row(results.results_rows(root), "VQVAE, quantizer skipped")
    assert (free.fvd, free.psnr_db, free.shape) == (g["fvd_unquantized"], g["psnr_unquantized"],
                                                     g["caption_accuracy_unquantized_shape"])
    note = next(n for n in results.results_notes(root) if n.startswith("Where the VQVAE loses detail"))
    assert f"PSNR {g['psnr_recon']:.1f} dB" in note and f"PSNR {g['psnr_unquantized']:.1f} dB" in note
    for k in ("fvd_recon", "fvd_unquantized"):  # metrics of an older evaluate_generation: no row, no note
        del g["fvd_detail"][k]
    path.write_text(json.dumps(g))
    assert "VQVAE, quantizer skipped" not in [r.model for r in results.results_rows(root)]
    assert not any(n.startswith("Where the VQVAE loses detail") for n in results.results_notes(root))
