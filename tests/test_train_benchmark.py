"""benchmarks/train.py runs the trainer's own step in both memory formats and marks the one the trainer picks
(its timings are not judged here: timing goals live in the benchmark's own tables)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from pointrend_core.engine.memory_format import channels_last_by_default

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train.py"


TINY_RUN = ["--config", "demo", "--crop", "64", "64", "--batch-size", "1", "--iters", "1", "--warmup", "0",
            "--eval-images", "0", "--threads", "1", "--json"]


def _run(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *TINY_RUN, *extra], capture_output=True, text=True,
                          timeout=300, check=False)


def test_times_both_layouts_and_marks_the_trainers_default() -> None:
    done = _run()
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    default = "channels-last" if channels_last_by_default(torch.device("cpu"), "fp32") else "nchw"
    assert found["default_layout"] == default
    steps = {r["layout"]: r for r in found["results"] if "layout" in r}
    assert sorted(steps) == ["channels-last", "nchw"]
    for layout, step in steps.items():
        assert step["batch"] == 1 and step["input"] == "64x64" and step["timed"] == 1 and step["seconds"] > 0
        assert step["phase"].endswith("(the trainer's default here)") is (layout == default)
    table = done.stdout.splitlines()[:-1]
    assert any(line.startswith("| train step, NCHW") for line in table)
    assert "sssegmentation" not in done.stdout  # no reference without --ssseg-root


def test_layout_default_times_the_trainers_layout_once() -> None:
    done = _run("--layouts", "default", "nchw", "default")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    layouts = [r["layout"] for r in found["results"] if "layout" in r]
    assert layouts == list(dict.fromkeys([found["default_layout"], "nchw"]))


def test_the_reference_step_is_refused_for_a_network_that_is_not_the_references() -> None:
    done = _run("--ssseg-root", "/nonexistent")
    assert done.returncode == 2 and "demo's network is not sssegmentation's PointRend" in done.stderr
    assert "Traceback" not in done.stderr
