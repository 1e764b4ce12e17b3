"""The default training memory format follows oneDNN's kernels (AVX-512 or not) on CPU and the precision on
CUDA; `--channels-last` / `--no-channels-last` and `TrainOptions.channels_last` override it."""

from __future__ import annotations

import pytest
import torch

from pointrend_core.__main__ import build_parser
from pointrend_core.engine.memory_format import channels_last_by_default, machine_kernels, onednn_uses_avx512


@pytest.mark.parametrize(
    ("hardware", "limit", "expected"),
    [
        (True, None, True),
        (True, "AVX512_CORE", True),
        (True, "avx512_core_amx", True),
        (True, "ALL", True),
        (True, "AVX2", False),
        (True, "avx2_vnni", False),
        (True, "AVX", False),
        (True, "SSE41", False),
        (False, None, False),
        (False, "AVX512_CORE", False),
    ],
)
def test_onednn_avx512_needs_the_cpu_flag_and_no_lower_cap(
    monkeypatch: pytest.MonkeyPatch, hardware: bool, limit: str | None, expected: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: hardware)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if limit is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert onednn_uses_avx512() is expected
    assert channels_last_by_default(torch.device("cpu"), "fp32") is expected
    assert channels_last_by_default(torch.device("cpu"), "bf16") is expected
    assert ("oneDNN AVX-512" if expected else "oneDNN below AVX-512") in machine_kernels(torch.device("cpu"))


def test_aten_capability_alone_does_not_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """ATEN_CPU_CAPABILITY=avx2 leaves oneDNN's AVX-512 convolutions on (measured: channels-last faster there)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert channels_last_by_default(torch.device("cpu"), "fp32") is True
    assert machine_kernels(torch.device("cpu")) == "ATen AVX2, oneDNN AVX-512"


def test_the_older_variable_name_caps_too_and_the_current_one_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert channels_last_by_default(torch.device("cpu"), "fp32") is False
    assert machine_kernels(torch.device("cpu")).endswith("oneDNN below AVX-512 (DNNL_MAX_CPU_ISA=AVX2)")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert channels_last_by_default(torch.device("cpu"), "fp32") is True


def test_cuda_runs_channels_last_under_autocast_only() -> None:
    cuda = torch.device("cuda", 0)  # the rule reads the device type only: no GPU needed
    assert [channels_last_by_default(cuda, amp) for amp in ("fp32", "bf16", "fp16")] == [False, True, True]
    assert channels_last_by_default(torch.device("meta"), "fp32") is False


def test_the_command_line_leaves_the_default_to_the_machine_unless_told() -> None:
    parser = build_parser()
    base = ["train", "--config", "demo"]
    assert parser.parse_args(base).channels_last is None
    assert parser.parse_args([*base, "--channels-last"]).channels_last is True
    assert parser.parse_args([*base, "--no-channels-last"]).channels_last is False
