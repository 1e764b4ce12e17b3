"""benchmarks/inference.py's judging, not its timings: how the targets are read from a table of measured
paths, and the per-round GEMM probe it compares each forward with."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("inference_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["inference_benchmark"] = module
    spec.loader.exec_module(module)
    return module


bench = _load_script()
RATES = {"fp32 matmul": 90.0, "fp32 oneDNN": 120.0, "bf16 matmul": 1.0, "bf16 oneDNN": 14.0}


def _row(size: str, path: str, *, same_round: float, start: float, speed_up: float, subdiv: float) -> dict:
    return {"size": size, "path": path, "% fp32 GEMM same round": same_round, "% fp32 GEMM": start,
            "round GEMM GFLOP/s": "110-130", "speed-up vs eager": speed_up, "subdiv share %": subdiv}


def _targets(rows: list[dict], bf16_native: bool = False) -> pd.DataFrame:
    return bench.targets(pd.DataFrame(rows), None, RATES, bf16_native).set_index("target")


def test_the_512_target_is_judged_on_the_best_fast_paths_same_round_share() -> None:
    rows = [
        _row("512x512", "eager fp32", same_round=95, start=95, speed_up=1.0, subdiv=17),  # never a candidate
        _row("512x512", "fast fp32", same_round=78, start=76, speed_up=1.5, subdiv=16),
        _row("512x512", "fast fp32+compile", same_round=85, start=79, speed_up=1.7, subdiv=16),
    ]
    target = _targets(rows).loc["fp32 R-50 512x512 >= 80 % of the fp32 GEMM limit"]
    assert target["best path"] == "fast fp32+compile" and bool(target["met"]) is True
    assert target["measured"] == ("85 % of the same round's GEMM (110-130 GFLOP/s); 79 % of the start's 120")
    rows[2]["% fp32 GEMM same round"] = 79.9
    assert bool(_targets(rows).loc["fp32 R-50 512x512 >= 80 % of the fp32 GEMM limit", "met"]) is False


def test_the_1024_targets_and_bf16_on_a_cpu_without_fast_kernels() -> None:
    rows = [
        _row("1024x2048", "eager fp32", same_round=47, start=35, speed_up=1.0, subdiv=5.3),
        _row("1024x2048", "fast fp32", same_round=84, start=62, speed_up=1.45, subdiv=6.0),
        _row("1024x2048", "fast fp32+compile", same_round=98, start=73, speed_up=2.1, subdiv=10.5),
    ]
    table = bench.targets(pd.DataFrame(rows), None, RATES, bf16_native=False)
    speed = table[table.target == "1024x2048 >= 1.5x faster than eager (fp32)"].iloc[0]
    assert speed["best path"] == "fast fp32+compile" and speed["measured"] == "2.10x" and bool(speed["met"])
    shares = table[table.target == "subdivision < 10 % of total at 1024x2048"]
    assert dict(zip(shares["best path"], shares["met"].astype(bool))) == {"fast fp32": True, "fast fp32+compile": False}
    bf16 = table[table.target.str.startswith("bf16 >= 3x")].iloc[0]
    assert bf16["met"] is None and bf16["measured"].startswith("not applicable")
    assert "fp32 R-50 512x512 >= 80 % of the fp32 GEMM limit" not in set(table.target)  # not measured: no row


def test_the_gemm_probe_measures_a_positive_rate_and_the_limit_is_the_better_way() -> None:
    probe = bench.GemmProbe(128, runs=2)
    assert set(probe.rates()) == {"matmul", "oneDNN"}
    assert probe.flops == 2 * 128**3 and probe.a.shape == (128, 128) and probe.x.shape == (1, 128, 32, 4)
    assert probe() > 0.1  # GFLOP/s: any CPU does far more
    assert bench.limit(RATES, "fp32") == 120.0 and bench.limit(RATES, "bf16") == 14.0
