"""workbook tables, status and index: the model-zoo table and the index page from synthetic run.json / status.json files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pointrend_core.config import ROWS
from pointrend_core.workbook.html import write_index_html
from pointrend_core.workbook.status import RowStatus, read_status, read_statuses
from pointrend_core.workbook.runs_table import NOT_RUN, TABLE_COLUMNS, collect_runs, results_table
from pointrend_core.workbook.tables import format_duration, per_class_table, run_overview


def _metrics(miou: float, boundary: float, classes: list[str]) -> dict:
    """One output's metrics in evaluate_run's layout (percent; None where a class cannot be scored)."""
    per_class = {name: (miou if i else None) for i, name in enumerate(classes)}
    return {
        "mIoU": miou, "aAcc": 90.0, "mAcc": miou + 1.0,
        "IoU": per_class, "Acc": per_class,
        "boundary_mIoU": boundary, "boundary_IoU": {name: boundary for name in classes},
    }


def write_run(
    run_dir: Path, row: str, refined: float, coarse: float, boundary: tuple[float, float] = (40.0, 30.0),
    training: dict | None = None, checkpoint: str = "ckpt.pth", date: str = "2025-01-01T00:00:00+00:00",
    images: tuple[int, int] = (10, 10),
) -> Path:
    classes = ["background", "a", "b"]
    record = {
        "row": row,
        "units": "percent",
        "checkpoint": checkpoint,
        "data": {"num_images": images[0], "dataset_size": images[1], "classes": classes},
        "published_mIoU": ROWS[row].published_miou,
        "metrics": {
            "refined": _metrics(refined, boundary[0], classes), "coarse": _metrics(coarse, boundary[1], classes)
        },
        "environment": {"device": "cpu", "device_name": "Eval CPU", "cpu_count": 4, "date": date},
        "training": training,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.json"
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    write_run(
        runs / "pointrend_r50_voc", "pointrend_r50_voc", refined=68.123, coarse=66.5,
        training={"iterations": 39660, "wall_seconds": 7530.0, "world_size": 8,
                  "environment": {"device": "cuda:0", "device_name": "NVIDIA A100", "cpu_count": 64}},
    )
    write_run(runs / "demo", "demo", refined=61.0, coarse=58.0, boundary=(45.0, 38.0),
              training={"iterations": 120, "wall_seconds": 95.4, "world_size": 1,
                        "environment": {"device": "cpu", "device_name": "Test CPU", "cpu_count": 2}},
              images=(4, 16))
    write_run(runs / "released_r101_ade", "pointrend_r101_ade20k", refined=40.5, coarse=39.0, training=None,
              checkpoint="/ckpts/pointrend_resnet101os32_ade20k.pth")
    return runs


def test_collect_runs_one_line_per_run_json(runs_dir: Path) -> None:
    runs = collect_runs(runs_dir)
    assert list(runs["row"]) == ["demo", "pointrend_r50_voc", "pointrend_r101_ade20k"]  # sorted by folder
    voc = runs.set_index("row").loc["pointrend_r50_voc"]
    assert voc["miou_refined"] == 68.123 and voc["miou_coarse"] == 66.5
    assert voc["published_miou"] == 69.84
    assert voc["train_seconds"] == 7530.0 and voc["train_iters"] == 39660 and voc["hardware"] == "8 × NVIDIA A100"
    ade = runs.set_index("row").loc["pointrend_r101_ade20k"]
    # Evaluated a released checkpoint: no training time, the evaluation's hardware.
    assert math.isnan(ade["train_seconds"]) and ade["hardware"] == "CPU, 4 cores (Eval CPU)"


def test_collect_runs_empty_and_bad_files(tmp_path: Path) -> None:
    """An unreadable run.json is left out of the lines and named with the reason, never stopping the table."""
    assert collect_runs(tmp_path / "nothing").empty
    bad = tmp_path / "runs" / "x"
    bad.mkdir(parents=True)
    (bad / "run.json").write_text("{not json")
    runs = collect_runs(tmp_path / "runs")
    [(path, reason)] = runs.attrs["unreadable"]
    assert runs.empty and path == str(bad / "run.json") and reason.startswith("is not valid JSON")
    (bad / "run.json").write_text('{"row": "demo"}')
    [(path, reason)] = collect_runs(tmp_path / "runs").attrs["unreadable"]
    assert reason.startswith("lacks 'metrics'")
    table = results_table(tmp_path / "runs")
    assert table.loc["x (unreadable)", "source"] == f"{bad / 'run.json'}: lacks 'metrics'; expected a RunRecord written by pointrend_core"
    assert table.loc["demo", "reproduced mIoU (refined)"] == NOT_RUN


def test_results_table_rows_differences_and_not_run(runs_dir: Path) -> None:
    table = results_table(runs_dir)
    assert list(table.index) == list(ROWS)  # six table rows + demo, in order
    assert list(table.columns) == TABLE_COLUMNS
    voc = table.loc["pointrend_r50_voc"]
    assert voc["published mIoU"] == 69.84
    assert voc["reproduced mIoU (refined)"] == 68.12
    assert voc["difference"] == pytest.approx(68.123 - 69.84, abs=0.005)  # -1.72
    assert voc["difference"] == -1.72
    assert voc["coarse mIoU"] == 66.5
    assert voc["boundary IoU refined"] == 40.0 and voc["boundary IoU coarse"] == 30.0
    assert voc["training time"] == "2 h 05 min" and voc["hardware"] == "8 × NVIDIA A100"
    assert voc["source"] == "trained here, 39660 iterations"
    ade = table.loc["pointrend_r101_ade20k"]
    assert ade["difference"] == round(40.5 - 40.26, 2)
    assert ade["training time"] == "—" and ade["source"] == "checkpoint pointrend_resnet101os32_ade20k.pth"
    demo = table.loc["demo"]
    assert demo["published mIoU"] == "—" and demo["difference"] == "—"
    assert demo["reproduced mIoU (refined)"] == 61.0 and demo["training time"] == "1 min 35 s"
    assert demo["hardware"] == "CPU, 2 cores (Test CPU)"
    assert demo["source"] == "trained here, 120 iterations; 4 of 16 val images"
    # Not-run rows keep the published number and say so everywhere else: nothing is filled in.
    for name in ("pointrend_r101_voc", "pointrend_r50_ade20k", "pointrend_r50_cityscapes", "pointrend_r101_cityscapes"):
        line = table.loc[name]
        assert line["published mIoU"] == ROWS[name].published_miou
        assert list(line[TABLE_COLUMNS[1:]]) == [NOT_RUN] * (len(TABLE_COLUMNS) - 1)


def test_results_table_prefers_the_rows_own_folder_then_latest(runs_dir: Path) -> None:
    write_run(runs_dir / "voc_rerun", "pointrend_r50_voc", refined=10.0, coarse=9.0, date="2030-01-01T00:00:00+00:00")
    assert results_table(runs_dir).loc["pointrend_r50_voc", "reproduced mIoU (refined)"] == 68.12
    write_run(runs_dir / "ade_newer", "pointrend_r101_ade20k", refined=41.0, coarse=39.0,
              date="2030-01-01T00:00:00+00:00")
    assert results_table(runs_dir).loc["pointrend_r101_ade20k", "reproduced mIoU (refined)"] == 41.0


def test_results_table_without_runs(tmp_path: Path) -> None:
    table = results_table(tmp_path / "runs")
    assert (table["reproduced mIoU (refined)"] == NOT_RUN).all()
    assert (table["difference"] == NOT_RUN).all()


def test_format_duration() -> None:
    assert format_duration(12.3) == "12 s"
    assert format_duration(754) == "12 min 34 s"
    assert format_duration(7530) == "2 h 05 min"
    assert format_duration(float("nan")) == "—"


def test_per_class_table_and_overview(runs_dir: Path) -> None:
    run = json.loads((runs_dir / "demo" / "run.json").read_text())
    table = per_class_table(run)
    assert list(table.index) == ["background", "a", "b", "mean"]
    assert math.isnan(table.loc["background", "IoU refined"])  # null = no pixels to score
    assert table.loc["a", "IoU refined"] == 61.0 and table.loc["a", "IoU coarse"] == 58.0
    assert table.loc["mean", "boundary IoU refined"] == 45.0
    overview = run_overview(run)
    assert list(overview.index) == ["refined", "coarse", "gain (refined - coarse)"]
    assert overview.loc["gain (refined - coarse)", "mIoU"] == 3.0
    assert overview.loc["gain (refined - coarse)", "boundary mIoU"] == 7.0
    with pytest.raises(ValueError, match="lacks 'metrics'"):
        per_class_table({"row": "demo"})


def test_status_roundtrip(tmp_path: Path) -> None:
    status = RowStatus("demo", ok=False, error="train_evaluate.ipynb: RuntimeError: boom", seconds=1.5,
                       finished="2025-01-01T00:00:00+00:00", reports=("demo.html",), skipped=True)
    path = status.write(tmp_path / "demo")
    assert "skipped" not in json.loads(path.read_text())
    assert read_status(tmp_path / "demo") == RowStatus(
        "demo", ok=False, error="train_evaluate.ipynb: RuntimeError: boom", seconds=1.5,
        finished="2025-01-01T00:00:00+00:00", reports=("demo.html",),
    )
    assert read_status(tmp_path / "nothing") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "status.json").write_text('{"row": "demo"}')
    with pytest.raises(ValueError, match="lacks the key 'ok'"):
        read_status(tmp_path / "bad")


def test_write_index_html(tmp_path: Path, runs_dir: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    for name in ("demo.html", "demo_points.html", "results.html"):
        (reports / name).write_text("<html></html>")
    ok = RowStatus("demo", ok=True, reports=("demo.html", "demo_points.html"), finished="2025-01-01")
    ok.write(runs_dir / "demo")
    failed = RowStatus("pointrend_r50_voc", ok=False, error="train_evaluate.ipynb: FileNotFoundError: <no data>",
                       reports=("pointrend_r50_voc.html",))
    path = write_index_html(reports, runs_dir, {"pointrend_r50_voc": failed})
    assert path == reports / "index.html"
    text = path.read_text()
    assert "<table" in text and "reproduced mIoU (refined)" in text
    assert "-1.72" in text and NOT_RUN in text
    assert '<a href="demo.html">' in text and '<a href="demo_points.html">' in text
    assert '<a href="results.html">' in text and "point selection: demo" in text
    assert "FileNotFoundError: &lt;no data&gt;" in text  # the error, escaped
    assert 'href="pointrend_r50_voc.html"' not in text  # never link a report that was not written
    assert read_statuses(runs_dir)["demo"].ok  # statuses on disk are merged with the given ones
    assert [p.name for p in reports.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_a_run_trained_but_not_evaluated_says_how_to_evaluate_it(tmp_path: Path) -> None:
    from pointrend_core.engine.records import TrainRecord

    folder = tmp_path / "demo"
    folder.mkdir()
    TrainRecord(row="demo", iterations=360).write(folder / "train.json")
    (folder / "checkpoint_final.pth").write_bytes(b"weights")
    line = results_table(tmp_path).loc["demo"]
    assert line["reproduced mIoU (refined)"] == NOT_RUN
    assert line["source"] == ("trained (360 iterations), not evaluated: python -m pointrend_core evaluate --config demo "
                              f"--checkpoint {folder / 'checkpoint_final.pth'}")
