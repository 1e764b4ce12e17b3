"""benchmarks/gpu_check.py on a CPU machine: the no-CUDA exit, the table and error-line helpers, the timing
protocol on CPU, the subprocess timeout, and the --ddp-worker mode in a one-process gloo group."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script()
CheckResult = gpu_check.CheckResult


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def test_without_cuda_it_says_so_in_one_line_and_exits_2_within_seconds() -> None:
    start = time.perf_counter()
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on GPU machines too.
    completed = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, env=_env(CUDA_VISIBLE_DEVICES=""),
                               capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert completed.returncode == gpu_check.EXIT_NO_CUDA == 2
    lines = [line for line in (completed.stdout + completed.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "no CUDA device is visible" in lines[0]
    for checked in ("fp16", "bf16", "NCCL", "SyncBatchNorm", "resume", "pointrend_r101_voc", "1024x2048"):
        assert checked in lines[0]
    assert elapsed < 30


def test_table_aligns_columns_and_shows_pass_fail_skip() -> None:
    results = [
        CheckResult("train --amp fp16 (GradScaler)", True, 14.25, "6 iterations, loss 2.1"),
        CheckResult("train --amp bf16", True, 0.0, "skipped: GPU has no bf16"),
        CheckResult("resume", False, 123.0, "resumed run: RuntimeError: boom\n  second line"),
    ]
    lines = gpu_check.format_table(results).splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["step", "result", "seconds", "detail"]
    assert [r.status for r in results] == ["pass", "skip", "FAIL"]
    # every row's result, seconds and detail columns start where the header's do
    for column in ("result", "detail"):
        at = lines[0].index(column)
        assert all(line[at - 2 : at] == "  " and line[at] != " " for line in lines[1:])
    seconds_end = lines[0].index("seconds") + len("seconds")
    assert [line[:seconds_end].split()[-1] for line in lines[1:]] == ["14.2", "0.0", "123.0"]
    assert lines[3].endswith("resumed run: RuntimeError: boom second line")  # one line per step
    assert gpu_check.summary_line(results, 140.2) == "3 steps: 1 passed, 1 failed, 1 skipped in 140 s - 1 FAILED"
    assert gpu_check.summary_line(results[:2], 3).endswith("all passed")


def test_check_result_is_frozen() -> None:
    result = CheckResult("x", True, 1.0, "ok")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.passed = False  # type: ignore[misc]


def test_error_line_picks_the_exception_of_a_failed_process() -> None:
    traceback_output = (
        "train demo: 6 iterations\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
        "    raise ValueError('x')\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    )
    assert gpu_check.error_line(traceback_output) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    torchrun_output = (
        "[rank0]: Traceback (most recent call last):\n[rank0]:   File \"gpu_check.py\", line 3\n"
        "[rank0]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1\n"
        "E0101 12:00:00.000 1 api.py:1] failed (exitcode: 1) local_rank: 0 (pid: 1) of binary: python\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "  error_file: <N/A>\n  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html\n"
    )
    assert gpu_check.error_line(torchrun_output) == "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1"
    assert gpu_check.error_line("error: device 'cuda' requested but CUDA is not available\n") == (
        "error: device 'cuda' requested but CUDA is not available")
    assert gpu_check.error_line("first\nlast words\n\n") == "last words"
    assert gpu_check.error_line("") == "(no output)"
    assert len(gpu_check.error_line("RuntimeError: " + "x" * 1000)) == 300


def test_parse_records_reads_marker_lines_with_or_without_rank_prefix() -> None:
    output = f"noise\n{gpu_check.MARKER}{{\"a\": 1}}\n[rank0]:{gpu_check.MARKER}{{\"b\": [2]}}\n"
    assert gpu_check.parse_records(output) == [{"a": 1}, {"b": [2]}]


def test_throughput_follows_the_protocol_on_cpu() -> None:
    from pointrend_core import build_model, get_row

    torch.manual_seed(0)
    model = build_model("demo").eval()
    result = gpu_check.measure_throughput(model, (32, 48), device="cpu", images=3, warmup=1)
    assert result.timed_images == 2  # the warm-up image is not counted
    assert result.images_per_second == pytest.approx(2 / result.timed_seconds)
    assert result.peak_memory_mib is None  # CUDA only
    assert result.logits_shape == (1, get_row("demo").model.num_classes, 32, 48)
    bf16 = gpu_check.measure_throughput(model, (32, 48), device="cpu", images=2, warmup=1, precision="bf16")
    assert bf16.timed_images == 1 and bf16.images_per_second > 0
    with pytest.raises(ValueError, match="warm-up"):
        gpu_check.measure_throughput(model, (32, 48), device="cpu", images=1, warmup=1)
    with pytest.raises(ValueError, match="precision"):
        gpu_check.measure_throughput(model, (32, 48), device="cpu", images=2, warmup=1, precision="fp8")
    detail = gpu_check.throughput_detail({"images_per_second": 12.345, "timed_images": 195, "warmup": 5,
                                          "peak_memory_mib": 1234.4})
    assert detail == "12.35 img/s (195 timed after 5 warm-up), peak 1234 MiB"


def test_images_must_exceed_the_warmup() -> None:
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--images", str(gpu_check.WARMUP)])
    assert gpu_check.parse_args([]).images == 200


def test_convert_sync_batchnorm_is_found() -> None:
    convert = gpu_check.import_convert_sync_batchnorm()
    model, converted = convert(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), torch.device("cpu"))
    assert converted == 1 and "Sync" in type(model[1]).__name__


def test_run_command_kills_a_command_at_its_timeout(tmp_path: Path) -> None:
    start = time.perf_counter()
    done = gpu_check.run_command([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                                 timeout=1.5, log=tmp_path / "sleep.log")
    assert time.perf_counter() - start < 20
    assert done.returncode is None and not done.ok
    assert "started" in done.output and "timed out" in gpu_check.error_line(done.output)
    assert "time.sleep(60)" in (tmp_path / "sleep.log").read_text()


def test_ddp_worker_runs_and_reports(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # In this process as a world of one gloo process (the environment torchrun would set): two processes take
    # over 10 s on two cores; `torchrun --nproc_per_node 2 benchmarks/gpu_check.py --ddp-worker --device cpu`
    # runs the same code with two.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "1", "RANK": "0",
                        "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert gpu_check.ddp_worker("cpu", size=32) == 0
    assert not torch.distributed.is_initialized()  # the worker leaves no process group behind
    (record,) = gpu_check.parse_records(capsys.readouterr().out)
    assert record["ok"] and record["identical"] and record["finite"]
    assert record["world_size"] == 1 and record["synced_layers"] > 0 and record["sync_type"] == "CPUSyncBatchNorm"
    assert len(record["losses"]) == gpu_check.DDP_STEPS and len(record["checksums"]) == 1
    detail = gpu_check.ddp_detail(record)
    assert detail.startswith("1 process(es), ") and "identical on all ranks" in detail
    assert detail.endswith("(1 process: torch's SyncBatchNorm uses its local kernel)")


def test_throughput_worker_reports_every_variant_on_cpu() -> None:
    """The worker a throughput step runs, as the parent runs it: one record per variant, the eager model and
    the prepared one in each precision, fp16 skipped off CUDA."""
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--throughput-worker", "--row", "demo", "--size", "32x48", "--images", "6",
         "--device", "cpu"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr
    records = {r["variant"]: r for r in gpu_check.parse_records(completed.stdout)}
    assert list(records) == list(gpu_check.VARIANTS)
    for variant in ("eager fp32", "fast fp32", "fast bf16"):
        assert records[variant]["timed_images"] == 1 and records[variant]["images_per_second"] > 0
        assert records[variant]["peak_memory_mib"] is None
    assert records["fast fp16"] == {"variant": "fast fp16", "skipped": "fp16 inference needs CUDA"}


def test_a_rehearsal_skips_bf16_inference_only_where_the_cpu_lacks_fast_kernels(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import pointrend_core.model.inference as pointrend_inference

    for fast, expected in ((False, {"skipped": "this CPU has no fast bf16 kernels (no AVX-512 or AMX)"}),
                           (True, None)):
        monkeypatch.setattr(pointrend_inference, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert gpu_check.throughput_worker("demo", (32, 48), 6, "cpu", skip_slow_bf16=True) == 0
        bf16 = {r["variant"]: r for r in gpu_check.parse_records(capsys.readouterr().out)}["fast bf16"]
        if expected is None:
            assert bf16["timed_images"] == 1 and bf16["images_per_second"] > 0
        else:
            assert {k: v for k, v in bf16.items() if k != "variant"} == expected


def test_a_throughput_step_reads_every_variant_and_reports_a_missing_one(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What the parent makes of a worker's output: a row per variant, in order; a record the worker never
    printed is a failure naming the worker's error; the worker is given the context's device and, in a
    rehearsal, --skip-slow-bf16."""
    ctx = gpu_check.Context(work=tmp_path, gpus=2, bf16=True, images=7, verbose=False,
                            deadline=time.monotonic() + 600, device="cpu", sizes=gpu_check.REHEARSAL_SIZES)
    output = "\n".join([
        gpu_check.MARKER + '{"variant": "eager fp32", "images_per_second": 3.5, "timed_images": 2, "warmup": 5, '
                           '"peak_memory_mib": null, "seconds": 2.0}',
        gpu_check.MARKER + '{"variant": "fast fp32", "error": "RuntimeError: boom", "seconds": 0.5}',
        gpu_check.MARKER + '{"variant": "fast fp16", "skipped": "fp16 inference needs CUDA"}',
        "Traceback (most recent call last):", "MemoryError: out of memory",
    ])
    commands = []
    monkeypatch.setattr(ctx, "run", lambda name, command, limit: commands.append(command)
                        or gpu_check.Completed(1, output, 3.0))
    results = gpu_check.check_throughput(ctx, "pointrend_r50_voc", (128, 256))
    assert [r.name for r in results] == [f"eval pointrend_r50_voc 128x256 {v}" for v in gpu_check.VARIANTS]
    assert [r.status for r in results] == ["pass", "FAIL", "FAIL", "skip"]
    assert results[0].detail == "3.50 img/s (2 timed after 5 warm-up), peak n/a"
    assert results[1].detail == "RuntimeError: boom"
    assert results[2].detail == "MemoryError: out of memory"  # bf16 printed nothing: the worker's last error
    command = commands[0]
    assert command[command.index("--device") + 1] == "cpu" and "--skip-slow-bf16" in command
    assert command[command.index("--images") + 1] == "7"


