"""Mixed precision in training: one set of names at every layer -- "fp32", "bf16", "fp16", the same as the
inference precisions of `model.inference` -- and the one mapping from a name to an autocast dtype.

"none" is an older spelling of "fp32" (the `--amp none` of earlier versions); `precision_name` turns it into
"fp32" wherever a precision comes in, so scripts that use it keep working.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from pointrend_core.model.inference import Precision

Amp = Precision
"""The training precision: "fp32" (no autocast), "bf16" (CPU or CUDA) or "fp16" (CUDA, with a GradScaler)."""
AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
OLD_SPELLINGS = {"none": "fp32"}


def precision_name(amp: str) -> Precision:
    """`amp` in its one spelling ("none" -> "fp32"); ValueError names the valid options."""
    amp = OLD_SPELLINGS.get(amp, amp)
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be 'fp32', 'bf16' or 'fp16', got {amp!r}")
    return amp  # type: ignore[return-value]


def amp_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of a training precision (None for "fp32")."""
    return AMP_DTYPES[precision_name(amp)]


def autocast(device: torch.device, amp: str) -> Any:
    """`torch.autocast` for `amp` on `device` (a no-op context for "fp32")."""
    dtype = amp_dtype(amp)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def inference_precision(amp: str) -> Precision:
    """The precision a training's evaluations run at: its own."""
    return precision_name(amp)
