"""Reading image and label files, and mapping raw label values to train ids.

Images decode to uint8 (3, H, W) RGB; label PNGs to their raw uint8 (H, W) values (palette indices for 'P'
PNGs, grey levels for 'L'). Every error names the file and what was expected.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from torchvision.io import ImageReadMode, decode_image

from pointrend_core.labels import IGNORE_INDEX


TIFF_SUFFIXES = (".tif", ".tiff")


def read_image(path: str | Path) -> torch.Tensor:
    """Decode an image file (JPEG, PNG, TIFF; 8- or 16-bit; grey, RGB or with alpha) into uint8 (3, H, W) RGB.

    Grey images are repeated over the three channels and alpha is dropped. 16-bit images are scaled to 8
    bits over their full range (round(v * 255 / 65535)), the usual convention; the network's normalisation
    expects 0..255. JPEG and PNG go through torchvision's decoder (about 2.5x faster than PIL on JPEG, the
    loader's hot path; deprecated from torchvision 0.29 on, so its warning is silenced), TIFF through
    tifffile (PIL reads no 16-bit RGB TIFF), anything else through PIL. Raises FileNotFoundError for a
    missing file and ValueError naming the file for a corrupt, truncated or unsupported one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _read_tiff(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _to_uint8(decode_image(str(path), mode=ImageReadMode.RGB), path)
    except (RuntimeError, ValueError):
        pass
    try:
        with PILImage.open(path) as im:
            rgb = np.array(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot decode image {path} ({e}); expected a complete JPEG or PNG file (or a TIFF)") from None
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def _read_tiff(path: Path) -> torch.Tensor:
    import tifffile  # here: only folders of TIFF images need it, and it takes a while to import

    try:
        array = tifffile.imread(path)
    except Exception as e:  # tifffile raises many kinds (TiffFileError, ValueError, struct.error, ...)
        raise ValueError(f"cannot decode image {path} ({e}); expected a complete TIFF file") from None
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) storage
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"image {path} has shape {array.shape}; expected a grey or RGB(A) image (H, W[, C])")
    channels = array[..., :1].repeat(3, -1) if array.shape[-1] <= 2 else array[..., :3]
    image = torch.from_numpy(np.ascontiguousarray(channels).astype(np.int32 if array.dtype == np.uint16 else array.dtype))
    return _to_uint8(image.permute(2, 0, 1).contiguous(), path, bits=16 if array.dtype == np.uint16 else 8)


def _to_uint8(image: torch.Tensor, path: Path, bits: int | None = None) -> torch.Tensor:
    """(3, H, W) uint8 from a decoder's uint8 or 16-bit output (full-range scaling); other types are refused."""
    if image.dtype == torch.uint8 and bits in (None, 8):
        return image
    if image.dtype == torch.uint16 or bits == 16:
        wide = image.to(torch.int32)
        return ((wide * 255 + 32767) // 65535).to(torch.uint8)
    raise ValueError(f"image {path} holds {image.dtype} samples; expected 8- or 16-bit integers")


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG as uint8 (H, W) raw values (palette indices for 'P' mode, grey levels for 'L').

    Raises FileNotFoundError for a missing file and ValueError naming the file for an unreadable file or a
    mode other than 'L'/'P' (e.g. an RGB colour-coded mask, a common mistake).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    try:
        with PILImage.open(path) as im:
            mode = im.mode
            raw = np.array(im) if mode in ("L", "P") else None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode mask {path} ({e}); expected a complete 8-bit PNG file") from None
    if raw is None:
        raise ValueError(
            f"mask {path} has PIL mode {mode!r}; expected a single-channel 8-bit PNG (mode 'L') or a "
            "palette PNG (mode 'P') holding class indices"
        )
    return raw


# --------------------------------------------------------------------------------------------------------
# Labels and palettes


def label_lut(mapping: Mapping[int, int], void: Iterable[int]) -> np.ndarray:
    """Lookup table int16 (256,) from raw mask value to train id: `mapping` values, IGNORE_INDEX for `void`,
    -1 for values that are neither (an error when they occur)."""
    lut = np.full(256, -1, dtype=np.int16)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    for raw in void:
        lut[raw] = IGNORE_INDEX
    return lut


def apply_label_lut(raw: np.ndarray, lut: np.ndarray, path: Path, expected: str) -> np.ndarray:
    """Map raw uint8 (H, W) mask values through `lut` (see `label_lut`) -> uint8 (H, W).

    Raises ValueError naming `path`, the offending values with their pixel counts, and `expected`.
    """
    counts = np.bincount(raw.ravel(), minlength=256)
    present = np.flatnonzero(counts)
    bad = present[lut[present] < 0]
    if bad.size:
        found = ", ".join(f"{v} ({counts[v]} px)" for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise ValueError(f"mask {path} contains label values {found} that are {expected}")
    if np.array_equal(lut[present], present):
        return raw  # the values present are their own train ids: skip a full gather pass
    return lut.astype(np.uint8)[raw]


def bitwise_palette(n: int, start: int = 0) -> np.ndarray:
    """The PASCAL VOC colour map for indices start..start+n-1 -> uint8 (n, 3).

    Index bits are spread over the high bits of R, G, B (bit 0 -> R, 1 -> G, 2 -> B, then the next three
    one bit lower, ...): 0 is black, 1 is (128, 0, 0), 255 is (224, 224, 192).
    """
    idx = np.arange(start, start + n)
    rgb = np.zeros((n, 3), dtype=np.int64)
    for level in range(8):
        for channel in range(3):
            rgb[:, channel] |= ((idx >> (3 * level + channel)) & 1) << (7 - level)
    return rgb.astype(np.uint8)




def sixteen_bit_peak(path: str | Path) -> int | None:
    """The largest sample of a 16-bit image file, or None for any other depth (for `check-data`: 12-bit data
    stored in 16 bits reads as nearly black under the full-range scaling of `read_image`)."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            array = tifffile.imread(path)
            return int(array.max()) if array.dtype == np.uint16 else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(str(path), mode=ImageReadMode.UNCHANGED)
    except Exception:  # an unreadable file is reported by read_image's own check
        return None
    return int(image.max()) if image.dtype == torch.uint16 else None
