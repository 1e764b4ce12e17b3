"""What a notebook being executed by the batch runner is doing, shown in the terminal: which cell runs, and
a bar of the training iterations while it trains.

papermill runs the kernel out of sight; `CELL_REPORTING_ENGINE` is papermill's own engine plus a callback
before each cell, and `NotebookProgress` turns those callbacks and the run folder's `progress.json` into a
tqdm display (or plain lines when stderr is not a terminal).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from papermill.engines import NBClientEngine, papermill_engines
from tqdm import tqdm

from pointrend_core.engine.progress import TrainProgress, read_progress
from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.workbook.tables import format_duration


class _CellReportingEngine(NBClientEngine):
    """papermill's own engine, plus a callback `on_cell_start(index, cell, notebook)` before each cell runs."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, on_cell_start: Any = None, **kwargs: Any) -> Any:
        if on_cell_start is not None:
            cell_start = nb_man.cell_start

            def reporting_cell_start(cell: Any, cell_index: int | None = None, **more: Any) -> Any:
                on_cell_start(cell_index, cell, nb_man.nb)
                return cell_start(cell, cell_index, **more)

            nb_man.cell_start = reporting_cell_start
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


CELL_REPORTING_ENGINE = "pointrend-cell-reporting"
papermill_engines.register(CELL_REPORTING_ENGINE, _CellReportingEngine)


class NotebookProgress:
    """What a row's notebook is doing, in the terminal: which cell runs (and under which heading), and while
    the notebook trains, a tqdm bar of the training iterations with the loss and the time left, read from
    the run folder's `progress.json` (the kernel's own output goes to the notebook, not to the terminal).

    Use as a context manager around `execute(..., progress=this)`; a thread polls the run folder twice a
    second. Training snapshots older than the notebook's start (an earlier run's) are ignored. When stderr is
    not a terminal (a log file, CI) it prints plain lines instead: one per cell, one per 10 % of training.
    """

    POLL_SECONDS = 0.5

    def __init__(self, row: str, notebook: Path, run_dir: Path, *, enabled: bool = True) -> None:
        self.label = f"{row} · {notebook.stem}"
        self.run_dir = run_dir
        self.enabled = enabled
        self.interactive = sys.stderr.isatty()
        self._started = time.time()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._status: tqdm | None = None
        self._training: tqdm | None = None
        self._logged_decile = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "NotebookProgress":
        if self.enabled:
            if self.interactive:
                self._status = tqdm(total=None, desc=f"{self.label}: starting the kernel", bar_format="{desc} [{elapsed}]",
                                    dynamic_ncols=True, file=sys.stderr, position=0, leave=False)
            self._thread = threading.Thread(target=self._poll, name="notebook-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll_once()
        for bar in (self._training, self._status):
            if bar is not None:
                bar.close()

    def cell_started(self, index: int | None, cell: Any, notebook: Any) -> None:
        """papermill's callback: shows the code cell about to run, numbered among code cells, with the
        nearest Markdown heading above it."""
        code_cells = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"]
        if not self.enabled or index not in code_cells:
            return
        heading = next(
            (line.lstrip("#").strip() for c in reversed(notebook.cells[:index]) if c.cell_type == "markdown"
             for line in c.source.splitlines() if line.startswith("#")),
            "",
        )
        text = f"{self.label}: cell {code_cells.index(index) + 1}/{len(code_cells)}" + (f" ({heading})" if heading else "")
        with self._lock:
            if self._status is not None:
                self._status.set_description_str(text)
            else:
                print(f"[workbook] {text}", file=sys.stderr, flush=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            self._poll_once()

    def _poll_once(self) -> None:
        snapshot = read_progress(RunFolder(self.run_dir).progress_file)
        with self._lock:
            if self._status is not None:
                self._status.refresh()  # the elapsed time of the cell line
        if snapshot is None or snapshot.written_at < self._started:
            return
        with self._lock:
            if self.interactive:
                self._show_bar(snapshot)
            else:
                self._log_line(snapshot)

    def _show_bar(self, snapshot: TrainProgress) -> None:
        if self._training is None:
            self._training = tqdm(total=snapshot.max_iters, initial=snapshot.start_iteration, desc="  training",
                                  unit="it", dynamic_ncols=True, file=sys.stderr, position=1, leave=False)
        self._training.set_postfix(loss=f"{snapshot.loss:.3f}", lr=f"{snapshot.lr:.2e}", refresh=False)
        self._training.update(snapshot.iteration - self._training.n)

    def _log_line(self, snapshot: TrainProgress) -> None:
        decile = 10 * snapshot.iteration // max(snapshot.max_iters, 1)
        if decile == self._logged_decile:
            return
        self._logged_decile = decile
        eta = snapshot.eta_seconds
        print(f"[workbook] {self.label}: training {snapshot.iteration}/{snapshot.max_iters}, loss {snapshot.loss:.3f}"
              + (f", {format_duration(eta)} left" if eta is not None and snapshot.iteration < snapshot.max_iters else ""),
              file=sys.stderr, flush=True)
