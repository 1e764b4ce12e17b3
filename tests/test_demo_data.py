"""The embedded demo dataset: VOC layout, determinism, and content that makes boundaries the hard part."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pointrend_core.config import DEMO
from pointrend_core.data.demo import (
    CLASS_HUES,
    DEMO_CLASSES,
    DemoShapes,
    make_demo_dataset,
    render_demo_sample,
    sdf_polygon,
    sdf_star,
    star_vertices,
)
from pointrend_core.data.validate import check_dataset


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", num_images=10, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_loader(demo_root: Path) -> None:
    assert (demo_root / "JPEGImages" / "demo_00000.jpg").is_file()
    assert Image.open(demo_root / "SegmentationClass" / "demo_00000.png").mode == "P"
    train, val = DemoShapes(demo_root, "train"), DemoShapes(demo_root, "val")
    assert len(train) == 8 and val.ids == ["demo_00004", "demo_00009"]
    image, mask = train[0]
    assert image.shape == (3, 256, 256) and image.dtype == torch.uint8 and mask.shape == (256, 256)
    assert set(mask.unique().tolist()) <= set(range(len(DEMO_CLASSES)))
    assert train.classes == DEMO_CLASSES and train.num_classes == DEMO.model.num_classes == 6
    assert train.palette.shape == (6, 3)
    assert json.loads((demo_root / "demo.json").read_text())["num_images"] == 10
    assert check_dataset(DemoShapes, demo_root) == []


def test_deterministic_per_seed_and_index(tmp_path: Path, demo_root: Path) -> None:
    same = make_demo_dataset(tmp_path / "same", num_images=10, seed=0)
    assert _files(same) == _files(demo_root)
    fewer = make_demo_dataset(tmp_path / "fewer", num_images=5, seed=0)
    assert (fewer / "JPEGImages" / "demo_00003.jpg").read_bytes() == (
        demo_root / "JPEGImages" / "demo_00003.jpg"
    ).read_bytes()
    other = make_demo_dataset(tmp_path / "other", num_images=5, seed=1)
    assert (other / "JPEGImages" / "demo_00003.jpg").read_bytes() != (
        fewer / "JPEGImages" / "demo_00003.jpg"
    ).read_bytes()


def test_reuse_regenerate_and_refuse(tmp_path: Path) -> None:
    out = make_demo_dataset(tmp_path / "d", num_images=5, seed=0, size=64)
    marker = out / "demo.json"
    stamp = marker.stat().st_mtime_ns
    assert make_demo_dataset(out, num_images=5, seed=0, size=64) == out and marker.stat().st_mtime_ns == stamp
    make_demo_dataset(out, num_images=6, seed=0, size=64)  # other parameters: replaced
    assert len(list((out / "JPEGImages").iterdir())) == 6
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"mine exists and is not a demo dataset \(no demo.json\)"):
        make_demo_dataset(foreign, num_images=5)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


@functools.cache
def _samples(n: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    return [render_demo_sample(np.random.default_rng([0, i])) for i in range(n)]


def test_classes_are_told_apart_by_colour() -> None:
    hue = {c: [] for c in range(len(DEMO_CLASSES))}
    saturation = {c: [] for c in range(len(DEMO_CLASSES))}
    for image, mask in _samples():
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # 8-bit: hue in 2-degree units
        for c in hue:
            hue[c].append(hsv[..., 0][mask == c] * 2.0)  # degrees
            saturation[c].append(hsv[..., 1][mask == c])
    assert np.median(np.concatenate(saturation[0])) < 50  # nearly grey backgrounds
    for c, centre in CLASS_HUES.items():
        values = np.concatenate(hue[c])
        assert values.size > 500, DEMO_CLASSES[c]
        mean = np.angle(np.exp(1j * np.deg2rad(values)).mean(), deg=True) % 360
        assert min(abs(mean - centre), 360 - abs(mean - centre)) < 10, (DEMO_CLASSES[c], mean)
        assert np.median(np.concatenate(saturation[c])) > 120, DEMO_CLASSES[c]


def test_stride4_prediction_fails_at_thin_parts() -> None:
    """Even a perfect stride-4 label map (one sample per 4x4 cell, upsampled) misses much of the thin
    classes: that is the error point refinement can remove."""
    errors, pixels = np.zeros(len(DEMO_CLASSES)), np.zeros(len(DEMO_CLASSES))
    for _, mask in _samples():
        coarse = np.repeat(np.repeat(mask[2::4, 2::4], 4, axis=0), 4, axis=1)
        for c in range(len(DEMO_CLASSES)):
            errors[c] += (coarse[mask == c] != c).sum()
            pixels[c] += (mask == c).sum()
    rate = dict(zip(DEMO_CLASSES, errors / pixels))
    assert rate["ring"] > 0.2 and rate["bar"] > 0.2 and rate["star"] > 0.08  # thin parts
    assert 0.01 < rate["disc"] < 0.1  # curved outlines only
    assert rate["background"] < 0.05


def test_fast_star_distance_matches_the_exact_polygon_distance() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:120].astype(np.float32)
    for _ in range(10):
        outer = rng.uniform(18, 50)
        points, theta = int(rng.integers(5, 10)), rng.uniform(0, np.pi)
        vertices = star_vertices(60.3, 58.7, outer, outer * rng.uniform(0.22, 0.45), points, theta)
        exact, fast = sdf_polygon(yy, xx, vertices), sdf_star(yy, xx, 60.3, 58.7, vertices, theta)
        assert np.array_equal(exact < 0, fast < 0)
        near = np.abs(exact) < 3  # where anti-aliasing and labels are decided
        np.testing.assert_allclose(fast[near], exact[near], atol=1e-4)
