"""The codebook ablation's settings and verdicts (osplab/ablations/codebook.py); the notebook (training and
scoring) runs under nbval on its smoke parameters."""

import pytest

from osplab.ablations.codebook import Row, Variant, claims, variant_config, variants_from, write_report
from osplab.config import compose


def test_variants_and_their_config():
    vs = variants_from([{"name": "a", "codebook_size": 16, "embed_dim": 8}, {"name": "b", "codebook_size": 64,
                                                                            "embed_dim": 4}])
    assert vs[1] == Variant("b", 64, 4)
    with pytest.raises(ValueError, match="unique"):
        variants_from([{"name": "a", "codebook_size": 16, "embed_dim": 8}] * 2)
    with pytest.raises(ValueError, match="codebook_size >= 2"):
        Variant("c", 1, 8)
    cfg = compose(["profile=smoke"])
    vc = variant_config(cfg, vs[1], 7, "runs/x")
    assert (vc.vqvae.model.codebook_size, vc.vqvae.model.embed_dim) == (64, 4)
    assert (vc.train_vqvae.steps, vc.train_vqvae.out_dir) == (7, "runs/x/b")
    assert vc.vqvae.model.downsample == cfg.vqvae.model.downsample and cfg.train_vqvae.out_dir != "runs/x/b"


def row(name, size, psnr, fvd, half=30.0, dim=64):
    return Row(name, size, dim, 10**6, psnr, 1.2, 0.6, 500.0, fvd, fvd - half, fvd + half, 128, 100.0)


def test_claims_against_the_reference(tmp_path):
    ref = row("K8192_d64", 8192, 29.0, 300)
    small, big = row("K1024_d64", 1024, 28.0, 320), row("K16384_d64", 16384, 29.2, 290)
    verdicts = claims([small, ref, big, row("K8192_d32", 8192, 28.0, 400, dim=32)], "K8192_d64")
    assert [v["claim"] for v in verdicts] == ["1024 codes reconstruct worse than 8192",
                                              "16384 codes reconstruct better than 8192"]
    assert verdicts[0]["holds"] and not verdicts[1]["holds"]  # -1 dB; +0.2 dB is not enough
    assert claims([small], "K8192_d64") == []
    paths = write_report([small, ref], "K8192_d64", tmp_path)
    assert "| K1024_d64 | 1024 | 64 |" in paths["md"].read_text()
