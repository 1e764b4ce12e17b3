"""Check every CUDA path of pointrend_core on a GPU machine in one command (at most 8 minutes).

    python benchmarks/gpu_check.py                 # everything, 200 images per throughput measurement
    python benchmarks/gpu_check.py --images 50     # shorter throughput measurements (slow GPUs)
    python benchmarks/gpu_check.py --verbose       # also print the full log of every failing step
    python benchmarks/gpu_check.py --rehearse-on-cpu   # the same steps on a CPU machine: checks the script

What it checks, in this order (the training steps use the `demo` row on the procedural demo dataset, written
to a temporary folder first; every step runs in a subprocess with a timeout, so nothing can hang):

1. `train --amp fp16` (autocast + GradScaler) and `train --amp bf16`, 6 iterations each on `--device cuda`: exit
   code 0, `train.json` says 6 iterations with finite losses, the fp16 checkpoint holds a GradScaler state.
   bf16 is skipped ("skipped: GPU has no bf16") where `torch.cuda.is_bf16_supported` is False without
   emulation (pre-Ampere GPUs).
2. `torchrun --standalone --nproc_per_node=<all visible GPUs>` of this script's `--ddp-worker` mode: NCCL
   process group, the demo model converted by the package's `convert_sync_batchnorm` and wrapped in DDP, 3 SGD
   steps on random data; the losses must be finite on every rank and a parameter checksum, gathered from every
   rank, identical. This runs on one GPU too (where the trainer would not use SyncBatchNorm; note that torch's
   SyncBatchNorm itself falls back to its local kernel when the world has one process). With more than one GPU
   the real trainer also runs under torchrun (`train.json`: world size, synchronised BatchNorm layers).
3. Resume on GPU: 4 iterations (fp16, checkpoint every 2), then `--resume --max-iters 6`; the second run must
   print its "resume: ... at iteration 4" line and end with `iterations` 6 in `train.json`.
4. The training step's memory format, fp32 and bf16: `benchmarks/train.py --json` times the R-50 VOC step
   (512x512, batch 8) in NCHW and in channels-last; the step fails if the layout the trainer picks by default on
   this GPU (`engine/memory_format.py`: channels-last under bf16/fp16, NCHW in fp32) is over 5% slower than the
   other, so a GPU on which the rule is wrong is named.
5. Evaluation images/s and peak memory (`torch.cuda.max_memory_allocated` after
   `reset_peak_memory_stats`) of `pointrend_r50_voc` and `pointrend_r101_voc` (random weights) at 512x512 and
   1024x2048: the model as built in fp32 ("eager fp32", the protocol's baseline), and what `evaluate
   --precision P` runs, `prepare_for_inference(model, P)` for P = fp32, bf16, fp16 ("fast P"), following the
   protocol of mmsegmentation's
   `tools/analysis_tools/benchmark.py` (open-mmlab/mmsegmentation): batch 1, model in eval mode, 200 images of
   which the first 5 are warm-up and not timed, `torch.cuda.synchronize()` before starting and after finishing
   each image's forward, timed with `time.perf_counter`, images/s = timed images / summed time of those images,
   input already on the device before the clock starts, `torch.backends.cudnn.benchmark = False`. Differences
   from it: random normalised input instead of dataset images, `torch.inference_mode()` instead of
   `torch.no_grad()`, logits only (no resize to an original size, no argmax), and half precision by autocast
   (inside the prepared model) rather than mmcv's `wrap_fp16_model` (which casts the weights). One subprocess
   per row and size.
6. Last (the longest, and informational): the same training step, bf16 where the GPU has it, under
   `torch.compile` against eager in the default layout: time per step and compile time. On a 2-core CPU
   compiling gained nothing (docs/training-speed.md); whether it pays on a GPU is what this measures.

`--rehearse-on-cpu` runs the same steps on the CPU, for a machine without a GPU: gloo instead of NCCL, 2
processes for the torchrun steps (so the trainer's own synchronised BatchNorm runs too), fp32 where the GPU
run resumes in fp16, fp16 steps reported as skipped (bf16 inference too on a CPU without fast bf16 kernels),
sizes 128x128 and 128x256, 7 images per measurement.
It checks the script and the package's device-independent paths, not a GPU: its numbers mean nothing.

Not checked from outside: the trainer turns `torch.backends.cudnn.benchmark` on (and TF32 off) on CUDA inside
`engine.train._prepare_model`; the training steps above run with it, but a separate process cannot observe it.

Budget: every step gets its own timeout, capped by what is left of `--budget` seconds (default 480 = 8 min);
steps that no longer fit are reported as not run. Expected times on one data-centre GPU (estimates, not yet
measured): 15-30 s per training step (mostly process start-up), 20-40 s per memory-format step, 15-110 s
per throughput row and size (four variants), 1-3 min for the compile step (the last: when the budget runs out
first, only it is not run). On a slower GPU lower `--images` or raise `--budget` rather than read "not run" as a failure of the
package.

Reading the output: one line per step while it runs, then one table: `step` (what ran), `result` (pass, FAIL
or skip), `seconds` (wall time of the step), `detail` (what was measured, or the error message of a failing
step in one line; `--verbose` adds the full log). Exit code 0 only if every step passed or was skipped; 1 if any
failed; 2 if no CUDA device is visible (nothing is checked then). Logs and run folders go to a temporary folder,
deleted at the end unless a step failed or `--keep` is given.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
MARKER = "GPU_CHECK_RESULT "
"""Prefix of the JSON line a worker mode prints for the parent to parse."""
EXIT_NO_CUDA = 2
WARMUP = 5
DEFAULT_IMAGES = 200
DEFAULT_BUDGET = 480.0
THROUGHPUT_ROWS = ("pointrend_r50_voc", "pointrend_r101_voc")
THROUGHPUT_SIZES = ((512, 512), (1024, 2048))
PRECISIONS = ("fp32", "bf16", "fp16")
VARIANTS = ("eager fp32", "fast fp32", "fast bf16", "fast fp16")
"""What a throughput step measures: the model as built ("eager", mmsegmentation's protocol) and what
`evaluate --precision P` runs (`prepare_for_inference(model, P)`, "fast")."""
REHEARSAL_SIZES = ((128, 128), (128, 256))
REHEARSAL_IMAGES = 7
REHEARSAL_PROCESSES = 2
TRAIN_ITERS = 6
DDP_STEPS = 3
NOT_RUN_BELOW = 5.0
"""Seconds of budget under which a step is not started."""

NO_CUDA_MESSAGE = (
    "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False), nothing was checked; on a GPU "
    "machine this checks train --amp fp16 (GradScaler) and bf16, torchrun with NCCL + SyncBatchNorm + DDP, "
    "resume on GPU, and eval images/s + peak memory of pointrend_r50_voc/pointrend_r101_voc at 512x512 and "
    "1024x2048 in fp32/bf16/fp16 (--rehearse-on-cpu runs the same steps on this CPU, to check the script)"
)


# --------------------------------------------------------------------------------------------------
# Results and the table


@dataclass(frozen=True)
class CheckResult:
    """One row of the final table. A skipped step is passed with a detail starting with "skipped"."""

    name: str
    passed: bool
    seconds: float
    detail: str

    @property
    def status(self) -> str:
        if not self.passed:
            return "FAIL"
        return "skip" if self.detail.startswith("skipped") else "pass"


def one_line(text: str, limit: int = 300) -> str:
    """`text` with every run of whitespace (newlines included) as one space, cut to `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


_RANK_PREFIX = re.compile(r"^\s*\[(?:default)?(?:rank)?\d+\]:\s*")
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt|Exit)\b|^error:|^fatal:", re.IGNORECASE)


def error_line(output: str) -> str:
    """The most telling line of a failed process's output: the last exception or `error:` line (torchrun's
    own ChildFailedError summary and `[rankN]:` prefixes left out), else the last non-empty line."""
    lines = [_RANK_PREFIX.sub("", line).strip() for line in output.splitlines()]
    lines = [line for line in lines if line]
    candidates = [line for line in lines if _ERROR_LINE.search(line) and "ChildFailedError" not in line]
    if candidates:
        return one_line(candidates[-1])
    return one_line(lines[-1]) if lines else "(no output)"


def format_table(results: Sequence[CheckResult]) -> str:
    """The results as a plain aligned table: step, result, seconds (right-aligned, 1 decimal), detail."""
    header = ("step", "result", "seconds", "detail")
    rows = [(r.name, r.status, f"{r.seconds:.1f}", one_line(r.detail, 400)) for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]

    def line(row: tuple[str, str, str, str]) -> str:
        return f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def summary_line(results: Sequence[CheckResult], wall_seconds: float) -> str:
    counts = {status: sum(r.status == status for r in results) for status in ("pass", "FAIL", "skip")}
    verdict = "all passed" if not counts["FAIL"] else f"{counts['FAIL']} FAILED"
    return (f"{len(results)} steps: {counts['pass']} passed, {counts['FAIL']} failed, {counts['skip']} skipped "
            f"in {wall_seconds:.0f} s - {verdict}")


# --------------------------------------------------------------------------------------------------
# Pieces the checks share


def import_convert_sync_batchnorm() -> Callable[..., Any]:
    """The package's `convert_sync_batchnorm(model, device) -> (model, n_synced)`, wherever it lives now."""
    try:
        from pointrend_core.engine.distributed import convert_sync_batchnorm
    except ImportError:
        from pointrend_core.engine.train import convert_sync_batchnorm
    return convert_sync_batchnorm


def bf16_supported() -> bool:
    """Native bf16 on the current GPU (torch's emulation on older GPUs does not count: it is not what a
    bf16 run would want)."""
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch without the argument
        return bool(torch.cuda.is_bf16_supported())


def autocast_context(device_type: str, precision: str) -> Any:
    import torch

    if precision == "fp32":
        return nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device_type, dtype=dtypes[precision])


@dataclass(frozen=True)
class Throughput:
    images_per_second: float
    timed_images: int
    timed_seconds: float
    peak_memory_mib: float | None
    """torch.cuda.max_memory_allocated since the start of the measurement (CUDA only; None elsewhere)."""
    logits_shape: tuple[int, ...]


def measure_throughput(
    model: Any, size: tuple[int, int], *, device: Any, images: int = DEFAULT_IMAGES, warmup: int = WARMUP,
    precision: str = "fp32", seed: int = 0,
) -> Throughput:
    """Evaluation images/s of `model` (already on `device`, in eval mode) by mmsegmentation's benchmark
    protocol: batch 1, `images` forwards of which the first `warmup` are not timed, the device synchronised
    before and after each timed forward, images/s = timed images / their summed seconds. Input: random
    normal (normalised-image-like) tensors, created on the device before the clock starts."""
    import torch

    if images <= warmup:
        raise ValueError(f"images ({images}) must exceed the {warmup} warm-up images")
    device = torch.device(device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    height, width = size
    generator = torch.Generator(device=device).manual_seed(seed)
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
    timed = 0.0
    out = None
    with torch.inference_mode():
        for index in range(images):
            x = torch.randn((1, 3, height, width), generator=generator, device=device)
            sync()
            start = time.perf_counter()
            with autocast_context(device.type, precision):
                out = model(x)
            sync()
            elapsed = time.perf_counter() - start
            if index >= warmup:
                timed += elapsed
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    counted = images - warmup
    return Throughput(counted / timed if timed > 0 else math.inf, counted, timed, peak, tuple(out.logits.shape))


def parameter_checksum(model: Any) -> Any:
    """float64 [sum, sum of squares] over every parameter and buffer: equal on every rank iff (practically)
    the weights are."""
    import torch

    tensors = [t.detach().double() for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    return torch.stack([sum(t.sum() for t in tensors), sum((t * t).sum() for t in tensors)])


def emit(record: dict[str, Any]) -> None:
    print(MARKER + json.dumps(record), flush=True)


def parse_records(output: str) -> list[dict[str, Any]]:
    """Every JSON record a worker printed with `emit` (lines may carry torchrun's `[rankN]:` prefix)."""
    records = []
    for line in output.splitlines():
        line = _RANK_PREFIX.sub("", line)
        if line.startswith(MARKER):
            records.append(json.loads(line[len(MARKER):]))
    return records


@dataclass(frozen=True)
class Completed:
    returncode: int | None
    """None when the command was killed at its timeout."""
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_command(command: Sequence[str], timeout: float, log: Path | None = None) -> Completed:
    """Run `command` from the repository root (stdout and stderr merged); at the timeout kill its whole
    process group (torchrun's workers too). The output also goes to `log`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(list(command), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=max(timeout, 1.0))
        returncode: int | None = process.returncode
    except subprocess.TimeoutExpired:
        _kill_group(process)
        output, _ = process.communicate()
        output += f"\nerror: timed out after {timeout:.0f} s (killed)"
        returncode = None
    seconds = time.perf_counter() - start
    if log is not None:
        log.write_text(f"$ {' '.join(map(str, command))}\n{output}", encoding="utf-8")
    return Completed(returncode, output, seconds)


def _kill_group(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]


# --------------------------------------------------------------------------------------------------
# The checks: each returns CheckResult(s)


@dataclass
class Context:
    work: Path
    gpus: int
    """Processes for the torchrun steps: the visible GPUs (or 2 CPU processes in a rehearsal)."""
    bf16: bool
    images: int
    verbose: bool
    deadline: float
    """time.monotonic() at which the budget ends."""
    device: str = "cuda"
    """"cpu" in a rehearsal (`--rehearse-on-cpu`): the same steps, gloo instead of NCCL, no fp16."""
    sizes: tuple[tuple[int, int], ...] = THROUGHPUT_SIZES

    @property
    def rehearsal(self) -> bool:
        return self.device != "cuda"

    @property
    def units(self) -> str:
        """"2 CPU processes", "1 GPU", "4 GPUs": what the torchrun steps run on."""
        if self.rehearsal:
            return f"{self.gpus} CPU process{'es' if self.gpus > 1 else ''}"
        return f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"

    @property
    def demo_root(self) -> Path:
        return self.work / "demo"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, limit: float) -> float:
        return max(1.0, min(limit, self.remaining()))

    def run(self, name: str, command: Sequence[str], limit: float) -> Completed:
        return run_command(command, self.timeout(limit), self.work / f"{_slug(name)}.log")

    def fail(self, name: str, seconds: float, message: str, output: str | None = None) -> CheckResult:
        if self.verbose and output:
            print(f"----- log of {name!r} -----\n{output.rstrip()}\n----- end of log -----", flush=True)
        return CheckResult(name, False, seconds, one_line(message))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def train_command(ctx: Context, out: Path, *extra: str, amp: str = "fp32") -> list[str]:
    return ["-m", "pointrend_core", "train", "--config", "demo", "--data-root", str(ctx.demo_root),
            "--device", ctx.device, "--amp", amp, "--out", str(out), "--no-progress", *extra]


def read_train_json(out: Path) -> dict[str, Any]:
    path = out / "train.json"
    if not path.exists():
        raise RuntimeError(f"no {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def _losses_text(summary: dict[str, Any]) -> tuple[str, bool]:
    losses = summary.get("final_losses") or {}
    finite = bool(losses) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses.values())
    return f"loss {sum(losses.values()):.3f}" if losses else "no losses", finite


def check_demo_data(ctx: Context) -> CheckResult:
    name = "make demo data"
    images = max(16, 4 * ctx.gpus)
    done = ctx.run(name, [sys.executable, "-m", "pointrend_core", "make-demo-data", "--out", str(ctx.demo_root),
                          "--num-images", str(images)], 120)
    if not done.ok:
        return ctx.fail(name, done.seconds, error_line(done.output), done.output)
    return CheckResult(name, True, done.seconds, f"{images} images per split in {ctx.demo_root}")


def check_train_amp(ctx: Context, amp: str) -> CheckResult:
    """`train --amp fp16|bf16` for TRAIN_ITERS iterations on the context's device."""
    import torch

    name = f"train --amp {amp}" + (" (GradScaler)" if amp == "fp16" else "")
    if amp == "fp16" and ctx.rehearsal:
        print("  skipped: fp16 training needs CUDA", flush=True)
        return CheckResult(name, True, 0.0, "skipped: fp16 training needs CUDA (a rehearsal runs on the CPU)")
    if amp == "bf16" and not ctx.bf16:
        print("  skipped: GPU has no bf16", flush=True)
        return CheckResult(name, True, 0.0, "skipped: GPU has no bf16 (torch.cuda.is_bf16_supported() is False)")
    out = ctx.work / f"train_{amp}"
    done = ctx.run(name, [sys.executable, *train_command(ctx, out, "--max-iters", str(TRAIN_ITERS),
                                                          "--checkpoint-every", "3", amp=amp)], 180)
    if not done.ok:
        return ctx.fail(name, done.seconds, error_line(done.output), done.output)
    summary = read_train_json(out)
    losses, finite = _losses_text(summary)
    problems = []
    if summary.get("iterations") != TRAIN_ITERS:
        problems.append(f"train.json iterations {summary.get('iterations')}, expected {TRAIN_ITERS}")
    if summary.get("amp") != amp or not str(summary.get("device", "")).startswith(ctx.device):
        problems.append(f"train.json says amp {summary.get('amp')} on {summary.get('device')}")
    if not finite:
        problems.append(f"final losses not finite: {summary.get('final_losses')}")
    detail = f"{TRAIN_ITERS} iterations on {summary.get('device')}, {losses}"
    if amp == "fp16":
        checkpoint = torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=True)
        scaler = checkpoint.get("scaler") or {}
        if "scale" not in scaler:
            problems.append("checkpoint has no GradScaler state")
        else:
            detail += f", GradScaler scale {float(scaler['scale']):g}"
    if problems:
        return ctx.fail(name, done.seconds, "; ".join(problems), done.output)
    return CheckResult(name, True, done.seconds, detail)


def check_ddp_worker(ctx: Context) -> CheckResult:
    """This script's --ddp-worker under torchrun over every visible GPU (2 CPU processes in a rehearsal)."""
    backend = "gloo" if ctx.rehearsal else "NCCL"
    name = f"torchrun {backend} + SyncBatchNorm + DDP ({ctx.units})"
    done = ctx.run(name, torchrun(ctx.gpus, str(Path(__file__).resolve()), "--ddp-worker", "--device", ctx.device), 180)
    records = parse_records(done.output)
    if not done.ok or not records:
        return ctx.fail(name, done.seconds, error_line(done.output) if not done.ok else "worker printed no result",
                        done.output)
    record = records[-1]
    detail = ddp_detail(record)
    if not record["ok"]:
        return ctx.fail(name, done.seconds, detail, done.output)
    return CheckResult(name, True, done.seconds, detail)


def ddp_detail(record: dict[str, Any]) -> str:
    losses = record["losses"]
    text = (f"{record['world_size']} process(es), {record['synced_layers']} {record['sync_type']} layers, "
            f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
            f"{'' if record['finite'] else ' (NOT FINITE on some rank)'}, parameters "
            f"{'identical' if record['identical'] else 'DIFFER'} on all ranks")
    if record["synced_layers"] == 0:
        text += "; no BatchNorm layer was converted"
    if record["world_size"] == 1:
        text += " (1 process: torch's SyncBatchNorm uses its local kernel)"
    return text


def check_torchrun_trainer(ctx: Context) -> CheckResult:
    """The real trainer under torchrun over every GPU (only with more than one; 2 CPU processes in a rehearsal)."""
    name = f"torchrun train ({ctx.units})"
    if ctx.gpus < 2:
        return CheckResult("torchrun train (needs 2+ GPUs)", True, 0.0,
                           "skipped: one GPU (the trainer uses SyncBatchNorm only when WORLD_SIZE > 1)")
    out = ctx.work / "train_ddp"
    iters = 4
    done = ctx.run(name, torchrun(ctx.gpus, *train_command(ctx, out, "--max-iters", str(iters), "--checkpoint-every",
                                                           "2", "--batch-size", str(2 * ctx.gpus))), 240)
    if not done.ok:
        return ctx.fail(name, done.seconds, error_line(done.output), done.output)
    summary = read_train_json(out)
    losses, finite = _losses_text(summary)
    problems = []
    if summary.get("world_size") != ctx.gpus:
        problems.append(f"train.json world_size {summary.get('world_size')}, expected {ctx.gpus}")
    if not summary.get("synchronized_batchnorm_layers"):
        problems.append("train.json: no synchronised BatchNorm layers")
    if summary.get("iterations") != iters:
        problems.append(f"train.json iterations {summary.get('iterations')}, expected {iters}")
    if not finite:
        problems.append(f"final losses not finite: {summary.get('final_losses')}")
    if problems:
        return ctx.fail(name, done.seconds, "; ".join(problems), done.output)
    return CheckResult(name, True, done.seconds,
                       f"world size {ctx.gpus}, {summary['synchronized_batchnorm_layers']} synchronised BatchNorm layers, "
                       f"{iters} iterations, {losses}")


def check_resume(ctx: Context) -> CheckResult:
    """4 iterations (checkpoint every 2), then --resume to 6; fp16 so that the GradScaler state is restored too
    (fp32 in a rehearsal on the CPU)."""
    amp = "fp32" if ctx.rehearsal else "fp16"  # the CPU: bf16 training has run in step 3; fp32 is faster there
    name = "resume on CPU (fp32)" if ctx.rehearsal else "resume on GPU (fp16)"
    out = ctx.work / "train_resume"
    first = ctx.run(name + " part 1", [sys.executable, *train_command(ctx, out, "--max-iters", "4",
                                                                      "--checkpoint-every", "2", amp=amp)], 180)
    if not first.ok:
        return ctx.fail(name, first.seconds, "first run: " + error_line(first.output), first.output)
    second = ctx.run(name + " part 2", [sys.executable, *train_command(ctx, out, "--max-iters", "6", "--resume",
                                                                       amp=amp)], 180)
    seconds = first.seconds + second.seconds
    if not second.ok:
        return ctx.fail(name, seconds, "resumed run: " + error_line(second.output), second.output)
    summary = read_train_json(out)
    resume_lines = [line for line in second.output.splitlines() if line.startswith("resume: ") and "at iteration" in line]
    problems = []
    if not resume_lines or "at iteration 4 " not in resume_lines[-1] + " ":
        problems.append("the resumed run printed no 'resume: ... at iteration 4' line")
    if summary.get("iterations") != 6:
        problems.append(f"train.json iterations {summary.get('iterations')}, expected 6")
    if summary.get("resumed_from_iteration") != 4:
        problems.append(f"train.json resumed_from_iteration {summary.get('resumed_from_iteration')}, expected 4")
    if problems:
        return ctx.fail(name, seconds, "; ".join(problems), second.output)
    return CheckResult(name, True, seconds, f"4 -> 6 iterations; {one_line(resume_lines[-1], 160)}")


def check_train_layout(ctx: Context, amp: str) -> CheckResult:
    """`benchmarks/train.py` (R-50 VOC training step, 512 x 512, batch 8; a rehearsal: 128 x 128, batch 2) in
    NCHW and channels-last at `amp`: passes when the layout the trainer picks by default on this device
    (`engine.memory_format.channels_last_by_default`) is not more than 5% slower than the other one."""
    name = f"train step layout ({amp})"
    if amp == "bf16" and not ctx.bf16:
        return CheckResult(name, True, 0.0, "skipped: GPU has no bf16 (torch.cuda.is_bf16_supported() is False)")
    size = ["--crop", "128", "128", "--batch-size", "2", "--iters", "1"] if ctx.rehearsal else \
        ["--batch-size", "8", "--iters", "5", "--warmup", "2"]
    done, found = benchmark_json(ctx, name, ["--amp", amp, *size], 240)
    if found is None:
        return ctx.fail(name, done.seconds, error_line(done.output), done.output)
    seconds = {r["layout"]: r["seconds"] for r in found["results"] if "layout" in r}
    default = found["default_layout"]
    other = "nchw" if default == "channels-last" else "channels-last"
    ratio = seconds[default] / seconds[other]
    detail = (f"NCHW {seconds['nchw']:.3f} s, channels-last {seconds['channels-last']:.3f} s per step; default here "
              f"{default} ({ratio:.2f} x {other})")
    if ctx.rehearsal:
        return CheckResult(name, True, done.seconds, detail + " (a rehearsal: not judged)")
    if ratio > 1.05:
        return ctx.fail(name, done.seconds, detail + ": the default is the slower layout on this GPU; "
                                                     "engine/memory_format.py's CUDA rule needs this device")
    return CheckResult(name, True, done.seconds, detail)


def benchmark_json(ctx: Context, name: str, arguments: Sequence[str], limit: float) -> tuple[Completed, dict | None]:
    """Run `benchmarks/train.py --json` with `arguments` on the context's device; (process, its JSON or None)."""
    done = ctx.run(name, [sys.executable, str(REPO / "benchmarks" / "train.py"), "--device", ctx.device,
                          "--eval-images", "0", "--json", *arguments], limit)
    lines = [line for line in done.output.splitlines() if line.startswith("{")]
    return done, json.loads(lines[-1]) if done.ok and lines else None


def check_train_compile(ctx: Context) -> CheckResult:
    """The training step (bf16 where the GPU has it) under `torch.compile` against eager, in the default layout:
    whether compiling the model would pay on this GPU. Informational: passes whenever both steps run."""
    amp = "bf16" if ctx.bf16 else "fp32"
    name = f"train step torch.compile ({amp})"
    size = ["--config", "demo", "--crop", "64", "64", "--batch-size", "2", "--iters", "1"] if ctx.rehearsal else \
        ["--batch-size", "8", "--iters", "5", "--warmup", "2"]
    done, found = benchmark_json(ctx, name, ["--amp", amp, "--compile", "--layouts", "default", *size], 420)
    if found is None:
        return ctx.fail(name, done.seconds, error_line(done.output), done.output)
    steps = {r["layout"]: r for r in found["results"] if "layout" in r}
    eager, compiled = steps[found["default_layout"]], steps[f"{found['default_layout']} + compile"]
    return CheckResult(name, True, done.seconds,
                       f"eager {eager['seconds']:.3f} s, compiled {compiled['seconds']:.3f} s per step "
                       f"({compiled['seconds'] / eager['seconds']:.2f} x), compiling {compiled['first_step_s']:.0f} s"
                       + (" (a rehearsal: not judged)" if ctx.rehearsal else ""))


def check_throughput(ctx: Context, row: str, size: tuple[int, int]) -> list[CheckResult]:
    """One subprocess (`--throughput-worker`) measuring every VARIANTS entry of one row at one size."""
    group = f"eval {row} {size[0]}x{size[1]}"
    per_image = 0.4 if size[0] * size[1] <= 512 * 512 else 1.6  # generous seconds per image over the 4 variants
    if ctx.rehearsal:
        per_image = 10.0  # CPU with fast bf16 kernels: about a second per image per variant; generous
    done = ctx.run(group, [sys.executable, str(Path(__file__).resolve()), "--throughput-worker", "--row", row,
                           "--size", f"{size[0]}x{size[1]}", "--images", str(ctx.images), "--device", ctx.device,
                           *(["--skip-slow-bf16"] if ctx.rehearsal else [])],
                   60 + per_image * ctx.images)
    records = {record["variant"]: record for record in parse_records(done.output)}
    results: list[CheckResult] = []
    log_shown = False
    for variant in VARIANTS:
        name = f"{group} {variant}"
        record = records.get(variant)
        if record is None:
            message = error_line(done.output) if not done.ok else "worker printed no result"
            results.append(ctx.fail(name, 0.0, message, None if log_shown else done.output))
            log_shown = True
        elif record.get("skipped"):
            results.append(CheckResult(name, True, 0.0, f"skipped: {record['skipped']}"))
        elif record.get("error"):
            results.append(ctx.fail(name, record.get("seconds", 0.0), record["error"], record.get("traceback")))
        else:
            results.append(CheckResult(name, True, record["seconds"], throughput_detail(record)))
    return results


def throughput_detail(record: dict[str, Any]) -> str:
    peak = record.get("peak_memory_mib")
    return (f"{record['images_per_second']:.2f} img/s ({record['timed_images']} timed after {record['warmup']} "
            f"warm-up), peak {'n/a' if peak is None else f'{peak:.0f} MiB'}")


# --------------------------------------------------------------------------------------------------
# Worker modes (run by the checks above in subprocesses)


def ddp_worker(device_type: str = "cuda", size: int = 128, batch: int = 2, steps: int = DDP_STEPS) -> int:
    """Under torchrun: process group (NCCL on CUDA, gloo on CPU), demo model -> convert_sync_batchnorm -> DDP,
    `steps` SGD steps on random data that differs per rank; rank 0 emits whether every rank's losses were
    finite and the parameter checksums identical. Exit code 0 only then."""
    import torch
    import torch.distributed as dist

    from pointrend_core import build_model, get_row

    convert_sync_batchnorm = import_convert_sync_batchnorm()
    if "LOCAL_RANK" not in os.environ:
        print("error: --ddp-worker runs under torchrun", file=sys.stderr)
        return 2
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        row = get_row("demo")
        torch.manual_seed(0)
        model, synced = convert_sync_batchnorm(build_model(row).to(device).train(), device)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(1000 + rank)  # each rank its own batch, as under DDP
        losses = []
        for _ in range(steps):
            images = torch.randn((batch, 3, size, size), generator=generator).to(device)
            targets = torch.randint(0, row.model.num_classes, (batch, size, size), generator=generator).to(device)
            loss = sum(ddp(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        finite = torch.tensor([float(all(math.isfinite(v) for v in losses))], device=device)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        checksum = parameter_checksum(model).to(device)
        gathered = [torch.empty_like(checksum) for _ in range(world_size)]
        dist.all_gather(gathered, checksum)
        identical = all(torch.equal(g, gathered[0]) for g in gathered)
        sync_type = next((type(m).__name__ for m in model.modules() if "Sync" in type(m).__name__), "SyncBatchNorm")
        ok = bool(finite.item()) and identical and synced > 0
        if rank == 0:
            emit({"ok": ok, "world_size": world_size, "synced_layers": synced, "sync_type": sync_type,
                  "losses": losses, "finite": bool(finite.item()), "identical": identical,
                  "checksums": [g.tolist() for g in gathered]})
    finally:
        dist.destroy_process_group()
    return 0 if ok else 1


def throughput_worker(row: str, size: tuple[int, int], images: int, device_type: str = "cuda",
                      skip_slow_bf16: bool = False) -> int:
    """Emit one record per VARIANTS entry for `row` at `size`: the model as built in fp32 (mmsegmentation's
    protocol), then `prepare_for_inference(model, precision)` in fp32, bf16 and fp16 (what `evaluate
    --precision` runs; its own autocast, none outside). A failing variant records its error and the others
    still run. `skip_slow_bf16` (a rehearsal): bf16 on a CPU without fast bf16 kernels is reported skipped
    instead of taking seconds per image."""
    import torch

    from pointrend_core import build_model, prepare_for_inference
    from pointrend_core.model.inference import cpu_has_fast_bf16

    torch.backends.cudnn.benchmark = False  # as mmsegmentation's benchmark.py
    device = torch.device(device_type)
    model = build_model(row).eval()  # stays on the CPU: only the measured variant's weights are on the device,
    failed = False                   # so each peak memory counts one set of weights
    for variant in VARIANTS:
        precision = variant.split()[1]
        if precision == "bf16" and device.type == "cuda" and not bf16_supported():
            emit({"variant": variant, "skipped": "GPU has no bf16"})
            continue
        if precision == "fp16" and device.type != "cuda":
            emit({"variant": variant, "skipped": "fp16 inference needs CUDA"})
            continue
        if precision == "bf16" and device.type == "cpu" and skip_slow_bf16 and not cpu_has_fast_bf16():
            emit({"variant": variant, "skipped": "this CPU has no fast bf16 kernels (no AVX-512 or AMX)"})
            continue
        start = time.perf_counter()
        net = None
        try:
            if variant.startswith("eager"):
                net = copy.deepcopy(model).to(device)
            else:
                net = prepare_for_inference(model, precision, device=device).to(device)
            result = measure_throughput(net, size, device=device, images=images)
            if result.logits_shape[-2:] != tuple(size):
                raise RuntimeError(f"logits of shape {result.logits_shape} for a {size[0]}x{size[1]} input")
        except Exception as error:  # report and go on with the next variant
            failed = True
            emit({"variant": variant, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(),
                  "seconds": time.perf_counter() - start})
            continue
        finally:
            del net
            if device.type == "cuda":
                torch.cuda.empty_cache()
        emit({"variant": variant, "images_per_second": result.images_per_second,
              "timed_images": result.timed_images, "warmup": WARMUP, "peak_memory_mib": result.peak_memory_mib,
              "seconds": time.perf_counter() - start})
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None,
                        help=f"images per throughput measurement, the first {WARMUP} not timed (default {DEFAULT_IMAGES}; "
                             f"{REHEARSAL_IMAGES} in a rehearsal)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"seconds for all steps; steps that no longer fit are not run (default {DEFAULT_BUDGET:.0f})")
    parser.add_argument("--verbose", action="store_true", help="print the full log of every failing step")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder of logs and runs")
    parser.add_argument("--rehearse-on-cpu", action="store_true",
                        help="run the same steps on this CPU (gloo, 2 processes, bf16, small sizes, "
                             f"{REHEARSAL_IMAGES} images): checks the script itself on a machine without a GPU")
    # worker modes, run by the checks themselves
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--throughput-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", default=THROUGHPUT_ROWS[0], help=argparse.SUPPRESS)
    parser.add_argument("--size", default="512x512", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    parser.add_argument("--skip-slow-bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = REHEARSAL_IMAGES if args.rehearse_on_cpu else DEFAULT_IMAGES
    if args.images <= WARMUP:
        parser.error(f"--images must be more than the {WARMUP} warm-up images, got {args.images}")
    return args


def run_checks(ctx: Context) -> list[CheckResult]:
    """Every step in order, each guarded: a step that raises is a failure, one that no longer fits the
    budget is not run."""
    steps: list[tuple[str, Callable[[], CheckResult | list[CheckResult]]]] = [
        ("make demo data", lambda: check_demo_data(ctx)),
        ("train --amp fp16 (GradScaler)", lambda: check_train_amp(ctx, "fp16")),
        ("train --amp bf16", lambda: check_train_amp(ctx, "bf16")),
        (f"torchrun {'gloo' if ctx.rehearsal else 'NCCL'} + SyncBatchNorm + DDP", lambda: check_ddp_worker(ctx)),
        ("torchrun train", lambda: check_torchrun_trainer(ctx)),
        ("resume on CPU (fp32)" if ctx.rehearsal else "resume on GPU (fp16)", lambda: check_resume(ctx)),
        ("train step layout (fp32)", lambda: check_train_layout(ctx, "fp32")),
        ("train step layout (bf16)", lambda: check_train_layout(ctx, "bf16")),
    ]
    for size in ctx.sizes:
        for row in THROUGHPUT_ROWS:
            steps.append((f"eval {row} {size[0]}x{size[1]}", lambda row=row, size=size: check_throughput(ctx, row, size)))
    steps.append(("train step torch.compile", lambda: check_train_compile(ctx)))  # last: the longest, informational

    needs_demo = ("train --amp", "torchrun train", "resume")
    results: list[CheckResult] = []
    demo_ok = True
    for index, (name, step) in enumerate(steps, 1):
        print(f"[{index}/{len(steps)}] {name} ...", flush=True)
        start = time.perf_counter()
        if ctx.remaining() < NOT_RUN_BELOW:
            found = [CheckResult(name, False, 0.0, "not run: the time budget is used up (raise it with --budget)")]
        elif not demo_ok and name.startswith(needs_demo):
            found = [CheckResult(name, False, 0.0, "not run: no demo data")]
        else:
            try:
                outcome = step()
                found = outcome if isinstance(outcome, list) else [outcome]
            except Exception as error:
                if ctx.verbose:
                    traceback.print_exc()
                found = [ctx.fail(name, time.perf_counter() - start, f"{type(error).__name__}: {error}")]
        if name == "make demo data":
            demo_ok = found[0].passed
        for result in found:
            print(f"  {result.status} ({result.seconds:.1f} s) {result.name}: {result.detail}", flush=True)
        results.extend(found)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args.device, size=128 if args.device == "cuda" else 64)  # 128: the demo crop
    if args.throughput_worker:
        height, width = (int(v) for v in args.size.lower().split("x"))
        return throughput_worker(args.row, (height, width), args.images, args.device, args.skip_slow_bf16)

    import torch

    if not args.rehearse_on_cpu and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return EXIT_NO_CUDA
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    if args.rehearse_on_cpu:
        ctx = Context(work=work, gpus=REHEARSAL_PROCESSES, bf16=True, images=args.images, verbose=args.verbose,
                      deadline=time.monotonic() + args.budget, device="cpu", sizes=REHEARSAL_SIZES)
        print(f"gpu_check: REHEARSAL on the CPU ({REHEARSAL_PROCESSES} gloo processes, no fp16, sizes "
              f"{', '.join(f'{h}x{w}' for h, w in REHEARSAL_SIZES)}): checks this script, not a GPU; torch "
              f"{torch.__version__}; budget {args.budget:.0f} s; {args.images} images per throughput measurement; "
              f"logs in {work}", flush=True)
    else:
        gpus = torch.cuda.device_count()
        names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(gpus)}))
        ctx = Context(work=work, gpus=gpus, bf16=bf16_supported(), images=args.images, verbose=args.verbose,
                      deadline=time.monotonic() + args.budget)
        print(f"gpu_check: {gpus} x {names}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
              f"{torch.backends.cudnn.version()}; bf16 {'yes' if ctx.bf16 else 'no'}; budget {args.budget:.0f} s; "
              f"{args.images} images per throughput measurement; logs in {work}", flush=True)
    start = time.perf_counter()
    results = run_checks(ctx)
    print()
    print(format_table(results))
    print(summary_line(results, time.perf_counter() - start))
    failed = any(not r.passed for r in results)
    if failed or args.keep:
        print(f"logs and run folders kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
