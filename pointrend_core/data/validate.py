"""Check a whole dataset up front and report every problem at once (`python -m pointrend_core check-data`).

A problem is anything that would make training or evaluation fail or silently learn wrong labels: a missing
root, split file or empty split; an id without its image or mask file; an image or mask that does not
decode (corrupt, truncated, wrong PNG mode); a mask whose size differs from its image; mask values that are
neither a class nor the dataset's void value; a split whose masks are all void; fewer than two classes.
Each message names the file or value and the expected form (they are the same messages the datasets raise
when loading).

A warning is something that runs but is probably not what was meant: an id listed twice in a split, an id
in both a training and a validation split, a stem with several image files, a 16-bit image that uses a
small part of its range. `dataset_warnings` (the cheap ones, no decoding) also runs before training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pointrend_core.data.datasets import SegmentationDataset
from pointrend_core.data.image_io import sixteen_bit_peak
from pointrend_core.labels import IGNORE_INDEX

LOW_RANGE_PEAK = 4095
"""A 16-bit image whose largest sample is at most this (12-bit data) reads as nearly black."""


@dataclass(frozen=True)
class DatasetCheck:
    """What `check_dataset_report` found: problems (the dataset cannot be used as it is) and warnings."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _SampleCheck:
    problems: list[str]
    labelled: bool
    """Whether the mask has any pixel that is not void."""
    peak16: int | None


def check_sample(dataset: SegmentationDataset, i: int) -> list[str]:
    """The problems of sample `i`: image and mask are each loaded on their own, so that both are reported,
    then their sizes compared."""
    return _check_sample(dataset, i).problems


def _check_sample(dataset: SegmentationDataset, i: int) -> _SampleCheck:
    problems: list[str] = []
    image = mask = None
    try:
        image = dataset.load_image(i)
    except (OSError, ValueError) as e:
        problems.append(str(e))
    try:
        mask = dataset.load_mask(i)
    except (OSError, ValueError) as e:
        problems.append(str(e))
    if image is not None and mask is not None:
        mismatch = dataset.size_mismatch(i, image, mask)
        if mismatch is not None:
            problems.append(mismatch)
    labelled = mask is not None and bool((mask != IGNORE_INDEX).any())
    return _SampleCheck(problems, labelled, sixteen_bit_peak(dataset.image_path(i)) if image is not None else None)


def dataset_warnings(datasets: Sequence[SegmentationDataset]) -> list[str]:
    """The warnings that need no decoding, for the splits `datasets` of one dataset: repeated ids, ids in
    both a training and a validation split, stems with several image files."""
    found = []
    for dataset in datasets:
        repeated = sorted(i for i, n in Counter(dataset.ids).items() if n > 1)
        if repeated:
            found.append(f"split {dataset.split!r} of {dataset.root} lists {len(repeated)} id(s) more than once "
                         f"({_some(repeated)}); each copy is trained on as a separate image")
        ambiguous = getattr(dataset, "ambiguous_stems", {})
        used = sorted(set(dataset.ids) & set(ambiguous))
        if used:
            found.append(f"{len(used)} id(s) of split {dataset.split!r} have several image files ("
                         + "; ".join(", ".join(ambiguous[stem]) for stem in used[:5])
                         + f"{'; ...' if len(used) > 5 else ''}); the last in name order is used: remove the others")
    training = [d for d in datasets if d.split.startswith("train")]
    validation = [d for d in datasets if d.split.startswith(("val", "test"))]
    for train in training:
        for val in validation:
            shared = sorted(set(train.ids) & set(val.ids))
            if shared and train.root == val.root:
                found.append(f"{len(shared)} id(s) are in both split {train.split!r} and split {val.split!r} of "
                             f"{train.root} ({_some(shared)}); a validation score on images trained on is too high")
    return found


def check_before_training(train: SegmentationDataset, layout: type[SegmentationDataset], val_split: str) -> list[str]:
    """What `check-data` finds without decoding, before a training starts: fewer than two classes is refused
    (ValueError), the rest (repeated ids, train/val overlap, ambiguous image files) is returned as warnings.
    `layout` and `val_split` open the validation split beside `train` when there is one."""
    if train.num_classes < 2:
        raise ValueError(f"{train.root} has {train.num_classes} class ({', '.join(train.classes)}); segmentation "
                         "needs at least two (e.g. background and object)")
    splits = [train]
    try:
        splits.append(layout(train.root, val_split))
    except (OSError, ValueError):
        pass  # a training-only dataset: nothing to compare with
    return dataset_warnings(splits)


