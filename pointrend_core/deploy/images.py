"""The files of `predict`: which images to read, and the masks and overlays written for them.

Inputs are JPEG / PNG / TIFF files, as the folder dataset reads them (`data.image_io.read_image`: 8- or 16-bit,
grey or RGB, decoded to uint8 (3, H, W) RGB). An input is a file, a folder (searched recursively) or a list
file (`.txt`/`.lst`: one image path per line, relative to the list's folder; blank lines and `#` comments
skipped). Each image gets a name relative to its source (`sub/img` for `folder/sub/img.jpg`) and, under the
output folder, `<name>.png` (class indices, palette PNG, at the image's own size) and with `--overlay`
`<name>_overlay.jpg` (image and class colours blended 50/50, as sssegmentation's inference script paints).
Every file is written atomically (`files.atomic_write_bytes`): a killed run never leaves a truncated one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pointrend_core.data.datasets import FolderSegmentation
from pointrend_core.files import atomic_write_bytes

IMAGE_SUFFIXES = FolderSegmentation.IMAGE_EXTS
"""What a folder input is searched for (the folder dataset's image suffixes, any case)."""
LIST_SUFFIXES = (".txt", ".lst")
OVERLAY_SUFFIX = "_overlay.jpg"


@dataclass(frozen=True)
class InputImage:
    """One image to predict: where it is read, and its output name (relative, without suffix)."""

    path: Path
    name: Path


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_inputs(source: str | Path) -> list[InputImage]:
    """The images of a file, a folder (recursive, sorted) or a list file; ValueError / FileNotFoundError naming
    `source` when there is nothing to predict or two images would write the same output."""
    source = Path(source)
    if source.is_dir():
        images = [InputImage(p, p.relative_to(source).with_suffix(""))
                  for p in sorted(source.rglob("*")) if p.is_file() and _is_image(p)]
        where = f"folder {source} (searched recursively for {', '.join(IMAGE_SUFFIXES)})"
    elif source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
        paths = [Path(line) for line in lines if line and not line.startswith("#")]
        images = [InputImage(p if p.is_absolute() else source.parent / p, Path(p.stem)) for p in paths]
        where = f"list file {source}"
    elif source.is_file():
        if not _is_image(source):
            raise ValueError(f"input {source} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a list file "
                             f"({', '.join(LIST_SUFFIXES)}: one image path per line)")
        images = [InputImage(source, Path(source.stem))]
        where = str(source)
    else:
        raise FileNotFoundError(f"input {source} does not exist; expected an image, a folder of images or a list file")
    if not images:
        raise ValueError(f"no image to predict in {where}")
    seen: dict[Path, Path] = {}
    for image in images:
        if image.name in seen:
            raise ValueError(f"{image.path} and {seen[image.name]} in {where} would both write {image.name}.png; "
                             "rename one of them")
        seen[image.name] = image.path
    return images


def mask_path(out_dir: Path, image: InputImage) -> Path:
    return out_dir / image.name.with_name(image.name.name + ".png")


def overlay_path(out_dir: Path, image: InputImage) -> Path:
    return out_dir / image.name.with_name(image.name.name + OVERLAY_SUFFIX)


def mask_png(mask: np.ndarray, palette: np.ndarray) -> bytes:
    """A palette ('P' mode) PNG of class indices uint8 (H, W), colours `palette` uint8 (C, 3) for 0..C-1."""
    if mask.ndim != 2:
        raise ValueError(f"a mask is (H, W) class indices, got shape {mask.shape}")
    picture = Image.fromarray(mask.astype(np.uint8, copy=False), mode="P")
    picture.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_jpeg(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, quality: int = 95) -> bytes:
    """image uint8 (H, W, 3) RGB blended 50/50 with the class colours of `mask` (H, W), as a JPEG.

    The blend is `image * 0.5 + colours * 0.5` rounded to uint8 (`cv2.addWeighted`), the picture
    sssegmentation's inference script writes for each image."""
    colours = palette.astype(np.uint8)[mask]
    blended = cv2.addWeighted(image, 0.5, colours, 0.5, 0.0)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cv2 could not encode an overlay of shape {blended.shape} as JPEG")
    return encoded.tobytes()


def write_outputs(out_dir: Path, image: InputImage, mask: np.ndarray, palette: np.ndarray,
                  rgb: np.ndarray | None = None) -> None:
    """`<out>/<name>.png`, and `<out>/<name>_overlay.jpg` when the image `rgb` (H, W, 3) is given; atomically."""
    atomic_write_bytes(mask_path(out_dir, image), mask_png(mask, palette))
    if rgb is not None:
        atomic_write_bytes(overlay_path(out_dir, image), overlay_jpeg(rgb, mask, palette))


def existing_outputs(out_dir: Path, images: list[InputImage], overlay: bool) -> list[Path]:
    """The outputs of `images` that already exist under `out_dir`."""
    paths = [mask_path(out_dir, image) for image in images]
    if overlay:
        paths += [overlay_path(out_dir, image) for image in images]
    return [p for p in paths if p.exists()]


__all__ = ["IMAGE_SUFFIXES", "InputImage", "existing_outputs", "list_inputs", "mask_path", "mask_png",
           "overlay_jpeg", "overlay_path", "write_outputs"]
