"""Benchmark library: FLOP formulas against torch's FlopCounterMode and the masks, the timer's
round-robin order, settings validation, and a smoke run that writes the three outputs.
No test asserts a speed (speeds are reported as ratios by the notebook)."""

import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from osplab.bench.attention import (
    REQUIRED,
    attention_flops,
    block_stack_flops,
    check_settings,
    kept_pairs,
    run_benchmark,
)
from osplab.bench.attention_report import target_rows, write_outputs
from osplab.bench.timing import Timing, fraction_of_peak, median, paired_ratio, ratio_quartiles, time_interleaved
from osplab.config import REPO_ROOT
from osplab.models.attention import LAYOUTS, attention, layout_mask
from osplab.models.blocks import BlockStack

TINY = {
    "device": "cpu", "threads": 2, "repeats": 2, "warmup": 1, "min_seconds": 0.0, "max_repeats": 2, "matmul_n": 64,
    "shapes": {"batch": 1, "width": 16, "mlp_ratio": 2, "frames": [2], "tokens_per_frame": [4], "head_dims": [8]},
    "sparse": {"k": 4, "batch": 1, "width": 16, "frames": 6, "tokens_per_frame": [4], "head_dim": 8, "flex": False},
    "short": {"tokens": 32, "heads": 2, "head_dim": 8, "self_lengths": [8, 130], "cross_queries": 8, "cross_keys": 6},
    "block_stack": {"depth": 1, "width": 16, "heads": 2, "mlp_ratio": 4, "frames": 2, "tokens_per_frame": 4,
                    "batch": 2, "variants": ["sdpa"], "bf16": True},
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("T, S, k", [(16, 4, 4), (7, 3, 3), (1, 5, 2), (5, 2, 1)])
def test_kept_pairs_counts_the_mask(layout, T, S, k):
    assert kept_pairs(layout, T, S, k) == int(layout_mask(layout, T, S, k).sum())


def test_sparse_k4_over_16_frames_keeps_under_a_third():
    assert kept_pairs("sparse", 16, 64, 4) / kept_pairs("full", 16, 64, None) == pytest.approx(4.75 / 16)


def test_attention_flops_match_flop_counter():
    B, H, T, S, D = 2, 2, 3, 4, 8
    q = k = v = torch.randn(B, H, T, S, D)
    with FlopCounterMode(display=False) as counter:
        attention(q, k, v, "full", "eager")  # two explicit matmuls: counted by FlopCounterMode
    assert counter.get_total_flops() == attention_flops(B, H * D, kept_pairs("full", T, S, None))


def test_block_stack_flops_match_flop_counter_fwd_and_fwd_bwd():
    depth, width, heads, ratio, T, S, B = 2, 16, 2, 4, 3, 4, 2
    stack = BlockStack(depth, width, heads, width, ratio, layout="full", backend="eager", sparse_k=None, qk_norm=False)
    x = torch.randn(B, T, S, width, requires_grad=True)
    c = torch.randn(B, width, requires_grad=True)  # so every matmul has both backward products
    expected = block_stack_flops(depth, width, ratio, T, S, B)
    with FlopCounterMode(display=False) as fwd:
        out = stack(x, c)
    assert fwd.get_total_flops() == expected
    with FlopCounterMode(display=False) as both:
        stack(x, c).sum().backward()
    assert both.get_total_flops() == 3 * expected
    assert out.shape == x.shape


def test_time_interleaved_rotates_rounds_after_warmup():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_interleaved(fns, Timing(repeats=3, warmup=2))
    assert calls == list("abc") * 2 + list("abc" "bca" "cab")  # warm-up rounds, then rotated rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)


class FakeClock:
    """A perf_counter that only advances when a timed function runs: no dependence on machine load."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float):
        def fn():
            self.now += seconds
        return fn


@pytest.mark.parametrize("call_s,max_repeats,rounds", [(0.1, 7, 7),     # 1 s needs 10 rounds: capped at 7
                                                       (0.1, 50, 10),   # not capped: ceil(1.0 / 0.1)
                                                       (0.6, 50, 2)])   # slow: ceil(1.0 / 0.6) = 2 = repeats
def test_min_seconds_adds_rounds_up_to_the_cap(monkeypatch, call_s, max_repeats, rounds):
    import types

    from osplab.bench import timing as timing_module

    clock = FakeClock()
    monkeypatch.setattr(timing_module, "time", types.SimpleNamespace(perf_counter=clock))
    calls = []
    step = clock.work(call_s)
    timing = Timing(repeats=2, warmup=1, min_seconds=1.0, max_repeats=max_repeats)
    times = time_interleaved({"a": lambda: (calls.append(1), step())}, timing)
    assert len(times["a"]) == rounds and len(calls) == rounds + 1  # plus 1 warm-up call
    assert times["a"] == pytest.approx([call_s] * rounds)


def test_median_and_paired_ratio():
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0, 2.0, 3.0]) == 2.5
    # pairs (2/1, 6/2, 9/3) = (2, 3, 3): the median of the ratios, not the ratio of the medians
    assert paired_ratio([2.0, 6.0, 9.0], [1.0, 2.0, 3.0]) == 3.0
    assert ratio_quartiles([1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5) == (2.0, 4.0)
    # 2 FLOPs in 1 s against 4 FLOPs in 1 s, then 2 in 1 s against 4 in 2 s: rates 1/2 and 1/1 -> median 0.75
    assert fraction_of_peak(2.0, [1.0, 1.0], 4.0, [1.0, 2.0]) == 0.75


def test_default_conf_has_every_key_and_missing_keys_are_named():
    cfg = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "attention" / "default.yaml"))
    for key in ("layout", "backend", "sparse_k", "qk_norm"):
        assert key in cfg
    check_settings(cfg["bench"])
    broken = json.loads(json.dumps(TINY))
    del broken["sparse"]["head_dim"]
    with pytest.raises(KeyError, match=r"sparse\.head_dim"):
        check_settings(broken)
    assert set(REQUIRED[""]) == set(TINY)


def test_target_rows_pass_and_fail():
    rows = target_rows({"compiled_over_sdpa_worst": 0.98, "sparse_k4_over_dense_fwd_bwd": 0.5})
    met = {what.split("`")[1]: m for what, _, _, m in rows}
    assert met == {"compiled_over_sdpa_worst": True, "sparse_k4_over_dense_fwd_bwd": False,
                   "block_stack_fraction_of_peak": None}


def test_smoke_run_writes_report_plot_and_metrics(tmp_path, monkeypatch):
    import osplab.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)  # the same run on every machine
    res = run_benchmark(TINY, progress=False)
    paths = [tmp_path / "attention.md", tmp_path / "attention.png", tmp_path / "metrics" / "attention.json"]
    write_outputs(res, *paths)
    metrics = json.loads(paths[2].read_text())
    for key in ("matmul_peak_gflops_fp32", "sparse_k4_over_dense_fwd_bwd", "compiled_over_sdpa_worst",
                "block_stack_fraction_of_peak", "matmul_peak_gflops_bf16"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0, key
    assert metrics["compiled_over_sdpa_worst"] == max(r["compiled_over_sdpa"] for r in res["dense"])
    assert len(res["dense"]) == 1 and len(res["sparse"]) == 1 and len(res["block_stack"]) == 2
    assert res["block_stack"][0]["flops_per_step"] == 3 * block_stack_flops(1, 16, 4, 2, 4, 2)
    # short sequences: fp32 and bf16 x (self 8, self 130, cross 8 -> 6); with a backward math for <= 32 keys (fp32),
    # <= 128 (bf16); without grad always SDPA's own pick (flash)
    picks = [(r["dtype"], r["kind"], r["keys"], r["fwd_bwd"]["kit_pick"], r["fwd"]["kit_pick"]) for r in res["short"]]
    assert picks == [("float32", "self", 8, "math", "flash"), ("float32", "self", 130, "flash", "flash"),
                     ("float32", "cross", 6, "math", "flash"), ("bfloat16", "self", 8, "math", "flash"),
                     ("bfloat16", "self", 130, "flash", "flash"), ("bfloat16", "cross", 6, "math", "flash")]
    assert metrics["short_kit_over_best_worst"] == max(r[m]["kit_over_best"] for r in res["short"] for m in ("fwd", "fwd_bwd"))
    assert {k for k in metrics if k.startswith("short_flash_over_math")} == {
        f"short_flash_over_math_fwd_bwd_{dt}_{kind}" for dt in ("float32", "bfloat16") for kind in ("self8", "cross6")}
    report = paths[0].read_text()
    assert "| cross | bfloat16 | 4 x 2 | 8 | 6 |" in report  # batch = 32 tokens / 8 queries
    assert "| 2 | 4 | 8 | 2 | 1 |" in report  # the dense row T=2, S=4, D=8, H=2, B=1
    assert "### Targets" in report and "GLIBC_TUNABLES" in report
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_bf16_is_not_timed_where_it_is_emulated(tmp_path, monkeypatch):
    """On a CPU without native bf16 (AVX2) the run times fp32 only and the report says why."""
    import osplab.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    res = run_benchmark(TINY, progress=False)
    paths = [tmp_path / "attention.md", tmp_path / "attention.png", tmp_path / "attention.json"]
    write_outputs(res, *paths)
    metrics = json.loads(paths[2].read_text())
    assert "matmul_peak_gflops_bf16" not in metrics and math.isfinite(metrics["block_stack_fraction_of_peak"])
    assert [r["dtype"] for r in res["block_stack"]] == ["fp32"]
    assert {r["dtype"] for r in res["short"]} == {"float32"}
    assert "bf16_fwd_bwd" not in res["dense"][0]["ms"] and set(res["dense"][0]["peak_gflops"]) == {"fp32"}
    assert res["conditions"]["bf16"]["measured"] is False and set(res["peak_runs"]) == {"peak_fp32"}
    report = paths[0].read_text()
    assert "bf16 not measured: this CPU" in report and "| - | - | - |" in report
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
