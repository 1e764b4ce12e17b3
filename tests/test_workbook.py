"""workbook: the batch runner, and papermill executing the real notebooks on fixture data.

- The runner's bookkeeping (failures recorded, finished rows skipped, failed rows re-run, released
  checkpoints, index) with tiny stand-in notebooks that import nothing heavy.
- Papermill on generated trees in each dataset's layout, with tiny settings (crop 64x64, batch 2, images
  resized to at most 64x48): the demo row and the R-50 rows of VOC, ADE20k and Cityscapes train 2 iterations
  and run train_evaluate and point_selection; the R-101 rows evaluate released-format checkpoints (random
  weights under the model-zoo file names) through train_evaluate only: point_selection differs between R-50
  and R-101 only in depth, and three more kernels would cost ~45 s. Then results and the index. Checks
  that each HTML report holds its tables and figures.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from pointrend_core.config import ROWS
from pointrend_core.workbook.runner import (
    is_finished,
    main,
    parse_data_roots,
    parse_extra_params,
    parse_rows,
    run_rows,
)
from pointrend_core.workbook.status import RowStatus, read_status
from pointrend_core.workbook.runs_table import NOT_RUN, collect_runs

REPO = Path(__file__).resolve().parent.parent
R50_ROWS = ["pointrend_r50_voc", "pointrend_r50_ade20k", "pointrend_r50_cityscapes"]
R101_ROWS = ["pointrend_r101_voc", "pointrend_r101_ade20k", "pointrend_r101_cityscapes"]
BF16_ROWS = ["pointrend_r101_voc"]


# ----------------------------------------------------------------------------------------------------------
# Argument parsing


def test_parse_rows() -> None:
    assert parse_rows("all") == list(ROWS)
    assert parse_rows("demo") == ["demo"]
    assert parse_rows("pointrend_r50_voc, demo") == ["pointrend_r50_voc", "demo"]
    with pytest.raises(KeyError, match="unknown config 'r50'; expected one of: pointrend_r50_voc"):
        parse_rows("r50")
    with pytest.raises(ValueError, match="names no row"):
        parse_rows(" , ")


def test_parse_extra_params() -> None:
    assert parse_extra_params(["max_iters=2", "crop_size=(64, 64)", "device=cuda:1", "checkpoint=a=b.pth"]) == {
        "max_iters": 2, "crop_size": (64, 64), "device": "cuda:1", "checkpoint": "a=b.pth",
    }
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_extra_params(["max_iters"])


def test_parse_data_roots() -> None:
    assert parse_data_roots([]) is None
    assert parse_data_roots(["/data/voc"]) == Path("/data/voc")
    assert parse_data_roots(["demo=/d", "pointrend_r50_voc=/v"]) == {
        "demo": Path("/d"), "pointrend_r50_voc": Path("/v"),
    }
    with pytest.raises(ValueError, match="each must be ROW=PATH"):
        parse_data_roots(["/a", "/b"])


def test_cli_rejects_unknown_row(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--rows", "nope"])
    assert exit_info.value.code == 2
    assert "unknown config 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# Bookkeeping with stand-in notebooks


def _notebook(path: Path, parameters: str, body: str) -> None:
    book = new_notebook(cells=[new_code_cell(parameters, metadata={"tags": ["parameters"]}), new_code_cell(body)])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, path)


@pytest.fixture
def fake_notebooks(tmp_path: Path) -> Path:
    """Stand-ins with the real notebooks' roles: train_evaluate writes a run.json (or fails for the rows in
    `fail_rows`), point_selection and results print; each shows an HTML table."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    run = {
        "metrics": {
            name: {"mIoU": 50.0 + bonus, "boundary_mIoU": 30.0 + bonus}
            for name, bonus in (("refined", 2.0), ("coarse", 0.0))
        },
        "environment": {"device": "cpu", "device_name": "stand-in", "cpu_count": 2, "date": "2025-01-01"},
    }
    _notebook(
        folder / "train_evaluate.ipynb",
        'config = "demo"\ndata_root = None\nout_dir = None\ncheckpoint = None\nmax_iters = None\ndevice = "cpu"\n'
        "fail_rows = []",
        "import json, pathlib\n"
        "from IPython.display import HTML\n"
        "if config in fail_rows:\n"
        "    raise RuntimeError(f'no data for {config} at {data_root}')\n"
        f"record = {{'row': config, 'checkpoint': checkpoint, **{run!r}}}\n"
        "pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)\n"
        "pathlib.Path(out_dir, 'run.json').write_text(json.dumps(record))\n"
        "HTML(f'<table><tr><td>{config} {max_iters}</td></tr></table>')",
    )
    _notebook(folder / "point_selection.ipynb", 'config = "demo"\ndata_root = None\nout_dir = None\ndevice = "cpu"',
              "print('points', config)")
    _notebook(folder / "results.ipynb", 'runs_dir = "runs"', "print('results', runs_dir)")
    return folder


