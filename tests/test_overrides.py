"""`--set section.field=value`: parsed to the field's type, checked, refused with a sentence, recorded in the
run's records, used by the training and the evaluation, and checked on --resume. TensorBoard events of a run,
read back with TensorBoard's own reader after a training and after a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pointrend_core.__main__ import main
from pointrend_core.config import DEMO, default_run_dir
from pointrend_core.overrides import apply_overrides, parse_override
from synthetic_trees import write_folder_tree

FAST = ["--batch-size", "2", "--max-iters", "2", "--device", "cpu", "--workers", "0", "--no-progress",
        "--log-every", "1"]


@pytest.mark.parametrize(("text", "expected"), [
    ("data.crop_size=384,384", ("data", "crop_size", (384, 384))),
    ("data.base_size=1024x768", ("data", "base_size", (1024, 768))),
    ("data.scale_range=0.75,1.5", ("data", "scale_range", (0.75, 1.5))),
    ("schedule.lr=0.005", ("schedule", "lr", 0.005)),
    ("model.subdivision_num_points=4096", ("model", "subdivision_num_points", 4096)),
    ("eval.flip=true", ("eval", "flip", True)),
    ("eval.flip=off", ("eval", "flip", False)),
    ("eval.scales=0.5,1.0,1.75", ("eval", "scales", (0.5, 1.0, 1.75))),
    ("eval.slide_crop=none", ("eval", "slide_crop", None)),
    ("eval.mode=slide", ("eval", "mode", "slide")),
    ("data.train_split=train_small", ("data", "train_split", "train_small")),
])
def test_each_type_is_parsed(text, expected) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("crop=1", "expected SECTION.FIELD=VALUE with SECTION one of model, data, schedule, eval"),
    ("optim.lr=1", "unknown section 'optim'; expected one of model, data, schedule, eval"),
    ("data.crop=1", "data has no field 'crop'; its fields: default_root, train_split, val_split, crop_size"),
    ("data.crop_size=384", "data.crop_size takes 2 comma-separated integers; got 1 value(s) in '384'"),
    ("schedule.epochs=ten", "schedule.epochs takes an integer; got 'ten'"),
    ("eval.flip=maybe", "eval.flip takes true or false; got 'maybe'"),
    ("eval.mode=tiles", "eval.mode takes one of 'whole', 'slide'; got 'tiles'"),
    ("model.num_classes=3", "model.num_classes cannot be set (the classes come from the dataset)"),
    ("schedule.lr=-1", "schedule.lr must be a positive number, got -1.0"),
    ("data.crop_size=0,64", "data.crop_size must be two positive integers, got (0, 64)"),
    ("model.depth=42", "model.depth must be 18, 34, 50 or 101, got 42"),
    ("eval.mode=slide", "eval.slide_crop must be two positive integers (mode 'slide'), got None"),
])
def test_bad_overrides_are_refused_with_the_field_and_what_it_takes(text, message) -> None:
    with pytest.raises(ValueError) as error:
        apply_overrides(DEMO, [text])
    assert message in str(error.value) and str(error.value).startswith(f"--set {text!r}")


def test_overrides_are_recorded_once_per_field_and_name_their_own_run_folder() -> None:
    row = apply_overrides(DEMO, ["schedule.lr=0.01", "data.crop_size=64x64", "schedule.lr=0.02"])
    assert row.schedule.lr == 0.02 and row.overrides == ("data.crop_size=64,64", "schedule.lr=0.02")
    assert apply_overrides(DEMO, []) is DEMO and default_run_dir(DEMO) == Path("runs/demo")
    assert default_run_dir(row).name.startswith("demo+") and default_run_dir(row) != default_run_dir(
        apply_overrides(DEMO, ["schedule.lr=0.03"]))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_folder_tree(tmp_path_factory.mktemp("data") / "shapes", num_images=4, size=(64, 96),
                             splits={"train": [0, 1, 2], "val": [3]})


def test_a_folder_dataset_trains_and_evaluates_at_the_overridden_sizes(shapes, tmp_path, monkeypatch, capsys) -> None:
    import pointrend_core.engine.evaluate as evaluate_module
    import pointrend_core.engine.train as train_module
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen: dict[str, set] = {"train": set(), "test": set()}
    step, predict = train_module.train_step, evaluate_module.predict
    monkeypatch.setattr(train_module, "train_step",
                        lambda model, opt, scaler, images, *a, **k: seen["train"].add(tuple(images.shape[-2:]))
                        or step(model, opt, scaler, images, *a, **k))
    monkeypatch.setattr(evaluate_module, "predict",
                        lambda model, image, *a, **k: seen["test"].add(tuple(image.shape[-2:])) or predict(model, image, *a, **k))
    out = tmp_path / "run"
    args = ["train", "--config", "demo", "--dataset", "folder", "--data-root", str(shapes), "--out", str(out), *FAST,
            "--set", "data.crop_size=48,40", "--set", "data.base_size=96,64", "--evaluate"]
    assert main(args) == 0
    assert seen["train"] == {(48, 40)} and seen["test"] == {(64, 96)}
    overrides = ["schedule.batch_size=2", "data.crop_size=48,40", "data.base_size=96,64"]
    assert json.loads((out / "train.json").read_text())["config"]["overrides"] == overrides
    assert json.loads((out / "run.json").read_text())["config"]["overrides"] == overrides

    # TensorBoard: every logged step once, the evaluation's scores and its sample predictions.
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"loss/total", "loss/coarse", "loss/point", "lr", "speed/images_per_second", "speed/data_wait_seconds",
            "eval/mIoU_refined", "eval/mIoU_coarse", "eval/boundary_IoU_refined", "eval/boundary_IoU_coarse"} <= set(
        tags["scalars"])
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("loss/total")] == pytest.approx([x["loss"] for x in lines if "loss" in x])
    [image] = events.Images("eval/predictions")
    assert image.step == 2 and (image.height, image.width) == (64, 4 * 96)

    # --resume: a training override that differs is refused, naming it; an evaluation one is fine.
    capsys.readouterr()
    assert main([*args, "--max-iters", "4", "--resume", "--set", "data.crop_size=32,32"]) == 1
    assert "data.crop_size=48,40 (not 32,32). Drop the override" in capsys.readouterr().err
    assert main([*args[:-1], "--max-iters", "4", "--resume", "--set", "eval.flip=true"]) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4]  # the same curve, no step twice


def test_a_run_with_overrides_is_shown_beside_its_row_never_as_it(tmp_path) -> None:
    from pointrend_core.workbook.runs_table import results_table

    metrics = {name: {"mIoU": value, "boundary_mIoU": value - 10} for name, value in (("refined", 70.0), ("coarse", 65.0))}
    for folder, overrides in (("pointrend_r50_voc+1a2b3c", ["data.crop_size=384,384"]),):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "run.json").write_text(json.dumps(
            {"row": "pointrend_r50_voc", "metrics": metrics, "config": {"overrides": overrides}}))
    table = results_table(tmp_path)
    assert table.loc["pointrend_r50_voc", "reproduced mIoU (refined)"] == "not run"  # not the published row's run
    line = table.loc["pointrend_r50_voc [data.crop_size=384,384]"]
    assert line["reproduced mIoU (refined)"] == 70.0 and line["published mIoU"] == "—" and line["verdict"] == "—"


def test_a_test_size_far_below_the_images_is_said_once(tmp_path, capsys) -> None:
    big = write_folder_tree(tmp_path / "big", num_images=3, size=(600, 800), splits={"train": [0, 1], "val": [2]})
    args = ["train", "--config", "demo", "--dataset", "folder", "--data-root", str(big), "--out", str(tmp_path / "r"),
            *FAST, "--max-iters", "1", "--set", "data.crop_size=64,64"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("note: the images of") == 1
    assert ("are about 800 x 600 pixels, but the recipe tests at base_size 256 x 256 (long x short side), half their "
            "size or less; to segment them at their own resolution pass --set data.base_size=800,600") in err


def test_both_row_notebooks_declare_the_overrides_parameter() -> None:
    """`workbook run --set` reaches the notebooks only if papermill can read the parameter (a comment with '='
    in it once hid it)."""
    from pointrend_core.workbook.runner import NOTEBOOKS_DIR, POINT_SELECTION, TRAIN_EVALUATE, declared_parameters

    for name in (TRAIN_EVALUATE, POINT_SELECTION):
        assert "overrides" in declared_parameters(NOTEBOOKS_DIR / name), name
