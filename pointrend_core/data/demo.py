"""The embedded default dataset: procedural shapes on textured backgrounds, written in the VOC layout.

Why it looks the way it does: the demo row trains a small ResNet-18 from scratch on a CPU in minutes, so
*what* each object is must be easy (every class has its own hue band, and backgrounds are nearly grey),
while *where* its outline runs must be hard for a stride-4 prediction: rings and bars are 2-4 px wide,
bars come in parallel groups of up to three with 5-9 px gaps, stars have thin spikes, leaves have pointed tips and a
2-px stem, discs have wavy outlines. The backgrounds carry fine texture (stripes, checks, grey scratches
that look like thin bars but are background) so that thin means "look closely", not "object".

Rendering is vectorised numpy over each object's bounding box: every shape is a signed distance d (pixels,
negative inside); the label is d < 0 at the pixel centre and the image is alpha-blended with coverage
clip(0.5 - d, 0, 1), so images have anti-aliased edges and labels are exact. No void (255) band is drawn:
VOC marks outlines void, but here the outline pixels are exactly what the evaluation should score.

`make_demo_dataset` writes JPEGImages/*.jpg (quality 95, no chroma subsampling, so 2-px colours survive),
SegmentationClass/*.png (palette PNGs) and ImageSets/Segmentation/{train,val}.txt (every fifth image is
val), deterministically from (seed, image index).
"""

from __future__ import annotations

import colorsys
import functools
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pointrend_core.data.datasets import DEMO_CLASSES, DEMO_PALETTE, DemoShapes
from pointrend_core.labels import IGNORE_INDEX

CLASS_HUES = {1: 0.0, 2: 55.0, 3: 280.0, 4: 195.0, 5: 125.0}
"""Hue centre in degrees per object class: at least 55 degrees apart, so a class stays recognisable after the
training pipeline's global hue shift (up to 36 degrees) plus the per-object jitter (up to 8)."""

OBJECT_CLASS_WEIGHTS = {1: 1.0, 2: 2.0, 3: 1.0, 4: 2.0, 5: 1.0}
"""How often each object class is drawn: the two thin-only classes (ring, bar) twice as often as the others.
An object of theirs covers about a third of a disc's pixels, so with equal draws they were the rarest
classes in the training pixels (about 2 % each against 6 % for discs); drawing them twice as often evens the
pixel shares out without making them any wider."""

FORMAT_VERSION = 4
"""Bumped whenever the rendering changes, so that an existing tree is regenerated, not reused."""


Array = np.ndarray
_OBJECT_CLASSES = np.array(sorted(OBJECT_CLASS_WEIGHTS))
_OBJECT_PROBABILITIES = np.array([OBJECT_CLASS_WEIGHTS[c] for c in _OBJECT_CLASSES]) / sum(OBJECT_CLASS_WEIGHTS.values())


# --------------------------------------------------------------------------------------------------------
# Signed distances (pixels; negative inside). Arguments yy, xx are float32 (h, w) pixel-centre coordinates.


def _rotate(yy: Array, xx: Array, cy: float, cx: float, theta: float) -> tuple[Array, Array]:
    """Coordinates in the object's frame: u along the angle theta, v across it."""
    c, s = np.cos(theta), np.sin(theta)
    dx, dy = xx - cx, yy - cy
    return dx * c + dy * s, -dx * s + dy * c


def sdf_wavy_disc(
    yy: Array, xx: Array, cy: float, cx: float, radius: float, waves: int, amplitude: float, phase: float
) -> Array:
    """A disc whose radius oscillates: R(t) = radius * (1 + amplitude * sin(waves * t + phase))."""
    dx, dy = xx - cx, yy - cy
    rho = np.sqrt(dx * dx + dy * dy)
    t = np.arctan2(dy, dx)
    r_t = radius * (1 + amplitude * np.sin(waves * t + phase))
    dr_dt = radius * amplitude * waves * np.cos(waves * t + phase)
    # First-order distance to a polar curve: radial gap divided by the slope of the curve.
    return (rho - r_t) / np.sqrt(1 + (dr_dt / np.maximum(rho, 1.0)) ** 2)


