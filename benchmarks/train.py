"""Training and evaluation speed and peak memory of one table row's network.

    python benchmarks/train.py                         # R-50 VOC row, CPU, batch 2 at 512x512
    python benchmarks/train.py --device cuda --batch-size 8 --amp bf16
    python benchmarks/train.py --ssseg-root /tmp/ssseg_src/sssegmentation-1.7.0 --mmcv-root /tmp/mmcv_lite \
        --extra-path /tmp/refdeps                      # and sssegmentation's own step, with the ratio

Training: the trainer's own optimiser steps (forward with both losses, backward, SGD step with the recipe's
settings) on random images and blob-shaped random labels at the crop size, in each memory format of `--layouts`
(the one the trainer picks on this machine is marked); with `--ssseg-root`, sssegmentation's own step on the
same batch too, and each step's time as a ratio of the reference's. The first `--warmup` steps are not timed.
Evaluation: `engine.evaluate.predict` (whole-image inference with adaptive subdivision, logits resized to the
original size) on images of `--eval-size`, batch 1 as in the reference (default 512x683: a 500x375 VOC
image after the test resize). The data pipeline is not included (see the data benchmarks).

Peak memory: on CUDA `torch.cuda.max_memory_allocated` (tensors only) per phase; on CPU the process's peak
resident set size (VmHWM), reset before each phase through /proc/self/clear_refs so that each phase reports its
own peak, which includes the model, the optimizer state and the Python/torch runtime (the "baseline" row).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pointrend_core.config import get_row  # noqa: E402
from pointrend_core.engine.distributed import resolve_device  # noqa: E402
from pointrend_core.engine.evaluate import inference_model, predict  # noqa: E402
from pointrend_core.engine.memory_format import channels_last_by_default, machine_kernels  # noqa: E402
from pointrend_core.engine.precision import AMP_DTYPES, OLD_SPELLINGS, autocast, inference_precision  # noqa: E402
from pointrend_core.engine.records import environment  # noqa: E402
from pointrend_core.engine.train_step import recipe_optimizer, train_step  # noqa: E402
from pointrend_core.labels import IGNORE_INDEX  # noqa: E402
from pointrend_core.model import build_model  # noqa: E402


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident set size of this process since the last reset (VmHWM), MiB; ru_maxrss as a fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def start_phase(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def phase_peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def blob_targets(batch: int, height: int, width: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """(B, H, W) int64 labels: a few random rectangles of random classes on class 0, with an ignore border,
    so the point head sees boundaries as on real data."""
    targets = torch.zeros(batch, height, width, dtype=torch.int64)
    for b in range(batch):
        for _ in range(4):
            y0, x0 = (int(torch.randint(0, s // 2, (), generator=generator)) for s in (height, width))
            h, w = (int(torch.randint(s // 8, s // 2, (), generator=generator)) for s in (height, width))
            targets[b, y0 : y0 + h, x0 : x0 + w] = int(torch.randint(1, num_classes, (), generator=generator))
    targets[:, :2], targets[:, :, :2] = IGNORE_INDEX, IGNORE_INDEX
    return targets


def timed_steps(step, device: torch.device, label: str, warmup: int, count: int) -> list[float]:
    """Seconds of every call of `step()` (which returns its loss, or None): `warmup` untimed ones (a compiled
    step compiles in the first), then `count` timed ones."""
    times = []
    for n in range(warmup + count):
        begin = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - begin)
        print(f"  {label} {n + 1}/{warmup + count}: {times[-1]:.2f} s" + (f", loss {loss:.3f}" if loss is not None
              else ""), file=sys.stderr)
    return times


def training_batch(row, device, args, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    height, width = args.crop
    images = torch.randn(args.batch_size, 3, height, width, generator=generator).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, blob_targets(args.batch_size, height, width, row.model.num_classes, generator).to(device)


def benchmark_training(model, row, device, args, channels_last: bool, compiled: bool = False) -> dict:
    """The trainer's own step (lr set, forward under autocast, NaN check, backward, SGD step) in one layout;
    `compiled`: the model under `torch.compile` (what a trainer option would run; not one yet)."""
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    net = torch.compile(model) if compiled else model
    schedule = row.schedule
    optimizer = recipe_optimizer(model, schedule)
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    images, targets = training_batch(row, device, args, channels_last)
    model.train()
    start_phase(device)

    def step() -> float:
        losses, _ = train_step(net, optimizer, scaler, images, targets, schedule.lr, amp=args.amp)
        return sum(losses.values())

    layout = ("channels-last" if channels_last else "NCHW") + (" + torch.compile" if compiled else "")
    times = timed_steps(step, device, f"train step ({layout})", args.warmup, args.iters)
    result = training_result(f"train step, {layout}", times[args.warmup:], args, phase_peak_mib(device))
    if compiled:
        result["first_step_s"] = times[0]
        result["phase"] += f" (first step {times[0]:.0f} s)"
    return result


def training_result(phase: str, times: list[float], args, peak_mib: float) -> dict:
    seconds = sum(times) / len(times)
    return {"phase": phase, "batch": args.batch_size, "input": "x".join(map(str, args.crop)), "timed": len(times),
            "seconds": seconds, "rate": args.batch_size / seconds, "rate_unit": "img/s", "iters_per_s": 1 / seconds,
            "peak_mib": peak_mib}


def same_network_as_the_reference(row) -> bool:
    """Whether `row`'s model is the reference config's (`make_ssseg_golden.reference_config`, the R-50 VOC
    row's) up to the depth and the classes, which `benchmark_reference_training` sets: every table row is."""
    reference = dataclasses.replace(get_row("pointrend_r50_voc").model, depth=row.model.depth,
                                    num_classes=row.model.num_classes)
    return row.model == reference


def benchmark_reference_training(row, device, args) -> dict | None:
    """sssegmentation's own PointRend step, as its train.py runs it (zero_grad, forward in TRAIN mode,
    loss.backward(), SGD step; NCHW; autocast for bf16/fp16, and a GradScaler for fp16 as its "pytorch" fp16
    mode), on the same batch; None without `--ssseg-root`.

    The reference is loaded as `tests/data/make_ssseg_golden.py` loads it (`--ssseg-root`, `--mmcv-root`,
    `--extra-path`); its weights are its own random initialisation, which does not change the step's time."""
    if args.ssseg_root is None:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
    for path in reversed(args.extra_path):
        sys.path.insert(0, str(path))
    import make_ssseg_golden as reference  # noqa: E402  (tests/data: the one place that knows how to load it)

    pointrend_cls, input_cls, _ = reference.import_reference(args.ssseg_root.resolve(), args.mmcv_root)
    config = reference.reference_config()
    config["num_classes"] = row.model.num_classes
    config["backbone"].update(depth=row.model.depth, structure_type=f"resnet{row.model.depth}conv3x3stem")
    model = pointrend_cls(config, mode="TRAIN").to(device)
    schedule = row.schedule
    optimizer = recipe_optimizer(model, schedule)  # the reference's SGD settings: the recipe's
    scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
    images, targets = training_batch(row, device, args, channels_last=False)
    targets = targets.masked_fill(targets == IGNORE_INDEX, reference.REFERENCE_IGNORE)
    model.train()
    start_phase(device)

    def step() -> float:
        optimizer.zero_grad()
        with autocast(device, args.amp):
            loss = model(input_cls(images=images, seg_targets=targets, mode="TRAIN")).loss
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss.item()

    times = timed_steps(step, device, "reference step", args.warmup, args.iters)[args.warmup:]
    return training_result("train step, sssegmentation", times, args, phase_peak_mib(device))


@torch.no_grad()
def benchmark_evaluation(model, row, device, args) -> dict:
    height, width = args.eval_size
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1)).to(device)
    # The evaluation's own inference path (channels-last, BatchNorm folded), at the training's precision.
    net = inference_model(model, inference_precision(args.amp), device=device)
    start_phase(device)

    def step() -> None:
        refined, _ = predict(net, image, (height, width), row.eval)
        refined.argmax(1)

    times = timed_steps(step, device, "eval image", args.warmup, args.eval_images)[args.warmup:]
    seconds = sum(times) / len(times)
    return {"phase": "evaluate", "batch": 1, "input": f"{height}x{width}", "timed": len(times), "seconds": seconds,
            "rate": 1 / seconds, "rate_unit": "img/s", "iters_per_s": None, "peak_mib": phase_peak_mib(device)}


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    columns = ("phase", "batch", "input", "timed", "s/iter", "iters/s", "images/s", "x ref", "peak MiB")
    lines = [columns]
    for r in rows:
        lines.append((
            r["phase"], str(r["batch"]), r["input"], str(r["timed"]),
            f"{r['seconds']:.3f}" if r["seconds"] is not None else "-",
            f"{r['iters_per_s']:.3f}" if r["iters_per_s"] is not None else "-",
            f"{r['rate']:.3f}" if r["rate"] is not None else "-",
            f"{r['vs_reference']:.2f}" if r.get("vs_reference") is not None else "-",
            f"{r['peak_mib']:.0f}",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    for n, line in enumerate(lines):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="pointrend_r50_voc")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch-size", type=int, default=2, help="training batch (one process)")
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="training input size (default: the row's crop size)")
    parser.add_argument("--iters", type=int, default=2, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps / images before timing")
    parser.add_argument("--eval-images", type=int, default=2, help="timed evaluation images (0: no evaluation)")
    parser.add_argument("--eval-size", type=int, nargs=2, default=(512, 683), metavar=("H", "W"))
    parser.add_argument("--amp", type=lambda text: OLD_SPELLINGS.get(text, text), choices=tuple(AMP_DTYPES),
                        default="fp32")
    parser.add_argument("--layouts", nargs="+", choices=("nchw", "channels-last", "default"),
                        default=("nchw", "channels-last"),
                        help="memory formats to time the training step in (default: both; 'default': the one the "
                             "trainer picks here)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the step with the model under torch.compile, in the default layout (the "
                             "first, untimed step compiles: keep --warmup at least 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--ssseg-root", type=Path, default=None,
                        help="unpacked sssegmentation 1.7.0 source: time its own step too (see make_ssseg_golden.py)")
    parser.add_argument("--mmcv-root", type=Path, default=None)
    parser.add_argument("--extra-path", type=Path, action="append", default=[])
    parser.add_argument("--json", action="store_true",
                        help="also print the results as one JSON line (last line of stdout), for gpu_check.py")
    args = parser.parse_args(argv)
    if args.compile and args.warmup < 1:
        parser.error("--compile needs --warmup 1 or more: the first step compiles and must not be timed")

    row = get_row(args.config)
    if args.ssseg_root is not None and not same_network_as_the_reference(row):
        parser.error(f"--ssseg-root: {row.name}'s network is not sssegmentation's PointRend (other widths or "
                     "points); the reference step can be timed for the table rows only")
    args.crop = tuple(args.crop or row.data.crop_size)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_model(row).to(device)
    baseline = current_rss_mib() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
    parameters = sum(p.numel() for p in model.parameters())
    default_layout = "channels-last" if channels_last_by_default(device, args.amp) else "nchw"

    # Evaluation first: on CPU the allocator keeps freed training memory resident, which would inflate the
    # evaluation's peak; the other way round each phase's peak is its own (a later training phase's peak can
    # include memory an earlier one freed but the allocator kept).
    results = [{"phase": "baseline (model loaded)", "batch": "-", "input": "-", "timed": "-", "seconds": None,
                "iters_per_s": None, "rate": None, "peak_mib": baseline}]
    if args.eval_images:
        results.append(benchmark_evaluation(model, row, device, args))
    reference = benchmark_reference_training(row, device, args)
    if reference is not None:
        results.append(reference)
    for layout in dict.fromkeys(default_layout if name == "default" else name for name in args.layouts):
        result = benchmark_training(model, row, device, args, channels_last=layout == "channels-last")
        result["layout"] = layout
        if layout == default_layout:
            result["phase"] += " (the trainer's default here)"
        results.append(result)
    if args.compile:
        result = benchmark_training(model, row, device, args, channels_last=default_layout == "channels-last",
                                    compiled=True)
        result["layout"] = f"{default_layout} + compile"
        results.append(result)
    if reference is not None:
        for result in results:
            if result["phase"].startswith("train step") and result["seconds"] is not None:
                result["vs_reference"] = result["seconds"] / reference["seconds"]
    name = environment(device)["device_name"]
    memory = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM) of the process"
    print_table(results, (
        f"{row.name}: {parameters / 1e6:.2f} M parameters; device {device} ({name}, {machine_kernels(device)}), "
        f"{torch.get_num_threads()} threads, amp {args.amp}, torch {torch.__version__}; memory = {memory}"
        + ("; 'x ref' = step time / sssegmentation's step time, measured in this run" if reference else "")
    ))
    if args.json:
        print(json.dumps({"default_layout": default_layout, "kernels": machine_kernels(device), "results": results}))


if __name__ == "__main__":
    main()
