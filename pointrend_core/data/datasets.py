"""Semantic-segmentation datasets in their official on-disk layouts.

Every dataset is `Cls(root, split, transforms=None)`; item `i` is `transforms(image, mask)` with

* image: `tv_tensors.Image` uint8 (3, H, W), RGB;
* mask: `tv_tensors.Mask` uint8 (H, W) of class indices 0..K-1, the dataset's void values already mapped to
  `IGNORE_INDEX` (255).

Layouts (recipe §5, `docs/reference-recipe.md`; `root` is the folder named in each class docstring):

* `VOCSegmentation`: PASCAL VOC 2012 (+ SBD "aug" labels).
* `ADE20kSegmentation`: ADEChallengeData2016 (SceneParsing), reduce-zero-label.
* `CityscapesSegmentation`: leftImg8bit + gtFine, labelIds mapped to the 19 trainIds.
* `FolderSegmentation`: `images/`, `masks/`, `classes.txt` for custom data.

Masks are read with PIL, which yields class indices for both palette ('P') and single-channel ('L') PNGs
(the reference's cv2 grayscale read turns palette PNGs into luminance, recipe §5).
Bad input raises at once with the file and the expected form: a missing root, split file or empty split in
the constructor; a missing, unreadable or mismatched file, or an unknown label value, in `__getitem__`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from pointrend_core.data.image_io import apply_label_lut, bitwise_palette, label_lut, read_image, read_label_png
from pointrend_core.data.segmentation_dataset import SegmentationDataset, Transforms, read_split_file
from pointrend_core.labels import IGNORE_INDEX


VOC_CLASSES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip
"""The official Cityscapes colours, in trainId order."""

CITYSCAPES_LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
"""labelId -> trainId (recipe §5). Every other labelId 0..33 is void; so is 255 (-1, the license
plate id, as stored in a uint8 PNG)."""

# Appendix A of the reference: index = trainId after reduce-zero-label; the first synonym is the name.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# PASCAL VOC


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC 2012 with the SBD-augmented labels; root = `VOCdevkit/VOC2012`.

    Split `s` lists ids in `ImageSets/Segmentation/<s>.txt` (`trainaug` may also be called `train_aug`).
    Images are `JPEGImages/<id>.jpg`; masks `SegmentationClass/<id>.png` or `SegmentationClassAug/<id>.png`:
    for split `trainaug` the Aug folder is used when present (it holds the 10,582 SBD-derived labels), for
    other splits `SegmentationClass` when present (the official labels), each falling back to the other.
    Mask values 0..20 are classes (0 = background, a real class), 255 is void.
    """

    CLASSES: ClassVar[tuple[str, ...]] = VOC_CLASSES
    PALETTE: ClassVar[np.ndarray] = bitwise_palette(len(VOC_CLASSES))
    LAYOUT = (
        "a VOC2012 folder with JPEGImages/<id>.jpg, SegmentationClass[Aug]/<id>.png and "
        "ImageSets/Segmentation/<split>.txt"
    )
    IMAGE_EXT: ClassVar[str] = ".jpg"

    @classmethod
    def splits_on_disk(cls, root: str | Path) -> list[str]:
        folder = Path(root) / "ImageSets" / "Segmentation"
        return sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []

    def _split_files(self, split: str) -> list[Path]:
        folder = self.root / "ImageSets" / "Segmentation"
        names = [split] + (["train_aug"] if split == "trainaug" else [])
        return [folder / f"{name}.txt" for name in names]

    def _read_ids(self, split: str) -> list[str]:
        candidates = self._split_files(split)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            available = self.splits_on_disk(self.root)
            raise FileNotFoundError(
                f"split file {' or '.join(str(p) for p in candidates)} does not exist; expected one image id "
                f"per line (splits found: {', '.join(available) or 'none'}; {self.LAYOUT})"
            )
        self._split_file = found
        self._mask_dir = self._choose_mask_dir(split)
        return read_split_file(found)

    def _choose_mask_dir(self, split: str) -> Path:
        aug, plain = self.root / "SegmentationClassAug", self.root / "SegmentationClass"
        order = (aug, plain) if split in ("trainaug", "train_aug") else (plain, aug)
        return next((d for d in order if d.is_dir()), order[0])

    def _split_source(self) -> str:
        return str(self._split_file)

    def image_path(self, i: int) -> Path:
        return self.root / "JPEGImages" / f"{self.ids[i]}{self.IMAGE_EXT}"

    def mask_path(self, i: int) -> Path:
        return self._mask_dir / f"{self.ids[i]}.png"

    def _label_lut(self, mask_path: Path) -> tuple[np.ndarray, str]:
        return self._identity_label_lut(f"neither a class index 0..{self.num_classes - 1} nor the void value 255")