def test_run_rows_records_failures_skips_finished_and_reruns_failed(
    tmp_path: Path, fake_notebooks: Path, monkeypatch
) -> None:
    runs, reports, data = tmp_path / "runs", tmp_path / "reports", tmp_path / "data"
    generated = []
    monkeypatch.setattr("pointrend_core.workbook.runner.make_demo_dataset",
                        lambda out, **kw: generated.append(Path(out)) or Path(out).mkdir(parents=True))
    statuses = run_rows(
        ["pointrend_r50_voc", "demo"],
        data_root={"pointrend_r50_voc": data / "voc", "demo": data / "demo"},
        runs_dir=runs, reports_dir=reports, max_iters=3, notebooks_dir=fake_notebooks,
        extra_params={"fail_rows": ["pointrend_r50_voc"]}, points=["demo"],
    )
    failed, demo = statuses["pointrend_r50_voc"], statuses["demo"]
    # The failure is recorded with the notebook and the exception, and did not stop the next row.
    assert not failed.ok
    voc_root = (data / "voc").resolve()
    assert failed.error == f"train_evaluate.ipynb: RuntimeError: no data for pointrend_r50_voc at {voc_root}"
    assert read_status(runs / "pointrend_r50_voc") == failed
    assert failed.reports == ("pointrend_r50_voc.html",)  # the failing notebook is rendered too
    assert "RuntimeError" in (reports / "pointrend_r50_voc.html").read_text()
    assert demo.ok and demo.error is None and demo.reports == ("demo.html", "demo_points.html")
    assert generated == [data / "demo"]  # demo data generated because the root did not exist
    # Parameters were injected: max_iters reached the notebook, the output notebook is kept in the run folder.
    assert "demo 3" in (reports / "demo.html").read_text()
    assert (runs / "demo" / "train_evaluate.ipynb").is_file() and (runs / "demo" / "point_selection.ipynb").is_file()
    assert "points demo" in (reports / "demo_points.html").read_text()
    assert "results " in (reports / "results.html").read_text()
    index = (reports / "index.html").read_text()
    assert "RuntimeError: no data for pointrend_r50_voc" in index
    assert '<a href="demo.html">' in index and '<a href="results.html">' in index
    assert index.count(NOT_RUN) >= 5 * 9  # the five rows never run: every measured cell says so

    # Second batch: demo finished (skipped, untouched); the failed row runs again and now succeeds.
    run_json = runs / "demo" / "run.json"
    before = run_json.stat().st_mtime_ns
    statuses = run_rows(
        ["demo", "pointrend_r50_voc"], data_root=data, runs_dir=runs, reports_dir=reports,
        notebooks_dir=fake_notebooks, points=False, released_dir=tmp_path / "released",
    )
    assert statuses["demo"].skipped and statuses["demo"].ok
    assert run_json.stat().st_mtime_ns == before
    assert statuses["pointrend_r50_voc"].ok and not statuses["pointrend_r50_voc"].skipped
    assert statuses["pointrend_r50_voc"].reports == ("pointrend_r50_voc.html",)
    # With released_dir the row evaluates its model-zoo file (the notebook got it as `checkpoint`).
    record = json.loads((runs / "pointrend_r50_voc" / "run.json").read_text())
    assert record["checkpoint"] == str((tmp_path / "released" / "pointrend_resnet50os32_voc.pth").resolve())
    assert 'class="failed"' not in (reports / "index.html").read_text()


