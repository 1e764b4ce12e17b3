"""The demo row's training and evaluation under each CPU kernel set, its figures side by side.

    python benchmarks/demo_kernels.py                          # native, avx2, default; runs in runs/demo_kernels/
    python benchmarks/demo_kernels.py --sets native,avx2       # fewer kernel sets
    python benchmarks/demo_kernels.py --table-only             # print the table of the runs already there
    python benchmarks/demo_kernels.py --sets default --resume  # continue a run that was stopped (SIGTERM)

Each kernel set is one subprocess that runs exactly what the workbook's demo row runs
(`workbook.training.train_and_evaluate` with the row's recipe, as notebooks/train_evaluate.ipynb calls it),
with the environment that selects the kernels: PyTorch's ATen kernels through ATEN_CPU_CAPABILITY and oneDNN's
(the convolutions) through ONEDNN_MAX_CPU_ISA. float32 results of the same recipe differ in the last bits
between kernel sets, and a 560-step training from scratch carries those differences into its weights, so the
figures differ by more than rounding; this script measures by how much.

The demo's goals, checked per kernel set: every class at least 50 refined IoU, and the refinement's boundary
gain (refined minus coarse boundary mIoU) at least 5 points. A kernel set this CPU cannot run (e.g. avx512 on an
AVX2 machine) falls back to the best it has; the table's `capability` row says what each run really used (ATen's
capability and whether oneDNN ran AVX-512), and `memory format` the layout the trainer picked by default there.
The figures do not depend on the machine's load (the kernels and the thread count fix the arithmetic); the
times do: they are this run's wall times, comparable only between runs on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pointrend_core.config import get_row  # noqa: E402
from pointrend_core.engine.records import RunRecord  # noqa: E402
from pointrend_core.engine.run_folder import RunFolder  # noqa: E402

RUN_FILE = RunFolder.RUN

KERNEL_SETS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
"""Kernel set name -> the environment variables that select it (native: whatever this CPU supports best)."""

CLASS_GOAL = 50.0
"""Every class's refined IoU must reach this (%)."""
BOUNDARY_GAIN_GOAL = 5.0
"""Refined minus coarse boundary mIoU must reach this (points)."""

CAPABILITY_FILE = "capability.txt"


def run_one(out_dir: Path, data_root: Path, resume: bool) -> None:
    """In the child process: the demo row as the workbook runs it, into out_dir (replacing an earlier run, or
    continuing it with `resume`: training resumes exactly, so the figures are those of an uninterrupted run)."""
    import torch

    from pointrend_core.workbook.training import train_and_evaluate

    out_dir.mkdir(parents=True, exist_ok=True)
    from pointrend_core.engine.memory_format import machine_kernels

    (out_dir / CAPABILITY_FILE).write_text(machine_kernels(torch.device("cpu")) + "\n", encoding="utf-8")
    started = time.perf_counter()
    train_and_evaluate(get_row("demo"), data_root, out_dir, resume=resume, overwrite=not resume)
    print(f"demo trained and evaluated in {time.perf_counter() - started:.0f} s: {out_dir / RUN_FILE}", flush=True)