# --------------------------------------------------------------------------------------------------------
# The embedded demo data (rendered by `data.demo.make_demo_dataset`)

DEMO_CLASSES = ("background", "disc", "ring", "star", "bar", "leaf")

DEMO_PALETTE = np.array(
    [(0, 0, 0), (220, 40, 40), (240, 200, 30), (150, 60, 220), (30, 170, 220), (40, 170, 60)], dtype=np.uint8
)
"""Colours for figures (class order); they echo the hue of each class in the images."""


class DemoShapes(VOCSegmentation):
    """The generated demo dataset (VOC layout, see `data.demo.make_demo_dataset`); splits `train` and `val`."""

    CLASSES: ClassVar[tuple[str, ...]] = DEMO_CLASSES
    PALETTE: ClassVar[np.ndarray] = DEMO_PALETTE
    LAYOUT = VOCSegmentation.LAYOUT + "; generate it with: python -m pointrend_core make-demo-data --out <root>"


# --------------------------------------------------------------------------------------------------------
# ADE20k


class ADE20kSegmentation(SegmentationDataset):
    """ADE20k SceneParsing (ADEChallengeData2016); root = the folder holding `ADEChallengeData2016/` (the
    reference layout) or that folder itself.

    Splits `train` / `val` map to `images|annotations/training|validation/`. Ids come from
    `ADEChallengeData2016/<split>.txt` when present, otherwise from the `*.jpg` files in the images folder.
    Reduce-zero-label: raw 0 ("other") is void, raw 1..150 become classes 0..149.
    """

    CLASSES: ClassVar[tuple[str, ...]] = ADE20K_CLASSES
    PALETTE: ClassVar[np.ndarray] = bitwise_palette(len(ADE20K_CLASSES), start=1)
    LAYOUT = (
        "a folder holding ADEChallengeData2016/images/{training,validation}/<id>.jpg and "
        "ADEChallengeData2016/annotations/{training,validation}/<id>.png"
    )
    SPLIT_FOLDERS: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}

    @staticmethod
    def _base(root: Path) -> Path:
        nested = root / "ADEChallengeData2016"
        return nested if nested.is_dir() or not (root / "images").is_dir() else root

    @classmethod
    def splits_on_disk(cls, root: str | Path) -> list[str]:
        base = cls._base(Path(root))
        return [s for s, folder in cls.SPLIT_FOLDERS.items() if (base / "images" / folder).is_dir()]

    def _read_ids(self, split: str) -> list[str]:
        if split not in self.SPLIT_FOLDERS:
            raise ValueError(f"unknown ADE20k split {split!r}; expected one of: {', '.join(self.SPLIT_FOLDERS)}")
        self._dir = self._base(self.root)
        self._folder = self.SPLIT_FOLDERS[split]
        split_file = self._dir / f"{split}.txt"
        if split_file.is_file():
            self._source = str(split_file)
            return read_split_file(split_file)
        images = self._dir / "images" / self._folder
        if not images.is_dir():
            raise FileNotFoundError(
                f"ADE20k image folder {images} does not exist (and no split list {split_file}); "
                f"expected {self.LAYOUT}"
            )
        self._source = f"*.jpg in {images}"
        return sorted(p.stem for p in images.glob("*.jpg"))

    def _split_source(self) -> str:
        return self._source

    def image_path(self, i: int) -> Path:
        return self._dir / "images" / self._folder / f"{self.ids[i]}.jpg"

    def mask_path(self, i: int) -> Path:
        return self._dir / "annotations" / self._folder / f"{self.ids[i]}.png"

    def _label_lut(self, mask_path: Path) -> tuple[np.ndarray, str]:
        k = self.num_classes
        return label_lut({raw: raw - 1 for raw in range(1, k + 1)}, void=[0]), (
            f"neither a class value 1..{k} nor the void value 0 (raw ADE20k annotations, before reduce-zero-label)"
        )