def test_run_rows_checks_parameters_and_released_dir(tmp_path: Path, fake_notebooks: Path) -> None:
    with pytest.raises(ValueError, match="unknown notebook parameter\\(s\\) crop; the notebooks declare: checkpoint"):
        run_rows(["demo"], runs_dir=tmp_path / "runs", notebooks_dir=fake_notebooks, extra_params={"crop": 1})
    with pytest.raises(ValueError, match="either released_dir"):
        run_rows(["demo"], runs_dir=tmp_path / "runs", notebooks_dir=fake_notebooks,
                 released_dir=tmp_path, extra_params={"checkpoint": "x.pth"})
    with pytest.raises(ValueError, match=r"unknown notebook parameter\(s\) precision"):  # passed on when not fp32
        run_rows(["demo"], runs_dir=tmp_path / "runs", notebooks_dir=fake_notebooks, precision="bf16")
    with pytest.raises(ValueError, match="precision 'fp16' needs a CUDA device"):
        run_rows(["demo"], runs_dir=tmp_path / "runs", notebooks_dir=fake_notebooks, precision="fp16")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(FileNotFoundError, match="results.ipynb not found"):
        (fake_notebooks / "results.ipynb").unlink()
        run_rows(["demo"], notebooks_dir=fake_notebooks)


