"""The package installs whole: the wheel holds every tracked file under pointrend_core/, and a report renders
from the installed package outside the checkout (no file is found only because the tests run from it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_every_package_file_and_renders_a_report(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know the tracked files")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
         "-w", str(tmp_path / "dist"), str(REPO)],
        capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "dist").glob("pointrend_core-*.whl")
    tracked = subprocess.run(["git", "ls-files", "pointrend_core"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    missing = sorted(set(tracked) - shipped)
    assert not missing, f"tracked files missing from the wheel: {missing}"

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A report")])
    nbformat.write(notebook, tmp_path / "report.ipynb")
    code = ("import sys, pointrend_core.workbook.html as h; from pathlib import Path\n"
            "assert 'site' in h.__file__, h.__file__\n"
            "h.render_html(Path('report.ipynb'), Path('report.html'), row='demo')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path / "site")}
    # -I would also drop the site-packages of the environment (nbconvert); -P keeps the cwd off sys.path.
    done = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "A report" in (tmp_path / "report.html").read_text()