def resolution_note(dataset: SegmentationDataset, base_size: Sequence[int]) -> str | None:
    """A sentence when the recipe's test size (`base_size`, long and short side) is at most half the size of
    the dataset's first image: PointRend would then refine a map far coarser than the images it is used on."""
    try:
        height, width = dataset.load_image(0).shape[-2:]
    except (OSError, ValueError):
        return None  # reported where it matters: by the loader and by check-data
    long_side, short_side = max(height, width), min(height, width)
    if long_side < 2 * base_size[0] and short_side < 2 * base_size[1]:
        return None
    return (f"note: the images of {dataset.root} are about {width} x {height} pixels, but the recipe tests at "
            f"base_size {base_size[0]} x {base_size[1]} (long x short side), half their size or less; to segment "
            f"them at their own resolution pass --set data.base_size={long_side},{short_side} (and a larger "
            "data.crop_size for training); see docs/own-data.md")


def _some(ids: Sequence[str], show: int = 5) -> str:
    return ", ".join(ids[:show]) + (f", ... ({len(ids) - show} more)" if len(ids) > show else "")


def _open_splits(
    dataset_cls: type[SegmentationDataset], root: Path, split: str | None
) -> Iterator[SegmentationDataset | str]:
    """Yield one dataset per split to check, or a problem message for a split that cannot be opened."""
    if not root.is_dir():
        try:  # the dataset's own message names the expected layout
            dataset_cls(root, split or "train")
        except (OSError, ValueError) as e:
            yield str(e)
        else:  # pragma: no cover - a dataset that accepts a missing root is a bug elsewhere
            yield f"root {root} is not a directory"
        return
    splits = [split] if split is not None else dataset_cls.splits_on_disk(root)
    if not splits:
        yield f"no split found under {root}; expected {dataset_cls.LAYOUT}"
    for name in splits:
        try:
            yield dataset_cls(root, name)
        except (OSError, ValueError) as e:
            yield str(e)


def check_dataset(
    dataset_cls: type[SegmentationDataset],
    root: str | Path,
    split: str | None = None,
    workers: int = 1,
    progress: bool = False,
) -> list[str]:
    """Every problem of the dataset at `root` as messages (an empty list when it is fine); see
    `check_dataset_report` for the arguments and for the warnings."""
    return check_dataset_report(dataset_cls, root, split, workers, progress).problems


def check_dataset_report(
    dataset_cls: type[SegmentationDataset],
    root: str | Path,
    split: str | None = None,
    workers: int = 1,
    progress: bool = False,
) -> DatasetCheck:
    """Every problem and warning of the dataset at `root`.

    `split=None` checks every split found on disk (`dataset_cls.splits_on_disk`); a sample listed in
    several splits (e.g. VOC train and trainaug) is decoded once. Every image and mask is decoded in full,
    which is what finds truncated files; `workers` > 1 decodes in threads (the decoders release the GIL).
    `progress=True` shows a tqdm bar per split.
    """
    root = Path(root)
    report = DatasetCheck()
    checked: dict[tuple[Path, Path], _SampleCheck] = {}
    opened_splits = []
    for opened in _open_splits(dataset_cls, root, split):
        if isinstance(opened, str):
            report.problems.append(opened)
            continue
        dataset = opened
        opened_splits.append(dataset)
        keys = [(dataset.image_path(i), dataset.mask_path(i)) for i in range(len(dataset))]
        todo = [i for i, key in enumerate(keys) if key not in checked]
        results = _map(lambda i: _check_sample(dataset, i), todo, workers)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(todo), desc=f"check {dataset_cls.__name__} {dataset.split}")
        for i, found in zip(todo, results):
            checked[keys[i]] = found
            report.problems.extend(found.problems)
        decoded = any(not checked[key].problems for key in keys)
        if decoded and not any(checked[key].labelled for key in keys):
            report.problems.append(
                f"every mask of split {dataset.split!r} at {root} is void ({IGNORE_INDEX} or the dataset's void "
                f"value) in its {len(dataset)} image(s): there is nothing to train on or to score")
    if opened_splits and opened_splits[0].num_classes < 2:
        report.problems.append(
            f"{dataset_cls.__name__} at {root} has {opened_splits[0].num_classes} class "
            f"({', '.join(opened_splits[0].classes)}); segmentation needs at least two (e.g. background and object)")
    report.warnings.extend(dataset_warnings(opened_splits))
    dim = sorted(path.name for (path, _), found in checked.items()
                 if found.peak16 is not None and found.peak16 <= LOW_RANGE_PEAK)
    if dim:
        report.warnings.append(
            f"{len(dim)} 16-bit image(s) use at most 12 of their 16 bits ({_some(dim)}); they are scaled to 8 bits "
            "over the full 16-bit range and look nearly black: rescale them to the full range first")
    return report


def _map(fn: Callable[[int], list[str]], items: list[int], workers: int) -> Iterator[list[str]]:
    """`fn` over `items` in order, lazily (so a progress bar advances), in `workers` threads when > 1."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)


__all__ = ["check_dataset", "check_dataset_report", "check_sample", "check_before_training", "dataset_warnings",
           "resolution_note", "DatasetCheck"]
