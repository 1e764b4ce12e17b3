"""Check a whole dataset up front and report every problem at once (`python -m pointrend_core check-data`).

A problem is anything that would make training or evaluation fail or silently learn wrong labels: a missing
root, split file or empty split; an id without its image or mask file; an image or mask that does not
decode (corrupt, truncated, wrong PNG mode); a mask whose size differs from its image; mask values that are
neither a class nor the dataset's void value. Each message names the file or value and the expected form
(they are the same messages the datasets raise when loading).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pointrend_core.data.datasets import SegmentationDataset


def check_sample(dataset: SegmentationDataset, i: int) -> list[str]:
    """The problems of sample `i`: image and mask are each loaded on their own, so that both are reported,
    then their sizes compared."""
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
    return problems


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
    """Every problem of the dataset at `root` as messages (an empty list when it is fine).

    `split=None` checks every split found on disk (`dataset_cls.splits_on_disk`); a sample listed in
    several splits (e.g. VOC train and trainaug) is checked once. Every image and mask is decoded in full,
    which is what finds truncated files; `workers` > 1 decodes in threads (the decoders release the GIL).
    `progress=True` shows a tqdm bar per split.
    """
    root = Path(root)
    problems: list[str] = []
    seen: set[tuple[Path, Path]] = set()
    for opened in _open_splits(dataset_cls, root, split):
        if isinstance(opened, str):
            problems.append(opened)
            continue
        dataset = opened
        todo = []
        for i in range(len(dataset)):
            key = (dataset.image_path(i), dataset.mask_path(i))
            if key not in seen:
                seen.add(key)
                todo.append(i)
        results = _map(lambda i: check_sample(dataset, i), todo, workers)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(todo), desc=f"check {dataset_cls.__name__} {dataset.split}")
        for found in results:
            problems.extend(found)
    return problems


def _map(fn: Callable[[int], list[str]], items: list[int], workers: int) -> Iterator[list[str]]:
    """`fn` over `items` in order, lazily (so a progress bar advances), in `workers` threads when > 1."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)


__all__ = ["check_dataset", "check_sample"]