def test_is_finished_needs_ok_status_and_run_json(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    assert is_finished(run_dir) is None
    RowStatus("demo", ok=True).write(run_dir)
    assert is_finished(run_dir) is None  # no run.json: the evaluation never completed
    (run_dir / "run.json").write_text("{}")
    assert is_finished(run_dir) == RowStatus("demo", ok=True)
    RowStatus("demo", ok=False, error="x").write(run_dir)
    assert is_finished(run_dir) is None


# ----------------------------------------------------------------------------------------------------------
# The real notebooks on fixture trees


TINY = {
    "crop_size": (64, 64),
    "base_size": (64, 48),
    "batch_size": 2,
    "workers": 0,
    "num_samples": 2,
    "sweep_steps": [0, 1, 2],
    "sweep_points": [64, 256],
    "sweep_images": 1,
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """Generated trees in each dataset's layout (2 images per split), and a small demo dataset, by row."""
    from pointrend_core.data.demo import make_demo_dataset
    from synthetic_trees import write_ade20k_tree, write_cityscapes_tree, write_voc_tree

    base = tmp_path_factory.mktemp("trees")
    voc = write_voc_tree(base / "voc", num_images=2, size=(48, 64), splits=("trainaug", "val"))
    ade = write_ade20k_tree(base / "ade", num_images=2, size=(48, 64))
    cityscapes = write_cityscapes_tree(base / "cityscapes", num_images=2, size=(32, 64))
    roots = {"demo": make_demo_dataset(base / "demo", num_images=6, size=64)}
    for depth in ("r50", "r101"):
        roots |= {f"pointrend_{depth}_voc": voc, f"pointrend_{depth}_ade20k": ade}
        roots |= {f"pointrend_{depth}_cityscapes": cityscapes}
    return roots


@pytest.fixture(scope="module")
def batch(tmp_path_factory, trees):
    """Batches into the same runs/ and reports/: demo and the R-50 rows train (both notebooks); then the
    R-101 rows evaluate released-format checkpoints (train_evaluate only), the VOC one in bf16 (one row is
    enough to show that --precision reaches the run: bf16 is 18x slower than fp32 on a CPU without fast bf16
    kernels, 2.2 s per R-101 forward here). Yields (statuses, runs, reports)."""
    from pointrend_core.checkpoints import save_checkpoint
    from pointrend_core.model import build_model

    base = tmp_path_factory.mktemp("workbook")
    runs, reports, released = base / "runs", base / "reports", base / "released"
    for row in R101_ROWS:  # random weights under the model-zoo file names; the notebook loads them strictly
        save_checkpoint(released / ROWS[row].release_file, model=build_model(row))
    with pytest.MonkeyPatch.context() as patch:
        # One thread per kernel: these tiny models gain nothing from two, and on a busy 2-core machine spinning
        # OpenMP threads made a training step of R-50 on 64x64 crops ten times slower (measured 9 s vs 0.7 s).
        patch.setenv("OMP_NUM_THREADS", "1")
        start = time.perf_counter()
        statuses = run_rows(
            ["demo", *R50_ROWS], data_root=trees, runs_dir=runs, reports_dir=reports, max_iters=2,
            extra_params=TINY,
        )
        middle = time.perf_counter()
        for rows, precision in ((BF16_ROWS, "bf16"), ([r for r in R101_ROWS if r not in BF16_ROWS], "fp32")):
            statuses |= run_rows(
                rows, data_root=trees, runs_dir=runs, reports_dir=reports, extra_params=TINY,
                released_dir=released, points=False, precision=precision,
            )
        end = time.perf_counter()
    print(f"papermill batches: demo + R-50 rows {middle - start:.0f} s, R-101 rows {end - middle:.0f} s")
    yield statuses, runs, reports
    for checkpoint in (*runs.glob("*/*.pth"), *released.glob("*.pth")):  # ~2 GB of weights
        checkpoint.unlink()


def _count(text: str, tag: str) -> int:
    return text.count(tag)


def _figures(html: str) -> int:
    """PNG figures embedded in an nbconvert HTML page."""
    return len(re.findall(r'<img [^>]*src="data:image/png;base64,', html))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_batch_every_row_ok(batch) -> None:
    statuses, runs, _ = batch
    assert {name: (s.ok, s.error) for name, s in statuses.items()} == {name: (True, None) for name in ROWS}
    for name in ROWS:
        run = json.loads((runs / name / "run.json").read_text())
        assert run["row"] == name
        assert run["config"]["data"]["crop_size"] == [64, 64]  # the injected overrides reached the run
    for name in ["demo", *R50_ROWS]:
        run = json.loads((runs / name / "run.json").read_text())
        assert run["training"]["iterations"] == 2 and run["training"]["batch_size"] == 2
        assert (run["timing"]["precision"], run["timing"]["compiled"]) == ("fp32", False)
    for name in R101_ROWS:
        run = json.loads((runs / name / "run.json").read_text())
        assert Path(run["checkpoint"]).name == ROWS[name].release_file and run["training"] is None
        assert run["config"]["model"]["depth"] == 101
        precision = "bf16" if name in BF16_ROWS else "fp32"
        assert (run["timing"]["precision"], run["timing"]["compiled"]) == (precision, False)  # --precision reached it


@pytest.mark.slow
@pytest.mark.parametrize("row", list(ROWS))
def test_batch_row_reports(batch, row: str) -> None:
    _, _, reports = batch
    html = (reports / f"{row}.html").read_text()
    assert _count(html, "<table") >= 3  # settings, refined-vs-coarse overview, per-class table
    assert "IoU refined" in html and "boundary mIoU" in html
    trained = row not in R101_ROWS
    assert _figures(html) == (2 if trained else 1)  # training curves (when trained here), sample predictions
    if not trained:
        assert "evaluated a given checkpoint: no training curves" in html
        assert not (reports / f"{row}_points.html").exists()
        return
    points = (reports / f"{row}_points.html").read_text()
    assert _figures(points) == 3  # training-point selection, subdivision steps, sweep plot
    assert _count(points, "<table") >= 1 and "ms / image" in points  # the sweep table
    assert "row&#39;s setting" in points or "row's setting" in points


def _fetched_urls(html: str) -> list[str]:
    """Every script, stylesheet, font or image the page would load from the network."""
    loads = re.findall(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]*)"', html)
    return loads + re.findall(r'@import\s+url\(["\']?((?:https?:)?//[^)"\']*)', html) + re.findall(
        r'url\(["\']?((?:https?:)?//[^)"\']*)', html)


@pytest.mark.slow
@pytest.mark.parametrize("row", ["demo", "pointrend_r101_voc"])
def test_batch_reports_read_as_reports(batch, row: str) -> None:
    _, _, reports = batch
    html = (reports / f"{row}.html").read_text()
    assert f"<title>{row}: Train and evaluate one table row</title>" in html
    assert '<a href="index.html">' in html  # back to the index
    assert "training.train_and_evaluate" not in html and "os.chdir" not in html  # results, not code
    assert not re.search(r'class="[^"]*jp-CodeMirrorEditor', html)  # no code input is rendered
    assert re.search(r'class="[^"]*jp-RenderedMarkdown', html)  # the explanations are
    params = re.search(r'<table class="pr-params">.*?</table>', html, re.S).group(0)
    assert f"<td>config</td><td><code>{row}</code></td>" in params
    # Paths appear relative to the working directory where they lie inside it, absolute otherwise.
    assert "<td>out_dir</td>" in params
    assert _fetched_urls(html) == []  # self-contained: nothing from a CDN
    assert "require.min.js" not in html and "MathJax" not in html
    # Logs are shown as logs, not on the error background.
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html


@pytest.mark.slow
def test_batch_results_and_index(batch) -> None:
    statuses, runs, reports = batch
    results = (reports / "results.html").read_text()
    assert "reproduced mIoU (refined)" in results and _count(results, "<table") >= 2
    assert _figures(results) == 1
    # The smoke-test sizes are overrides: every row's run is in the table beside its row, never as the row.
    overrides = "data.crop_size=64,64; data.base_size=64,48; schedule.batch_size=2"
    for name in ROWS:
        assert f"{name} [{overrides}]" in results
    index = (reports / "index.html").read_text()
    for name in ROWS:
        assert f'<a href="{name}.html">' in index
    for name in ["demo", *R50_ROWS]:
        assert f'<a href="{name}_points.html">' in index
    assert '<a href="results.html">' in index and f"demo [{overrides}]" in index


# ----------------------------------------------------------------------------------------------------------
# What the notebooks call


def test_notebook_progress_prints_cells_and_training_steps(tmp_path: Path, capsys) -> None:
    from nbformat.v4 import new_markdown_cell

    from pointrend_core.engine.progress import TrainProgress
    from pointrend_core.workbook.notebook_progress import NotebookProgress

    book = new_notebook(cells=[new_markdown_cell("# Train a row"), new_code_cell("x = 1"),
                               new_markdown_cell("## Evaluate\ntext"), new_code_cell("y = 2")])
    TrainProgress(9, 10, 9.0, 0.1, 1.0, 0, written_at=time.time() - 3600).write(tmp_path / "progress.json")  # an earlier run's
    with NotebookProgress("demo", Path("notebooks/train_evaluate.ipynb"), tmp_path) as progress:
        assert not progress.interactive  # captured stderr is no terminal: plain lines
        progress.cell_started(0, book.cells[0], book)  # Markdown: nothing to report
        progress.cell_started(1, book.cells[1], book)
        TrainProgress(5, 10, 0.5, 0.01, 5.0, 0, written_at=time.time()).write(tmp_path / "progress.json")
        time.sleep(3 * NotebookProgress.POLL_SECONDS)
        progress.cell_started(3, book.cells[3], book)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "[workbook] demo · train_evaluate: cell 1/2 (Train a row)",
        "[workbook] demo · train_evaluate: training 5/10, loss 0.500, 5 s left",
        "[workbook] demo · train_evaluate: cell 2/2 (Evaluate)",
    ]