def test_a_rehearsal_defaults_to_a_few_images() -> None:
    assert gpu_check.parse_args(["--rehearse-on-cpu"]).images == gpu_check.REHEARSAL_IMAGES == 7
    assert gpu_check.parse_args(["--rehearse-on-cpu", "--images", "9"]).images == 9


def _benchmark_context(tmp_path: Path, output: str, returncode: int = 0, device: str = "cuda"):
    """A Context whose commands 'print' `output` instead of running."""
    ctx = gpu_check.Context(work=tmp_path, gpus=1, bf16=True, images=7, verbose=False,
                            deadline=time.monotonic() + 600, device=device)
    ran: list[list[str]] = []

    def run(name: str, command, limit: float):
        ran.append(list(command))
        return gpu_check.Completed(returncode, output, 3.0)

    ctx.run = run  # type: ignore[method-assign]
    return ctx, ran


def _benchmark_output(default: str, nchw: float, channels_last: float, compiled: float | None = None) -> str:
    results = [{"phase": "baseline", "seconds": None},
               {"phase": "train step, NCHW", "seconds": nchw, "layout": "nchw"},
               {"phase": "train step, channels-last", "seconds": channels_last, "layout": "channels-last"}]
    if compiled is not None:
        results.append({"phase": "compiled", "seconds": compiled, "first_step_s": 80.0, "layout": f"{default} + compile"})
    return "| a table |\n" + json.dumps({"default_layout": default, "kernels": "GPU", "results": results}) + "\n"


