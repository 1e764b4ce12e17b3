"""Batch runner: execute the notebooks for table rows with papermill and render them to HTML reports.

For each row: `notebooks/train_evaluate.ipynb` (train or load a checkpoint, evaluate refined and coarse) and
`notebooks/point_selection.ipynb` (point-selection figures and the subdivision sweep) are executed with the
row's parameters injected; the executed notebooks are kept in `runs/<row>/`, their HTML renderings written to
`reports/<row>.html` and `reports/<row>_points.html`. Then `results.ipynb` becomes `reports/results.html` and
`reports/index.html` links everything.

A failing row is recorded in `runs/<row>/status.json` with its error and does not stop the others. A row that
finished before (run.json present and status ok) is skipped unless `force`.

    python -m pointrend_core.workbook run --rows demo
    python -m pointrend_core.workbook run --rows pointrend_r50_voc --data-root data/VOCdevkit/VOC2012
    python -m pointrend_core.workbook run --rows all --released-dir checkpoints/   # evaluate the released files
    python -m pointrend_core.workbook run --rows pointrend_r50_voc,pointrend_r101_voc --data-root /data/voc
    python -m pointrend_core.workbook run --rows all --data-root pointrend_r50_voc=/data/voc ...
    python -m pointrend_core.workbook run --rows demo --dataset folder --data-root /data/my_shapes   # own data
"""

from __future__ import annotations

import argparse
import ast
import os
import signal
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import papermill
from papermill.exceptions import PapermillExecutionError
from traitlets.config import Config

from pointrend_core.checks import check_counts
from pointrend_core.config import DATASETS, ROWS, RUNS_DIR, RowConfig, default_run_dir, get_row, on_dataset
from pointrend_core.data.datasets import DemoShapes
from pointrend_core.data.demo import DEMO_NUM_IMAGES, demo_ids, make_demo_dataset
from pointrend_core.engine.run_folder import RunFolder, RunFolderBusy
from pointrend_core.interrupts import exit_code, signal_name, signals_raise_stopped
from pointrend_core.model.inference import PRECISION_DTYPES, Precision, check_precision
from pointrend_core.overrides import apply_overrides
from pointrend_core.workbook.html import render_html, write_index_html
from pointrend_core.workbook.notebook_progress import CELL_REPORTING_ENGINE, NotebookProgress
from pointrend_core.workbook.status import RowStatus, read_status
from pointrend_core.workbook.summary import terminal_summary
from pointrend_core.workbook.runs_table import unreadable_runs

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
"""The notebooks of a source checkout (they are not part of the installed package)."""

TRAIN_EVALUATE = "train_evaluate.ipynb"
POINT_SELECTION = "point_selection.ipynb"
RESULTS = "results.ipynb"


