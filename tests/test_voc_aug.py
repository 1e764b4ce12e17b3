"""`prepare_voc_aug`: the trainaug split and SegmentationClassAug from VOC2012 + SBD in their official formats.

The tiny trees below overlap the four split lists in every way that matters:

| id          | VOC split | SBD split | label from | in trainaug |
|-------------|-----------|-----------|------------|-------------|
| 2007_000032 | train     | -         | VOC        | yes         |
| 2007_000039 | train     | train     | VOC (wins) | yes         |
| 2008_000008 | -         | train     | SBD        | yes         |
| 2008_000019 | -         | train     | SBD        | yes         |
| 2008_000015 | -         | val       | SBD        | yes         |
| 2007_000033 | val       | -         | VOC        | no          |
| 2007_000042 | val       | train     | VOC        | no (VOC val wins over SBD train) |
| 2007_000061 | val       | val       | VOC        | no          |
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from pointrend_core.data.datasets import VOCSegmentation
from pointrend_core.data.validate import check_dataset
from pointrend_core.data.voc_aug import VocAugSummary, prepare_voc_aug, trainaug_ids
from synthetic_trees import VOC_FULL_PALETTE, blob_mask, random_image

VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033", "2007_000042", "2007_000061"]
SBD_TRAIN = ["2007_000039", "2007_000042", "2008_000008", "2008_000019"]
SBD_VAL = ["2007_000061", "2008_000015"]
TRAINAUG = ["2007_000032", "2007_000039", "2008_000008", "2008_000015", "2008_000019"]
FROM_VOC = {"2007_000032", "2007_000039", "2007_000033", "2007_000042", "2007_000061"}
FROM_SBD = {"2008_000008", "2008_000015", "2008_000019"}
ALL_IDS = sorted(FROM_VOC | FROM_SBD)
IGNORE = 255  # void in VOC labels

# Sizes differ between ids (portrait and landscape, like VOC's), so that a mix-up of ids shows as a size error.
SIZES = {image_id: (24 + 4 * (n % 3), 32 - 4 * (n % 2)) for n, image_id in enumerate(ALL_IDS)}


# --------------------------------------------------------------------------------------------------------
# Trees in the official formats


def _voc_palette_png(mask: np.ndarray) -> bytes:
    """A VOC SegmentationClass file: a palette ('P') PNG whose pixel values are the class indices, with the
    256-entry VOC bitwise colour map."""
    image = Image.fromarray(mask)
    image.putpalette(VOC_FULL_PALETTE.ravel().tolist())
    assert image.mode == "P"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(random_image(rng, size)).save(path, format="JPEG", quality=90)


def write_sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """An SBD cls/<id>.mat as MATLAB stores it: a 1x1 struct GTcls with Segmentation (uint8 HxW),
    Boundaries (a 20x1 cell of sparse logical HxW matrices, one per class) and CategoriesPresent (a double
    column vector of the class ids present), in a compressed MAT v5 file."""
    boundaries = np.empty((20, 1), dtype=object)
    for c in range(1, 21):
        inside = segmentation == c
        edge = inside & ~np.pad(inside, 1)[2:, 1:-1]  # the class's lower edge: enough to be a real boundary map
        boundaries[c - 1, 0] = scipy.sparse.csc_matrix(edge)
    present = np.unique(segmentation[(segmentation > 0) & (segmentation <= 20)]).astype(np.float64)
    gt = {
        "Segmentation": segmentation.astype(np.uint8),
        "Boundaries": boundaries,
        "CategoriesPresent": present[:, None],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"GTcls": gt}, do_compression=True, format="5")


def _lines(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def build_trees(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(voc_root, sbd_root, VOC labels by id, SBD labels by id).

    VOC labels are blobs of classes 1..20 with a 3-px void (255) outline; SBD labels of the same ids are
    different (a rectangle of one class, no void, as SBD has none), so the tests can tell which was used.
    """
    rng = np.random.default_rng(7)
    voc, sbd = tmp_path / "VOCdevkit" / "VOC2012", tmp_path / "benchmark_RELEASE" / "dataset"
    voc_labels: dict[str, np.ndarray] = {}
    sbd_labels: dict[str, np.ndarray] = {}
    for n, image_id in enumerate(ALL_IDS):
        size = SIZES[image_id]
        _jpeg(voc / "JPEGImages" / f"{image_id}.jpg", size, rng)  # VOC2012 holds every SBD image too
        if image_id in VOC_TRAIN + VOC_VAL:
            voc_labels[image_id] = blob_mask(rng, size, values=range(1, 21), background=0, num_blobs=3, outline=3)
            (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            (voc / "SegmentationClass" / f"{image_id}.png").write_bytes(_voc_palette_png(voc_labels[image_id]))
        if image_id in SBD_TRAIN + SBD_VAL:
            seg = np.zeros(size, dtype=np.uint8)
            seg[2 : size[0] // 2, 3 : size[1] - 3] = 1 + n  # class 1 + n: one class per id
            seg[size[0] // 2 :, : size[1] // 3] = 20
            sbd_labels[image_id] = seg
            write_sbd_mat(sbd / "cls" / f"{image_id}.mat", seg)
            _jpeg(sbd / "img" / f"{image_id}.jpg", size, rng)
            inst = {"Segmentation": (seg > 0).astype(np.uint8), "Categories": np.array([[1.0 + n], [20.0]])}
            (sbd / "inst").mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(sbd / "inst" / f"{image_id}.mat", {"GTinst": inst}, do_compression=True)
    _jpeg(voc / "JPEGImages" / "2008_000001.jpg", (20, 20), rng)  # a detection-only image: in no split
    _lines(voc / "ImageSets" / "Segmentation" / "train.txt", VOC_TRAIN)
    _lines(voc / "ImageSets" / "Segmentation" / "val.txt", VOC_VAL)
    _lines(voc / "ImageSets" / "Segmentation" / "trainval.txt", sorted(VOC_TRAIN + VOC_VAL))
    _lines(sbd / "train.txt", SBD_TRAIN)
    _lines(sbd / "val.txt", SBD_VAL)
    return voc, sbd, voc_labels, sbd_labels


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    return build_trees(tmp_path)


def _expected(image_id: str, voc_labels: dict[str, np.ndarray], sbd_labels: dict[str, np.ndarray]) -> np.ndarray:
    return voc_labels[image_id] if image_id in voc_labels else sbd_labels[image_id]


def _aug_png(voc: Path, image_id: str) -> np.ndarray:
    with Image.open(voc / "SegmentationClassAug" / f"{image_id}.png") as im:
        assert im.mode == "L"
        return np.array(im)


# --------------------------------------------------------------------------------------------------------
# The split and the labels


def test_trainaug_ids_is_the_union_minus_voc_val() -> None:
    assert trainaug_ids(VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL) == TRAINAUG
    assert trainaug_ids(["b", "a"], ["c"], ["c", "d"], ["a"]) == ["a", "b", "d"]


def test_writes_trainaug_and_every_label(trees) -> None:
    voc, sbd, voc_labels, sbd_labels = trees
    summary = prepare_voc_aug(voc, sbd, progress=False)

    assert (voc / "ImageSets" / "Segmentation" / "trainaug.txt").read_text() == (
        "2007_000032\n2007_000039\n2008_000008\n2008_000015\n2008_000019\n"
    )
    assert sorted(p.stem for p in (voc / "SegmentationClassAug").glob("*.png")) == ALL_IDS  # trainaug + val
    for image_id in ALL_IDS:
        np.testing.assert_array_equal(_aug_png(voc, image_id), _expected(image_id, voc_labels, sbd_labels))
    # In both datasets, VOC's label (with its void outline) is used, not SBD's rectangle.
    assert IGNORE in _aug_png(voc, "2007_000039") and IGNORE in _aug_png(voc, "2007_000042")
    assert not np.array_equal(_aug_png(voc, "2007_000039"), sbd_labels["2007_000039"])
    np.testing.assert_array_equal(_aug_png(voc, "2008_000008"), sbd_labels["2008_000008"])
    assert set(np.unique(_aug_png(voc, "2008_000008")).tolist()) == {0, 6, 20}  # 6 = 1 + its index in ALL_IDS

    assert summary == VocAugSummary(
        voc_root=voc,
        sbd_root=sbd,
        from_sbd=3,
        from_voc=5,
        up_to_date=0,
        split_size=5,
        val_size=3,
        split_written=True,
        written=summary.written,
    )
    assert sorted(summary.written) == sorted(
        [voc / "SegmentationClassAug" / f"{i}.png" for i in ALL_IDS] + [voc / "ImageSets/Segmentation/trainaug.txt"]
    )
    # The inputs are untouched: no images copied, SegmentationClass left as it was (palette PNGs).
    assert sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg")) == sorted(ALL_IDS + ["2008_000001"])
    with Image.open(voc / "SegmentationClass" / "2007_000032.png") as im:
        assert im.mode == "P"



def test_second_run_writes_nothing(trees) -> None:
    voc, sbd, _, _ = trees
    prepare_voc_aug(voc, sbd, progress=False)
    files = sorted((voc / "SegmentationClassAug").glob("*.png")) + [voc / "ImageSets/Segmentation/trainaug.txt"]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}

    again = prepare_voc_aug(voc, sbd, progress=False)

    assert again.written == () and not again.split_written
    assert (again.from_sbd, again.from_voc, again.up_to_date, again.split_size) == (0, 0, 8, 5)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    assert "nothing to write" in again.describe()
    assert list((voc / "SegmentationClassAug").glob(".*")) == []  # no temporary files left behind


def test_only_changed_or_missing_labels_are_rewritten(trees) -> None:
    voc, sbd, voc_labels, sbd_labels = trees
    prepare_voc_aug(voc, sbd, progress=False)
    (voc / "SegmentationClassAug" / "2008_000015.png").unlink()
    stale = voc / "SegmentationClassAug" / "2007_000032.png"
    stale.write_bytes(_voc_palette_png(np.zeros(SIZES["2007_000032"], dtype=np.uint8)))
    # The same values in another encoding (a palette PNG) count as up to date.
    same = voc / "SegmentationClassAug" / "2008_000019.png"
    same.write_bytes(_voc_palette_png(sbd_labels["2008_000019"]))

    summary = prepare_voc_aug(voc, sbd, progress=False)

    assert sorted(summary.written) == [stale, voc / "SegmentationClassAug" / "2008_000015.png"]
    assert (summary.from_sbd, summary.from_voc, summary.up_to_date) == (1, 1, 6)
    np.testing.assert_array_equal(_aug_png(voc, "2007_000032"), voc_labels["2007_000032"])


def test_dataset_reads_trainaug_and_check_data_passes(trees) -> None:
    voc, sbd, voc_labels, sbd_labels = trees
    prepare_voc_aug(voc, sbd, progress=False)

    dataset = VOCSegmentation(voc, "trainaug")
    assert dataset.ids == TRAINAUG
    for i, image_id in enumerate(dataset.ids):
        assert dataset.mask_path(i) == voc / "SegmentationClassAug" / f"{image_id}.png"
        image, mask = dataset[i]
        assert tuple(image.shape) == (3, *SIZES[image_id])
        np.testing.assert_array_equal(mask.numpy(), _expected(image_id, voc_labels, sbd_labels))
    assert check_dataset(VOCSegmentation, voc, "trainaug") == []
    assert check_dataset(VOCSegmentation, voc) == []  # every split on disk, val from SegmentationClass


def test_summary_report(trees) -> None:
    voc, sbd, _, _ = trees
    text = str(prepare_voc_aug(voc, sbd, progress=False))
    assert text.startswith("prepare-voc-aug: wrote 8 label PNGs to ")
    assert "(3 from SBD cls/*.mat, 5 from VOC SegmentationClass), 0 already up to date" in text
    assert "trainaug has 5 images and val 3 (the full official downloads give 10,582)" in text
    assert f"check-data --dataset voc --root {voc} --split trainaug" in text
    assert "\n" not in text


def test_progress_bar_goes_to_stderr(trees, capsys) -> None:
    voc, sbd, _, _ = trees
    prepare_voc_aug(voc, sbd, progress=True)
    captured = capsys.readouterr()
    assert "prepare-voc-aug SegmentationClassAug" in captured.err and "8/8" in captured.err
    assert captured.out == ""


# --------------------------------------------------------------------------------------------------------
# Errors: each names the file or folder and what was expected; missing inputs stop the run before writing


def _no_output(voc: Path) -> bool:
    return not (voc / "SegmentationClassAug").exists() and not (voc / "ImageSets/Segmentation/trainaug.txt").exists()


def test_missing_cls_folder(trees) -> None:
    voc, sbd, _, _ = trees
    (sbd / "cls").rename(sbd / "cls_moved")
    with pytest.raises(FileNotFoundError, match=r"SBD class-label folder .*dataset/cls does not exist.*cls/<id>\.mat"):
        prepare_voc_aug(voc, sbd, progress=False)
    assert _no_output(voc)


def test_roots_one_level_up_get_a_hint(trees) -> None:
    voc, sbd, _, _ = trees
    sbd_hint = r"SBD class-label folder .*benchmark_RELEASE/cls .*did you mean .*benchmark_RELEASE/dataset\?"
    with pytest.raises(FileNotFoundError, match=sbd_hint):
        prepare_voc_aug(voc, sbd.parent, progress=False)
    voc_hint = r"VOC image folder .*VOCdevkit/JPEGImages .*did you mean .*VOCdevkit/VOC2012\?"
    with pytest.raises(FileNotFoundError, match=voc_hint):
        prepare_voc_aug(voc.parent, sbd, progress=False)


def test_missing_split_list(trees) -> None:
    voc, sbd, _, _ = trees
    (sbd / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"SBD val split list .*dataset/val\.txt does not exist"):
        prepare_voc_aug(voc, sbd, progress=False)


def test_missing_image_and_label_files_are_listed(trees) -> None:
    voc, sbd, _, _ = trees
    (voc / "JPEGImages" / "2008_000015.jpg").unlink()  # an SBD-only id: SBD's img/ copy is not used
    (sbd / "cls" / "2008_000019.mat").unlink()
    with pytest.raises(FileNotFoundError) as info:
        prepare_voc_aug(voc, sbd, progress=False)
    message = str(info.value)
    assert message.startswith("2 input files do not exist: ")
    assert str(voc / "JPEGImages" / "2008_000015.jpg") in message
    assert str(sbd / "cls" / "2008_000019.mat") in message
    assert "all in VOC2012's JPEGImages" in message
    assert _no_output(voc)


def test_voc_train_id_without_any_label(trees) -> None:
    voc, sbd, _, _ = trees
    (voc / "SegmentationClass" / "2007_000032.png").unlink()  # VOC train only: SBD cannot stand in
    with pytest.raises(FileNotFoundError, match=r"SegmentationClass/2007_000032\.png"):
        prepare_voc_aug(voc, sbd, progress=False)
    assert _no_output(voc)


def test_mat_without_gtcls(trees) -> None:
    voc, sbd, _, _ = trees
    bad = sbd / "cls" / "2008_000008.mat"
    (sbd / "inst" / "2008_000008.mat").replace(bad)  # an inst/ file (GTinst) in cls/
    with pytest.raises(ValueError, match=rf"SBD label {bad} has no variable 'GTcls' \(variables: GTinst\)"):
        prepare_voc_aug(voc, sbd, progress=False)


def test_gtcls_without_segmentation(trees) -> None:
    voc, sbd, _, _ = trees
    bad = sbd / "cls" / "2008_000008.mat"
    scipy.io.savemat(bad, {"GTcls": {"Boundaries": np.zeros((20, 1)), "CategoriesPresent": np.array([[4.0]])}})
    with pytest.raises(ValueError, match=r"GTcls has no field 'Segmentation' \(fields: Boundaries, CategoriesPresent"):
        prepare_voc_aug(voc, sbd, progress=False)


def test_not_a_mat_file(trees) -> None:
    voc, sbd, _, _ = trees
    bad = sbd / "cls" / "2008_000008.mat"
    bad.write_bytes(bad.read_bytes()[:150])  # truncated
    with pytest.raises(ValueError, match=rf"cannot read SBD label {bad} as a MATLAB file"):
        prepare_voc_aug(voc, sbd, progress=False)


def test_segmentation_of_another_size_than_the_jpeg(trees) -> None:
    voc, sbd, _, sbd_labels = trees
    h, w = SIZES["2008_000008"]
    write_sbd_mat(sbd / "cls" / "2008_000008.mat", sbd_labels["2008_000008"][:, :-1])
    with pytest.raises(ValueError, match=rf"is {w - 1}x{h} \(WxH\) but image .*JPEGImages/2008_000008\.jpg is {w}x{h}"):
        prepare_voc_aug(voc, sbd, progress=False)


def test_segmentation_not_a_2d_map(trees) -> None:
    voc, sbd, _, sbd_labels = trees
    rgb = np.stack([sbd_labels["2008_000008"]] * 3, axis=-1)  # e.g. a colour-coded map saved by mistake
    scipy.io.savemat(sbd / "cls" / "2008_000008.mat", {"GTcls": {"Segmentation": rgb, "CategoriesPresent": 6.0}})
    with pytest.raises(ValueError, match=r"GTcls.Segmentation is uint8 of shape \(\d+, \d+, 3\); expected a 2-D"):
        prepare_voc_aug(voc, sbd, progress=False)


def test_sbd_label_values_out_of_range(trees) -> None:
    voc, sbd, _, sbd_labels = trees
    seg = sbd_labels["2008_000008"].copy()
    seg[0, :5] = 21
    seg[1, :2] = 254
    write_sbd_mat(sbd / "cls" / "2008_000008.mat", seg)
    with pytest.raises(ValueError, match=r"2008_000008\.mat contains values 21 \(5 px\), 254 \(2 px\); expected VOC"):
        prepare_voc_aug(voc, sbd, progress=False)


def test_void_255_in_an_sbd_label_is_kept(trees) -> None:
    voc, sbd, _, sbd_labels = trees
    seg = sbd_labels["2008_000008"].copy()
    seg[0, :5] = 255
    write_sbd_mat(sbd / "cls" / "2008_000008.mat", seg)
    prepare_voc_aug(voc, sbd, progress=False)
    np.testing.assert_array_equal(_aug_png(voc, "2008_000008"), seg)


def test_voc_label_values_out_of_range(trees) -> None:
    voc, sbd, voc_labels, _ = trees
    mask = voc_labels["2007_000033"].copy()
    mask[-1, -3:] = 22
    bad = voc / "SegmentationClass" / "2007_000033.png"
    bad.write_bytes(_voc_palette_png(mask))
    with pytest.raises(ValueError, match=rf"label {bad} contains values 22 \(3 px\)"):
        prepare_voc_aug(voc, sbd, progress=False)


def test_rgb_voc_label_is_rejected(trees) -> None:
    voc, sbd, voc_labels, _ = trees
    bad = voc / "SegmentationClass" / "2007_000033.png"
    Image.fromarray(VOC_FULL_PALETTE[voc_labels["2007_000033"]]).save(bad)  # colour-coded, a common mistake
    with pytest.raises(ValueError, match=r"has PIL mode 'RGB'"):
        prepare_voc_aug(voc, sbd, progress=False)


def test_interrupted_run_resumes(trees, monkeypatch) -> None:
    """A failure half-way leaves only complete files; the next run writes the rest."""
    voc, sbd, _, _ = trees
    import pointrend_core.data.voc_aug as voc_aug

    real, calls = voc_aug.atomic_write_bytes, []

    def flaky(path: os.PathLike, data: bytes) -> Path:
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(voc_aug, "atomic_write_bytes", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_voc_aug(voc, sbd, progress=False)
    monkeypatch.setattr(voc_aug, "atomic_write_bytes", real)
    assert len(list((voc / "SegmentationClassAug").iterdir())) == 3
    summary = prepare_voc_aug(voc, sbd, progress=False)
    assert (summary.labels_written, summary.up_to_date) == (5, 3)
    assert check_dataset(VOCSegmentation, voc, "trainaug") == []


def test_cli_prepares_trainaug_then_check_data_passes(trees, capsys) -> None:
    from pointrend_core.__main__ import main

    voc, sbd, _, _ = trees
    assert main(["prepare-voc-aug", "--voc", str(voc), "--sbd", str(sbd), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("prepare-voc-aug: wrote 8 label PNGs") and "trainaug.txt (5 ids)" in printed
    assert main(["check-data", "--dataset", "voc", "--root", str(voc), "--split", "trainaug"]) == 0
    assert "trainaug 5 images" in capsys.readouterr().out
    (sbd / "cls").rename(sbd / "cls_moved")
    assert main(["prepare-voc-aug", "--voc", str(voc), "--sbd", str(sbd)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "cls" in error and "Traceback" not in error
