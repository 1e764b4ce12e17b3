"""One fast inference path for a trained `PointRend`: `prepare_for_inference(model, precision, compile)`.

    fast = prepare_for_inference(model, precision="bf16")
    out = fast(images)                        # the same PointRendOutput as model.eval()(images), float32

What it does, and why (measured on 2 Zen 4 cores; benchmarks/inference.py prints the numbers again):
- BatchNorm folded into the convolution before it (`fuse_for_inference`, a deep copy: `model` is untouched).
- Channels-last for the 2-D convolutions (backbone, FPN, scale heads): oneDNN's kernels run on NHWC without
  the reorders of NCHW. The point head is 1-D (Conv1d over sampled points) and has no layout to choose; its
  P2 input stays channels-last, where `grid_sample` reads a point's channels contiguously (7x faster than
  NCHW at 256 channels). The coarse logits are made contiguous NCHW: the 2x bilinear upsampling of the
  subdivision is 3x slower on channels-last with so few channels.
- `torch.inference_mode` (no autograd bookkeeping, no version counters).
- `precision`: "fp32"; "bf16" autocast (CPU and CUDA); "fp16" autocast (CUDA only: CPU fp16 convolutions
  have no fast kernels, so it is refused). The network runs under the wrapper's own autocast, which also
  overrides (switches off, for "fp32") whatever autocast a caller may have entered. The *subdivision's point
  choice* always runs in float32: features and coarse logits are cast to float32 before it, so the
  upsampling, the uncertainty and the top-k see float32 values (bf16 would quantise the uncertainty to 8 bits
  and turn the top-k into a tie-break by memory order); the point head's own MLP still runs in the autocast
  dtype. Every tensor returned is float32.
- The subdivision (`InferenceModel.subdivide`) computes what `PointRend.subdivide` computes, bit for bit, but
  the top-2 gap by a running max over the classes instead of `topk` over the channel dimension (16x faster
  at 1024x2048) and the chosen cells written in place instead of into a copy of the whole map.
- `compile=True`: `torch.compile` (inductor, with `freezing`: weights become constants, prepacked for oneDNN,
  the ReLU fused into the convolution) of `PointRend.features` only. The subdivision stays eager: its top-k
  is data-dependent. The first call compiles (half a minute to a minute on 2 cores; needs a C++ compiler),
  and so does each new input shape (fixed-size inputs such as Cityscapes or the demo are where it pays).
  Move the model to its device before the first call: frozen weights are constants of the compiled graph.

Point choice does not depend on the memory layout: `PointRend.subdivide` makes the upsampled logits
contiguous NCHW before the top-k, so a channels-last coarse map picks the same cells as the plain model
(tests/test_inference.py checks it).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pointrend_core.model.pointrend import PointRend, PointRendOutput, fuse_for_inference

Precision = Literal["fp32", "bf16", "fp16"]
PRECISION_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""precision -> autocast dtype (None: float32, autocast off)."""


