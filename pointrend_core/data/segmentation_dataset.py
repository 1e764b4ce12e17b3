"""`SegmentationDataset`: what every dataset layout shares -- item `i` is `transforms(image, mask)`, the
constructor reads the class list and the split's ids and refuses a missing root or an empty split, and the
loaders name the file and the expected form of anything that is missing or does not decode.

Shapes: image `tv_tensors.Image` uint8 (3, H, W) RGB; mask `tv_tensors.Mask` uint8 (H, W) of class indices,
void as `IGNORE_INDEX`. The layouts themselves (VOC, ADE20k, Cityscapes, a plain folder) are in `datasets.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from pointrend_core.data.image_io import apply_label_lut, bitwise_palette, label_lut, read_image, read_label_png
from pointrend_core.labels import IGNORE_INDEX

Transforms = Callable[[tv_tensors.Image, tv_tensors.Mask], Any]


def read_split_file(path: Path) -> list[str]:
    """Ids from a split list: one per line, surrounding whitespace and blank lines ignored."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------------
# Base class


class SegmentationDataset(Dataset):
    """Base class: id list, image/mask paths, loading, label remapping, transforms.

    Subclasses set `CLASSES`, `PALETTE` (or override `_read_classes`), `LAYOUT` (a one-line description of
    the expected folder, used in error messages) and implement `_read_ids`, `image_path`, `mask_path`,
    `_label_lut` and the classmethod `splits_on_disk`.
    """

    CLASSES: ClassVar[tuple[str, ...] | None] = None
    PALETTE: ClassVar[np.ndarray | None] = None
    LAYOUT: ClassVar[str] = ""
    _identity_lut: tuple[np.ndarray, str] | None = None

    def __init__(self, root: str | Path, split: str, transforms: Transforms | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{type(self).__name__} root {self.root} is not a directory; expected {self.LAYOUT}"
            )
        self.classes: tuple[str, ...] = self._read_classes()
        self.palette: np.ndarray = self._make_palette()
        self.ids: list[str] = self._read_ids(split)
        if not self.ids:
            raise ValueError(
                f"split {split!r} of {type(self).__name__} at {self.root} is empty ({self._split_source()}); "
                "expected at least one image id"
            )

    # ---- hooks ----------------------------------------------------------------------------------------
    @classmethod
    def splits_on_disk(cls, root: str | Path) -> list[str]:
        """The split names that exist under `root` (used by `check_dataset` when no split is given)."""
        raise NotImplementedError

    def _read_classes(self) -> tuple[str, ...]:
        assert self.CLASSES is not None, f"{type(self).__name__} must define CLASSES"
        return tuple(self.CLASSES)

    def _make_palette(self) -> np.ndarray:
        if self.PALETTE is not None:
            return np.asarray(self.PALETTE, dtype=np.uint8)[: len(self.classes)]
        return bitwise_palette(len(self.classes), start=1)

    def _read_ids(self, split: str) -> list[str]:
        raise NotImplementedError

    def _split_source(self) -> str:
        """Where the ids of this split come from (for messages)."""
        return f"split {self.split!r}"

    def image_path(self, i: int) -> Path:
        raise NotImplementedError

    def mask_path(self, i: int) -> Path:
        raise NotImplementedError

    def _label_lut(self, mask_path: Path) -> tuple[np.ndarray, str]:
        """(lookup table from `label_lut`, description of the valid raw values) for one mask file."""
        raise NotImplementedError

    # ---- loading --------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def _missing(self, kind: str, path: Path, i: int) -> FileNotFoundError:
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        return FileNotFoundError(
            f"{kind} file {path} for id {self.ids[i]!r} ({self._split_source()}) {what}; expected {self.LAYOUT}"
        )

    def load_image(self, i: int) -> tv_tensors.Image:
        """Image `i` as uint8 (3, H, W) RGB."""
        path = self.image_path(i)
        if not path.is_file():
            raise self._missing("image", path, i)
        return tv_tensors.Image(read_image(path))

    def load_mask(self, i: int) -> tv_tensors.Mask:
        """Mask `i` as uint8 (H, W) train ids, void -> IGNORE_INDEX."""
        path = self.mask_path(i)
        if not path.is_file():
            raise self._missing("mask", path, i)
        lut, expected = self._label_lut(path)
        mask = apply_label_lut(read_label_png(path), lut, path, expected)
        return tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))

    def load_raw(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """(image uint8 (3, H, W), mask uint8 (H, W)) without transforms; checks that the sizes agree."""
        image, mask = self.load_image(i), self.load_mask(i)
        mismatch = self.size_mismatch(i, image, mask)
        if mismatch is not None:
            raise ValueError(mismatch)
        return image, mask

    def size_mismatch(self, i: int, image: torch.Tensor, mask: torch.Tensor) -> str | None:
        """The problem when image (3, H, W) and mask (H', W') of item `i` differ in size, else None."""
        if tuple(image.shape[-2:]) == tuple(mask.shape):
            return None
        (h, w), (mh, mw) = image.shape[-2:], mask.shape
        return (f"mask {self.mask_path(i)} is {mw}x{mh} (WxH) but image {self.image_path(i)} is {w}x{h}; "
                "expected a mask of the same size as its image")

    def _identity_label_lut(self, expected: str) -> tuple[np.ndarray, str]:
        """For masks that hold the class indices themselves (0..K-1, 255 void): one table for every mask."""
        if self._identity_lut is None:
            self._identity_lut = label_lut({c: c for c in range(self.num_classes)}, void=[IGNORE_INDEX]), expected
        return self._identity_lut

    def __getitem__(self, i: int) -> Any:
        image, mask = self.load_raw(i)
        if self.transforms is None:
            return image, mask
        return self.transforms(image, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, {len(self)} images)"
