"""workbook.summary: the terminal summary a batch ends with says what run.json says, and shows failed rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from pointrend_core.engine.records import Metrics, OutputMetrics, RunRecord, TrainRecord
from pointrend_core.workbook.runner import main
from pointrend_core.workbook.status import RowStatus
from pointrend_core.workbook.summary import summary_lines, terminal_summary

ERROR = "train_evaluate.ipynb: RuntimeError: no data for pointrend_r50_voc at /nowhere"


def _record(row: str) -> RunRecord:
    """A run.json with unrounded figures, a class without pixels (null) and a training time."""
    refined = OutputMetrics(mIoU=78.8912, boundary_mIoU=72.8761,
                            IoU={"background": 97.1, "disc": 80.04, "ring": 56.8849, "bar": 57.9, "star": None})
    coarse = OutputMetrics(mIoU=69.6549, boundary_mIoU=61.0449, IoU={"ring": 31.2, "bar": 36.8})
    return RunRecord(row=row, metrics=Metrics(refined=refined, coarse=coarse),
                     training=TrainRecord(row=row, wall_seconds=262.4))


def _cells(text: str, row: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"{row} "))
    return re.split(r"\s{2,}", line.strip())


def test_summary_numbers_equal_run_json(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _record("demo").write(runs / "demo" / "run.json")
    statuses = {"demo": RowStatus(row="demo", ok=True, seconds=300.0),
                "pointrend_r50_voc": RowStatus(row="pointrend_r50_voc", ok=False, error=ERROR + "\nlast output:\n...")}
    text = terminal_summary(statuses, runs, tmp_path / "reports")

    stored = json.loads((runs / "demo" / "run.json").read_text())
    refined, coarse = stored["metrics"]["refined"], stored["metrics"]["coarse"]
    cells = _cells(text, "demo")
    assert cells[:2] == ["demo", "ok"]
    assert [float(c) for c in cells[2:6]] == [
        round(refined["mIoU"], 2), round(coarse["mIoU"], 2),
        round(refined["boundary_mIoU"], 2), round(coarse["boundary_mIoU"], 2),
    ] == [78.89, 69.65, 72.88, 61.04]
    assert cells[6] == "ring 56.88"  # the weakest scored class; star (null) is not a candidate
    assert cells[7] == "4 min 22 s" and stored["training"]["wall_seconds"] == 262.4
    # A failed row: its outcome and its error's first line (not the log tail that follows it).
    assert _cells(text, "pointrend_r50_voc") == ["pointrend_r50_voc", "FAILED", ERROR]
    assert "last output" not in text
    assert cells[8] == "—"  # nothing is published for the demo row: no verdict
    assert text.splitlines()[0].split() == ["row", "outcome", "mIoU", "refined", "coarse", "boundary", "refined",
                                            "coarse", "weakest", "class", "training", "verdict"]
    assert text.splitlines()[-1] == f"[workbook] index: {tmp_path / 'reports' / 'index.html'}"


def test_summary_lines_say_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    statuses = {
        "gone": RowStatus(row="gone", ok=True),
        "broken": RowStatus(row="broken", ok=True, skipped=True),
        "failed": RowStatus(row="failed", ok=False),
    }
    gone, broken, failed = summary_lines(statuses, tmp_path)
    assert gone.outcome == "ok" and gone.note == f"no {tmp_path / 'gone' / 'run.json'}"
    assert broken.outcome == "ok, earlier" and "broken" in broken.note and broken.miou_refined is None
    assert failed.outcome == "FAILED" and failed.note == "no error recorded"


def _notebook(path: Path, parameters: str, body: str) -> None:
    book = new_notebook(cells=[new_code_cell(parameters, metadata={"tags": ["parameters"]}), new_code_cell(body)])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, path)


@pytest.mark.slow
def test_workbook_run_ends_with_the_summary(tmp_path: Path, capsys) -> None:
    """The command line prints the summary last: the ok row's figures from the run.json its notebook wrote,
    the failed row as FAILED with its error line, then the index path."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    record = json.dumps(_record("demo").to_json())
    _notebook(notebooks / "train_evaluate.ipynb",
              'config = "demo"\ndata_root = None\nout_dir = None\nmax_iters = None\ndevice = "cpu"\nfail_rows = []',
              "import json, pathlib\n"
              "if config in fail_rows:\n"
              "    raise RuntimeError(f'no data for {config} at /nowhere')\n"
              "pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)\n"
              f"pathlib.Path(out_dir, 'run.json').write_text({record!r})")
    _notebook(notebooks / "point_selection.ipynb", 'config = "demo"', "pass")
    _notebook(notebooks / "results.ipynb", 'runs_dir = "runs"', "pass")
    (tmp_path / "data").mkdir()
    code = main(["run", "--rows", "pointrend_r50_voc,demo", "--notebooks-dir", str(notebooks),
                 "--runs-dir", str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports"), "--no-points",
                 "--data-root", f"demo={tmp_path / 'data'}", "--data-root", f"pointrend_r50_voc={tmp_path / 'data'}",
                 "--extra-param", "fail_rows=['pointrend_r50_voc']"])
    assert code == 1
    out = capsys.readouterr().out
    summary = out[out.index("row "):]
    assert _cells(summary, "demo") == ["demo", "ok", "78.89", "69.65", "72.88", "61.04", "ring 56.88", "4 min 22 s", "—"]
    assert _cells(summary, "pointrend_r50_voc") == ["pointrend_r50_voc", "FAILED", ERROR]
    assert summary.rstrip().splitlines()[-1] == f"[workbook] index: {tmp_path / 'reports' / 'index.html'}"


