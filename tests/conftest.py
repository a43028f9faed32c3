"""Shared fixtures: composed configs and a small synthetic clip store built once per session."""

from __future__ import annotations

import pytest

from osplab.config import compose


@pytest.fixture(scope="session")
def smoke_cfg():
    """The composed config of the `smoke` profile."""
    return compose(["profile=smoke"])


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory, smoke_cfg):
    """A clip store generated with the smoke profile (40 clips, two resolutions, two lengths)."""
    from osplab.data.synthetic import SynthConfig, generate_store

    root = tmp_path_factory.mktemp("store") / "raw"
    generate_store(root, SynthConfig.from_conf(smoke_cfg.data.synthetic), smoke_cfg.data.shard_size, progress=False)
    return root


@pytest.fixture(scope="session")
def stage2_pipeline(tmp_path_factory):
    """A working folder in which the whole smoke stage-2 pipeline ran (tests/stage2_smoke.py):
    smoke VQVAE, latents, text cache, RF and DDPM DiTs, samples, metrics. Built once per session."""
    from stage2_smoke import run_stage2_smoke

    return run_stage2_smoke(tmp_path_factory.mktemp("stage2"))