def test_the_layout_step_fails_when_the_default_is_the_slower_layout(tmp_path: Path) -> None:
    ctx, ran = _benchmark_context(tmp_path, _benchmark_output("channels-last", nchw=0.40, channels_last=0.30))
    good = gpu_check.check_train_layout(ctx, "bf16")
    assert good.passed and "default here channels-last (0.75 x nchw)" in good.detail
    assert ran[0][1].endswith("benchmarks/train.py") and ["--amp", "bf16"] == ran[0][ran[0].index("--amp"):][:2]
    assert "--json" in ran[0] and "--device" in ran[0]

    ctx, _ = _benchmark_context(tmp_path, _benchmark_output("nchw", nchw=0.40, channels_last=0.30))
    bad = gpu_check.check_train_layout(ctx, "fp32")
    assert not bad.passed
    assert "default here nchw (1.33 x channels-last): the default is the slower layout on this GPU" in bad.detail

    ctx, _ = _benchmark_context(tmp_path, _benchmark_output("nchw", nchw=0.41, channels_last=0.40))
    assert gpu_check.check_train_layout(ctx, "fp32").passed  # within 5 %

    ctx, _ = _benchmark_context(tmp_path, "Traceback ...\nRuntimeError: CUDA out of memory\n", returncode=1)
    failed = gpu_check.check_train_layout(ctx, "fp32")
    assert not failed.passed and "CUDA out of memory" in failed.detail


def test_the_compile_step_reports_both_times_and_the_compile_time(tmp_path: Path) -> None:
    ctx, ran = _benchmark_context(tmp_path, _benchmark_output("channels-last", 0.40, 0.30, compiled=0.24))
    result = gpu_check.check_train_compile(ctx)
    assert result.passed and result.name == "train step torch.compile (bf16)"
    assert result.detail == "eager 0.300 s, compiled 0.240 s per step (0.80 x), compiling 80 s"
    assert "--compile" in ran[0] and ran[0][ran[0].index("--layouts") + 1] == "default"