def test_train_progress_reads_back_and_tolerates_a_missing_or_bad_file(tmp_path: Path) -> None:
    from pointrend_core.engine.progress import TrainProgress, read_progress
    from pointrend_core.engine.run_folder import RunFolder
    path = RunFolder(tmp_path).progress_file

    assert read_progress(path) is None
    snapshot = TrainProgress(30, 120, 1.25, 0.01, 15.0, 10, written_at=123.0)
    snapshot.write(path)
    assert read_progress(path) == snapshot
    assert snapshot.seconds_per_iteration == 0.75 and snapshot.eta_seconds == 67.5
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]  # no temporary left behind
    path.write_text("{not json")
    assert read_progress(path) is None


def test_subdivision_sweep_defaults_include_the_rows_own_setting() -> None:
    from pointrend_core.workbook import analysis

    assert analysis.default_sweep(ROWS["demo"].model) == ([0, 1, 2], [1024, 2048, 4096])
    assert analysis.default_sweep(ROWS["pointrend_r50_voc"].model) == ([0, 1, 2], [2049, 4098, 8196])


def test_runs_display_is_readable_without_nan(tmp_path: Path) -> None:
    from pointrend_core.workbook.runs_table import RUNS_DISPLAY_COLUMNS, runs_display

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "run.json").write_text(json.dumps(
        {"row": "demo", "metrics": {"refined": {"mIoU": 61.234, "boundary_mIoU": 50.0}, "coarse": {"mIoU": 55.0}},
         "data": {"num_images": 6, "dataset_size": 12}, "environment": {"date": "2026-12-02T03:00:00+00:00"}}))
    table = runs_display(collect_runs(tmp_path))
    assert list(table.columns) == RUNS_DISPLAY_COLUMNS[1:] and list(table.index) == ["a"]
    line = table.loc["a"]
    assert line["mIoU refined"] == 61.23 and line["boundary coarse"] == "—" and line["training"] == "—"
    assert line["val images"] == "6 of 12" and line["finished"] == "2026-12-02 03:00"
    assert line["inference"] == "—"  # a record from before the precision was recorded
    assert "nan" not in table.to_html().lower()

    record = json.loads((tmp_path / "a" / "run.json").read_text())
    record["timing"] = {"precision": "bf16", "compiled": True}
    (tmp_path / "a" / "run.json").write_text(json.dumps(record))
    assert runs_display(collect_runs(tmp_path)).loc["a", "inference"] == "bf16, compiled"


