"""workbook.explorer: the numbers of one view against what the package computes directly, the widgets driven
programmatically, the notebook under papermill, and one real JupyterLab session in headless Chromium.

Everything runs on a tiny PointRend (the demo row with few channels and 64 x 64 inputs, random weights whose
classifiers are scaled up so that the predictions vary) and a small demo dataset; a run folder holds its
checkpoint and a run.json written by `evaluate_run`, as a real run's would.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from torch import nn

from pointrend_core.checkpoints import save_checkpoint
from pointrend_core.config import DEMO, RowConfig
from pointrend_core.engine.evaluate import evaluate, evaluate_run, predict
from pointrend_core.engine.metrics import BoundaryIoU, ConfusionMatrix
from pointrend_core.labels import IGNORE_INDEX
from pointrend_core.model import PointRend, Subdivision
from pointrend_core.model.points import sample_training_points
from pointrend_core.workbook import analysis, explorer as ex
from pointrend_core.workbook.figures import colorize

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "explore.ipynb"
JUPYTER = Path(sys.executable).with_name("jupyter")

TINY = replace(
    DEMO,
    model=replace(DEMO.model, fpn_channels=16, scale_head_channels=8, point_head_channels=16,
                  train_num_points=64, subdivision_num_points=64),
    data=replace(DEMO.data, base_size=(64, 64)),
)
"""The demo row, small: 64 x 64 inputs (coarse grid 16 x 16), 64 points per step, 2 steps."""


def tiny_model(row: RowConfig = TINY, seed: int = 0) -> PointRend:
    torch.manual_seed(seed)
    model = PointRend(row.model)
    for head in (model.auxiliary_decoder[1], model.decoder[1]):  # confident, varied predictions
        nn.init.normal_(head.weight, std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A demo dataset (10 images of 64 x 64: 2 in val) and a run folder: checkpoint_final.pth + run.json."""
    from pointrend_core.data.demo import make_demo_dataset

    base = tmp_path_factory.mktemp("explorer")
    data = make_demo_dataset(base / "demo", num_images=10, size=64)
    run_dir = base / "runs" / "demo"
    checkpoint = save_checkpoint(run_dir / "checkpoint_final.pth", model=tiny_model())
    evaluate_run(TINY, checkpoint, data, run_dir, progress=False)
    return {"data": data, "run": run_dir, "checkpoint": checkpoint}


@pytest.fixture(scope="module")
def opened(run) -> ex.Explorer:
    """The run opened as the notebook opens it (once: loading the weights is the slow part)."""
    return ex.Explorer.open(run["run"])


@pytest.fixture
def state(opened) -> ex.Explorer:
    """A fresh explorer (settings, caches) of the opened run's model and split."""
    return ex.Explorer(opened.model, opened.row, dataset=opened.dataset, settings=opened.settings)


@pytest.fixture
def widget(state) -> ex.ExplorerWidget:
    return ex.ExplorerWidget(state)


def _direct_input(state: ex.Explorer) -> tuple[torch.Tensor, torch.Tensor]:
    sample = analysis.eval_sample(state.dataset, state.settings.image_index)
    return sample.input, sample.gt


# ----------------------------------------------------------------------------------------------------------
# The state and the pure functions


def test_open_uses_the_runs_recorded_row_checkpoint_and_split(run, opened) -> None:
    state = opened
    assert state.row.model == TINY.model and state.row.data.base_size == (64, 64)
    assert state.row.name == "demo"
    assert len(state.dataset) == 2 and state.dataset.root == run["data"]
    reference = tiny_model()
    for name, value in reference.state_dict().items():
        assert torch.equal(state.model.state_dict()[name], value), name
    assert state.settings == ex.ExplorerSettings.of_model(TINY.model)
    assert state.classes == tuple(state.dataset.classes)


