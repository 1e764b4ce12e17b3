"""Which memory format a training runs in by default: channels-last where this machine's convolution kernels
are faster in it, NCHW (the reference's) elsewhere.

What decides it is oneDNN, which runs the CPU convolutions (80% of a training step): measured with
`benchmarks/train.py` (R-50 VOC step, 512 x 512, batch 2; docs/training-speed.md), channels-last is faster where
oneDNN uses its AVX-512 kernels and slower where it is held to AVX2, whatever ATen's own capability
(`ATEN_CPU_CAPABILITY`) is. On CUDA (expected, not yet measured: `benchmarks/gpu_check.py` judges it on a GPU)
under autocast (bf16/fp16) the tensor-core convolutions want channels-last (cuDNN's NHWC kernels); in float32,
which this package runs without TF32 as the reference does, NCHW stays.

oneDNN reads its instruction-set limit once, when it starts: the variable must be set before the process does.
"""

from __future__ import annotations

import os

import torch

_ONEDNN_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
"""oneDNN's environment variable capping the instruction set of its kernels (SSE41, AVX, AVX2, AVX512_CORE, ...),
and its older name, which oneDNN still reads."""


def _onednn_limit() -> tuple[str, str] | None:
    """(variable, value) of the limit that is set, the current name first; None when neither is."""
    for name in _ONEDNN_LIMITS:
        if os.environ.get(name):
            return name, os.environ[name]
    return None


def onednn_uses_avx512() -> bool:
    """Whether oneDNN's convolutions run AVX-512 kernels here: the CPU has AVX-512 and ONEDNN_MAX_CPU_ISA (or
    DNNL_MAX_CPU_ISA), if set, does not cap oneDNN below it."""
    has_avx512 = getattr(torch.cpu, "_is_avx512_supported", None)  # the CPU's own flags (cpuinfo), not ATen's
    hardware = has_avx512() if has_avx512 is not None else torch.backends.cpu.get_cpu_capability() == "AVX512"
    limit = (_onednn_limit() or ("", ""))[1].upper()
    capped = limit == "AVX" or limit.startswith(("SSE", "AVX2"))
    return hardware and not capped


def machine_kernels(device: torch.device) -> str:
    """The kernels that decide the default, in words: the CUDA device's name, or ATen's CPU capability and
    whether oneDNN uses AVX-512 (e.g. "ATen AVX2, oneDNN AVX-512")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    limit = _onednn_limit()
    onednn = "AVX-512" if onednn_uses_avx512() else "below AVX-512"
    return (f"ATen {torch.backends.cpu.get_cpu_capability()}, oneDNN {onednn}"
            + (f" ({limit[0]}={limit[1]})" if limit else ""))


def channels_last_by_default(device: torch.device, amp: str) -> bool:
    """Whether training on `device` at precision `amp` runs channels-last unless told otherwise."""
    if device.type == "cuda":
        return amp in ("bf16", "fp16")
    return device.type == "cpu" and onednn_uses_avx512()