def test_configure_row_overrides() -> None:
    from pointrend_core.workbook import training

    row = training.configure_row("pointrend_r50_cityscapes", crop_size=[64, 128], base_size=(128, 64), batch_size=2)
    assert row.data.crop_size == (64, 128) and row.data.base_size == (128, 64) and row.schedule.batch_size == 2
    assert row.model == ROWS["pointrend_r50_cityscapes"].model
    assert row.overrides == ("data.crop_size=64,128", "data.base_size=128,64", "schedule.batch_size=2")
    assert training.configure_row("demo") == ROWS["demo"]
    with pytest.raises(ValueError, match="data.crop_size takes 2 comma-separated integers; got 1 value"):
        training.configure_row("demo", crop_size=[64])
    with pytest.raises(ValueError, match="schedule.batch_size must be a positive integer, got 0"):
        training.configure_row("demo", batch_size=0)
    row = training.configure_row("demo", base_size=(64, 64), overrides=["schedule.lr=0.02", "data.base_size=96,96"])
    assert row.data.base_size == (96, 96) and row.schedule.lr == 0.02  # the later override of a field wins
    assert row.overrides == ("schedule.lr=0.02", "data.base_size=96,96")


def test_distributed_command() -> None:
    import sys

    from pointrend_core.workbook import training

    row = training.configure_row("pointrend_r50_voc", crop_size=(256, 256), batch_size=8)
    command = training.distributed_command(row, "/data/voc", "/runs/r50", 4, max_iters=10, seed=3, device="cuda")
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert command[6:] == [
        "pointrend_core", "train", "--config", "pointrend_r50_voc", "--out-dir", "/runs/r50", "--seed", "3",
        "--device", "cuda", "--no-progress", "--data-root", "/data/voc", "--max-iters", "10",
        "--set", "data.crop_size=256,256", "--set", "schedule.batch_size=8",
    ]
    from pointrend_core.__main__ import build_parser, resolve_row

    parser = build_parser()
    args = parser.parse_args(command[command.index("train"):])  # the CLI accepts every flag
    assert resolve_row(parser, args) == row and args.max_iters == 10  # and rebuilds the same row
    other = training.configure_row("demo", base_size=(64, 64))  # any override passes on now
    assert training.distributed_command(other, None, "/r", 2, max_iters=None, seed=0, device="cpu")[-2:] == [
        "--set", "data.base_size=64,64"]


