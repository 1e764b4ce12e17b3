"""Two gloo processes on CPU: synchronised BatchNorm equals BatchNorm over the whole batch, and
`torchrun -m pointrend_core train` trains with DDP, writing files from rank 0 only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pointrend_core.config import DEMO
from pointrend_core.data.demo import make_demo_dataset
from pointrend_core.model import build_model

REPO = Path(__file__).resolve().parents[1]

_SYNC_BN_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from torch import nn
from pointrend_core.engine.distributed import CPUSyncBatchNorm, convert_sync_batchnorm, start_processes

processes = start_processes("cpu")
rank = processes.rank
torch.manual_seed(0)
inputs = {"bn2d": torch.randn(4, 3, 5, 6) * 3 + 1, "bn1d": torch.randn(4, 5, 7) - 2}
weights = {name: torch.randn_like(x) for name, x in inputs.items()}
result = {}
for name, module in (("bn2d", nn.BatchNorm2d(3)), ("bn1d", nn.BatchNorm1d(5))):
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    module, converted = convert_sync_batchnorm(nn.Sequential(module), torch.device("cpu"))
    assert converted == 1 and isinstance(module[0], CPUSyncBatchNorm)
    x = inputs[name][2 * rank : 2 * rank + 2].clone().requires_grad_()
    y = module(x)
    (y * weights[name][2 * rank : 2 * rank + 2]).sum().backward()
    result[name] = {"y": y.detach(), "grad_x": x.grad, "grad_weight": module[0].weight.grad,
                    "grad_bias": module[0].bias.grad, "running_mean": module[0].running_mean,
                    "running_var": module[0].running_var}
torch.save(result, f"{sys.argv[1]}/rank{rank}.pt")
dist.destroy_process_group()
"""


def _torchrun(args: list[str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cpu_sync_batchnorm_equals_batchnorm_over_the_whole_batch(tmp_path: Path) -> None:
    script = tmp_path / "sync_bn.py"
    script.write_text(_SYNC_BN_SCRIPT)
    completed = _torchrun([str(script), str(tmp_path)], cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    torch.manual_seed(0)
    inputs = {"bn2d": torch.randn(4, 3, 5, 6) * 3 + 1, "bn1d": torch.randn(4, 5, 7) - 2}
    weights = {name: torch.randn_like(x) for name, x in inputs.items()}
    for name, module in (("bn2d", nn.BatchNorm2d(3)), ("bn1d", nn.BatchNorm1d(5))):
        with torch.no_grad():
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.5, 0.5)
        x = inputs[name].clone().requires_grad_()
        y = module(x)
        (y * weights[name]).sum().backward()
        got = [r[name] for r in ranks]
        torch.testing.assert_close(torch.cat([g["y"] for g in got]), y.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.cat([g["grad_x"] for g in got]), x.grad, rtol=1e-5, atol=1e-5)
        # Each process holds the gradient of its own half of the loss; their sum is the whole-batch gradient.
        torch.testing.assert_close(got[0]["grad_weight"] + got[1]["grad_weight"], module.weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[0]["grad_bias"] + got[1]["grad_bias"], module.bias.grad, rtol=1e-5, atol=1e-5)
        for g in got:  # running statistics of the whole batch (unbiased variance) in both processes
            torch.testing.assert_close(g["running_mean"], module.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g["running_var"], module.running_var, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "demo", num_images=12, size=64)


@pytest.mark.slow
def test_torchrun_trains_with_ddp_and_sync_batchnorm_writing_from_rank_zero(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    completed = _torchrun(
        ["-m", "pointrend_core", "train", "--config", "demo", "--data-root", str(demo_root), "--out", str(out),
         "--crop", "64", "64", "--batch-size", "4", "--max-iters", "3", "--checkpoint-every", "2",
         "--device", "cpu", "--workers", "0", "--log-every", "1", "--no-progress", "--seed", "1"],
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.count("final checkpoint:") == 1  # printed by rank 0 only
    assert sorted(p.name for p in out.iterdir()) == [  # the lock goes when the run ends
        "checkpoint_final.pth", "checkpoint_last.pth", "metrics.jsonl", "progress.json", "tensorboard", "train.json"
    ]
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file: rank 0's
    # One record per step: a second writer would have doubled them.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3]

    batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in build_model(DEMO).modules())
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["per_process_batch"] == 2 and summary["batch_size"] == 4
    assert summary["synchronized_batchnorm_layers"] == batchnorms > 0
    assert summary["config"]["data"]["crop_size"] == [64, 64]

    state = torch.load(out / "checkpoint_final.pth", weights_only=True)
    assert state["world_size"] == 2 and state["iteration"] == 3
    assert state["model"].keys() == build_model(DEMO).state_dict().keys()  # no DDP "module." prefix
    assert len(state["rng_cpu"]) == 2 and not torch.equal(state["rng_cpu"][0], state["rng_cpu"][1])