# --------------------------------------------------------------------------------------------------------
# Cityscapes


class CityscapesSegmentation(SegmentationDataset):
    """Cityscapes fine annotations; root = the folder holding `leftImg8bit/` and `gtFine/`.

    Ids are `<city>/<name>_leftImg8bit` (relative to `leftImg8bit/<split>/`, no extension, as in the
    reference's split lists), read from `<root>/<split>.txt` when present, otherwise from the files
    `leftImg8bit/<split>/<city>/*_leftImg8bit.png`. The mask of an id is
    `gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png` when that file exists (used as is: 0..18, 255
    void), else `<name>_gtFine_labelIds.png` mapped to the 19 trainIds (other labelIds and 255 are void).
    """

    CLASSES: ClassVar[tuple[str, ...]] = CITYSCAPES_CLASSES
    PALETTE: ClassVar[np.ndarray] = CITYSCAPES_PALETTE
    LAYOUT = (
        "a folder holding leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and "
        "gtFine/<split>/<city>/<name>_gtFine_labelIds.png (or _gtFine_labelTrainIds.png)"
    )
    SUFFIX: ClassVar[str] = "_leftImg8bit"

    @classmethod
    def splits_on_disk(cls, root: str | Path) -> list[str]:
        folder = Path(root) / "leftImg8bit"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def _read_ids(self, split: str) -> list[str]:
        split_file = self.root / f"{split}.txt"
        if split_file.is_file():
            self._source = str(split_file)
            ids = read_split_file(split_file)
            bad = [i for i in ids if not i.endswith(self.SUFFIX)]
            if bad:
                raise ValueError(
                    f"split list {split_file} has ids not ending in {self.SUFFIX!r}, e.g. {bad[0]!r}; expected "
                    "ids like 'aachen/aachen_000000_000019_leftImg8bit' (relative to leftImg8bit/<split>/)"
                )
            return ids
        images = self.root / "leftImg8bit" / split
        if not images.is_dir():
            available = self.splits_on_disk(self.root)
            raise FileNotFoundError(
                f"Cityscapes split folder {images} does not exist (and no split list {split_file}); splits found: "
                f"{', '.join(available) or 'none'}; expected {self.LAYOUT}"
            )
        self._source = f"*{self.SUFFIX}.png in {images}/<city>/"
        files = images.glob(f"*/*{self.SUFFIX}.png")
        return sorted(p.relative_to(images).with_suffix("").as_posix() for p in files)

    def _split_source(self) -> str:
        return self._source

    def image_path(self, i: int) -> Path:
        return self.root / "leftImg8bit" / self.split / f"{self.ids[i]}.png"

    def mask_path(self, i: int) -> Path:
        stem = self.ids[i][: -len(self.SUFFIX)]
        folder = self.root / "gtFine" / self.split
        train_ids = folder / f"{stem}_gtFine_labelTrainIds.png"
        return train_ids if train_ids.is_file() else folder / f"{stem}_gtFine_labelIds.png"

    def _label_lut(self, mask_path: Path) -> tuple[np.ndarray, str]:
        if mask_path.name.endswith("_labelTrainIds.png"):
            k = self.num_classes
            return label_lut({c: c for c in range(k)}, void=[IGNORE_INDEX]), (
                f"neither a trainId 0..{k - 1} nor the void value 255"
            )
        void = [v for v in range(34) if v not in CITYSCAPES_LABEL_TO_TRAIN] + [255]
        return label_lut(CITYSCAPES_LABEL_TO_TRAIN, void=void), "not Cityscapes labelIds (0..33, or 255 for -1)"


# --------------------------------------------------------------------------------------------------------
# Plain folder