def test_demo_data_generation_says_where_and_how_many(tmp_path: Path, monkeypatch, capsys) -> None:
    from pointrend_core.config import get_row
    from pointrend_core.workbook import runner

    made = []
    monkeypatch.setattr(runner, "make_demo_dataset", lambda out, **kw: made.append((out, kw)))
    runner._ensure_demo_data(get_row("demo"), tmp_path / "demo")
    assert made == [(tmp_path / "demo", {"num_images": 300})]
    said = capsys.readouterr().out
    assert said == f"[workbook] demo data: 300 images (240 train, 60 val) generated in {tmp_path / 'demo'}\n"
    (tmp_path / "demo").mkdir()
    runner._ensure_demo_data(get_row("demo"), tmp_path / "demo")  # there already: nothing made, nothing said
    assert len(made) == 1 and capsys.readouterr().out == ""


def test_resume_without_a_checkpoint_is_silent_in_a_new_folder(tmp_path: Path, capsys) -> None:
    """The workbook always asks to resume: a first run must not log "resume: no ..." into its report; an
    earlier attempt cut short before its first checkpoint (only its log) is worth the line."""
    import torch

    from pointrend_core.config import get_row
    from pointrend_core.engine.distributed import Processes
    from pointrend_core.engine.run_folder import RunFolder
    from pointrend_core.engine.train import TrainOptions, _state_to_resume

    processes = Processes(rank=0, world_size=1, device=torch.device("cpu"))
    options = TrainOptions(resume=True, progress=False)
    folder = RunFolder(tmp_path)
    assert _state_to_resume(folder, get_row("demo"), options, processes, 8) is None
    assert capsys.readouterr().err == ""
    folder.metrics_log.write_text('{"iteration": 20}\n')
    assert _state_to_resume(folder, get_row("demo"), options, processes, 8) is None
    assert capsys.readouterr().err == f"resume: no {tmp_path / 'checkpoint_last.pth'}, starting a new run\n"


def test_a_published_row_shows_the_reports_verdict(tmp_path: Path) -> None:
    from dataclasses import replace

    runs = tmp_path / "runs"
    replace(_record("pointrend_r50_voc"), published_mIoU=69.84).write(runs / "pointrend_r50_voc" / "run.json")
    text = terminal_summary({"pointrend_r50_voc": RowStatus(row="pointrend_r50_voc", ok=True)}, runs, tmp_path)
    assert _cells(text, "pointrend_r50_voc")[-1] == "no interval: re-run evaluate"  # no counts were recorded
