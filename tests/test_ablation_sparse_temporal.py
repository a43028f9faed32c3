"""The sparse-attention ablation's settings and verdicts (osplab/ablations/sparse_temporal.py); the notebook
(training, timing, sampling) runs under nbval on its smoke parameters."""

import pytest

from osplab.ablations.sparse_temporal import Row, Variant, claims, variant_config, variants_from, write_report
from osplab.config import compose


def test_variants_are_checked():
    vs = variants_from([{"name": "full", "layout": "full"}, {"name": "s4", "layout": "sparse", "sparse_k": 4}])
    assert vs == [Variant("full", "full"), Variant("s4", "sparse", 4)]
    with pytest.raises(ValueError, match="sparse_k is needed"):
        Variant("s", "sparse")
    with pytest.raises(ValueError, match="sparse_k is needed"):
        Variant("f", "full", 4)
    with pytest.raises(ValueError, match="unknown"):
        Variant("x", "diagonal")
    with pytest.raises(ValueError, match="named 'full'"):
        variants_from([{"name": "a", "layout": "full"}])


def test_a_variant_changes_only_the_attention_layout():
    cfg = compose(["profile=smoke"])
    vc = variant_config(cfg, Variant("s2", "sparse", 2))
    assert (vc.dit.layout, vc.dit.sparse_k) == ("sparse", 2)
    assert {k: v for k, v in vc.dit.items() if k not in ("layout", "sparse_k")} == \
        {k: v for k, v in cfg.dit.items() if k not in ("layout", "sparse_k")}
    assert cfg.dit.layout == "full"  # the original is untouched


def row(name, step_ratio, lo, hi, fvd, half=30.0, gflops=10.0):
    return Row(name, "sparse" if name != "full" else "full", 4 if name != "full" else None, 1000, 1.0, 2.0, gflops,
               0.5, step_ratio, lo, hi, step_ratio, lo, hi, 60.0, fvd, fvd - half, fvd + half, 64, 0.4, 0.9, 0.2, 0.1)


def test_claim_needs_a_20_percent_cut_in_every_round_and_no_clear_fvd_loss(tmp_path):
    full = row("full", 1.0, 1.0, 1.0, 800)
    compute, quality = claims([full, row("sparse_k4", 0.70, 0.66, 0.78, 830, gflops=7.0)])
    assert compute["holds"] and quality["holds"] and "inside the spread" in quality["evidence"]
    assert "a cut of +30%" in compute["evidence"] and "counted FLOPs -30%" in compute["evidence"]
    compute, quality = claims([full, row("sparse_k4", 0.75, 0.70, 0.85, 1000)])
    assert not compute["holds"]       # one round cut only 15%
    assert not quality["holds"] and "clearly worse" in quality["evidence"]
    assert claims([full]) == []
    paths = write_report([full, row("sparse_k4", 0.9, 0.8, 1.1, 810)], tmp_path, ["n"])
    assert "| sparse_k4 | sparse k=4 |" in paths["md"].read_text() and paths["png"].stat().st_size > 0


def test_a_bad_ema_decay_is_named_before_any_training(tmp_path):
    from osplab.ablations.sparse_temporal import train_variant

    cfg = compose(["profile=smoke", "ablation_sparse_temporal.ema_decay=1.0"])
    with pytest.raises(ValueError, match="ablation_sparse_temporal.ema_decay"):
        train_variant(cfg, Variant("full", "full"), 2, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was trained or claimed
