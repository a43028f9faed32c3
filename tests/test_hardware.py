"""osplab.hardware: where bf16 is native decides whether `precision: bf16` runs bf16 or fp32."""

import pytest
import torch

import osplab.hardware as hardware


def test_native_bf16_follows_the_cpu_probe(monkeypatch):
    for value in (True, False):
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda value=value: value)
        assert hardware.native_bf16("cpu") is value
        assert hardware.describe_cpu()["cpu_native_bf16"] is value
    assert hardware.native_bf16("meta") is False


def test_the_probe_is_false_without_torch_cpu_functions(monkeypatch):
    """A torch without the private probes counts as no native bf16: the safe side (fp32)."""
    monkeypatch.setattr(torch, "cpu", object())
    assert hardware.cpu_has_native_bf16() is False


def test_the_probe_reads_torch_cpu(monkeypatch):
    class Cpu:
        @staticmethod
        def _is_avx512_bf16_supported():
            return False

        @staticmethod
        def _is_amx_tile_supported():
            return True

    monkeypatch.setattr(torch, "cpu", Cpu())
    assert hardware.cpu_has_native_bf16() is True


def test_describe_cpu_and_the_command(capsys, monkeypatch):
    info = hardware.describe_cpu()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert hardware.matmul_gflops(torch.float32, n=64, seconds=0.0) > 0
    monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype: 10.0 if dtype == torch.float32 else 0.5)
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    hardware.main()
    out = capsys.readouterr().out
    assert "native bf16 (AVX512_BF16 or AMX): no" in out and "fp32 10.0 GFLOP/s, bf16 0.50 GFLOP/s (0.05x fp32)" in out
    assert "run fp32 here" in out


@pytest.mark.parametrize("native", [True, False])
def test_train_precision_follows_the_cpu(monkeypatch, native):
    import osplab.train.loop as loop

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(loop, "_warned_emulated", {"train.precision"})  # silence: the warning has its own test
    assert loop.autocast_dtype("bf16", torch.device("cpu")) is (torch.bfloat16 if native else None)
    assert loop.autocast_dtype("auto", torch.device("cpu")) is None  # auto keeps fp32 on every CPU