def test_project_dir(tmp_path: Path) -> None:
    from pointrend_core.workbook import training

    assert training.project_dir(REPO / "notebooks") == REPO
    assert training.project_dir(tmp_path) == tmp_path.resolve()


def test_subdivision_sweep_evaluates_each_setting_and_leaves_the_model_alone(trees) -> None:
    import torch

    from pointrend_core.engine.evaluate import evaluate
    from pointrend_core.model import Subdivision, build_model
    from pointrend_core.workbook import analysis, training

    row = training.configure_row("demo", base_size=(48, 48))
    model = build_model(row).eval()
    dataset = analysis.eval_dataset(row, trees["demo"])
    image = dataset[0][0][None]
    with torch.no_grad():
        before = model(image).logits
    sweep = analysis.subdivision_sweep(model, dataset, row.eval, [0, 2, 1], [64, 16], max_images=1)
    assert list(zip(sweep["steps"], sweep["points"])) == [(0, 0), (1, 16), (1, 64), (2, 16), (2, 64)]
    assert (sweep["images"] == 1).all() and sweep["mIoU"].between(0, 100).all()
    direct = evaluate(model, dataset, row.eval, "cpu", model.num_classes, progress=False, max_images=1,
                      subdivision=Subdivision(1, 16))
    assert sweep.set_index(["steps", "points"]).loc[(1, 16), "mIoU"] == 100 * direct.refined.mIoU
    with torch.no_grad():
        assert torch.equal(model(image).logits, before)  # the row's own settings, as before the sweep
    with pytest.raises(ValueError, match="steps >= 0 and points >= 1"):
        analysis.subdivision_sweep(model, dataset, row.eval, [1], [0])


@pytest.mark.parametrize("name", ["train_evaluate", "point_selection", "results"])
def test_notebooks_are_stored_clean(name: str) -> None:
    """Stored without outputs or execution counts, with a python3 kernelspec and a `parameters` cell."""
    book = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    nbformat.validate(book)
    assert book.metadata.kernelspec.name == "python3"
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert [cell for cell in code if "parameters" in cell.metadata.get("tags", [])] == code[:1]