def parse_rows(spec: str) -> list[str]:
    """'demo' | 'all' | 'ROW,ROW' -> row names, validated against ROWS ('all' = the six table rows + demo)."""
    names = list(ROWS) if spec.strip() == "all" else [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ValueError(
            f"--rows {spec!r} names no row; expected demo, all, or a comma-separated list of: {', '.join(ROWS)}"
        )
    for name in names:
        get_row(name)  # raises KeyError listing the valid names
    return names


def parse_extra_params(items: Sequence[str]) -> dict[str, Any]:
    """['max_iters=2', 'crop_size=(64, 64)', 'device=cpu'] -> {'max_iters': 2, 'crop_size': (64, 64), 'device': 'cpu'}.

    Values are Python literals when they parse as one, otherwise strings.
    """
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--extra-param {item!r}: expected NAME=VALUE with a Python identifier as NAME")
        try:
            params[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            params[key.strip()] = text
    return params


def parse_data_roots(items: Sequence[str]) -> Path | dict[str, Path] | None:
    """--data-root values: one PATH for every row, or ROW=PATH pairs (one per row)."""
    if not items:
        return None
    pairs = [item.partition("=") for item in items]
    if len(items) == 1 and not (pairs[0][1] and pairs[0][0] in ROWS):  # one path, even one named like a row
        return Path(items[0])
    roots = {}
    for item, (row, sep, path) in zip(items, pairs):
        if not sep or row not in ROWS:
            raise ValueError(
                f"--data-root {item!r}: with several data roots each must be ROW=PATH, ROW one of: {', '.join(ROWS)}"
            )
        roots[row] = Path(path)
    return roots


def data_root_for(row: str, data_root: Path | Mapping[str, Path] | str | None) -> Path | None:
    """The data root given for `row` (a single path or this row's entry), else None (the row's default)."""
    if isinstance(data_root, Mapping):
        data_root = data_root.get(row)
    return Path(data_root) if data_root is not None else None


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged `parameters`."""
    return set(papermill.inspect_notebook(str(notebook)))


def _injectable(value: Any) -> Any:
    """papermill writes lists but not tuples as Python literals (a tuple would arrive as its string)."""
    if isinstance(value, (tuple, list)):
        return [_injectable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def execute(
    notebook: Path, output: Path, parameters: Mapping[str, Any], html_path: Path, *, row: str | None = None,
    progress: NotebookProgress | None = None,
) -> None:
    """Run `notebook` with `parameters` into `output`, then render `html_path`, also when a cell failed (the
    rendered error is the most useful report of a failure); the failure is re-raised after rendering.

    The kernel talks to us over IPC sockets in a private temporary folder rather than TCP: nothing else on
    the machine can connect to it, and the kernel has no reason to warn about unencrypted TCP. `progress`
    (optional) is told of every cell as it starts; `row` goes into the report's title.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="pointrend-kernel-") as sockets:
            papermill.execute_notebook(
                str(notebook),
                str(output),
                parameters={key: _injectable(value) for key, value in parameters.items()},
                kernel_name="python3",
                progress_bar=False,
                cwd=os.getcwd(),
                engine_name=CELL_REPORTING_ENGINE,
                on_cell_start=progress.cell_started if progress is not None else None,
                config=Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}}),
                # The kernel's own log (not the notebook's output) only ever said something when it was shut
                # down mid-cell, as a traceback of its closed socket; a dead kernel still fails the notebook.
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
            )
    finally:
        if output.is_file():
            render_html(output, html_path, row=row)


def _error_message(notebook: str, err: BaseException) -> str:
    if isinstance(err, PapermillExecutionError):
        return f"{notebook}: {err.ename}: {err.evalue}"
    return f"{notebook}: {type(err).__name__}: {err}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _ensure_demo_data(row: RowConfig, root: Path) -> None:
    """The demo data is generated on first use; other datasets must be in place (the dataset class reports a
    missing root with the layout it expects)."""
    if row.data.dataset is DemoShapes and not root.exists():
        make_demo_dataset(root, num_images=DEMO_NUM_IMAGES)
        counts = ", ".join(f"{len(ids)} {split}" for split, ids in demo_ids(DEMO_NUM_IMAGES).items())
        print(f"[workbook] demo data: {DEMO_NUM_IMAGES} images ({counts}) generated in {root}", flush=True)


def run_row(
    row: RowConfig, data_root: Path, out_dir: Path, reports_dir: Path,
    jobs: Sequence[tuple[Path, str, Mapping[str, Any]]], *, progress: bool = True,
) -> RowStatus:
    """Execute the row's notebooks in order (`jobs`: notebook, report file name, parameters), stopping at the
    first failure, and record the outcome in out_dir/status.json. A failure is returned, not raised; so is a
    run folder that another run holds (`RunFolderBusy`). `progress` draws a terminal bar per notebook."""
    try:
        with RunFolder(out_dir).hold():
            return _run_row(row, data_root, out_dir, reports_dir, jobs, progress)
    except RunFolderBusy as busy:
        return RowStatus(row=out_dir.name, ok=False, error=str(busy), finished=_now())