def sdf_ring(yy: Array, xx: Array, cy: float, cx: float, radius: float, width: float) -> Array:
    """A circular ring of the given centre-line radius and width."""
    dx, dy = xx - cx, yy - cy
    return np.abs(np.sqrt(dx * dx + dy * dy) - radius) - width / 2


def sdf_bar(yy: Array, xx: Array, cy: float, cx: float, theta: float, length: float, width: float) -> Array:
    """A rectangle centred at (cy, cx), its long side along theta (box distance, exact along the sides)."""
    u, v = _rotate(yy, xx, cy, cx, theta)
    return np.maximum(np.abs(u) - length / 2, np.abs(v) - width / 2)


def sdf_polygon(yy: Array, xx: Array, vertices: Array) -> Array:
    """Exact signed distance to a closed polygon with vertices (n, 2) as (y, x); inside by the even-odd rule."""
    p = np.stack([yy, xx], axis=-1)[..., None, :]  # (h, w, 1, 2)
    a, b = vertices, np.roll(vertices, -1, axis=0)  # (n, 2) edge starts and ends
    ab = b - a
    ap = p - a
    t = np.clip((ap * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
    dist = np.sqrt(((ap - t[..., None] * ab) ** 2).sum(-1)).min(-1)
    # Crossings of a ray towards +x for the inside test.
    ay, ax, by, bx = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
    y = yy[..., None]
    straddles = (ay <= y) != (by <= y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = ax + (y - ay) * (bx - ax) / (by - ay)
    inside = (straddles & (xx[..., None] < x_cross)).sum(-1) % 2 == 1
    return np.where(inside, -dist, dist)


def star_vertices(cy: float, cx: float, outer: float, inner: float, points: int, theta: float) -> Array:
    """(2 * points, 2) (y, x) vertices alternating between the outer and inner radius."""
    angles = theta + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([cy + radii * np.sin(angles), cx + radii * np.cos(angles)], axis=-1)


def _segment_distance(py: Array, px: Array, a: Array, b: Array) -> Array:
    """Distance from points (py, px) (h, w) to segments a -> b given per point as (h, w, 2) (y, x) arrays."""
    aby, abx = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
    apy, apx = py - a[..., 0], px - a[..., 1]
    t = np.clip((apy * aby + apx * abx) / np.maximum(aby * aby + abx * abx, 1e-12), 0.0, 1.0)
    return np.hypot(apy - t * aby, apx - t * abx)


def sdf_star(yy: Array, xx: Array, cy: float, cx: float, vertices: Array, theta: float) -> Array:
    """Signed distance to a star polygon (vertices from `star_vertices` with the same theta), in O(pixels).

    The star is star-shaped from its centre, so the pixel's angle picks the edge its ray crosses: the pixel is
    inside iff it lies on the centre's side of that edge, and only that edge and its two neighbours can be
    the nearest (exact wherever it matters, i.e. within a few pixels of the outline; `sdf_polygon` checks
    every edge and is the reference for this in the tests).
    """
    n = len(vertices)
    angle = np.mod(np.arctan2(yy - cy, xx - cx) - theta, 2 * np.pi)
    k = np.minimum((angle / (2 * np.pi / n)).astype(np.int64), n - 1)
    a, b = vertices[k], vertices[(k + 1) % n]
    cross_p = (b[..., 1] - a[..., 1]) * (yy - a[..., 0]) - (b[..., 0] - a[..., 0]) * (xx - a[..., 1])
    cross_c = (b[..., 1] - a[..., 1]) * (cy - a[..., 0]) - (b[..., 0] - a[..., 0]) * (cx - a[..., 1])
    inside = (cross_p > 0) == (cross_c > 0)
    dist = np.minimum(
        _segment_distance(yy, xx, a, b),
        np.minimum(
            _segment_distance(yy, xx, vertices[(k - 1) % n], a),
            _segment_distance(yy, xx, b, vertices[(k + 2) % n]),
        ),
    )
    return np.where(inside, -dist, dist)


def sdf_leaf(yy: Array, xx: Array, cy: float, cx: float, theta: float, length: float, width: float) -> Array:
    """A vesica (lens: the intersection of two discs) with pointed tips, long axis along theta."""
    u, v = _rotate(yy, xx, cy, cx, theta)
    half_l, half_w = length / 2, width / 2
    # Circle through the tips (+-half_l, 0) and the side point (0, half_w), centred on the minor axis.
    radius = (half_l**2 + half_w**2) / (2 * half_w)
    offset = radius - half_w
    d1 = np.sqrt(u * u + (v - offset) ** 2) - radius
    d2 = np.sqrt(u * u + (v + offset) ** 2) - radius
    return np.maximum(d1, d2)


# --------------------------------------------------------------------------------------------------------
# Rendering


def _hsv_colour(rng: np.random.Generator, hue: float) -> np.ndarray:
    h = ((hue + rng.uniform(-8, 8)) % 360) / 360
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.95)), dtype=np.float32) * 255


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates yy, xx float32 (size, size); cached, never written to."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def render_background(rng: np.random.Generator, size: int) -> Array:
    """A nearly grey textured background float32 (size, size, 3): smooth blotches, one fine periodic texture
    (stripes or checks, 3-10 px period) and a faint tint (pixel noise is added over the finished image)."""
    yy, xx = _grid(size)
    coarse = rng.uniform(-1, 1, size=(6, 6)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
    grey = np.float32(rng.uniform(70, 180)) + np.float32(28) * blotches
    period = np.float32(rng.uniform(3, 10))
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        phase = xx * np.float32(np.cos(angle) * 2 * np.pi) + yy * np.float32(np.sin(angle) * 2 * np.pi)
        fine = np.sin(phase / period)
    else:
        parity = ((xx / period).astype(np.int32) + (yy / period).astype(np.int32)) & 1
        fine = parity.astype(np.float32) * 2 - 1
    grey += np.float32(rng.uniform(6, 18)) * fine
    tint = rng.uniform(-6, 6, size=3).astype(np.float32)
    return grey[..., None] + tint


def _bbox(cy: float, cx: float, reach: float, size: int) -> tuple[slice, slice] | None:
    y0, y1 = max(int(cy - reach) - 1, 0), min(int(cy + reach) + 2, size)
    x0, x1 = max(int(cx - reach) - 1, 0), min(int(cx + reach) + 2, size)
    return (slice(y0, y1), slice(x0, x1)) if y0 < y1 and x0 < x1 else None


def _paint(
    image: np.ndarray,
    mask: np.ndarray | None,
    window: tuple[slice, slice],
    distance: np.ndarray,
    colour: np.ndarray,
    label: int,
) -> None:
    """Alpha-blend `colour` ((h, w, 3) or (3,)) into `image[window]` with anti-aliased coverage of
    `distance`, and set `mask[window]` to `label` where distance < 0."""
    alpha = np.clip(0.5 - distance, 0.0, 1.0)[..., None]
    region = image[window]
    region += alpha * (colour - region)
    if mask is not None:
        mask[window][distance < 0] = label


def _shape(rng: np.random.Generator, cls: int, size: int) -> tuple[float, float, float, Callable]:
    """(cy, cx, reach, distance function of (yy, xx)) for one random object of class `cls`."""
    s = size / 256  # sizes below are for 256 x 256 images
    cy, cx = rng.uniform(0.08, 0.92, size=2) * size
    if cls == 1:  # wavy disc
        radius = rng.uniform(14, 42) * s
        waves, amp, phase = int(rng.integers(3, 7)), rng.uniform(0.0, 0.18), rng.uniform(0, 2 * np.pi)

        def disc(yy: Array, xx: Array) -> Array:
            return sdf_wavy_disc(yy, xx, cy, cx, radius, waves, amp, phase)

        return cy, cx, radius * (1 + amp) + 1, disc
    if cls == 2:  # one or two concentric thin rings
        radius, width = rng.uniform(12, 50) * s, rng.uniform(2, 4)
        second = radius + (1 if rng.random() < 0.5 else -1) * (width + rng.uniform(3, 6))
        two = rng.random() < 0.4 and second > 6

        def ring(yy: Array, xx: Array) -> Array:
            d = sdf_ring(yy, xx, cy, cx, radius, width)
            return np.minimum(d, sdf_ring(yy, xx, cy, cx, second, width)) if two else d

        return cy, cx, max(radius, second) + width, ring
    if cls == 3:  # star with thin spikes
        outer = rng.uniform(18, 50) * s
        inner, points = outer * rng.uniform(0.22, 0.45), int(rng.integers(5, 10))
        theta = rng.uniform(0, np.pi)
        verts = star_vertices(cy, cx, outer, inner, points, theta)
        return cy, cx, outer + 1, lambda yy, xx: sdf_star(yy, xx, cy, cx, verts, theta)
    if cls == 4:  # group of 1-3 parallel thin bars
        theta, length, width = rng.uniform(0, np.pi), rng.uniform(50, 160) * s, rng.uniform(2, 4)
        count, gap = int(rng.integers(1, 4)), width + rng.uniform(5, 9)
        offsets = (np.arange(count) - (count - 1) / 2) * gap
        normal = np.array([np.cos(theta), -np.sin(theta)])  # (dy, dx) across the bars

        def bars(yy: Array, xx: Array) -> Array:
            centres = [(cy + o * normal[0], cx + o * normal[1]) for o in offsets]
            return np.min([sdf_bar(yy, xx, y, x, theta, length, width) for y, x in centres], axis=0)

        return cy, cx, length / 2 + count * gap + 2, bars
    # leaf: a pointed lens with a thin stem at one tip
    theta, length = rng.uniform(0, 2 * np.pi), rng.uniform(36, 90) * s
    width = length * rng.uniform(0.3, 0.5)
    stem = rng.uniform(8, 20) * s
    tip_y, tip_x = cy + np.sin(theta) * (length / 2 + stem / 2), cx + np.cos(theta) * (length / 2 + stem / 2)

    def leaf(yy: Array, xx: Array) -> Array:
        lens = sdf_leaf(yy, xx, cy, cx, theta, length, width)
        return np.minimum(lens, sdf_bar(yy, xx, tip_y, tip_x, theta, stem + 2, 2.0))

    return cy, cx, length / 2 + stem + 2, leaf


def _texture(cls: int, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float) -> np.ndarray:
    """Brightness factor (h, w) inside an object: radial shading for discs, dark veins for leaves, faint
    stripes for stars, flat otherwise."""
    if cls == 1:
        rho2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / max(float(((yy - cy) ** 2 + (xx - cx) ** 2).max()), 1.0)
        return 1.15 - 0.35 * rho2
    if cls == 5:
        return 1.0 - 0.25 * (np.abs(np.sin((xx - cx) * 0.45 + (yy - cy) * 0.3)) > 0.93)
    if cls == 3:
        return 1.0 + 0.08 * np.sin((xx + yy) * 0.8)
    return np.ones_like(yy)


def _scratches(rng: np.random.Generator, image: np.ndarray, size: int) -> None:
    """Thin grey lines on the background (labelled background): thin is not the same as "object"."""
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0, size, size=2)
        theta, length, width = rng.uniform(0, np.pi), rng.uniform(20, 120), rng.uniform(1, 3)
        window = _bbox(cy, cx, length / 2 + 2, size)
        if window is None:
            continue
        yy, xx = (grid[window] for grid in _grid(size))
        grey = np.full(3, rng.uniform(40, 220), np.float32)
        _paint(image, None, window, sdf_bar(yy, xx, cy, cx, theta, length, width), grey, 0)