def test_run_streaming_echoes_and_reports_failures(capsys) -> None:
    import sys

    from pointrend_core.workbook.training import run_streaming

    run_streaming([sys.executable, "-c", "print('one'); print('two')"])
    assert capsys.readouterr().out == "one\ntwo\n"
    with pytest.raises(RuntimeError, match=r"exit code 3 from: .*\nlast output:\nb\nc\n"):
        run_streaming([sys.executable, "-c", "import sys; print('a'); print('b'); print('c'); sys.exit(3)"], keep=2)


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_a_stopped_runner_shuts_its_kernel_down(tmp_path: Path, signal_name: str) -> None:
    """Killing `workbook run` (a `kill`, a closed terminal) used to leave the notebook's kernel running, still
    training; now the runner unwinds like Ctrl-C: the kernel is shut down and the exit code is 128 + the signal."""
    import os
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "kernel.pid"
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "train_evaluate.ipynb", 'config = "demo"\ndata_root = None\nout_dir = None\nmax_iters = None\n'
              'device = "cpu"', f"import os, pathlib, time\npathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
              "time.sleep(120)")
    _notebook(notebooks / "point_selection.ipynb", 'config = "demo"', "print(1)")
    _notebook(notebooks / "results.ipynb", 'runs_dir = "runs"', "print(1)")
    (tmp_path / "data").mkdir()  # an existing root: the demo data is not generated
    runner = subprocess.Popen(
        [sys.executable, "-m", "pointrend_core.workbook", "run", "--rows", "demo", "--data-root", str(tmp_path / "data"),
         "--notebooks-dir", str(notebooks), "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline and runner.poll() is None:
        time.sleep(0.2)
    kernel = int(pid_file.read_text())
    runner.send_signal(getattr(signal, signal_name))
    _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 128 + getattr(signal, signal_name)
    assert f"[workbook] stopped by {signal_name}: the running notebook's kernel was shut down" in stderr
    assert "Traceback" not in stderr
    for _ in range(50):  # the kernel is asked to stop, then killed; give it a moment
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(kernel, signal.SIGKILL)
        pytest.fail(f"the kernel (pid {kernel}) outlived the runner")


def test_run_rows_on_a_folder_dataset_names_the_run_after_row_and_folder(tmp_path: Path, fake_notebooks: Path) -> None:
    from synthetic_trees import write_folder_tree

    from pointrend_core.engine.run_folder import RunFolder

    shapes = write_folder_tree(tmp_path / "my_shapes", num_images=2, splits={"train": [0], "val": [1]})
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    statuses = run_rows(["demo"], dataset="folder", data_root=shapes, runs_dir=runs, reports_dir=reports,
                        notebooks_dir=fake_notebooks, points=["demo"], progress=False)
    assert list(statuses) == ["demo_my_shapes"] and statuses["demo_my_shapes"].ok
    assert statuses["demo_my_shapes"].reports == ("demo_my_shapes.html", "demo_my_shapes_points.html")
    assert (runs / "demo_my_shapes" / "run.json").is_file() and not (runs / "demo").exists()
    assert "demo_my_shapes" in (reports / "index.html").read_text()
    # A row whose folder another run holds fails with that message, without touching the folder.
    with RunFolder(runs / "demo_my_shapes").hold():
        import subprocess
        import sys

        code = (f"from pointrend_core.workbook.runner import run_rows\n"
                f"s = run_rows(['demo'], dataset='folder', data_root={str(shapes)!r}, runs_dir={str(runs)!r}, "
                f"reports_dir={str(reports)!r}, notebooks_dir={str(fake_notebooks)!r}, force=True, progress=False)\n"
                "print(s['demo_my_shapes'].error)")
        env = {k: v for k, v in __import__("os").environ.items() if k != "POINTREND_HELD_RUN_FOLDERS"}
        printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    assert f"run folder {runs / 'demo_my_shapes'} is in use by process" in printed


def test_an_unreadable_run_record_is_shown_as_unreadable_and_stops_nothing(tmp_path: Path, fake_notebooks: Path,
                                                                          capsys) -> None:
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    (runs / "broken").mkdir(parents=True)
    (runs / "broken" / "run.json").write_text("{not json")
    (runs / "broken" / "status.json").write_text("[1, 2")
    (tmp_path / "data" / "demo").mkdir(parents=True)
    code = main(["run", "--rows", "demo", "--runs-dir", str(runs), "--reports-dir", str(reports), "--no-points",
                 "--data-root", str(tmp_path / "data" / "demo"), "--notebooks-dir", str(fake_notebooks)])
    captured = capsys.readouterr()
    assert code == 1 and "usage:" not in captured.err
    assert f"skipped an unreadable run record (shown as unreadable in the reports): {runs / 'broken' / 'run.json'}: " in (
        captured.err)
    index = (reports / "index.html").read_text()
    assert "broken (unreadable)" in index and "is not valid JSON" in index
    assert (runs / "demo" / "run.json").is_file() and "<td>demo</td><td>ok</td>" in index


def test_workbook_paths_get_sentences(tmp_path: Path, capsys) -> None:
    assert parse_data_roots(["demo"]) == Path("demo")  # a folder named like a row is a path
    a_file = tmp_path / "runs.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=f"^runs_dir {a_file} is a file; expected a folder"):
        run_rows(["demo"], runs_dir=a_file, reports_dir=tmp_path / "reports")