class FolderSegmentation(SegmentationDataset):
    """Custom data; root holds `images/<stem>.{jpg,jpeg,png,tif,tiff}` (8- or 16-bit, grey or RGB),
    `masks/<stem>.png` and `classes.txt`.

    `classes.txt`: one class name per line, in index order. Masks hold class indices 0..K-1 and 255 for
    void. Split `s` lists stems in `splits/<s>.txt` when that file exists; split `all` (when there is no
    `splits/all.txt`) is every image in `images/`.
    """

    LAYOUT = (
        "a folder with images/<stem>.jpg|.jpeg|.png|.tif|.tiff, masks/<stem>.png (class indices, 255 = void), "
        "classes.txt (one class name per line) and optionally splits/<split>.txt"
    )
    IMAGE_EXTS: ClassVar[tuple[str, ...]] = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
    ALL: ClassVar[str] = "all"

    @classmethod
    def splits_on_disk(cls, root: str | Path) -> list[str]:
        folder = Path(root) / "splits"
        found = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        return found + ([cls.ALL] if cls.ALL not in found else [])

    def _read_classes(self) -> tuple[str, ...]:
        return self.class_names(self.root)

    @classmethod
    def class_names(cls, root: str | Path) -> tuple[str, ...]:
        """The names in `root/classes.txt`, in index order (what sizes the heads of a run on this folder)."""
        path = Path(root) / "classes.txt"
        if not path.is_file():
            raise FileNotFoundError(f"class list {path} does not exist; expected one class name per line")
        names = tuple(read_split_file(path))
        if not names:
            raise ValueError(f"class list {path} is empty; expected one class name per line")
        if len(names) > IGNORE_INDEX:
            raise ValueError(f"class list {path} has {len(names)} classes; expected at most {IGNORE_INDEX}")
        return names

    def _read_ids(self, split: str) -> list[str]:
        images = self.root / "images"
        if not images.is_dir():
            raise FileNotFoundError(f"image folder {images} does not exist; expected {self.LAYOUT}")
        files = [p for p in sorted(images.iterdir()) if p.suffix.lower() in self.IMAGE_EXTS]
        self._images = {p.stem: p for p in files}
        by_stem: dict[str, list[str]] = {}
        for p in files:
            by_stem.setdefault(p.stem, []).append(p.name)
        # Stems with several image files (img1.jpg and img1.png): the last in name order is used.
        self.ambiguous_stems = {stem: names for stem, names in by_stem.items() if len(names) > 1}
        split_file = self.root / "splits" / f"{split}.txt"
        if split_file.is_file():
            self._source = str(split_file)
            return read_split_file(split_file)
        if split == self.ALL:
            self._source = f"every image in {images}"
            return sorted(self._images)
        raise FileNotFoundError(
            f"split file {split_file} does not exist; expected one image stem per line, or split 'all' for every "
            f"image in {images} (splits found: {', '.join(self.splits_on_disk(self.root))})"
        )

    def _split_source(self) -> str:
        return self._source

    def image_path(self, i: int) -> Path:
        stem = self.ids[i]
        return self._images.get(stem, self.root / "images" / f"{stem}.jpg")

    def mask_path(self, i: int) -> Path:
        return self.root / "masks" / f"{self.ids[i]}.png"

    def _missing(self, kind: str, path: Path, i: int) -> FileNotFoundError:
        if kind == "image":
            path = self.root / "images" / f"{self.ids[i]}{{{','.join(self.IMAGE_EXTS)}}}"
        return super()._missing(kind, path, i)

    def _label_lut(self, mask_path: Path) -> tuple[np.ndarray, str]:
        return self._identity_label_lut(
            f"neither a class index 0..{self.num_classes - 1} (classes.txt) nor the void value 255"
        )


__all__ = [
    "SegmentationDataset",
    "Transforms",
    "VOCSegmentation",
    "ADE20kSegmentation",
    "CityscapesSegmentation",
    "FolderSegmentation",
    "read_image",
    "read_label_png",
    "label_lut",
    "apply_label_lut",
    "bitwise_palette",
    "VOC_CLASSES",
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "CITYSCAPES_LABEL_TO_TRAIN",
]
