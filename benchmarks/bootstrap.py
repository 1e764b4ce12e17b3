"""Time of the bootstrap intervals at the validation-set sizes of the table's datasets.

    python benchmarks/bootstrap.py                     # ADE20k, VOC and Cityscapes sizes, 10,000 resamples
    python benchmarks/bootstrap.py --cases ade20k --resamples 2000 --repeats 3

Counts are synthetic but shaped like the real ones (`engine.image_counts`: per image, per class,
intersection, prediction and ground-truth pixels, for refined, coarse and both boundary bands): each image
holds a handful of classes (ADE20k about 10 of 150, VOC 2-3 of 21, Cityscapes about 17 of 19), with
pixel totals at the dataset's image size. What is timed is `engine.intervals.bootstrap_intervals`, all six
intervals together (four mIoUs and the two paired refined-minus-coarse gains): the resamples, the jackknife
that BCa needs, and the percentile fallback if any interval needs it.

Printed: one line per case with the number of images and classes, the seconds of each repeat (the best of
them is the fair number on a shared machine), and the method the refined mIoU's interval used.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pointrend_core.engine.image_counts import OUTPUTS, ImageCounts
from pointrend_core.engine.intervals import bootstrap_intervals


@dataclass(frozen=True)
class Case:
    name: str
    images: int
    classes: int
    classes_per_image: int
    pixels: int


CASES = {
    "ade20k": Case("ADE20k val", 2000, 150, 10, 512 * 683),
    "voc": Case("VOC val", 1449, 21, 3, 500 * 375),
    "cityscapes": Case("Cityscapes val", 500, 19, 17, 2048 * 1024),
}


def synthetic_counts(case: Case, seed: int = 0) -> ImageCounts:
    """(N, 4, 3, C) counts: each image splits its pixels among `classes_per_image` random classes; each
    output gets 60-95 % of a class's pixels right and adds some false positives (boundary bands: 5 % of it)."""
    rng = np.random.default_rng(seed)
    n, c, k = case.images, case.classes, case.classes_per_image
    counts = np.zeros((n, len(OUTPUTS), 3, c), dtype=np.int64)
    rows = np.arange(n)[:, None]
    classes = np.argsort(rng.random((n, c)), axis=1)[:, :k]  # k distinct classes per image
    shares = rng.dirichlet(np.ones(k), size=n)
    for o, name in enumerate(OUTPUTS):
        scale = 0.05 if "boundary" in name else 1.0
        gt = (shares * case.pixels * scale).astype(np.int64)
        inter = (gt * rng.uniform(0.6, 0.95, size=gt.shape)).astype(np.int64)
        pred = inter + (gt * rng.uniform(0.0, 0.3, size=gt.shape)).astype(np.int64)
        counts[rows, o, 0, classes], counts[rows, o, 1, classes], counts[rows, o, 2, classes] = inter, pred, gt
    return ImageCounts(counts, np.arange(n))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["ade20k", "voc", "cityscapes"])
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    lines = []
    for key in args.cases:
        case = CASES[key]
        counts = synthetic_counts(case)
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            intervals = bootstrap_intervals(counts, resamples=args.resamples)
            seconds.append(time.perf_counter() - start)
        lines.append({
            "case": case.name, "images": case.images, "classes": case.classes, "resamples": args.resamples,
            "best s": round(min(seconds), 2), "all s": ", ".join(f"{s:.2f}" for s in seconds),
            "method": intervals.refined_mIoU.method,
            "refined mIoU [95 %]": intervals.refined_mIoU.text(),
        })
    print(f"bootstrap_intervals, all six intervals at once; {os.cpu_count()} CPU cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(pd.DataFrame(lines).to_string(index=False))


if __name__ == "__main__":
    main()
