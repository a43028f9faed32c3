"""README's results table is generated from the committed metrics files (osplab/readme.py)."""

import json
import shutil
from pathlib import Path

import pytest

from osplab import readme

ROOT = Path(__file__).resolve().parents[1]


def test_readme_matches_the_committed_metrics():
    text = (ROOT / "README.md").read_text()
    assert readme.splice(text, readme.render(ROOT)) == text, "README.md is stale: run `make readme`"


def test_check_fails_when_a_metric_changes(tmp_path):
    for name in ("README.md", "params.yaml", "metrics", "reports"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    assert readme.main(["--check", "--root", str(tmp_path)]) == 0
    path = tmp_path / "metrics/generation.json"
    g = json.loads(path.read_text())
    g["caption_accuracy_rf"] += 0.25
    path.write_text(json.dumps(g))
    assert readme.main(["--check", "--root", str(tmp_path)]) == 1
    assert readme.main(["--root", str(tmp_path)]) == 0  # regenerates
    assert f"RF {g['caption_accuracy_rf']:.3f}" in (tmp_path / "README.md").read_text()
    assert readme.main(["--check", "--root", str(tmp_path)]) == 0


def test_missing_markers_and_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="no results block"):
        readme.splice("# a README without the markers\n", "block")
    with pytest.raises(FileNotFoundError, match="metrics/vqvae.json is missing"):
        readme.render(tmp_path)


def test_readme_shows_the_report_tables_verbatim():
    text = (ROOT / "README.md").read_text()
    assert readme.splice_reports(text, ROOT) == text, "README.md is stale: run `make readme`"
    for name in readme.REPORTS:
        assert (ROOT / "reports" / f"{name}.md").read_text().strip() in text


def test_check_fails_when_a_report_changes(tmp_path):
    for name in ("README.md", "params.yaml", "metrics", "reports"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    report = tmp_path / "reports" / f"{readme.REPORTS[0]}.md"
    report.write_text(report.read_text().replace("|---|", "|---|\n| an extra row | 1 |", 1))
    assert readme.main(["--check", "--root", str(tmp_path)]) == 1
    assert readme.main(["--root", str(tmp_path)]) == 0
    assert "| an extra row | 1 |" in (tmp_path / "README.md").read_text()
    report.unlink()
    with pytest.raises(FileNotFoundError, match=f"dvc repro {readme.REPORTS[0]}"):
        readme.splice_reports((tmp_path / "README.md").read_text(), tmp_path)