class AsItIs(torch.nn.Module):
    """A module `evaluate` runs as it is (not a PointRend, so not prepared for inference)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize("steps, points", [(0, 8), (1, 16), (2, 64), (3, 50)])
def test_view_equals_the_models_forward_and_the_evaluation(state, steps: int, points: int) -> None:
    state.update(steps=steps, num_points=points)
    view = state.view()
    x, gt = _direct_input(state)
    with torch.inference_mode():
        out = state.model(x, subdivision_steps=steps, subdivision_num_points=points, record_steps=True)
    assert torch.equal(view.refined_logits, out.logits)
    assert torch.equal(view.coarse_logits, out.coarse_logits)
    assert len(view.subdivision) == len(view.step_seconds) == steps
    for mine, theirs in zip(view.subdivision, out.steps):
        assert torch.equal(mine.point_indices, theirs.point_indices)
        assert torch.equal(mine.point_coords, theirs.point_coords)
        assert torch.equal(mine.uncertainty, theirs.uncertainty)
    # Scored as the evaluation scores: predict (logits resized to the label size), argmax, the two meters.
    refined, coarse = predict(state.model, x, gt.shape, state.row.eval, subdivision=Subdivision(steps, points))
    assert torch.equal(view.refined_pred, refined.argmax(1)[0])
    assert torch.equal(view.coarse_pred, coarse.argmax(1)[0])
    # The explorer studies the model itself (eager float32); `evaluate` would run the folded fast path, whose
    # near-ties may fall the other way on another CPU. Called through a plain wrapper, it runs the same kernels.
    result = evaluate(AsItIs(state.model), state.dataset, state.row.eval, "cpu", state.model.num_classes,
                      progress=False, max_images=1, subdivision=Subdivision(steps, points))
    assert view.refined.mIoU == result.refined.mIoU
    assert view.refined.boundary_mIoU == result.refined_boundary.mIoU
    assert view.coarse.mIoU == result.coarse.mIoU
    assert view.coarse.boundary_mIoU == result.coarse_boundary.mIoU


def test_features_run_once_per_image(state, monkeypatch) -> None:
    calls = []
    features = state.model.features
    monkeypatch.setattr(state.model, "features", lambda images: calls.append(1) or features(images))
    for steps, points in [(2, 64), (1, 64), (3, 16), (0, 1)]:
        state.update(steps=steps, num_points=points)
        state.view()
        state.readout()
    assert len(calls) == 1
    state.update(image_index=1)
    state.view()
    assert len(calls) == 2
    state.update(image_index=0)
    state.view()
    assert len(calls) == 2  # cached
    assert state.has_features()


def test_pixel_readout_matches_point_indices_and_probabilities(state) -> None:
    state.update(steps=2, num_points=64)
    view = state.view()
    label_size = state.label_size()
    last = view.subdivision[-1]
    grid = view.grid(2)
    chosen = int(last.point_indices[0, 5])
    pixel = ex.pixel_of_cell((chosen // grid[1], chosen % grid[1]), grid, label_size)
    readout = ex.pixel_readout(state.model, state.features(), view, pixel)
    for step_pixel, step in zip(readout.steps, view.subdivision):
        h, w = step.uncertainty.shape[-2:]
        assert step_pixel.index == step_pixel.cell[0] * w + step_pixel.cell[1]
        assert step_pixel.refined == (step_pixel.index in step.point_indices[0].tolist())
        if step_pixel.refined:
            assert int(step.point_indices[0, step_pixel.rank]) == step_pixel.index
    assert readout.steps[-1].refined and readout.steps[-1].rank == 5
    # The point head at a refined cell of the last step is what the refined output holds there.
    cell = readout.steps[-1].cell
    torch.testing.assert_close(readout.steps[-1].point_probs, view.refined_logits[0, :, cell[0], cell[1]].softmax(0),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(readout.refined_probs, readout.steps[-1].point_probs, rtol=1e-5, atol=1e-6)
    c0 = readout.coarse_cell
    assert torch.equal(readout.coarse_probs, view.coarse_logits[0, :, c0[0], c0[1]].softmax(0))
    assert readout.gt == int(state.sample().gt[pixel])
    assert readout.refined_label == int(view.refined_pred[pixel])
    # A cell no step chose: every flag is off.
    all_chosen = [set(s.point_indices[0].tolist()) for s in view.subdivision]
    for row in range(label_size[0]):
        for col in range(label_size[1]):
            cells = [ex.cell_of((row, col), label_size, view.grid(i + 1)) for i in range(2)]
            if all(c[0] * view.grid(i + 1)[1] + c[1] not in all_chosen[i] for i, c in enumerate(cells)):
                quiet = ex.pixel_readout(state.model, state.features(), view, (row, col))
                assert not any(s.refined for s in quiet.steps) and all(s.rank is None for s in quiet.steps)
                return
    pytest.fail("every pixel was refined at some step")


def test_cell_mapping_and_centres() -> None:
    assert ex.cell_of((0, 0), (64, 64), (16, 16)) == (0, 0)
    assert ex.cell_of((63, 63), (64, 64), (16, 16)) == (15, 15)
    assert ex.cell_of((5, 9), (64, 64), (128, 128)) == (11, 19)  # the pixel centre 5.5 / 64 lies in cell 11
    assert ex.pixel_of_cell((11, 19), (128, 128), (64, 64)) == (5, 9)
    assert ex.pixel_of_cell((10, 18), (128, 128), (64, 64)) == (5, 9)
    assert ex.cell_of((2, 3), (4, 6), (8, 9)) == (5, 5)  # another grid and aspect
    from pointrend_core.model.points import uncertain_points_on_grid

    grid = torch.rand(1, 1, 7, 9)
    indices, coords = uncertain_points_on_grid(grid, 63)
    for index, xy in zip(indices[0].tolist(), coords[0]):
        assert torch.equal(ex.cell_centre((index // 9, index % 9), (7, 9))[0, 0], xy)


def test_candidates_follow_the_settings(state) -> None:
    state.update(train_num_points=40, oversample_ratio=2.5, importance_sample_ratio=0.5, seed=7)
    points = state.candidates()
    expected = sample_training_points(state.features().coarse_logits, 40, 2.5, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(points.candidates, expected.candidates) and torch.equal(points.points, expected.points)
    assert points.candidates.shape == (1, 100, 2) and points.num_uncertain == 20


def test_settings_are_validated(state) -> None:
    with pytest.raises(ValueError, match="steps >= 0"):
        ex.ExplorerSettings(steps=-1)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        ex.ExplorerSettings(importance_sample_ratio=1.5)
    with pytest.raises(IndexError, match="outside the 2 images"):
        state.update(image_index=2)
    with pytest.raises(ValueError, match="outside the 64x64 label"):
        ex.pixel_readout(state.model, state.features(), state.view(), (64, 0))
    assert state.update(pixel=[3, 4]).pixel == (3, 4)
    assert state.update(image_index=1).pixel is None  # a new image: the default pixel again


def test_an_image_file_with_and_without_its_label(run, state) -> None:
    dataset = state.dataset
    image, label = dataset.image_path(0), dataset.mask_path(0)
    with_label = ex.Explorer(state.model, state.row, sample=ex.file_sample(state.row, image, label))
    assert torch.equal(with_label.sample().input, state.sample().input)
    assert torch.equal(with_label.sample().gt, state.sample().gt)
    assert with_label.view().refined == state.view().refined
    without = ex.Explorer(state.model, state.row, sample=ex.file_sample(state.row, image))
    assert (without.sample().gt == IGNORE_INDEX).all()
    assert np.isnan(without.view().refined.mIoU) and np.isnan(without.view().coarse.boundary_mIoU)
    assert "n/a" in ex.summary_html(without.view(), without.features())
    assert "ignored / none" in ex.readout_html(without.readout(), without.classes)


def test_scores_are_the_meters_of_one_image() -> None:
    gt = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 1], [2, 2, 2, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 0, 1], [2, 2, 2, 2]])
    scores = ex.image_scores(pred, gt, 3, 0.02)
    confusion, boundary = ConfusionMatrix(3), BoundaryIoU(3, 0.02)
    confusion.update(pred, gt)
    boundary.update(pred, gt)
    assert scores == ex.Scores(confusion.compute().mIoU, boundary.compute().mIoU)


def test_a_run_trained_but_not_evaluated_opens_from_its_train_json(run, tmp_path) -> None:
    """No run.json: the row and its recorded settings come from train.json, the weights from the final
    checkpoint, the images from the recorded data root's validation split."""
    import shutil

    from pointrend_core.engine.records import TrainRecord, config_json

    trained = replace(TINY, data=replace(TINY.data, default_root=str(run["data"])))
    shutil.copy(run["checkpoint"], tmp_path / "checkpoint_final.pth")
    TrainRecord(row="demo", config=config_json(trained), iterations=2).write(tmp_path / "train.json")
    state = ex.Explorer.open(tmp_path)
    assert state.row.model == TINY.model and len(state.dataset) == 2 and state.dataset.root == run["data"]
    assert torch.equal(state.model.decoder[1].weight, tiny_model().decoder[1].weight)
    (tmp_path / "train.json").unlink()
    with pytest.raises(FileNotFoundError, match="holds neither run.json nor train.json: not a run folder"):
        ex.Explorer.open(tmp_path)