@dataclass(frozen=True)
class InferenceSettings:
    """How an `InferenceModel` runs; `as_record()` is what run.json should hold."""

    precision: Precision = "fp32"
    compile: bool = False
    channels_last: bool = True
    """NHWC for the 2-D convolutions; on by default (measured faster on CPU with oneDNN; usual on CUDA)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_DTYPES:
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return PRECISION_DTYPES[self.precision]

    def as_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_precision(precision: str, device: torch.device | str) -> None:
    """ValueError when `precision` is unknown or cannot run on `device` (fp16 on anything but CUDA)."""
    InferenceSettings(precision)  # type: ignore[arg-type]
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision 'fp16' needs a CUDA device (got {device.type!r}): CPU fp16 convolutions have no fast "
            "kernels; use 'bf16' or 'fp32' on CPU"
        )


class InferenceModel(nn.Module):
    """A BatchNorm-folded copy of a `PointRend` that runs eval-mode inference fast; see the module docstring.

    Called like the model in eval mode: `fast(images, subdivision_steps=..., subdivision_num_points=...,
    record_steps=...)` -> `PointRendOutput` in float32. Inference only: `targets` and `.train()` are refused.
    `precision` and `compiled` say how it runs (for run.json); `model` is the folded copy it runs.
    """

    def __init__(self, model: PointRend, settings: InferenceSettings) -> None:
        super().__init__()
        self.settings = settings
        fused = fuse_for_inference(model)  # a deep copy in eval mode
        for parameter in fused.parameters():
            parameter.requires_grad_(False)
        if settings.channels_last:
            fused = fused.to(memory_format=torch.channels_last)
        self.model = fused
        self.cfg = fused.cfg
        self.num_classes = fused.num_classes
        self._features = fused.features
        if settings.compile:
            # Freezing is read when the graph is compiled (the first call, and any recompilation for a new
            # shape): `features` sets it for those calls only. `options={"freezing": True}` is not enough.
            self._features = torch.compile(fused.features)
        self.eval()

    @property
    def precision(self) -> Precision:
        return self.settings.precision

    @property
    def compiled(self) -> bool:
        return self.settings.compile

    def train(self, mode: bool = True) -> InferenceModel:
        if mode:
            raise RuntimeError("an InferenceModel is for inference only (BatchNorm is folded); train the PointRend")
        return super().train(False)

    @contextlib.contextmanager
    def inference_context(self, device_type: str) -> Iterator[None]:
        """inference_mode + this model's autocast (off for fp32, overriding any outer autocast)."""
        dtype = self.settings.dtype
        with torch.inference_mode(), torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            yield

    def prepare_input(self, images: Tensor) -> Tensor:
        """Images in the memory format the convolutions want (a no-op when they already are)."""
        if self.settings.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(P2 features, coarse logits), both float32, under `inference_context`.

        The coarse logits are returned contiguous NCHW (the subdivision upsamples them 2x: ATen's bilinear
        kernel is 3x slower on channels-last with so few channels); the P2 features keep the FPN's
        channels-last layout, where `grid_sample` reads one point's channels contiguously (7x faster than
        NCHW at 256 channels).
        """
        check_precision(self.precision, images.device)
        with self.inference_context(images.device.type):
            if self.compiled:
                import torch._inductor.config as inductor_config  # only when compiling: a heavy import

                with inductor_config.patch(freezing=True):
                    fine, coarse = self._features(self.prepare_input(images))
            else:
                fine, coarse = self._features(self.prepare_input(images))
        # float32 once here rather than in every step's point sampling (which samples in float32 anyway).
        return fine.float(), coarse.float().contiguous()

    def refine(
        self,
        fine_features: Tensor,
        coarse_logits: Tensor,
        steps: int | None = None,
        num_points: int | None = None,
        record_steps: bool = False,
    ) -> PointRendOutput:
        """The folded model's own `PointRend.refine` under `inference_context`, on float32 logits (so every
        step runs in float32 whatever the precision of the features)."""
        with self.inference_context(coarse_logits.device.type):
            return self.model.refine(fine_features, coarse_logits.float(), steps, num_points, record_steps)

    def forward(
        self,
        images: Tensor,
        targets: Tensor | None = None,
        *,
        subdivision_steps: int | None = None,
        subdivision_num_points: int | None = None,
        record_steps: bool = False,
    ) -> PointRendOutput:
        if targets is not None:
            raise TypeError("an InferenceModel computes no training losses; call the PointRend with targets")
        fine, coarse = self.features(images)
        return self.refine(fine, coarse, subdivision_steps, subdivision_num_points, record_steps)

    def extra_repr(self) -> str:
        return f"precision={self.precision!r}, compiled={self.compiled}, channels_last={self.settings.channels_last}"


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has fast bf16 kernels on this CPU (AVX-512 or AMX). Without them a bf16 convolution
    runs on a slow reference path (measured on an AVX2-only CPU: 14 GFLOP/s against fp32's 122-137), so bf16
    there is for checking accuracy, not for speed."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS (process-wide,
    for the rest of the process; opt-in, never done by `prepare_for_inference`). Returns False where it
    cannot (not glibc).

    A forward pass allocates and frees the same large activations every call. By default glibc serves
    blocks above its mmap threshold (at most 32 MiB) with fresh `mmap`s and trims the heap top, so every
    call page-faults them in again: measured 57 k minor faults (230 MiB) per R-50 eager forward at 512x512,
    820 k (3.2 GiB) per fast fp32 forward at 1024x2048, which then runs 1.2-1.4x faster without them.
    The price: the process keeps its peak memory until it exits. Same effect as starting the process with
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>. `python -m pointrend_core evaluate` calls it (a process
    that evaluates and exits); measured there at 1024x2048: the plain model 16.4 s -> 8.0 s per forward, the
    fast path 9.2 s -> 6.6 s (docs/inference.md).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    return bool(
        mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, 2**31 - 1) and mallopt(m_top_pad, 256 * 2**20)
    )


def prepare_for_inference(
    model: PointRend,
    precision: Precision = "fp32",
    compile: bool = False,
    *,
    channels_last: bool = True,
    device: torch.device | str | None = None,
) -> InferenceModel:
    """The fast inference path of `model` (left untouched): BatchNorm folded, channels-last, inference_mode,
    `precision` ("fp32"; "bf16" on CPU or CUDA; "fp16" on CUDA only) and optionally `torch.compile` of the
    feature extractor. `device` (default: where the model's parameters are) is only used to refuse a
    precision it cannot run early; the returned model can be moved with `.to()` like any module."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    check_precision(precision, device)
    return InferenceModel(model, InferenceSettings(precision, compile, channels_last))


__all__ = [
    "InferenceModel",
    "InferenceSettings",
    "PRECISION_DTYPES",
    "Precision",
    "check_precision",
    "cpu_has_fast_bf16",
    "prepare_for_inference",
    "retain_freed_memory",
]
