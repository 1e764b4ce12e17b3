"""Mixed precision in training: the one mapping from the `amp` option ("none", "bf16", "fp16") to an autocast
dtype, and to the inference precision its evaluations run at (`model.inference`: "fp32", "bf16", "fp16")."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal

import torch

from pointrend_core.model.inference import Precision

Amp = Literal["none", "bf16", "fp16"]
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of an `amp` option (None for "none"); ValueError names the valid options."""
    try:
        return AMP_DTYPES[amp]
    except KeyError:
        raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}") from None


def autocast(device: torch.device, amp: str) -> Any:
    """`torch.autocast` for `amp` on `device` (a no-op context for "none")."""
    dtype = amp_dtype(amp)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def inference_precision(amp: str) -> Precision:
    """The `prepare_for_inference` precision of a training's `amp` option: "none" evaluates in "fp32"."""
    amp_dtype(amp)  # a clear error for an unknown value
    return "fp32" if amp == "none" else amp  # type: ignore[return-value]
