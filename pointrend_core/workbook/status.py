"""`RowStatus`: the batch runner's record of one row's outcome, stored as `runs/<row>/status.json`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.files import atomic_write_json


@dataclass(frozen=True)
class RowStatus:
    """Outcome of one row in the batch runner, stored as `runs/<row>/status.json`.

    `reports` are file names inside the reports folder (e.g. "demo.html", "demo_points.html"); `error` names
    the notebook that failed and the exception. `skipped` is True when the row had finished in an earlier
    invocation and was not re-run (never stored).
    """

    row: str
    ok: bool
    error: str | None = None
    seconds: float | None = None
    finished: str | None = None
    reports: tuple[str, ...] = field(default_factory=tuple)
    skipped: bool = False

    def write(self, run_dir: str | os.PathLike) -> Path:
        record = asdict(self)
        del record["skipped"]
        return atomic_write_json(RunFolder(run_dir).status_file, record)


def read_status(run_dir: str | os.PathLike) -> RowStatus | None:
    """The status stored in `run_dir/status.json`, or None when the row never ran through the batch runner."""
    path = RunFolder(run_dir).status_file
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    try:
        return RowStatus(
            row=record["row"],
            ok=bool(record["ok"]),
            error=record.get("error"),
            seconds=record.get("seconds"),
            finished=record.get("finished"),
            reports=tuple(record.get("reports", ())),
        )
    except KeyError as missing:
        raise ValueError(
            f"{path} lacks the key {missing}; expected a status written by pointrend_core.workbook"
        ) from None


def read_statuses(runs_dir: str | os.PathLike) -> dict[str, RowStatus]:
    """Every readable `runs_dir/*/status.json`, by row name (an unreadable one counts as no status: the row
    shows as not run rather than stopping the index)."""
    root = Path(runs_dir)
    found = {}
    for path in sorted(root.glob(f"*/{RunFolder.STATUS}")) if root.is_dir() else ():
        try:
            status = read_status(path.parent)
        except ValueError:
            continue
        if status is not None:
            found[status.row] = status
    return found
