"""The HTML the workbook writes: each executed notebook as a self-contained report (`render_html`) and
`reports/index.html`, which holds the results table and links every report (`write_index_html`)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Mapping

import nbformat
from nbconvert import HTMLExporter

from pointrend_core.config import ROWS
from pointrend_core.files import atomic_write_text
from pointrend_core.workbook.status import RowStatus, read_statuses
from pointrend_core.workbook.runs_table import NOT_RUN, results_table
from pointrend_core.workbook.tables import to_the_minute

REPORT_TEMPLATE = Path(__file__).resolve().parent / "report_template" / "report.html.j2"
"""nbconvert template of the reports: JupyterLab's look, inputs hidden, a link back to the index, the run's
parameters as a table, logs drawn as logs, nothing fetched from the network."""


def notebook_title(notebook: nbformat.NotebookNode) -> str:
    """The text of the notebook's first level-1 Markdown heading ('' when it has none)."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def display_value(value: Any, base: Path) -> str:
    """A parameter value as a reader wants it: paths inside `base` relative to it, the rest as Python shows it."""
    if isinstance(value, str) and os.path.isabs(value):
        try:
            return os.path.relpath(value, base) if Path(value).resolve().is_relative_to(base.resolve()) else value
        except ValueError:  # another drive (Windows)
            return value
    return repr(value) if not isinstance(value, str) else value


def render_html(notebook_path: Path, html_path: Path, *, row: str | None = None) -> Path:
    """Executed notebook -> a self-contained HTML report (figures embedded as data URIs), written atomically.

    The page shows outputs and Markdown only (no code), is titled by the notebook's first heading (after
    "<row>: " when a row is given), links back to `index.html` beside it, and lists the parameters papermill
    injected, paths relative to the working directory.
    """
    notebook = nbformat.read(notebook_path, as_version=4)
    heading = notebook_title(notebook) or Path(notebook_path).stem
    notebook.metadata["title"] = f"{row}: {heading}" if row else heading
    injected = notebook.metadata.get("papermill", {}).get("parameters", {})
    exporter = HTMLExporter(
        template_file=str(REPORT_TEMPLATE), exclude_input=True, exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    report = {"parameters": [(name, display_value(value, Path.cwd())) for name, value in injected.items()]}
    body, _ = exporter.from_notebook_node(notebook, resources={"report": report})
    return atomic_write_text(html_path, body)


_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.failed { color: #b00; }
pre { background: #f6f6f6; padding: 0.5em; white-space: pre-wrap; }
"""


def _link(reports_dir: Path, name: str, label: str) -> str:
    if not (reports_dir / name).is_file():
        return ""
    return f'<a href="{html.escape(name)}">{html.escape(label)}</a>'


def index_html(reports_dir: str | os.PathLike, runs_dir: str | os.PathLike, statuses: Mapping[str, RowStatus]) -> str:
    """The text of reports/index.html (see `write_index_html`)."""
    reports = Path(reports_dir)
    table = results_table(runs_dir).reset_index().to_html(escape=True, border=0, index=False)
    names = list(ROWS) + sorted(set(statuses) - set(ROWS))
    lines = []
    for name in names:
        status = statuses.get(name)
        if status is None:
            state, links, error = NOT_RUN, "", ""
        else:
            state = "ok" if status.ok else '<span class="failed">failed</span>'
            links = " · ".join(filter(None, (_link(reports, r, r) for r in status.reports)))
            error = f"<pre>{html.escape(status.error)}</pre>" if status.error else ""
        finished = html.escape(to_the_minute(status.finished)) if status else ""
        lines.append(
            f"<tr><td>{html.escape(name)}</td><td>{state}</td><td>{finished}</td>"
            f"<td>{links}</td><td style='text-align:left'>{error}</td></tr>"
        )
    overview = [_link(reports, "results.html", "results notebook (the table with per-row details)")]
    overview += [
        _link(reports, page.name, f"point selection: {page.stem.removesuffix('_points')}")
        for page in sorted(reports.glob("*_points.html"))
    ]
    overview_items = "".join(f"<li>{item}</li>" for item in overview if item)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>PointRend reproduction: reports</title>
<style>{_STYLE}</style></head>
<body>
<h1>PointRend (sssegmentation model zoo): reproduction reports</h1>
<h2>Results</h2>
<p>Scores in percent over each validation split. <b>mIoU</b>: mean over classes of intersection over union
(one confusion matrix per split, as the model zoo computes it). <b>Boundary IoU</b>: the same, counted only in
a band around object outlines (2&nbsp;% of the image diagonal), where the point head works. <b>Refined</b> is
PointRend's output; <b>coarse</b> the coarse head's output upsampled, without the point head.
<b>Difference</b>: reproduced (refined) minus published, in points. <b>95&nbsp;% interval</b>: a bootstrap
interval of the reproduced mIoU over the validation images; <b>verdict</b>: <i>reproduced</i> when the
published value lies inside it, else <i>below</i> / <i>above</i> with the difference and its interval.
<b>Gain refined − coarse</b>: paired interval of what the point head adds, significant only when it excludes
zero. The interval covers the choice of validation images, not training randomness (<b>seeds</b>: the spread
over several runs of a row); the method is explained in docs/intervals.md in the project. Rows without an
evaluation are shown as "{NOT_RUN}".</p>
{table}
<h2>Reports and visualizations</h2>
<ul>{overview_items or "<li>none yet</li>"}</ul>
<h2>Rows</h2>
<table><thead><tr><th>row</th><th>status</th><th>finished</th><th>reports</th><th>error</th></tr></thead>
<tbody>
{chr(10).join(lines)}
</tbody></table>
</body></html>
"""


def write_index_html(
    reports_dir: str | os.PathLike,
    runs_dir: str | os.PathLike,
    statuses: Mapping[str, RowStatus] | None = None,
) -> Path:
    """Write `reports_dir/index.html` atomically: the results table, every row's status with links to its
    reports (failed rows with their error), links to the results and point-selection reports.

    `statuses` default to the `status.json` files under `runs_dir`; given ones take precedence per row.
    """
    merged = {**read_statuses(runs_dir), **(statuses or {})}
    return atomic_write_text(Path(reports_dir) / "index.html", index_html(reports_dir, runs_dir, merged))