def render_demo_sample(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One demo image uint8 (size, size, 3) RGB and its mask uint8 (size, size) of class indices 0..5."""
    image = render_background(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    _scratches(rng, image, size)
    for _ in range(int(rng.integers(6, 12))):
        cls = int(rng.choice(_OBJECT_CLASSES, p=_OBJECT_PROBABILITIES))
        cy, cx, reach, distance_fn = _shape(rng, cls, size)
        window = _bbox(cy, cx, reach, size)
        if window is None:
            continue
        yy, xx = (grid[window] for grid in _grid(size))
        colour = _hsv_colour(rng, CLASS_HUES[cls])
        shaded = _texture(cls, yy, xx, cy, cx)[..., None] * colour
        _paint(image, mask, window, distance_fn(yy, xx), shaded, cls)
    # Uniform noise of standard deviation 6 (uniform: a third of the cost of normal draws, looks the same).
    image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(6 * 12**0.5)
    return np.clip(image + 0.5, 0, 255, out=image).astype(np.uint8), mask


# --------------------------------------------------------------------------------------------------------
# Writing the VOC tree


def _mask_png(mask: np.ndarray) -> bytes:
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(DEMO_PALETTE)] = DEMO_PALETTE
    palette[IGNORE_INDEX] = (255, 255, 255)
    image = Image.fromarray(mask)
    image.putpalette(palette.ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


def demo_ids(num_images: int) -> dict[str, list[str]]:
    """Split name -> ids: every fifth image (index % 5 == 4) is val, the rest train."""
    ids = [f"demo_{i:05d}" for i in range(num_images)]
    return {"train": [x for i, x in enumerate(ids) if i % 5 != 4], "val": ids[4::5]}


DEMO_NUM_IMAGES = 300
"""Images `make_demo_dataset` writes by default (train and val together; `demo_ids` splits them)."""


def make_demo_dataset(out: str | Path, num_images: int = DEMO_NUM_IMAGES, seed: int = 0, size: int = 256) -> Path:
    """Write the demo dataset in the VOC layout at `out` (a VOC2012-like folder) and return `out`.

    Image `i` depends only on (seed, i, size). `out/demo.json` records the parameters: when it already
    matches, nothing is regenerated; a folder made by an earlier call with other parameters is replaced;
    any other existing non-empty folder is refused (FileExistsError), so nothing foreign is ever deleted.
    The tree is written into a temporary sibling folder and renamed into place, so an interrupted call
    leaves no half-written dataset behind, and processes racing to make the same tree (e.g. several ranks)
    end up sharing one of them.
    """
    if num_images < 2:
        raise ValueError(f"num_images must be at least 2 (train and val), got {num_images}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    out = Path(out)
    params = {"format_version": FORMAT_VERSION, "num_images": num_images, "seed": seed, "size": size}
    if _is_demo_tree(out, params):
        return out
    if out.exists() and not (out / "demo.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} exists and is not a demo dataset (no demo.json); expected a new or empty folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_tree(tmp, num_images, seed, size)
        (tmp / "demo.json").write_text(json.dumps(params, indent=2) + "\n")
        if not _is_demo_tree(out, params):  # else another process finished the same tree meanwhile
            if out.exists():  # an empty folder or a demo tree with other parameters (checked above)
                shutil.rmtree(out)
            os.replace(tmp, out)
    except OSError:
        if not _is_demo_tree(out, params):  # losing a rename race to an identical tree is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def demo_parameters(out: str | Path) -> dict[str, int]:
    """The parameters a demo dataset at `out` was made with ({} when there is none)."""
    try:
        return dict(json.loads((Path(out) / "demo.json").read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _is_demo_tree(out: Path, params: dict[str, int]) -> bool:
    marker = out / "demo.json"
    try:
        return marker.is_file() and json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def _write_tree(root: Path, num_images: int, seed: int, size: int) -> None:
    # Files go into a private temporary folder renamed as a whole afterwards: no per-file atomic writes needed.
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for i in range(num_images):
        image, mask = render_demo_sample(np.random.default_rng([seed, i]), size)
        (root / "JPEGImages" / f"demo_{i:05d}.jpg").write_bytes(_jpeg(image))
        (root / "SegmentationClass" / f"demo_{i:05d}.png").write_bytes(_mask_png(mask))
    for split, ids in demo_ids(num_images).items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


__all__ = [
    "DemoShapes",
    "DEMO_CLASSES",
    "DEMO_PALETTE",
    "CLASS_HUES",
    "render_demo_sample",
    "sdf_star",
    "sdf_polygon",
    "star_vertices",
    "make_demo_dataset",
    "demo_ids",
    "DEMO_NUM_IMAGES",
]