def test_row_of_run_names_rows_it_cannot_rebuild(run, tmp_path) -> None:
    record = json.loads((run["run"] / "run.json").read_text())
    record["row"] = "demo_shapes"
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="'demo_shapes', which is not a row"):
        ex.row_of_run(tmp_path)
    assert ex.row_of_run(tmp_path, "demo") == DEMO  # another row than the record's: as configured


# ----------------------------------------------------------------------------------------------------------
# The widgets, driven programmatically


def _panel(fig, index: int) -> np.ndarray:
    """The picture of panel `index` of a figure (its first image)."""
    return np.asarray(fig.axes[index].get_images()[0].get_array())


def test_steps_and_points_controls_redraw_with_the_models_numbers(widget) -> None:
    state = widget.explorer
    x, gt = _direct_input(state)
    before = widget.images["overview"].value
    assert "2 steps × 64 points" in widget.summary.value
    assert len(widget.figures["steps"].axes) == 2 * 2 + 1  # two rows per step and the colour bar

    widget.controls["steps"].value = 1
    widget.controls["num_points"].value = 20
    view = state.view()
    assert (view.steps, view.num_points) == (1, 20)
    with torch.inference_mode():
        direct = state.model(x, subdivision_steps=1, subdivision_num_points=20).logits
    assert torch.equal(view.refined_logits, direct)
    refined = predict(state.model, x, gt.shape, state.row.eval, subdivision=Subdivision(1, 20))[0].argmax(1)[0]
    assert np.array_equal(_panel(widget.figures["overview"], 2), colorize(refined, state.palette))
    assert len(widget.figures["steps"].axes) == 2 * 1 + 1
    assert len(widget.figures["steps"].axes[0].collections[0].get_offsets()) == 20  # the chosen points
    assert widget.images["overview"].value != before
    assert "1 step × 20 points" in widget.summary.value
    assert f"{100 * view.refined.mIoU:.1f}" in widget.summary.value
    assert widget.timing.value.count("step ") == 1 and "(cached)" in widget.timing.value

    widget.controls["steps"].value = 0
    assert torch.equal(state.view().refined_logits, state.view().coarse_logits)
    assert "0 subdivision steps" in widget.figures["steps"].texts[0].get_text()
    assert "no subdivision step" in widget.readout.value


