"""`dtype: auto`: bf16 only where a measured probe finds it clearly faster than fp32."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.modeling import dtype as dt


def test_named_dtypes_are_taken_as_asked():
    assert dt.resolve_dtype("fp32").name == "fp32"
    assert dt.resolve_dtype("bf16").torch_dtype is torch.bfloat16
    with pytest.raises(ValueError, match="choose one of auto, fp32, bf16, fp16"):
        dt.resolve_dtype("int8")


@pytest.mark.parametrize(("speedup", "expected"), [(4.6, "bf16"), (1.2, "fp32"), (0.1, "fp32")])
def test_auto_on_cpu_follows_the_probe(monkeypatch, tmp_path, speedup, expected):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(dt, "measure_bf16_speedup", lambda: speedup)
    choice = dt.resolve_dtype("auto", "cpu")
    assert choice.name == expected
    assert f"{speedup:.1f}x" in choice.reason


def test_the_probe_runs_once_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    first = dt.cpu_bf16_speedup()  # the real measurement
    assert first > 0
    cached = json.loads((tmp_path / "dtype-probe.json").read_text())
    assert cached["speedup"] == first and cached["key"]["torch"] == torch.__version__

    def must_not_run():
        raise AssertionError("probed again")

    monkeypatch.setattr(dt, "measure_bf16_speedup", must_not_run)
    assert dt.cpu_bf16_speedup() == first