def _run_row(
    row: RowConfig, data_root: Path, out_dir: Path, reports_dir: Path,
    jobs: Sequence[tuple[Path, str, Mapping[str, Any]]], progress: bool,
) -> RowStatus:
    started = time.perf_counter()
    for _, html_name, _ in jobs:  # reports of an earlier run of this row must not pass for this run's
        (reports_dir / html_name).unlink(missing_ok=True)
    error = None
    step = "data"
    try:
        _ensure_demo_data(row, data_root)
        for notebook, html_name, parameters in jobs:
            step = notebook.name
            with NotebookProgress(out_dir.name, notebook, out_dir, enabled=progress) as bar:
                execute(notebook, out_dir / notebook.name, parameters, reports_dir / html_name, row=out_dir.name,
                        progress=bar)
    except Exception as err:  # a row's failure is its status, not the batch's end
        error = _error_message(step, err)
    status = RowStatus(
        row=out_dir.name,  # the row's name; with overrides, its run's (config.default_run_dir)
        ok=error is None,
        error=error,
        seconds=round(time.perf_counter() - started, 1),
        finished=_now(),
        reports=tuple(name for _, name, _ in jobs if (reports_dir / name).is_file()),
    )
    status.write(out_dir)
    return status


def is_finished(run_dir: Path) -> RowStatus | None:
    """The stored status when the row finished successfully before (run.json present), else None."""
    status = read_status(run_dir)
    if status is not None and status.ok and RunFolder(run_dir).run_record.is_file():
        return status
    return None


def run_rows(
    rows: Sequence[str],
    *,
    data_root: Path | Mapping[str, Path] | str | None = None,
    runs_dir: str | os.PathLike = RUNS_DIR,
    reports_dir: str | os.PathLike = "reports",
    max_iters: int | None = None,
    force: bool = False,
    device: str = "cpu",
    extra_params: Mapping[str, Any] | None = None,
    points: bool | Collection[str] = True,
    released_dir: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    progress: bool = True,
    dataset: str | None = None,
    precision: Precision = "fp32",
    overrides: Sequence[str] = (),
) -> dict[str, RowStatus]:
    """Run every row in `rows` (names from ROWS) and write the results report and reports/index.html.

    `data_root` is one path for every row, a {row: path} mapping, or None for each row's default root.
    `dataset` runs each row's recipe on that dataset instead (`config.on_dataset`): the run, its reports and
    its status are named `<row>_<dataset>` (`<row>_<folder name>`). A row that did not finish before
    continues its earlier run (resume); `force` starts it afresh (overwrite).
    `precision` is the inference precision of every evaluation and figure (fp32, bf16; fp16 on CUDA only).
    `overrides` (`section.field=value`, as `--set` takes them) change every row's recipe; such a run is named
    after its row and overrides (`config.default_run_dir`) and is never shown as the published row.
    `max_iters`, `device` and `extra_params` (any parameter the notebooks declare, e.g. crop_size,
    batch_size, gpus, checkpoint) are injected into the notebooks; a parameter no notebook declares is an
    error. `points` says for which rows the point-selection notebook runs: all (True), none (False) or the
    named ones. With `released_dir`, every row that has a released checkpoint (`RowConfig.release_file`)
    evaluates `released_dir/<release_file>` instead of training. `progress` shows a terminal bar per
    notebook (cell, training iteration, loss, ETA). Returns each row's status; skipped rows (finished
    before, not forced) carry `skipped=True`.
    """
    runs_dir, reports_dir = Path(runs_dir), Path(reports_dir)
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS_DIR
    parameters = {"max_iters": max_iters, "device": device, **(extra_params or {})}
    if precision != "fp32":  # the notebooks' default; other notebooks (--notebooks-dir) need not declare it
        parameters["precision"] = precision
    if overrides:  # likewise: the notebooks' default is none
        parameters["overrides"] = list(overrides)
    declared = _check_request(runs_dir, reports_dir, notebooks_dir, parameters, precision, device, released_dir)
    configs = {row: apply_overrides(on_dataset(get_row(row), dataset, data_root_for(row, data_root)), overrides)
               for row in rows}

    statuses: dict[str, RowStatus] = {}
    for row, cfg in configs.items():
        out_dir = runs_dir / default_run_dir(cfg).name
        name = out_dir.name
        previous = None if force else is_finished(out_dir)
        if previous is not None:
            statuses[name] = replace(previous, skipped=True)
            print(f"[workbook] {name}: finished before, skipped (use --force to re-run)", flush=True)
            continue
        root = cfg.data.resolve_root(data_root_for(row, data_root))
        row_parameters = dict(parameters)
        if released_dir is not None and cfg.release_file is not None:
            row_parameters["checkpoint"] = str(Path(released_dir, cfg.release_file).resolve())
        row_parameters |= {"config": row, "dataset": dataset, "data_root": str(root.resolve()),
                           "out_dir": str(out_dir.resolve()), "resume": not force, "overwrite": force}
        with_points = points if isinstance(points, bool) else row in points or name in points
        jobs = _jobs(notebooks_dir, name, row_parameters, declared, with_points)
        print(f"[workbook] {name}: running", flush=True)
        status = statuses[name] = run_row(cfg, root, out_dir, reports_dir, jobs, progress=progress)
        outcome = "ok" if status.ok else f"FAILED: {status.error}"
        print(f"[workbook] {name}: {outcome} ({status.seconds} s)", flush=True)
    write_reports(runs_dir, reports_dir, notebooks_dir, statuses, progress)
    return statuses


