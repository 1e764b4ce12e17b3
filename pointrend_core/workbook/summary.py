"""The batch runner's closing summary in the terminal: what each row found, as one compact plain-text table.

A batch ends with the figures a user came for, as mmsegmentation's and detectron2's evaluations end with a
table, instead of only a path to the reports. The numbers come from the same places as the reports' (each
row's `runs/<row>/run.json` and `status.json`) and are rounded as the reports round them (2 decimals,
percent), so the terminal and the reports never disagree.

    row   outcome  mIoU refined  coarse  boundary refined  coarse  weakest class  training    verdict
    demo  ok              78.90   69.70             72.90   61.00  ring 56.90     4 min 22 s  —
    r50   FAILED   train_evaluate.ipynb: RuntimeError: ...
    [workbook] index: reports/index.html
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from pointrend_core.engine.intervals import verdict
from pointrend_core.engine.records import RunRecord
from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.workbook.status import RowStatus
from pointrend_core.workbook.tables import format_duration, run_intervals

HEADER = ("row", "outcome", "mIoU refined", "coarse", "boundary refined", "coarse", "weakest class", "training",
          "verdict")
"""Column titles; the two `coarse` columns follow the refined figure they compare with; the verdict is the
reports' (reproduced / below / above the published mIoU, "—" where nothing is published)."""


@dataclass(frozen=True)
class SummaryLine:
    """One row's line of the summary. Scores are percentages rounded to 2 decimals (as the reports show
    them), None when the run did not record them; `note` replaces the figures of a row without a run.json
    (its error line for a failed row)."""

    row: str
    outcome: str
    miou_refined: float | None = None
    miou_coarse: float | None = None
    boundary_refined: float | None = None
    boundary_coarse: float | None = None
    weakest_class: str | None = None
    weakest_iou: float | None = None
    train_seconds: float | None = None
    verdict: str | None = None
    note: str | None = None


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def line_from_record(row: str, outcome: str, record: RunRecord, run_dir: str | os.PathLike | None = None) -> SummaryLine:
    """The figures of one evaluated run: refined and coarse mIoU and boundary mIoU, the refined output's
    weakest scored class (classes without pixels, null in run.json, are not candidates), the training time,
    and the verdict against the published mIoU (from the run's intervals; `run_dir` finds its counts)."""
    refined, coarse = record.metrics.refined, record.metrics.coarse
    scored = {name: iou for name, iou in refined.IoU.items() if iou is not None}
    weakest = min(scored, key=scored.__getitem__) if scored else None
    return SummaryLine(
        row=row,
        outcome=outcome,
        miou_refined=_round(refined.mIoU),
        miou_coarse=_round(coarse.mIoU),
        boundary_refined=_round(refined.boundary_mIoU),
        boundary_coarse=_round(coarse.boundary_mIoU),
        weakest_class=weakest,
        weakest_iou=_round(scored[weakest]) if weakest is not None else None,
        train_seconds=record.training.wall_seconds if record.training is not None else None,
        verdict=_verdict(record, run_dir),
    )


def _verdict(record: RunRecord, run_dir: str | os.PathLike | None) -> str | None:
    if record.published_mIoU is None:
        return None
    intervals = run_intervals(record, run_dir)
    return verdict(intervals.refined_mIoU if intervals is not None else None, record.published_mIoU).text


def first_line(text: str) -> str:
    """The first non-empty line of an error (a failed notebook's error can carry the tail of a log)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def summary_lines(statuses: Mapping[str, RowStatus], runs_dir: str | os.PathLike) -> list[SummaryLine]:
    """One line per status, in order: a failed row as FAILED with its error's first line; a finished row with
    the figures of `runs_dir/<row>/run.json` ("ok", or "ok, earlier" for a row skipped as finished before).
    A finished row whose run.json is missing or unreadable says so instead of failing the summary."""
    lines = []
    for name, status in statuses.items():
        if not status.ok:
            lines.append(SummaryLine(name, "FAILED", note=first_line(status.error or "no error recorded")))
            continue
        outcome = "ok, earlier" if status.skipped else "ok"
        folder = RunFolder(Path(runs_dir) / name)
        path = folder.run_record
        if not path.is_file():
            lines.append(SummaryLine(name, outcome, note=f"no {path}"))
            continue
        try:
            lines.append(line_from_record(name, outcome, RunRecord.read(path), folder.path))
        except ValueError as unreadable:  # the batch is over: say what is wrong rather than lose the table
            lines.append(SummaryLine(name, outcome, note=first_line(str(unreadable))))
    return lines


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _cells(line: SummaryLine) -> tuple[str, ...]:
    weakest = "—" if line.weakest_class is None else f"{line.weakest_class} {_score(line.weakest_iou)}"
    training = "—" if line.train_seconds is None else format_duration(line.train_seconds)
    return (line.row, line.outcome, _score(line.miou_refined), _score(line.miou_coarse),
            _score(line.boundary_refined), _score(line.boundary_coarse), weakest, training, line.verdict or "—")


def format_summary(lines: Sequence[SummaryLine], index_html: str | os.PathLike) -> str:
    """The table as text: a header, one line per row (figures right-aligned; a row with a note shows the
    note after its outcome instead of figures), then the path of the reports' index page (as the runner's
    `[workbook] index:` line, which it always ended with)."""
    full = [_cells(line) for line in lines if line.note is None]
    widths = [max(len(cells[i]) for cells in [HEADER, *full]) for i in range(len(HEADER))]
    widths[0] = max(widths[0], *(len(line.row) for line in lines)) if lines else widths[0]
    widths[1] = max(widths[1], *(len(line.outcome) for line in lines)) if lines else widths[1]

    def join(cells: Sequence[str]) -> str:
        left = (0, 1, 6, 7, 8)  # names and texts left, numbers right
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    text = [join(HEADER).rstrip()]
    for line in lines:
        if line.note is None:
            text.append(join(_cells(line)).rstrip())
        else:
            text.append(f"{line.row.ljust(widths[0])}  {line.outcome.ljust(widths[1])}  {line.note}")
    text.append(f"[workbook] index: {index_html}")
    return "\n".join(text)


def terminal_summary(
    statuses: Mapping[str, RowStatus], runs_dir: str | os.PathLike, reports_dir: str | os.PathLike
) -> str:
    """What `python -m pointrend_core.workbook run` prints last: `format_summary` of the batch's rows, with
    reports_dir/index.html."""
    return format_summary(summary_lines(statuses, runs_dir), Path(reports_dir) / "index.html")


__all__ = ["SummaryLine", "line_from_record", "summary_lines", "format_summary", "terminal_summary"]
