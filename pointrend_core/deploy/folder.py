"""`predict_files`: a `Predictor` over a list of image files into an output folder -- the `predict` command.

A file that cannot be read (missing, corrupt, truncated, not an image) is reported by name and skipped; the
others are still predicted, and the summary lists what was skipped so that the caller can exit non-zero.
Existing outputs are refused up front (nothing written) unless `overwrite`. Progress: a tqdm bar in images
(its rate is images/s).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from torch import Tensor
from tqdm.auto import tqdm

from pointrend_core.deploy.images import InputImage, existing_outputs, write_outputs
from pointrend_core.deploy.predictor import Predictor, as_rgb_tensor


class OutputsExist(FileExistsError):
    """Outputs of this prediction already exist; the message says how many, where, and --overwrite."""


@dataclass
class PredictSummary:
    """What `predict_files` did: images written, files skipped (path, reason), wall seconds."""

    written: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("nan")

    def describe(self, out_dir: Path) -> str:
        skipped = f", {len(self.skipped)} skipped (unreadable)" if self.skipped else ""
        return (f"predicted {self.written} image(s){skipped} in {self.seconds:.1f} s "
                f"({self.images_per_second:.2f} images/s) -> {out_dir}")


def refuse_existing(out_dir: Path, images: list[InputImage], overlay: bool) -> None:
    """OutputsExist naming how many of the outputs are already in `out_dir` (and one of them)."""
    existing = existing_outputs(out_dir, images, overlay)
    if existing:
        total = len(images) * (2 if overlay else 1)
        raise OutputsExist(f"{len(existing)} of the {total} output file(s) already exist in {out_dir} (e.g. "
                           f"{existing[0]}); pass --overwrite to replace them, or choose another --out")


def predict_files(
    predictor: Predictor,
    images: list[InputImage],
    out_dir: str | Path,
    *,
    overlay: bool = False,
    coarse: bool = False,
    batch_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> PredictSummary:
    """Predict `images` into `out_dir` (`deploy.images` names the files); `report` gets one line per skipped file."""
    out_dir = Path(out_dir)
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if not overwrite:
        refuse_existing(out_dir, images, overlay)
    summary = PredictSummary()
    start = time.perf_counter()
    batch: list[tuple[InputImage, Tensor]] = []
    with tqdm(total=len(images), desc="predict", unit="img", disable=not progress) as bar:
        for image in images:
            try:
                batch.append((image, as_rgb_tensor(image.path)))
            except (ValueError, OSError) as error:
                summary.skipped.append((image.path, str(error)))
                report(f"skipped {image.path}: {error}")
                bar.update(1)
            if len(batch) == batch_size:
                _flush(predictor, batch, out_dir, overlay, coarse, summary, bar)
        _flush(predictor, batch, out_dir, overlay, coarse, summary, bar)
    summary.seconds = time.perf_counter() - start
    return summary


def _flush(predictor: Predictor, batch: list[tuple[InputImage, Tensor]], out_dir: Path, overlay: bool,
           coarse: bool, summary: PredictSummary, bar: tqdm) -> None:
    """Predict and write the pending images, then empty `batch`."""
    if not batch:
        return
    masks = predictor.predict_batch([rgb for _, rgb in batch], coarse=coarse)
    for (image, rgb), mask in zip(batch, masks):
        hwc = np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()) if overlay else None
        write_outputs(out_dir, image, mask, predictor.palette, hwc)
        summary.written += 1
        bar.update(1)
    batch.clear()


__all__ = ["OutputsExist", "PredictSummary", "predict_files", "refuse_existing"]