def test_pixel_controls_show_probabilities_and_refined_flags(widget) -> None:
    state = widget.explorer
    view = state.view()
    grid = view.grid(2)
    chosen = int(view.subdivision[1].point_indices[0, 0])
    row, col = ex.pixel_of_cell((chosen // grid[1], chosen % grid[1]), grid, state.label_size())
    assert (widget.controls["row"].value, widget.controls["col"].value) == state.pixel()  # the default pixel
    widget.controls["row"].value = row
    widget.controls["col"].value = col
    assert state.settings.pixel == (row, col)
    readout = state.readout()
    assert readout.steps[1].refined and readout.steps[1].rank == 0
    assert "<b class='pr-refined-2'>refined (point #0)</b>" in widget.readout.value
    flag = "refined" if readout.steps[0].refined else "not refined"
    assert f"<b class='pr-refined-1'>{flag}" in widget.readout.value
    assert f"{100 * float(readout.coarse_probs.max()):.1f}" in widget.readout.value
    # The ring marks the pixel in every panel.
    marker = widget.figures["overview"].axes[3].collections[0].get_offsets()[0]
    assert np.allclose(marker, [(col + 0.5) / 64, (row + 0.5) / 64])


def test_training_controls_redraw_only_the_candidates(widget) -> None:
    state = widget.explorer
    overview = widget.figures["overview"]
    widget.controls["train_num_points"].value = 30
    widget.controls["oversample_ratio"].value = 4.0
    widget.controls["importance_sample_ratio"].value = 0.5
    widget.controls["seed"].value = 3
    assert widget.figures["overview"] is overview  # nothing else was redrawn
    points = state.candidates()
    expected = sample_training_points(state.features().coarse_logits, 30, 4.0, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(points.points, expected.points)
    axes = widget.figures["candidates"].axes
    assert np.allclose(axes[1].collections[0].get_offsets(), expected.candidates[0].numpy())  # 120 candidates
    assert len(axes[2].collections[0].get_offsets()) == 15 and len(axes[2].collections[1].get_offsets()) == 15


def test_image_control_changes_the_image_and_the_pixel_range(widget) -> None:
    state = widget.explorer
    first = widget.images["overview"].value
    widget.controls["image"].value = 1
    assert state.sample().title == state.dataset.ids[1]
    assert html.escape(state.dataset.ids[1]) in widget.summary.value
    assert widget.images["overview"].value != first
    assert widget.controls["row"].max == 63
    assert (widget.controls["row"].value, widget.controls["col"].value) == state.pixel()
    assert "(cached)" not in widget.timing.value


def test_snapshot_holds_the_figures_and_numbers(state) -> None:
    page = ex.snapshot_html(state)
    assert page.count('<img src="data:image/png;base64,') == 3
    assert "2 steps × 64 points" in page and "pixel (row" in page and "time: features" in page


# ----------------------------------------------------------------------------------------------------------
# The notebook


def test_notebook_is_stored_clean() -> None:
    book = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(book)
    assert book.metadata.kernelspec.name == "python3"
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert [cell for cell in code if "parameters" in cell.metadata.get("tags", [])] == code[:1]
    import papermill

    assert {"run_dir", "data_root", "image_index", "device", "config", "checkpoint"} <= set(
        papermill.inspect_notebook(str(NOTEBOOK)))


@pytest.mark.slow
def test_notebook_executes_under_papermill_into_a_static_report(run, tmp_path, monkeypatch) -> None:
    import papermill

    from pointrend_core.workbook.html import render_html

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "explore.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", progress_bar=False, cwd=str(tmp_path),
        parameters={"run_dir": str(run["run"]), "image_index": 1, "steps": 1, "num_points": 32},
    )
    book = nbformat.read(out, as_version=4)
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    page = render_html(out, tmp_path / "explore.html").read_text()
    assert page.count("data:image/png;base64,") >= 3
    assert "1 step × 32 points" in page and "demo_00009" in page


# ----------------------------------------------------------------------------------------------------------
# One real JupyterLab session in headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(folder: Path) -> None:
    """User settings of the session: no news or update toasts over the page, every cell kept in the DOM."""
    for plugin, values in {
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    }.items():
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _notebook_copy(folder: Path, parameters: dict[str, object]) -> Path:
    book = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n" + "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    path = folder / "explore.ipynb"
    nbformat.write(book, path)
    return path


def start_lab(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """JupyterLab on a free localhost port with a random token, serving `folder`; returns (process, base URL
    with the token). The process leads its own group, so that killing the group ends its kernels too."""
    port, token = _free_port(), os.urandom(12).hex()
    command = [
        str(JUPYTER), "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port_retries=0", f"--ServerApp.token={token}", f"--notebook-dir={folder}",
        "--LabApp.expose_app_in_browser=True",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    with open(folder.parent / "lab.log", "wb") as log:  # the server keeps its own copy of the descriptor
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (folder.parent / "lab.log").read_text()
            raise RuntimeError(f"JupyterLab exited with {process.returncode}: {log}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as response:
                if response.status == 200:
                    return process, f"{url}/lab/tree/explore.ipynb?token={token}&reset"
        except OSError:
            time.sleep(0.2)
    stop_lab(process)
    raise RuntimeError(f"JupyterLab did not answer within 40 s: {(folder.parent / 'lab.log').read_text()}")


def stop_lab(process: subprocess.Popen) -> None:
    """End JupyterLab's process group (server and kernels): SIGTERM, then SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            os.killpg(process.pid, signal.SIGKILL)  # leftover kernels of the group
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _chromium(size: tuple[int, int]):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={size[0]},{size[1]}", "--hide-scrollbars"):
        options.add_argument(argument)
    # The driver and browser are the system's: Selenium Manager (which would download them) never runs.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


_SUMMARY = ".pr-explorer-summary"


def _summary_text(driver) -> str:
    return driver.execute_script(
        f"const e = document.querySelector('{_SUMMARY}'); return e ? e.innerText : '';")


def drive_explorer(workdir: Path, parameters: dict[str, object], screenshot: Path | None = None,
                   size: tuple[int, int] = (1500, 2300), timeout: float = 60) -> tuple[str, str]:
    """Open a copy of the explorer notebook with `parameters` in JupyterLab in headless Chromium, run every
    cell, move the steps slider one step down with the keyboard; returns the summary text before and after
    (and saves a screenshot of the page after the change, code cells collapsed, to `screenshot`).

    docs/explorer.png is made with it on the trained demo run: `drive_explorer(Path(tmp), {"run_dir":
    "<checkout>/runs/demo", "image_index": 5, "steps": 3}, Path("docs/explorer.png"), size=(1400, 2400))`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    notebooks, settings = workdir / "notebooks", workdir / "settings"
    notebooks.mkdir(parents=True)
    _notebook_copy(notebooks, parameters)
    _settings(settings)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(workdir / "ws"),
           "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"), "JUPYTER_CONFIG_DIR": str(workdir / "config"),
           "OMP_NUM_THREADS": "1"}
    process, url = start_lab(notebooks, env)
    driver = None
    try:
        driver = _chromium(size)
        wait = WebDriverWait(driver, timeout, poll_frequency=0.2)
        driver.get(url)
        kernel_idle = (
            "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            "const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
            "return !!(k && k.status === 'idle' && w.content && w.content.widgets.length > 0);"
        )
        wait.until(lambda d: d.execute_script(kernel_idle))
        driver.execute_script("window.jupyterapp.commands.execute('application:toggle-left-area');"
                              "window.jupyterapp.commands.execute('notebook:run-all-cells');")
        slider = ".pr-explorer-steps .noUi-handle"
        wait.until(lambda d: "points" in _summary_text(d) and d.find_elements(By.CSS_SELECTOR, slider))
        wait.until(lambda d: "ready" in d.find_element(By.CSS_SELECTOR, ".pr-explorer-status").text)
        before = _summary_text(driver)
        handle = driver.find_element(By.CSS_SELECTOR, slider)
        handle.click()  # focus; a click on the handle itself does not move it
        handle.send_keys(Keys.ARROW_LEFT)
        wait.until(lambda d: _summary_text(d) not in ("", before))
        wait.until(lambda d: "ready" in d.find_element(By.CSS_SELECTOR, ".pr-explorer-status").text)
        after = _summary_text(driver)
        if screenshot is not None:
            driver.execute_script("window.jupyterapp.commands.execute('notebook:hide-all-cell-code');")
            driver.execute_script("document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer, "
                                  ".jp-NotebookPanel .jp-Notebook').scrollTop = 0;")
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('.jp-OutputArea-output img')]"
                ".every(i => i.complete && i.naturalWidth > 0);"))
            driver.save_screenshot(str(screenshot))
        return before, after
    finally:
        if driver is not None:
            driver.quit()
        stop_lab(process)


@pytest.mark.slow
@pytest.mark.browser
def test_the_explorer_runs_in_jupyterlab_and_answers_a_slider(run, tmp_path) -> None:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs the system's chromium and chromedriver (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="needs selenium (pip install selenium)")
    start = time.monotonic()
    before, after = drive_explorer(
        tmp_path / "lab", {"run_dir": str(run["run"]), "image_index": 0, "device": "cpu"},
        screenshot=tmp_path / "explorer.png",
    )
    assert "2 steps × 64 points" in before, before
    assert "1 step × 64 points" in after, after
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
    assert time.monotonic() - start < 90
