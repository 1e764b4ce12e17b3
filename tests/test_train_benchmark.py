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


def test_times_both_layouts_and_marks_the_trainers_default() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", "demo", "--crop", "64", "64", "--batch-size", "1", "--iters", "1",
         "--warmup", "0", "--eval-images", "0", "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=300, check=True)
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