def _jobs(notebooks_dir: Path, name: str, parameters: Mapping[str, Any], declared: Mapping[str, set[str]],
          with_points: bool) -> list[tuple[Path, str, dict[str, Any]]]:
    """The notebooks of run `name` (train_evaluate, then point_selection when `with_points`): (notebook, report
    file name, the parameters it declares)."""
    wanted = [(TRAIN_EVALUATE, f"{name}.html")] + [(POINT_SELECTION, f"{name}_points.html")] * with_points
    return [(notebooks_dir / notebook, html_name, {k: v for k, v in parameters.items() if k in declared[notebook]})
            for notebook, html_name in wanted]


def _check_request(
    runs_dir: Path, reports_dir: Path, notebooks_dir: Path, parameters: Mapping[str, Any], precision: Precision,
    device: str, released_dir: str | os.PathLike | None,
) -> dict[str, set[str]]:
    """Everything `run_rows` can refuse before running anything; returns each notebook's declared parameters."""
    for option, folder in (("runs_dir", runs_dir), ("reports_dir", reports_dir)):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{option} {folder} is a file; expected a folder (or a new path)")
    for name in (TRAIN_EVALUATE, POINT_SELECTION, RESULTS):
        if not (notebooks_dir / name).is_file():
            raise FileNotFoundError(
                f"notebook {notebooks_dir / name} not found; run from a source checkout or pass notebooks_dir"
            )
    check_precision(precision, "cuda" if str(device).startswith("cuda") else "cpu")
    check_counts(parameters)
    if released_dir is not None and "checkpoint" in parameters:
        raise ValueError("give either released_dir (one checkpoint per row) or a checkpoint parameter, not both")
    declared = {name: declared_parameters(notebooks_dir / name) for name in (TRAIN_EVALUATE, POINT_SELECTION)}
    unknown = sorted(set(parameters) - set().union(*declared.values()))
    if unknown:
        raise ValueError(
            f"unknown notebook parameter(s) {', '.join(unknown)}; the notebooks declare: "
            f"{', '.join(sorted(set().union(*declared.values())))}"
        )
    return declared


