"""Build VOC's `trainaug` split (10,582 images) from the two official downloads (`prepare-voc-aug`).

The VOC rows train on `trainaug`: VOC 2012 `train` plus every image that SBD (Hariharan et al., "Semantic
contours from inverse detectors", ICCV 2011) annotates, minus VOC 2012 `val`. Neither download contains that
split or labels for it:

* VOC2012 (`VOCdevkit/VOC2012`): `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette PNGs whose
  pixel values are class indices 0..20, 255 = void) for the 2,913 `trainval` ids,
  `ImageSets/Segmentation/{train,val}.txt`;
* SBD (`benchmark_RELEASE/dataset`): `cls/<id>.mat` holding a MATLAB struct `GTcls` with `Segmentation`
  (uint8 HxW, 0 = background, 1..20 classes, no void), `Boundaries` (20x1 cell of sparse matrices) and
  `CategoriesPresent`, for 11,355 VOC2011 images split 8,498 `train.txt` / 2,857 `val.txt`.

`prepare_voc_aug` writes `SegmentationClassAug/<id>.png` for every id of `trainaug` and of VOC `val`, and
`ImageSets/Segmentation/trainaug.txt`. `VOCSegmentation(voc_root, "trainaug")` then reads them.

Which label an id gets: VOC's own `SegmentationClass/<id>.png` when VOC has one, SBD's `GTcls.Segmentation`
otherwise (not SBD's for every SBD id, as is sometimes assumed). DeepLab's
`TransformBerkeleyVOC2011Annot.m` (in its caffe's `matlab/my_script/`, the script behind its
`SegmentationClassAug` release) writes every SBD label and then writes every VOC `SegmentationClass` label
over it; train-DeepLab's instructions copy the converted VOC labels over the SBD ones; mmsegmentation's
`voc_aug.py` keeps SBD labels only for `aug.txt` = SBD - VOC train - VOC val, and its configs train the VOC
train ids on `SegmentationClass`. VOC's labels are the official, finer annotations, and they carry the same
255 void band on object outlines as the VOC val labels that are evaluated.

Images are not copied: SBD's images are VOC2011 trainval images, which VOC2012's `JPEGImages` contains (the
converters above read all 10,582 `trainaug` images from VOC2012's `JPEGImages`), so an SBD id without
`JPEGImages/<id>.jpg` means an incomplete VOC extraction or a wrong `voc_root` (e.g. VOC2007); it is reported
with the ids and nothing is written, rather than patched from SBD's `img/`.

Every file is written atomically (`pointrend_core.files`), and only when its content changes, so a second run
writes nothing and an interrupted run can simply be started again.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pointrend_core.data.datasets import VOC_CLASSES, read_label_png  # re-exported from image_io
from pointrend_core.files import atomic_write_bytes, atomic_write_text
from pointrend_core.labels import IGNORE_INDEX

TRAINAUG_SIZE = 10_582
"""Size of `trainaug` from the full official downloads (DeepLab, Chen et al., ICLR 2015 / TPAMI 2018;
mmsegmentation's `voc_aug.py` asserts it)."""

NUM_VOC_CLASSES = len(VOC_CLASSES)  # 21: background 0 and the 20 object classes 1..20
AUG_DIR = "SegmentationClassAug"
SPLIT_DIR = Path("ImageSets") / "Segmentation"
TRAINAUG_FILE = SPLIT_DIR / "trainaug.txt"

VOC_LAYOUT = (
    "a VOC2012 folder (VOCdevkit/VOC2012) with JPEGImages/<id>.jpg, SegmentationClass/<id>.png and "
    "ImageSets/Segmentation/{train,val}.txt"
)
SBD_LAYOUT = "an SBD folder (benchmark_RELEASE/dataset) with cls/<id>.mat, train.txt and val.txt"


# --------------------------------------------------------------------------------------------------------
# Summary


@dataclass(frozen=True)
class VocAugSummary:
    """What one `prepare_voc_aug` run found and wrote.

    `from_sbd` / `from_voc`: label PNGs written in this run from SBD's `GTcls.Segmentation` / VOC's
    `SegmentationClass`; `up_to_date`: labels skipped because the PNG already held exactly these values;
    `split_size`: ids in `trainaug.txt`; `val_size`: VOC val ids (also given labels, so that the folder is
    complete); `split_written`: whether `trainaug.txt` was (re)written; `written`: every path written.
    """

    voc_root: Path
    sbd_root: Path
    from_sbd: int
    from_voc: int
    up_to_date: int
    split_size: int
    val_size: int
    split_written: bool
    written: tuple[Path, ...]

    @property
    def labels_written(self) -> int:
        return self.from_sbd + self.from_voc

    @property
    def num_labels(self) -> int:
        """Label PNGs the folder holds for `trainaug` and val: written now or already up to date."""
        return self.labels_written + self.up_to_date

    @property
    def label_dir(self) -> Path:
        return self.voc_root / AUG_DIR

    @property
    def split_file(self) -> Path:
        return self.voc_root / TRAINAUG_FILE

    def describe(self) -> str:
        """The one-paragraph report a command line prints."""
        if self.written:
            labels = (
                f"wrote {self.labels_written} label PNGs to {self.label_dir} ({self.from_sbd} from SBD cls/*.mat, "
                f"{self.from_voc} from VOC SegmentationClass), {self.up_to_date} already up to date"
            )
            split = f"{'wrote' if self.split_written else 'kept'} {self.split_file} ({self.split_size} ids)"
            done = f"prepare-voc-aug: {labels}; {split}."
        else:
            done = (
                f"prepare-voc-aug: nothing to write; the {self.num_labels} label PNGs in {self.label_dir} and "
                f"{self.split_file} ({self.split_size} ids) are already up to date."
            )
        size = f" trainaug has {self.split_size} images and val {self.val_size}"
        if self.split_size != TRAINAUG_SIZE:
            size += f" (the full official downloads give {TRAINAUG_SIZE:,})"
        check = f"check with: python -m pointrend_core check-data --dataset voc --root {self.voc_root} --split trainaug"
        return f"{done}{size}; {check}"

    __str__ = describe


# --------------------------------------------------------------------------------------------------------
# Split lists


def read_id_list(path: Path, what: str) -> list[str]:
    """Ids from a split list (one per line, blank lines ignored); FileNotFoundError naming `what` if missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} split list {path} does not exist; expected one image id per line")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def trainaug_ids(
    voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str], sbd_val: Iterable[str]
) -> list[str]:
    """`trainaug` = (SBD train | SBD val | VOC train) - VOC val, sorted (10,582 ids from the real lists).

    SBD's own train/val split is not VOC's: some SBD train ids are VOC val images, hence the difference.
    """
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


# --------------------------------------------------------------------------------------------------------
# Reading and checking labels


def check_label_values(mask: np.ndarray, path: Path) -> None:
    """Raise ValueError naming `path` unless every value of `mask` is a VOC class 0..20 or void 255."""
    if mask.dtype == np.uint8:  # the usual case: a histogram is much faster than np.unique's sort
        counts = np.bincount(mask.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(mask, return_counts=True)
    valid = ((values >= 0) & (values < NUM_VOC_CLASSES)) | (values == IGNORE_INDEX)
    if not valid.all():
        bad = [(v, c) for v, c, ok in zip(values.tolist(), counts.tolist(), valid.tolist()) if not ok]
        found = ", ".join(f"{v:g} ({c} px)" for v, c in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise ValueError(
            f"label {path} contains values {found}; expected VOC class indices 0..{NUM_VOC_CLASSES - 1} "
            f"or the void value {IGNORE_INDEX}"
        )


def read_sbd_segmentation(path: Path) -> np.ndarray:
    """SBD's `GTcls.Segmentation` of `cls/<id>.mat` as uint8 (H, W): 0 background, 1..20 classes.

    Raises FileNotFoundError for a missing file and ValueError naming the file for one that is not a MAT
    file, has no struct `GTcls` or no field `Segmentation`, a Segmentation that is not a 2-D integer map, or
    values other than 0..20 and 255.
    """
    import scipy.io  # here, so that importing the data package does not need scipy

    if not path.is_file():
        raise FileNotFoundError(f"SBD label file {path} does not exist; expected {SBD_LAYOUT}")
    try:
        # squeeze_me / struct_as_record=False turn the 1x1 struct into an object with attributes.
        mat = scipy.io.loadmat(path, mat_dtype=True, squeeze_me=True, struct_as_record=False)
    except Exception as e:  # noqa: BLE001 - scipy raises ValueError, OSError, IndexError ... for a damaged file
        raise ValueError(
            f"cannot read SBD label {path} as a MATLAB file ({type(e).__name__}: {e}); expected a MAT file "
            "holding a struct GTcls (SBD's cls/<id>.mat)"
        ) from None
    if "GTcls" not in mat:
        found = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "none"
        raise ValueError(
            f"SBD label {path} has no variable 'GTcls' (variables: {found}); expected SBD's cls/<id>.mat, a struct "
            "GTcls with fields Segmentation, Boundaries, CategoriesPresent (inst/<id>.mat holds GTinst instead)"
        )
    gt = mat["GTcls"]
    if isinstance(gt, np.ndarray) and gt.dtype == object and gt.size == 1:
        gt = gt.item()  # a 1x1 struct array that squeeze_me left wrapped
    if not hasattr(gt, "Segmentation"):
        fields = ", ".join(getattr(gt, "_fieldnames", None) or []) or "none"
        raise ValueError(
            f"SBD label {path}: GTcls has no field 'Segmentation' (fields: {fields}); expected a struct with "
            "Segmentation (uint8 HxW class indices), Boundaries and CategoriesPresent"
        )
    seg = np.asarray(gt.Segmentation)
    if seg.ndim != 2 or seg.dtype.kind not in "uif" or (seg.dtype.kind == "f" and not np.all(seg == np.round(seg))):
        raise ValueError(
            f"SBD label {path}: GTcls.Segmentation is {seg.dtype} of shape {seg.shape}; expected a 2-D (H, W) "
            "map of integer class indices"
        )
    check_label_values(seg, path)  # before the cast, so that e.g. 256 or -1 is reported and not wrapped
    return seg.astype(np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header (no full decode)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path} ({e}); expected a JPEG file") from None
    return h, w


def check_label_shape(mask: np.ndarray, label_path: Path, image_path: Path) -> None:
    """Raise ValueError unless `mask` (H, W) has the size of the image at `image_path`."""
    h, w = image_size(image_path)
    if mask.shape != (h, w):
        mh, mw = mask.shape
        raise ValueError(
            f"label {label_path} is {mw}x{mh} (WxH) but image {image_path} is {w}x{h}; expected a label of the "
            "same size as its image"
        )


# --------------------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class _Plan:
    """Every id to label, where its label comes from, and the split to write."""

    trainaug: list[str]
    val: list[str]
    sources: dict[str, tuple[str, Path]]  # id -> ("voc" | "sbd", label file)


ARCHIVE_SUFFIXES = (".tar", ".tgz", ".gz", ".zip", ".bz2", ".xz")


def _require_dir(path: Path, what: str, layout: str, hint: str = "") -> None:
    if path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise NotADirectoryError(f"{what} {path} is an archive; extract it first (tar -xf or unzip) and pass the "
                                 f"extracted folder: {layout}")
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} does not exist or is not a folder; expected {layout}{hint}")


def _nested_hint(root: Path, child: str) -> str:
    # A common slip: passing the folder one level up (VOCdevkit, benchmark_RELEASE).
    return f" (did you mean {root / child}?)" if (root / child).is_dir() else ""


def _swapped_hint(voc_root: Path, sbd_root: Path) -> None:
    """--voc and --sbd given the other way round: say so rather than which file is missing."""
    looks_sbd = lambda p: (p / "cls").is_dir() or (p / "dataset" / "cls").is_dir()  # noqa: E731
    looks_voc = lambda p: (p / "JPEGImages").is_dir() or (p / "VOC2012" / "JPEGImages").is_dir()  # noqa: E731
    if looks_sbd(voc_root) and looks_voc(sbd_root):
        raise ValueError(f"--voc {voc_root} looks like SBD's folder and --sbd {sbd_root} like VOC2012's: swap them")


def _plan(voc_root: Path, sbd_root: Path) -> _Plan:
    """Read the four split lists and choose each id's label source; check that every input file exists, so
    that a missing file stops the run before anything is written."""
    voc_hint, sbd_hint = _nested_hint(voc_root, "VOC2012"), _nested_hint(sbd_root, "dataset")
    _swapped_hint(voc_root, sbd_root)
    _require_dir(voc_root, "VOC root", VOC_LAYOUT, voc_hint)
    _require_dir(sbd_root, "SBD root", SBD_LAYOUT, sbd_hint)
    _require_dir(voc_root / "JPEGImages", "VOC image folder", VOC_LAYOUT, voc_hint)
    _require_dir(sbd_root / "cls", "SBD class-label folder", SBD_LAYOUT, sbd_hint)
    voc_train = read_id_list(voc_root / SPLIT_DIR / "train.txt", "VOC train")
    voc_val = read_id_list(voc_root / SPLIT_DIR / "val.txt", "VOC val")
    sbd_train = read_id_list(sbd_root / "train.txt", "SBD train")
    sbd_val = read_id_list(sbd_root / "val.txt", "SBD val")
    sbd_ids = set(sbd_train) | set(sbd_val)
    trainaug = trainaug_ids(voc_train, voc_val, sbd_train, sbd_val)
    val = sorted(set(voc_val))

    sources: dict[str, tuple[str, Path]] = {}
    missing: list[Path] = []
    for image_id in trainaug + val:
        voc_label = voc_root / "SegmentationClass" / f"{image_id}.png"
        if voc_label.is_file():  # VOC's own label wins (module docstring)
            sources[image_id] = ("voc", voc_label)
        elif image_id in sbd_ids:
            sources[image_id] = ("sbd", sbd_root / "cls" / f"{image_id}.mat")
        else:  # a VOC train/val id that SBD does not annotate: only VOC can label it
            missing.append(voc_label)
        image = voc_root / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file():
            missing.append(image)
    missing += [path for kind, path in sources.values() if kind == "sbd" and not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} input files do not exist: {_first(missing)}. Expected JPEGImages/<id>.jpg for every "
            f"id (SBD's images are VOC2011 images, all in VOC2012's JPEGImages), SegmentationClass/<id>.png for "
            f"VOC train/val ids that SBD does not list, and cls/<id>.mat for SBD's ids that VOC does not label; "
            f"re-extract the download that lacks them, or check the roots ({VOC_LAYOUT}; {SBD_LAYOUT})"
        )
    return _Plan(trainaug=trainaug, val=val, sources=sources)


def _first(items: Sequence[object], n: int = 5) -> str:
    """The first `n` items, comma-separated, with how many more there are."""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


# --------------------------------------------------------------------------------------------------------
# Writing


def encode_label_png(mask: np.ndarray) -> bytes:
    """uint8 (H, W) class indices -> single-channel ('L') PNG bytes holding the indices as grey levels.

    'L', not VOC's palette 'P': the reference reads masks with OpenCV as greyscale, which returns the stored
    values of an 'L' PNG but the luminance of a 'P' one (recipe §5), and DeepLab's SegmentationClassAug
    release stores grey levels too. PIL reads both as the indices, so this package does not care.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _same_label(path: Path, mask: np.ndarray) -> bool:
    """Whether `path` already holds exactly `mask` (compared as values, so that a PNG from another encoder or
    zlib with the same pixels counts as up to date)."""
    if not path.is_file():
        return False
    try:
        existing = read_label_png(path)
    except (OSError, ValueError):  # unreadable or RGB: rewrite it
        return False
    return existing.shape == mask.shape and np.array_equal(existing, mask)


def _load_label(source: str, label_path: Path, image_path: Path) -> np.ndarray:
    """The checked uint8 (H, W) label of one id from its source file."""
    if source == "sbd":
        mask = read_sbd_segmentation(label_path)
    else:
        mask = read_label_png(label_path)  # palette indices of VOC's 'P' PNG = class indices
        check_label_values(mask, label_path)
    check_label_shape(mask, label_path, image_path)
    return mask


def _write_split(path: Path, ids: Sequence[str]) -> bool:
    """Write `ids` one per line unless `path` already says exactly that; True when written."""
    text = "".join(f"{i}\n" for i in ids)
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True


def prepare_voc_aug(voc_root: str | Path, sbd_root: str | Path, *, progress: bool = True) -> VocAugSummary:
    """Write `SegmentationClassAug/<id>.png` and `ImageSets/Segmentation/trainaug.txt` under `voc_root`.

    `voc_root` is `VOCdevkit/VOC2012`, `sbd_root` SBD's `benchmark_RELEASE/dataset`. Labels are written for
    every id of `trainaug` = (SBD train | SBD val | VOC train) - VOC val and of VOC val, as single-channel
    uint8 (H, W) PNGs of the size of `JPEGImages/<id>.jpg`: 0 background, 1..20 classes, 255 void. An id takes
    VOC's `SegmentationClass/<id>.png` when VOC has it, SBD's `GTcls.Segmentation` otherwise (see the module
    docstring for why). A label whose PNG already holds the same values is skipped, and `trainaug.txt` is
    only written when its content changes; each file is written atomically.

    Raises FileNotFoundError for a missing folder, split list, image or label file, and ValueError naming the
    file for an unreadable `.mat`, one without `GTcls.Segmentation`, a label of another size than its image
    or label values other than 0..20 and 255. Missing files are found before anything is written.
    `progress=True` shows a tqdm bar over the labels.
    """
    voc_root, sbd_root = Path(voc_root), Path(sbd_root)
    plan = _plan(voc_root, sbd_root)
    counts = {"sbd": 0, "voc": 0, "same": 0}
    written: list[Path] = []
    ids = plan.trainaug + plan.val
    for image_id in tqdm(ids, desc=f"prepare-voc-aug {AUG_DIR}", unit="label", disable=not progress):
        source, label_path = plan.sources[image_id]
        mask = _load_label(source, label_path, voc_root / "JPEGImages" / f"{image_id}.jpg")
        out = voc_root / AUG_DIR / f"{image_id}.png"
        if _same_label(out, mask):
            counts["same"] += 1
            continue
        atomic_write_bytes(out, encode_label_png(mask))
        written.append(out)
        counts[source] += 1
    split_written = _write_split(voc_root / TRAINAUG_FILE, plan.trainaug)
    if split_written:
        written.append(voc_root / TRAINAUG_FILE)
    return VocAugSummary(
        voc_root=voc_root,
        sbd_root=sbd_root,
        from_sbd=counts["sbd"],
        from_voc=counts["voc"],
        up_to_date=counts["same"],
        split_size=len(plan.trainaug),
        val_size=len(plan.val),
        split_written=split_written,
        written=tuple(written),
    )


__all__ = [
    "prepare_voc_aug",
    "VocAugSummary",
    "trainaug_ids",
    "read_sbd_segmentation",
    "encode_label_png",
    "check_label_values",
    "TRAINAUG_SIZE",
]
