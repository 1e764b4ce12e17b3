"""Small dataset trees in exactly the official on-disk layouts, for tests and benchmarks.

Images are smooth random colour fields with noise (so JPEG/PNG sizes and decode times are photo-like,
unlike pure noise); masks are random elliptic blobs of random classes over a background value. Everything
is deterministic from `seed`. Each writer returns the root that the matching dataset class takes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pointrend_core.data.datasets import CITYSCAPES_LABEL_TO_TRAIN, bitwise_palette
from pointrend_core.files import atomic_write_bytes, atomic_write_text
from pointrend_core.labels import IGNORE_INDEX

VOC_FULL_PALETTE = bitwise_palette(256)
"""The 256-entry VOC colour map written into palette PNGs (index 255, void, is (224, 224, 192))."""


def random_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A photo-like random image uint8 (H, W, 3): a smooth colour field (coarse noise, bilinear upsampled)
    plus fine noise."""
    h, w = size
    coarse = rng.uniform(30, 225, size=(max(h // 32, 2), max(w // 32, 2), 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.int16)
    noise = rng.integers(-12, 13, size=(h, w, 1), dtype=np.int16)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def blob_mask(
    rng: np.random.Generator,
    size: tuple[int, int],
    values: Sequence[int],
    background: int,
    num_blobs: int = 4,
    outline: int = 0,
    outline_value: int = IGNORE_INDEX,
) -> np.ndarray:
    """A uint8 (H, W) mask of `num_blobs` random ellipses with values drawn from `values` over `background`.

    With `outline` > 0 every blob gets a band of that many pixels set to `outline_value` along its border
    (the VOC style of marking object outlines void).
    """
    h, w = size
    mask = np.full((h, w), background, dtype=np.uint8)
    for _ in range(num_blobs):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.08, 0.3) * h, rng.uniform(0.08, 0.3) * w
        theta = rng.uniform(0, np.pi)
        value = rng.choice(values)
        # Work inside the blob's bounding box only (the ellipse plus its outline band fits in max radius).
        reach = max(rx, ry) * (1 + outline / min(rx, ry)) + 1
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, h)
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        window = mask[y0:y1, x0:x1]
        window[r < 1] = value
        if outline > 0:
            window[(r >= 1) & (r < 1 + outline / min(rx, ry))] = outline_value
    return mask


def _tint(image: np.ndarray, mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    # Mix each pixel with its class colour so that images relate to their labels (useful when looking at them).
    colours = palette[np.minimum(mask, len(palette) - 1)].astype(np.uint16)
    return ((image.astype(np.uint16) + colours) // 2).astype(np.uint8)


def _png_bytes(array: np.ndarray, palette: np.ndarray | None = None, compress_level: int = 1) -> bytes:
    image = Image.fromarray(array)
    if palette is not None:
        image = image.convert("L")
        image.putpalette(palette.astype(np.uint8).ravel().tolist())  # makes a 'P' image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def _jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_voc_tree(
    root: str | Path,
    num_images: int = 4,
    size: tuple[int, int] = (375, 500),
    palette_masks: bool = True,
    splits: Sequence[str] = ("train", "val"),
    aug: bool = False,
    seed: int = 0,
) -> Path:
    """Write a VOC2012 tree at `root` (the `VOC2012` folder) and return `root`.

    `num_images` images of size (H, W) per split, ids `2007_<split index><image index>`;
    `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette 'P' PNGs like the official release, or
    single-channel 'L' PNGs with `palette_masks=False`), classes 0..20 with a 3-px void (255) band on blob
    outlines, and `ImageSets/Segmentation/<split>.txt`. With `aug=True` the same labels are also written as
    'L' PNGs to `SegmentationClassAug/` (the SBD-augmented set's format) with every blob interior shifted to
    class 1, so that tests can tell which folder a mask came from.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    palette = VOC_FULL_PALETTE
    for s, split in enumerate(splits):
        ids = [f"2007_{s:02d}{n:04d}" for n in range(num_images)]
        for image_id in ids:
            mask = blob_mask(rng, size, values=range(1, 21), background=0, outline=3)
            image = _tint(random_image(rng, size), mask, palette)
            atomic_write_bytes(root / "JPEGImages" / f"{image_id}.jpg", _jpeg_bytes(image))
            mask_png = _png_bytes(mask, palette if palette_masks else None)
            atomic_write_bytes(root / "SegmentationClass" / f"{image_id}.png", mask_png)
            if aug:
                aug_mask = np.where((mask != 0) & (mask != IGNORE_INDEX), 1, mask).astype(np.uint8)
                atomic_write_bytes(root / "SegmentationClassAug" / f"{image_id}.png", _png_bytes(aug_mask))
        atomic_write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
    return root


def write_ade20k_tree(
    root: str | Path,
    num_images: int = 4,
    size: tuple[int, int] = (384, 512),
    split_lists: bool = False,
    seed: int = 0,
) -> Path:
    """Write an ADE20k tree at `root` (holding `ADEChallengeData2016/`) and return `root`.

    `num_images` per split; `images/{training,validation}/ADE_{train,val}_<n>.jpg` and 'L' PNG annotations
    with raw values 0 (void, "other") and 1..150; with `split_lists=True` also `ADEChallengeData2016/
    {train,val}.txt` (the reference's packaged lists).
    """
    root = Path(root)
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    palette = bitwise_palette(151)
    for split, folder, prefix in (("train", "training", "ADE_train"), ("val", "validation", "ADE_val")):
        ids = [f"{prefix}_{n + 1:08d}" for n in range(num_images)]
        for image_id in ids:
            mask = blob_mask(rng, size, values=range(1, 151), background=int(rng.integers(0, 151)), num_blobs=5)
            image = _tint(random_image(rng, size), mask, palette)
            atomic_write_bytes(base / "images" / folder / f"{image_id}.jpg", _jpeg_bytes(image))
            atomic_write_bytes(base / "annotations" / folder / f"{image_id}.png", _png_bytes(mask))
        if split_lists:
            atomic_write_text(base / f"{split}.txt", "\n".join(ids) + "\n")
    return root


CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}


def write_cityscapes_tree(
    root: str | Path,
    num_images: int = 2,
    size: tuple[int, int] = (1024, 2048),
    splits: Sequence[str] = ("train", "val"),
    train_ids: bool = False,
    split_lists: bool = False,
    seed: int = 0,
) -> Path:
    """Write a Cityscapes tree at `root` and return `root`.

    `num_images` per split, spread over two cities per split:
    `leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png` and
    `gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png` ('L' PNG of labelIds, including void ids
    and 255 for the license plate's -1); with `train_ids=True` also `..._gtFine_labelTrainIds.png`; with
    `split_lists=True` also `<root>/<split>.txt` listing ids `<city>/<name>_leftImg8bit`.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    label_ids = sorted(CITYSCAPES_LABEL_TO_TRAIN) + [0, 1, 4, 255]
    to_train = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        to_train[label_id] = train_id
    palette = bitwise_palette(256)
    for split in splits:
        cities = CITYSCAPES_CITIES.get(split, ("berlin", "bonn"))
        ids = []
        for n in range(num_images):
            city = cities[n % len(cities)]
            name = f"{city}_{n:06d}_{19 + n:06d}"
            mask = blob_mask(rng, size, values=label_ids, background=7, num_blobs=6)
            image = _tint(random_image(rng, size), mask, palette)
            atomic_write_bytes(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", _png_bytes(image))
            gt = root / "gtFine" / split / city
            atomic_write_bytes(gt / f"{name}_gtFine_labelIds.png", _png_bytes(mask))
            if train_ids:
                atomic_write_bytes(gt / f"{name}_gtFine_labelTrainIds.png", _png_bytes(to_train[mask]))
            ids.append(f"{city}/{name}_leftImg8bit")
        if split_lists:
            atomic_write_text(root / f"{split}.txt", "\n".join(ids) + "\n")
    return root


def write_folder_tree(
    root: str | Path,
    num_images: int = 4,
    size: tuple[int, int] = (96, 128),
    classes: Sequence[str] = ("background", "cat", "dog"),
    splits: dict[str, Sequence[int]] | None = None,
    image_format: str = "png",
    seed: int = 0,
) -> Path:
    """Write a plain folder dataset at `root` and return `root`.

    `images/img_<n>.<image_format>`, `masks/img_<n>.png` ('L', values 0..K-1 and 255), `classes.txt`; with
    `splits` (name -> image indices) also `splits/<name>.txt`.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    palette = bitwise_palette(256)
    k = len(classes)
    for n in range(num_images):
        mask = blob_mask(rng, size, values=range(1, k) if k > 1 else [0], background=0, num_blobs=3, outline=1)
        image = _tint(random_image(rng, size), mask, palette)
        data = _jpeg_bytes(image) if image_format in ("jpg", "jpeg") else _png_bytes(image)
        atomic_write_bytes(root / "images" / f"img_{n:04d}.{image_format}", data)
        atomic_write_bytes(root / "masks" / f"img_{n:04d}.png", _png_bytes(mask))
    atomic_write_text(root / "classes.txt", "\n".join(classes) + "\n")
    for name, indices in (splits or {}).items():
        atomic_write_text(root / "splits" / f"{name}.txt", "".join(f"img_{n:04d}\n" for n in indices))
    return root


__all__ = [
    "random_image",
    "blob_mask",
    "write_voc_tree",
    "write_ade20k_tree",
    "write_cityscapes_tree",
    "write_folder_tree",
    "VOC_FULL_PALETTE",
]