def write_reports(runs_dir: Path, reports_dir: Path, notebooks_dir: Path, statuses: Mapping[str, RowStatus],
                  progress: bool = True) -> None:
    """The results report (results.ipynb over every run under `runs_dir`) and reports/index.html; a failing
    results notebook is said and does not stop the index, which links whatever exists."""
    try:
        with NotebookProgress("all rows", notebooks_dir / RESULTS, runs_dir, enabled=progress) as bar:
            execute(notebooks_dir / RESULTS, runs_dir / RESULTS, {"runs_dir": str(runs_dir.resolve())},
                    reports_dir / "results.html", progress=bar)
    except Exception as err:
        print(f"[workbook] results report failed: {_error_message(RESULTS, err)}", file=sys.stderr, flush=True)
    write_index_html(reports_dir, runs_dir, statuses)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pointrend_core.workbook", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the notebooks for some rows and write reports/")
    run.add_argument("--rows", required=True, help=f"demo | all | comma-separated names from: {', '.join(ROWS)}")
    run.add_argument(
        "--data-root", action="append", default=[], metavar="PATH|ROW=PATH",
        help="data root for every row, or ROW=PATH (repeatable); default: each row's default_root",
    )
    run.add_argument("--dataset", choices=tuple(DATASETS),
                     help="run each row's recipe on this dataset (a folder needs --data-root); runs are named <row>_<dataset>")
    run.add_argument("--runs-dir", default=str(RUNS_DIR))
    run.add_argument("--reports-dir", default="reports")
    run.add_argument(
        "--max-iters", type=int, default=None, help="stop training after N iterations (default: the full recipe)"
    )
    run.add_argument("--force", action="store_true", help="re-run rows that finished before")
    run.add_argument("--device", default="cpu")
    run.add_argument("--precision", choices=tuple(PRECISION_DTYPES), default="fp32",
                     help="inference precision of the evaluations and figures (fp16: CUDA only); run.json records it")
    run.add_argument("--no-points", action="store_true", help="skip the point-selection notebook")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="overrides",
                     help="change a field of every row's recipe, e.g. data.crop_size=384,384 (repeatable)")
    run.add_argument(
        "--released-dir", type=Path, metavar="DIR",
        help="evaluate the released sssegmentation checkpoints in DIR (model-zoo file names) instead of training",
    )
    run.add_argument(
        "--extra-param", action="append", default=[], metavar="NAME=VALUE",
        help="another notebook parameter (Python literal or string), e.g. gpus=2, checkpoint=x.pth, crop_size=(64,64)",
    )
    run.add_argument("--notebooks-dir", type=Path, default=None, metavar="DIR",
                     help="the notebooks to run (default: notebooks/ of this source checkout)")
    args = parser.parse_args(argv)
    # A `kill` (SIGTERM) or a closed terminal (SIGHUP) unwinds the runner as Ctrl-C does, so that papermill shuts
    # the notebook's kernel down: killed outright, the runner would leave it running, training, with nobody to
    # read its results.
    try:
        with signals_raise_stopped():
            return _run(parser, args)
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"\n[workbook] stopped by {signal_name(signum)}: the running notebook's kernel was shut down; rows "
              "that finished keep their reports, and a re-run continues with the others", file=sys.stderr, flush=True)
        return exit_code(signum)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        rows = parse_rows(args.rows)
        statuses = run_rows(
            rows,
            data_root=parse_data_roots(args.data_root),
            runs_dir=args.runs_dir,
            reports_dir=args.reports_dir,
            max_iters=args.max_iters,
            force=args.force,
            device=args.device,
            extra_params=parse_extra_params(args.extra_param),
            points=not args.no_points,
            released_dir=args.released_dir,
            notebooks_dir=args.notebooks_dir,
            dataset=args.dataset,
            precision=args.precision,
            overrides=args.overrides,
        )
    except (ValueError, KeyError, FileNotFoundError) as err:
        parser.error(err.args[0] if isinstance(err, KeyError) else str(err))  # KeyError's str() adds quotes
    print(terminal_summary(statuses, args.runs_dir, args.reports_dir), flush=True)
    unreadable = unreadable_runs(args.runs_dir)
    for path, reason in unreadable:
        print(f"[workbook] skipped an unreadable run record (shown as unreadable in the reports): {path}: {reason}",
              file=sys.stderr)
    return 0 if all(status.ok for status in statuses.values()) and not unreadable else 1


if __name__ == "__main__":
    sys.exit(main())