def launch(name: str, out_dir: Path, data_root: Path, resume: bool) -> int:
    """Run the demo under kernel set `name` in a subprocess; its output goes to out_dir/log.txt."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env |= KERNEL_SETS[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(out_dir), "--data-root", str(data_root)]
    command += ["--resume"] if resume else []
    print(f"[{name}] {' '.join(f'{k}={v}' for k, v in KERNEL_SETS[name].items()) or '(no variables)'}: "
          f"training in {out_dir}", flush=True)
    started = time.perf_counter()
    with open(out_dir / "log.txt", "a" if resume else "w", encoding="utf-8") as log:
        code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"[{name}] exit code {code} after {time.perf_counter() - started:.0f} s", flush=True)
    return code


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def figures(record: RunRecord) -> dict[str, str]:
    """One column of the table: the run's figures, formatted (percent; seconds for times)."""
    refined, coarse = record.metrics.refined, record.metrics.coarse
    scored = {name: iou for name, iou in refined.IoU.items() if iou is not None}
    weakest = min(scored, key=scored.__getitem__)
    gain = None
    if refined.boundary_mIoU is not None and coarse.boundary_mIoU is not None:
        gain = refined.boundary_mIoU - coarse.boundary_mIoU
    column = {
        "refined mIoU": _fmt(refined.mIoU),
        "coarse mIoU": _fmt(coarse.mIoU),
        "boundary mIoU refined": _fmt(refined.boundary_mIoU),
        "boundary mIoU coarse": _fmt(coarse.boundary_mIoU),
        "boundary gain": _fmt(gain),
    }
    column |= {f"  {name} refined": _fmt(refined.IoU.get(name)) for name in record.data.classes or refined.IoU}
    column |= {f"  {name} coarse": _fmt(coarse.IoU.get(name)) for name in record.data.classes or coarse.IoU}
    column |= {
        "weakest class": f"{weakest} {scored[weakest]:.2f}",
        "margin over 50": f"{scored[weakest] - CLASS_GOAL:+.2f}",
        "goals met": "yes" if scored[weakest] >= CLASS_GOAL and gain is not None and gain >= BOUNDARY_GAIN_GOAL
        else "NO",
        "memory format": "-" if record.training is None else
        ("channels-last" if record.training.channels_last else "NCHW"),
        "training s": _fmt(record.training.wall_seconds if record.training else None, 0),
        "evaluation s": _fmt(record.timing.seconds, 0),
    }
    return column


def print_table(columns: dict[str, dict[str, str]]) -> None:
    """Rows = figures, columns = kernel sets."""
    labels = list(next(iter(columns.values())))
    width = max(len(label) for label in labels)
    widths = {name: max(len(name), *(len(v) for v in col.values())) for name, col in columns.items()}
    print(f"{'':<{width}}  " + "  ".join(f"{name:>{widths[name]}}" for name in columns))
    for label in labels:
        cells = (f"{col.get(label, '-'):>{widths[name]}}" for name, col in columns.items())
        print(f"{label:<{width}}  " + "  ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="native,avx2,default",
                        help=f"comma-separated, from: {', '.join(KERNEL_SETS)}")
    parser.add_argument("--out", type=Path, default=Path("runs/demo_kernels"),
                        help="one run folder per kernel set under it")
    parser.add_argument("--data-root", type=Path, default=Path(get_row("demo").data.default_root))
    parser.add_argument("--table-only", action="store_true", help="do not train; print the runs already in --out")
    parser.add_argument("--resume", action="store_true", help="continue the runs in --out that were stopped")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        run_one(args.child, args.data_root, args.resume)
        return 0
    names = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown = [name for name in names if name not in KERNEL_SETS]
    if unknown or not names:
        parser.error(f"--sets {args.sets!r}: expected names from {', '.join(KERNEL_SETS)}")
    if not args.table_only:
        from pointrend_core.data.demo import make_demo_dataset

        if not args.data_root.exists():
            make_demo_dataset(args.data_root)
        for name in names:
            launch(name, args.out / name, args.data_root, args.resume)
    columns = {}
    for name in names:
        path = args.out / name / RUN_FILE
        if not path.is_file():
            print(f"[{name}] no {path}: not in the table", file=sys.stderr)
            continue
        capability = args.out / name / CAPABILITY_FILE
        column = {"capability": capability.read_text(encoding="utf-8").strip() if capability.is_file() else "?"}
        columns[name] = column | figures(RunRecord.read(path))
    if not columns:
        return 1
    record = RunRecord.read(args.out / next(iter(columns)) / RUN_FILE)
    print(f"\ndemo row on {record.environment.get('device_name')} ({record.environment.get('cpu_count')} CPUs), "
          f"torch {record.environment.get('torch')}; goals: every class >= {CLASS_GOAL:.0f} refined IoU, "
          f"boundary gain >= {BOUNDARY_GAIN_GOAL:.0f}")
    print_table(columns)
    return 0 if all(col["goals met"] == "yes" for col in columns.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
