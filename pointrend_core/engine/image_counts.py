"""Per-image, per-class pixel counts of one evaluation: what every dataset-level score is summed from.

Shapes: N evaluated images, O = 4 outputs (`OUTPUTS`: refined, coarse, and the boundary bands of each),
3 count kinds (`metrics.COUNT_KINDS`: intersection, prediction, ground truth), C classes. `counts` is
(N, O, 3, C) int64, images in dataset order (`image_index`, the dataset indices 0 .. N-1).

For the two full outputs the counts are of scored pixels (`metrics.valid_pixels`); for the two boundary
outputs, of the boundary bands (`metrics.BoundaryIoU`). For every output, union = prediction + ground truth
- intersection, and summing over the images gives exactly the totals the recorded mIoU and boundary mIoU
were computed from (`totals`, `mean_iou`).

The file (a compressed .npz beside run.json: `RunFolder.image_counts`) holds `counts` as int32 (one image has fewer than
2^31 pixels), `image_index`, the output names and the class names. `ImageCounts.load` checks all of it and
names the file in its error.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pointrend_core.engine.distributed import all_reduce_, rank_and_world_size
from pointrend_core.engine.metrics import mean_iou_from_counts
from pointrend_core.files import atomic_write

"""The counts file's name in a run folder, beside run.json (the one place it is spelled)."""

OUTPUTS = ("refined", "coarse", "refined_boundary", "coarse_boundary")
"""The outputs along axis 1 of `ImageCounts.counts`, in order."""

_FORMAT = 1


@dataclass(frozen=True, eq=False)
class ImageCounts:
    """(N, 4, 3, C) int64 per-image counts (see the module docstring) and the class names (C, may be empty)."""

    counts: np.ndarray
    image_index: np.ndarray
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 4 or counts.shape[1:3] != (len(OUTPUTS), 3):
            raise ValueError(f"image counts must have shape (N, {len(OUTPUTS)}, 3, C), got {counts.shape}")
        if len(self.image_index) != counts.shape[0]:
            raise ValueError(f"{len(self.image_index)} image indices for {counts.shape[0]} images of counts")
        if self.classes and len(self.classes) != counts.shape[3]:
            raise ValueError(f"{len(self.classes)} class names for {counts.shape[3]} classes of counts")
        object.__setattr__(self, "counts", counts.astype(np.int64, copy=False))
        object.__setattr__(self, "image_index", np.asarray(self.image_index, dtype=np.int64))
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def num_images(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[3])

    def output(self, name: str) -> np.ndarray:
        """(N, 3, C) counts of one of `OUTPUTS`."""
        if name not in OUTPUTS:
            raise ValueError(f"unknown output {name!r}; expected one of {', '.join(OUTPUTS)}")
        return self.counts[:, OUTPUTS.index(name)]

    def totals(self, name: str) -> np.ndarray:
        """(3, C) int64 counts of `name` summed over the images."""
        return self.output(name).sum(axis=0)

    def mean_iou(self, name: str) -> float:
        """The output's dataset-level mean IoU (fraction), computed as `evaluate` computed it."""
        return mean_iou_from_counts(torch.from_numpy(self.totals(name)))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the compressed .npz atomically; returns its path."""
        if self.counts.size and (self.counts.min() < 0 or self.counts.max() >= 2**31):
            raise ValueError(f"pixel counts must lie in [0, 2^31) to be saved, got [{self.counts.min()}, "
                             f"{self.counts.max()}]")
        arrays = {
            "format": np.array(_FORMAT),
            "counts": self.counts.astype(np.int32),
            "image_index": self.image_index,
            "outputs": np.array(OUTPUTS),
            "classes": np.array(self.classes, dtype=str),
        }
        return atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImageCounts:
        """Read a file `save` wrote; OSError if it is missing, ValueError naming it if it is not one."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (ValueError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"{path} is not a per-image counts file ({err}); re-run evaluate to write it") from None
        missing = {"format", "counts", "image_index", "outputs"} - set(arrays)
        if missing:
            raise ValueError(f"{path} lacks {', '.join(sorted(missing))}; expected per-image counts written by "
                             "pointrend_core (re-run evaluate)")
        if int(arrays["format"]) != _FORMAT or tuple(arrays["outputs"].tolist()) != OUTPUTS:
            raise ValueError(f"{path}: format {int(arrays['format'])} with outputs {arrays['outputs'].tolist()}; "
                             f"expected format {_FORMAT} with {list(OUTPUTS)} (re-run evaluate)")
        try:
            return cls(arrays["counts"], arrays["image_index"], tuple(arrays.get("classes", np.array([])).tolist()))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def gather_image_counts(local: list[Tensor], indices: list[int], total: int, num_classes: int) -> ImageCounts:
    """Every image's counts, in dataset order 0 .. total-1, from each process's own images.

    `local[k]` is the (4, 3, C) counts of image `indices[k]`. Each process writes its images into a zero
    (total, 4, 3, C) array and the arrays are summed over processes: every image is evaluated by exactly one
    process, so the sum is a gather that keeps the order by index. Without torch.distributed it only places
    the rows. Every process returns the whole set.
    """
    full = torch.zeros((total, len(OUTPUTS), 3, num_classes), dtype=torch.int64)
    if local:
        full[torch.as_tensor(indices[: len(local)])] = torch.stack(local).to("cpu", torch.int64)
    if rank_and_world_size()[1] > 1:
        all_reduce_(full)
    return ImageCounts(full.numpy(), np.arange(total))


__all__ = ["OUTPUTS", "ImageCounts", "gather_image_counts"]
