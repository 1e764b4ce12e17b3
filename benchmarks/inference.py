"""Inference speed of each path against the machine's own GEMM rate, and the accuracy each precision keeps.

    python benchmarks/inference.py                                   # R-50 VOC row, 512x512, CPU
    python benchmarks/inference.py --sizes 512x512 1024x2048         # 1024x2048 is slow (minutes)
    python benchmarks/inference.py --checkpoint runs/demo/checkpoint_final.pth   # + mIoU per precision
    python benchmarks/inference.py --levers                          # + what each lever buys (features only)

1. The limit: GFLOP/s of large square matrix products in this process, fp32 and bf16, two ways: `torch.matmul`
   (MKL for fp32, oneDNN for bf16) and oneDNN's own GEMM (a 1x1 convolution, channels-last, M = N = K), each
   the fastest of 10 or more runs. The better of the two is "the GEMM limit" of that dtype. It is measured
   again at the end: if the two differ by more than 10 %, something else used the CPU meanwhile (or it changed
   speed), and the run says so. Because the rate drifts, every round of the timed paths also measures it
   (`GemmProbe`, fp32, both ways), and "% fp32 GEMM same round" compares each forward with its own round's rate;
   the 512x512 target is judged on that share (the start-of-run share is printed beside it).
2. For each `--sizes` (batch 1, random weights with BatchNorm statistics of a trained network's order of
   magnitude, a random image), each path of `--paths`:
   - `eager fp32`: the plain model in eval mode under `torch.inference_mode` (the baseline of every ratio);
   - `fast fp32`, `fast fp32+compile`, `fast bf16`, `fast bf16+compile`: `prepare_for_inference(model,
     precision, compile)` (model/inference.py: BatchNorm folded, channels-last, inference_mode, the faster
     exact subdivision; compile = inductor with freezing, of the feature extractor only): what `evaluate`,
     the notebooks and the sweeps run (`engine.evaluate.inference_model`);
   - `onnxruntime fp32`: the model exported by `deploy.onnx.export_onnx` (every subdivision point in the graph,
     dynamic H and W; exported once per row, outside the timing) run by ONNX Runtime's CPU provider with all
     graph optimisations, what `predict --onnx` runs. It has no stages (one `total`), and its point choices
     are not recorded ("points reselected" is left empty).
   Time per stage (backbone, FPN, coarse head, each subdivision step; a compiled path has one `features`
   stage), and the end-to-end call (`total`), medians of `--repeats` runs after `--warmup` runs, the paths
   interleaved run by run so that a load spike hits them alike. FLOPs of the forward are counted with
   `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products: 2 per multiply-add), once,
   on the eager model; GFLOP/s = FLOPs / total, and its share of the GEMM limit of the path's dtype (and of
   fp32's). Agreement: the share of pixels whose refined (and coarse) argmax equals eager fp32's.
3. With `--checkpoint` (a trained `--checkpoint-row`, default the demo row): mIoU and boundary mIoU, refined
   and coarse, of each path on that row's val split through `engine.evaluate.evaluate`, against eager fp32.
4. With `--levers`: the feature extractor alone (backbone + FPN + coarse head) at the first size under each
   lever separately: BatchNorm folding, channels-last, oneDNN off, torch.compile with and without freezing,
   max-autotune, bf16 with and without channels-last, 1 thread. The allocator lever is process-wide, so it
   is its own run: `--retain-memory` (`model.inference.retain_freed_memory`) against a run without.

Finally the issue's targets, each with the measured value and whether it was met.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pointrend_core.checkpoints import load_checkpoint  # noqa: E402
from pointrend_core.config import get_row  # noqa: E402
from pointrend_core.model import PointRend, build_model, fuse_for_inference  # noqa: E402
from pointrend_core.deploy.onnx import OnnxModel, export_onnx  # noqa: E402
from pointrend_core.model.inference import (  # noqa: E402
    InferenceModel,
    cpu_has_fast_bf16,
    prepare_for_inference,
    retain_freed_memory,
)

ONNX = "onnxruntime fp32"
PATHS = ["eager fp32", "fast fp32", "fast fp32+compile", "fast bf16", "fast bf16+compile", ONNX]
EAGER = "eager fp32"


# ------------------------------------------------------------------------------------------- helpers


def run_times(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return statistics.median(run_times(fn, repeats, warmup))


class GemmProbe:
    """GEMM rates of an n x n x n product in `dtype`, in GFLOP/s, two ways: `torch.matmul` (MKL for fp32,
    oneDNN for bf16) and oneDNN's own GEMM (a channels-last 1x1 convolution over n pixels), each the fastest
    of `runs` runs: a limit is what the machine can do, not what it does on average. Calling it gives the
    better of the two, the limit *now*.

    `measure_size` calls an fp32 probe once per round of the paths, so that each path's share of the limit
    compares it with what the CPU could do at that moment: on a shared or frequency-scaled machine the GEMM
    rate itself drifts by 10-40 % within one run (measured here: 124 GFLOP/s at the start of a run, 145 at
    its end)."""

    def __init__(self, n: int, dtype: torch.dtype = torch.float32, runs: int = 3, warmup: int = 1) -> None:
        generator = torch.Generator().manual_seed(0)
        rows = 32
        self.a = torch.randn(n, n, generator=generator).to(dtype)
        self.b = torch.randn(n, n, generator=generator).to(dtype)
        cl = torch.channels_last
        self.x = torch.randn(1, n, rows, n // rows, generator=generator).to(dtype).contiguous(memory_format=cl)
        self.w = torch.randn(n, n, 1, 1, generator=generator).to(dtype).contiguous(memory_format=cl)
        self.flops, self.runs, self.warmup = 2 * n**3, runs, warmup

    def rates(self) -> dict[str, float]:
        """{"matmul": GFLOP/s, "oneDNN": GFLOP/s}."""
        with torch.inference_mode():
            matmul = min(run_times(lambda: self.a @ self.b, self.runs, self.warmup))
            onednn = min(run_times(lambda: F.conv2d(self.x, self.w), self.runs, self.warmup))
        return {"matmul": self.flops / matmul / 1e9, "oneDNN": self.flops / onednn / 1e9}

    def __call__(self) -> float:
        return max(self.rates().values())


def gemm_rates(n: int, repeats: int) -> dict[str, float]:
    """{"fp32 matmul", "fp32 oneDNN", "bf16 matmul", "bf16 oneDNN"}: `GemmProbe` rates, GFLOP/s."""
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        size, runs = n, repeats
        if name == "bf16" and not cpu_has_fast_bf16():  # the slow path: a smaller product, the rate is what counts
            size, runs = 512, 2
        for way, rate in GemmProbe(size, dtype, runs, warmup=3).rates().items():
            rates[f"{name} {way}"] = rate
    return rates


def limit(rates: dict[str, float], dtype: str) -> float:
    return max(rates[f"{dtype} matmul"], rates[f"{dtype} oneDNN"])


def calibrate_batchnorm(model: PointRend, seed: int = 0) -> None:
    """BatchNorm statistics of a trained network's order of magnitude, so logits stay O(1) through 57 layers
    (random init with unit variance explodes) and folding them changes real numbers."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1, generator=generator)
                m.running_var.uniform_(1.0, 2.0, generator=generator)
                m.weight.uniform_(0.2, 0.5, generator=generator)


def make_path(model: PointRend, name: str, row_name: str = "pointrend_r50_voc") -> PointRend | InferenceModel | OnnxModel:
    if name == EAGER:
        return model.eval()
    if name == ONNX:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:  # the session holds the graph: the file can go
            return OnnxModel(export_onnx(model, get_row(row_name), Path(folder) / "model.onnx"))
    precision = name.split()[1].split("+")[0]
    return prepare_for_inference(model, precision, compile=name.endswith("+compile"))  # type: ignore[arg-type]


def call(net: PointRend | InferenceModel | OnnxModel, images: Tensor, **kwargs):
    """One forward as `engine.evaluate.predict` makes it (inference_mode; the fast path applies its own)."""
    if isinstance(net, OnnxModel):
        return net(images)  # no recorded steps: ONNX Runtime returns the two outputs only
    with torch.inference_mode():
        return net(images, **kwargs)


def staged(net: PointRend | InferenceModel, images: Tensor) -> dict[str, float]:
    """Wall seconds per stage of one forward (CPU: no synchronisation needed)."""
    times: dict[str, float] = {}
    if isinstance(net, OnnxModel):
        start = time.perf_counter()
        net(images)
        return {"total": time.perf_counter() - start}

    def timed(name: str, fn: Callable, *args):
        start = time.perf_counter()
        result = fn(*args)
        times[name] = time.perf_counter() - start
        return result

    model = net.model if isinstance(net, InferenceModel) else net
    steps, points = model.cfg.subdivision_steps, model.cfg.subdivision_num_points
    with contextlib.ExitStack() as stack:
        if isinstance(net, InferenceModel):
            stack.enter_context(net.inference_context(images.device.type))
            if net.compiled:
                fine, coarse = timed("features", net.features, images)
            else:
                x = net.prepare_input(images)
                features = timed("backbone", model.backbone_net, x)
                pyramid = timed("fpn", model.fpn_neck, features)
                coarse, fine = timed(  # with the fast path's float32 / NCHW conversions (`features`)
                    "coarse head",
                    lambda p: (model.auxiliary_decoder(model.scale_heads(p)).float().contiguous(), p[0].float()),
                    pyramid,
                )
            subdivide = lambda r: net.model.subdivide(r, fine, coarse, points, record=False)[0]  # noqa: E731
        else:
            stack.enter_context(torch.inference_mode())
            features = timed("backbone", model.backbone_net, images)
            pyramid = timed("fpn", model.fpn_neck, features)
            coarse = timed("coarse head", lambda p: model.auxiliary_decoder(model.scale_heads(p)), pyramid)
            fine = pyramid[0]
            subdivide = lambda r: model.subdivide(r, fine, coarse, points, record=False)[0]  # noqa: E731
        refined = coarse
        for step in range(steps):
            refined = timed(f"step {step + 1}", subdivide, refined)
    if "features" not in times:
        times["features"] = times["backbone"] + times["fpn"] + times["coarse head"]
    times["subdivision"] = sum(times[f"step {s + 1}"] for s in range(steps))
    return times


def count_flops(model: PointRend, images: Tensor) -> dict[str, int]:
    """FLOPs of the eager forward per stage and in total (FlopCounterMode: 2 per multiply-add)."""
    counts: dict[str, int] = {}

    def counted(name: str, fn: Callable, *args):
        with FlopCounterMode(display=False) as counter:
            result = fn(*args)
        counts[name] = counter.get_total_flops()
        return result

    with torch.inference_mode():
        features = counted("backbone", model.backbone_net, images)
        pyramid = counted("fpn", model.fpn_neck, features)
        coarse = counted("coarse head", lambda p: model.auxiliary_decoder(model.scale_heads(p)), pyramid)
        refined = coarse
        for step in range(model.cfg.subdivision_steps):
            refined = counted(
                f"step {step + 1}",
                lambda r: model.subdivide(r, pyramid[0], coarse, model.cfg.subdivision_num_points)[0],
                refined,
            )
    counts["total"] = sum(counts.values())
    return counts


def agreement(out, reference) -> dict[str, float]:
    reselected = math.nan if not out.steps else sum(
        len(set(a.point_indices[0].tolist()) ^ set(b.point_indices[0].tolist())) // 2
        for a, b in zip(out.steps, reference.steps)
    )
    return {
        "refined agree": (out.logits.argmax(1) == reference.logits.argmax(1)).float().mean().item(),
        "coarse agree": (out.coarse_logits.argmax(1) == reference.coarse_logits.argmax(1)).float().mean().item(),
        "points reselected": reselected,
    }


def print_table(title: str, table: pd.DataFrame, formats: dict[str, str] | None = None) -> None:
    print(f"\n{title}")
    shown = table.copy()
    for column, fmt in (formats or {}).items():
        if column in shown:
            shown[column] = [fmt.format(v) if isinstance(v, (int, float)) and not pd.isna(v) else "-" for v in shown[column]]
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 40):
        print(shown.to_string(index=False))


# ------------------------------------------------------------------------------------------ the paths


def measure_size(row_name: str, size: tuple[int, int], paths: list[str], repeats: int, warmup: int,
                 rates: dict[str, float], gemm_size: int) -> pd.DataFrame:
    torch._dynamo.reset()  # a fresh compile per size: no automatic dynamic shapes from the previous size
    torch.manual_seed(0)
    model = build_model(row_name).eval()
    calibrate_batchnorm(model)
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    flops = count_flops(model, images)
    nets = {}
    compile_seconds = {}
    for name in paths:
        started = time.perf_counter()
        nets[name] = make_path(model, name, row_name)
        call(nets[name], images)  # the first call compiles
        compile_seconds[name] = time.perf_counter() - started
        for _ in range(warmup):
            call(nets[name], images)
            staged(nets[name], images)
    stage_runs: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    totals: dict[str, list[float]] = {name: [] for name in paths}
    probe = GemmProbe(gemm_size)
    round_rates: list[float] = []
    for _ in range(repeats):
        round_rates.append(probe())
        for name, net in nets.items():
            stage_runs[name].append(staged(net, images))
            start = time.perf_counter()
            call(net, images)
            totals[name].append(time.perf_counter() - start)
    reference = call(nets[EAGER], images, record_steps=True) if EAGER in nets else None
    rows = []
    for name in paths:
        stages = pd.DataFrame(stage_runs[name]).median()
        total = statistics.median(totals[name])
        dtype = "bf16" if "bf16" in name else "fp32"
        gflops = flops["total"] / total / 1e9
        row = {
            "size": f"{size[0]}x{size[1]}",
            "path": name,
            **{f"{stage} ms": 1000 * stages[stage] if stage in stages else math.nan
               for stage in ("backbone", "fpn", "coarse head", "features", "step 1", "step 2")},
            "total ms": 1000 * total,
            "GFLOP": flops["total"] / 1e9,
            "GFLOP/s": gflops,
            "% own GEMM": 100 * gflops / limit(rates, dtype),
            "% fp32 GEMM": 100 * gflops / limit(rates, "fp32"),
            # Each round's forward against that round's GEMM rate, the median over rounds.
            "% fp32 GEMM same round": 100 * statistics.median(
                flops["total"] / t / 1e9 / r for t, r in zip(totals[name], round_rates)),
            "round GEMM GFLOP/s": f"{min(round_rates):.0f}-{max(round_rates):.0f}",
            "subdiv share %": math.nan if "subdivision" not in stages
            else 100 * stages["subdivision"] / stages.drop(["subdivision", "features"]).sum()
            if "backbone" in stages else 100 * stages["subdivision"] / (stages["features"] + stages["subdivision"]),
            "images/s": 1 / total,
            "first call s": compile_seconds[name],
        }
        if reference is not None:
            row.update(agreement(call(nets[name], images, record_steps=True), reference))
        rows.append(row)
    table = pd.DataFrame(rows)
    if EAGER in paths:
        eager_total = table.loc[table.path == EAGER, "total ms"].item()
        table["speed-up vs eager"] = eager_total / table["total ms"]
    flop_line = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in flops.items())
    print(f"\nFLOPs at {size[0]}x{size[1]} (GFLOP, FlopCounterMode): {flop_line}")
    return table


# ------------------------------------------------------------------------------------------- accuracy


def accuracy(row_name: str, checkpoint: Path, data_root: str | None, paths: list[str], max_images: int | None) -> pd.DataFrame:
    from pointrend_core.data.transforms import eval_transforms
    from pointrend_core.engine.evaluate import evaluate

    row = get_row(row_name)
    model = build_model(row)
    load_checkpoint(model, checkpoint)
    model.eval()
    root = row.data.resolve_root(data_root)
    dataset = row.data.dataset(root, row.data.val_split, transforms=eval_transforms(row.data))
    rows = []
    for name in paths:
        torch._dynamo.reset()
        net = make_path(model, name)
        result = evaluate(net, dataset, row.eval, "cpu", row.model.num_classes, progress=False,
                          max_images=max_images)
        rows.append({
            "path": name,
            "mIoU": 100 * result.refined.mIoU,
            "boundary mIoU": 100 * result.refined_boundary.mIoU,
            "coarse mIoU": 100 * result.coarse.mIoU,
            "coarse boundary mIoU": 100 * result.coarse_boundary.mIoU,
            "images/s": result.images_per_second,
        })
    table = pd.DataFrame(rows)
    if EAGER in paths:
        base = table[table.path == EAGER].iloc[0]
        for key in ("mIoU", "boundary mIoU", "coarse mIoU", "coarse boundary mIoU"):
            table[f"d {key}"] = table[key] - base[key]
    print(f"\n{row_name} checkpoint {checkpoint}, {row.data.dataset.__name__} {root} {row.data.val_split}: "
          f"{result.num_images} images")
    return table


# --------------------------------------------------------------------------------------------- levers


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def levers(row_name: str, size: tuple[int, int], repeats: int, rates: dict[str, float]) -> pd.DataFrame:
    """The feature extractor alone under one lever at a time (its FLOPs are nearly all of the forward's)."""
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    model = build_model(row_name).eval()
    calibrate_batchnorm(model)
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.features(images)
    flops = counter.get_total_flops()
    cl = torch.channels_last
    variants: list[tuple[str, bool, bool, str | None, bool, torch.dtype | None, dict]] = [
        # name, fold BN, channels-last, compile mode, freezing, autocast dtype, extra
        ("NCHW, BN unfolded (eager)", False, False, None, False, None, {}),
        ("NCHW, BN folded", True, False, None, False, None, {}),
        ("NCHW, BN folded, oneDNN off", True, False, None, False, None, {"mkldnn": False}),
        ("channels-last, BN folded", True, True, None, False, None, {}),
        ("channels-last, BN folded, 1 thread", True, True, None, False, None, {"threads": 1}),
        ("channels-last + compile", True, True, "default", False, None, {}),
        ("channels-last + compile + freezing", True, True, "default", True, None, {}),
        ("channels-last + max-autotune + freezing", True, True, "max-autotune", True, None, {}),
        ("bf16 NCHW, BN folded", True, False, None, False, torch.bfloat16, {}),
        ("bf16 channels-last, BN folded", True, True, None, False, torch.bfloat16, {}),
        ("bf16 channels-last + compile + freezing", True, True, "default", True, torch.bfloat16, {}),
    ]
    if not cpu_has_fast_bf16():  # minutes per call on the reference path (measured: 252 s at 512x512), and no target
        print("\nlevers: the bf16 variants are left out (this CPU has no fast bf16 kernels)")
        variants = [v for v in variants if v[5] is None]
    rows = []
    for name, fold, channels_last, mode, freezing, dtype, extra in variants:
        torch._dynamo.reset()  # otherwise an earlier graph (say, unfrozen) is reused for the same code
        net = fuse_for_inference(model) if fold else model
        x = images
        if channels_last:
            net, x = net.to(memory_format=cl), images.contiguous(memory_format=cl)
        fn = net.features if mode is None else torch.compile(net.features, mode=mode)

        def run(fn=fn, x=x, freezing=freezing, dtype=dtype, extra=extra):
            with contextlib.ExitStack() as stack:
                stack.enter_context(inductor_config.patch(freezing=freezing))
                stack.enter_context(torch.inference_mode())
                stack.enter_context(torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None))
                stack.enter_context(torch.backends.mkldnn.flags(enabled=extra.get("mkldnn", True)))
                stack.enter_context(threads(extra.get("threads", torch.get_num_threads())))
                return fn(x)

        started = time.perf_counter()
        run()
        first = time.perf_counter() - started
        seconds = median_seconds(run, repeats, warmup=1)
        dtype_name = "bf16" if dtype is not None else "fp32"
        rows.append({
            "features path": name, "ms": 1000 * seconds, "GFLOP/s": flops / seconds / 1e9,
            "% own GEMM": 100 * flops / seconds / 1e9 / limit(rates, dtype_name), "first call s": first,
        })
    table = pd.DataFrame(rows)
    table["speed-up"] = table["ms"].iloc[0] / table["ms"]
    print(f"\nfeatures FLOPs at {size[0]}x{size[1]}: {flops / 1e9:.2f} GFLOP")
    return table


# ---------------------------------------------------------------------------------------------- targets


def targets(tables: pd.DataFrame, acc: pd.DataFrame | None, rates: dict[str, float],
            bf16_native: bool = True) -> pd.DataFrame:
    rows = []

    def best(size: str, paths: list[str], column: str, largest: bool = True):
        part = tables[(tables["size"] == size) & tables.path.isin(paths)]
        if part.empty:
            return None, None
        index = part[column].idxmax() if largest else part[column].idxmin()
        return part.loc[index, "path"], part.loc[index, column]

    fp32_fast = ["fast fp32", "fast fp32+compile"]
    bf16_fast = ["fast bf16", "fast bf16+compile"]
    path, value = best("512x512", fp32_fast, "% fp32 GEMM same round")
    if path is not None:
        row = tables[(tables["size"] == "512x512") & (tables.path == path)].iloc[0]
        rows.append({"target": "fp32 R-50 512x512 >= 80 % of the fp32 GEMM limit", "best path": path,
                     "measured": f"{value:.0f} % of the same round's GEMM ({row['round GEMM GFLOP/s']} GFLOP/s); "
                                 f"{row['% fp32 GEMM']:.0f} % of the start's {limit(rates, 'fp32'):.0f}",
                     "met": value >= 80})
    path, value = best("1024x2048", fp32_fast, "speed-up vs eager")
    if path is not None:
        rows.append({"target": "1024x2048 >= 1.5x faster than eager (fp32)", "best path": path,
                     "measured": f"{value:.2f}x", "met": value >= 1.5})
    if not bf16_native:
        rows.append({"target": "bf16 >= 3x faster than fp32 eager (CPUs with AMX or AVX-512-BF16)",
                     "best path": "-", "measured": "not applicable: this CPU has neither", "met": None})
    for size in sorted(set(tables["size"])):
        path, value = best(size, bf16_fast, "speed-up vs eager")
        if path is not None:
            rows.append({"target": f"bf16 >= 3x faster than fp32 eager at {size}", "best path": path,
                         "measured": f"{value:.2f}x", "met": value >= 3})
    if acc is not None and "d mIoU" in acc:
        for _, r in acc[acc.path.isin(bf16_fast)].iterrows():
            rows.append({"target": "bf16 demo mIoU within 0.1 (pp) of fp32 eager", "best path": r.path,
                         "measured": f"{r['d mIoU']:+.3f} pp (boundary {r['d boundary mIoU']:+.3f})",
                         "met": abs(r["d mIoU"]) <= 0.1})
    for size in sorted(set(tables["size"])):
        onnx = tables[(tables["size"] == size) & (tables.path == ONNX)]
        fast = tables[(tables["size"] == size) & (tables.path == "fast fp32")]
        if not onnx.empty and not fast.empty:
            ratio = fast["total ms"].item() / onnx["total ms"].item()
            rows.append({"target": f"onnxruntime at least as fast as fast fp32 at {size}", "best path": ONNX,
                         "measured": f"{ratio:.2f}x fast fp32's speed ({1000 / onnx['total ms'].item():.2f} "
                                     f"against {1000 / fast['total ms'].item():.2f} images/s)",
                         "met": ratio >= 1.0})
    part = tables[(tables["size"] == "1024x2048") & tables.path.str.startswith("fast")]
    for _, r in part.iterrows():
        rows.append({"target": "subdivision < 10 % of total at 1024x2048", "best path": r.path,
                     "measured": f"{r['subdiv share %']:.1f} %", "met": r["subdiv share %"] < 10})
    return pd.DataFrame(rows)


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv: list[str] | None = None) -> dict[str, pd.DataFrame]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", default="pointrend_r50_voc", help="the network timed (random weights)")
    parser.add_argument("--sizes", nargs="+", default=["512x512"], help="HxW; 1024x2048 takes minutes")
    parser.add_argument("--paths", nargs="+", default=PATHS, choices=PATHS)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per path after the first call")
    parser.add_argument("--gemm-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained --checkpoint-row: mIoU per path")
    parser.add_argument("--checkpoint-row", default="demo")
    parser.add_argument("--data-root", default=None, help="the checkpoint row's data (default: its default root)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--levers", action="store_true", help="also time each lever on the feature extractor")
    parser.add_argument("--retain-memory", action="store_true",
                        help="model.inference.retain_freed_memory() first (glibc keeps freed memory: no page faults)")
    args = parser.parse_args(argv)
    if args.retain_memory and not retain_freed_memory():
        parser.error("--retain-memory needs glibc's mallopt")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sys.stdout.reconfigure(line_buffering=True)  # each table as soon as it is measured, also into a file
    paths = [p for p in PATHS if p in args.paths]
    bf16_native = cpu_has_fast_bf16()
    if not bf16_native and args.paths == PATHS:
        # A forward at 1024x2048 would take minutes per call; the targets only ask bf16 of such CPUs anyway.
        print("this CPU has no fast bf16 kernels (no AVX-512 or AMX): the bf16 paths are timed only when named "
              "with --paths; their accuracy is still measured with --checkpoint")
        paths = [p for p in paths if "bf16" not in p]
    if EAGER not in paths:
        paths.insert(0, EAGER)  # the reference of every ratio and agreement

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, oneDNN {torch.backends.mkldnn.is_available()}, "
          f"malloc {'retains freed memory' if args.retain_memory else 'glibc default'}, "
          f"fast bf16 kernels {bf16_native}")
    gemm_repeats = max(args.repeats, 10)
    rates = gemm_rates(args.gemm_size, gemm_repeats)
    print_table(f"GEMM rate, {args.gemm_size}^3, GFLOP/s (the limit of a dtype: the better of the two)",
                pd.DataFrame([{"dtype": d, "matmul": rates[f"{d} matmul"], "oneDNN (1x1 conv)": rates[f"{d} oneDNN"],
                               "limit": limit(rates, d)} for d in ("fp32", "bf16")]),
                {"matmul": "{:.0f}", "oneDNN (1x1 conv)": "{:.0f}", "limit": "{:.0f}"})

    results: dict[str, pd.DataFrame] = {}
    tables = pd.concat([measure_size(args.row, parse_size(s), paths, args.repeats, args.warmup, rates, args.gemm_size)
                        for s in args.sizes], ignore_index=True)
    results["paths"] = tables
    time_formats = {c: "{:.0f}" for c in tables.columns if c.endswith(" ms")}
    print_table(f"{args.row}, batch 1: time per stage (median of {args.repeats}), ms",
                tables[["size", "path", *[c for c in tables.columns if c.endswith(" ms")], "first call s"]],
                {**time_formats, "first call s": "{:.1f}"})
    rate_columns = ["size", "path", "images/s", "GFLOP", "GFLOP/s", "% own GEMM", "% fp32 GEMM", "% fp32 GEMM same round",
                    "round GEMM GFLOP/s", "speed-up vs eager",
                    "subdiv share %", "refined agree", "coarse agree", "points reselected"]
    print_table("throughput and agreement with eager fp32", tables[[c for c in rate_columns if c in tables]],
                {"images/s": "{:.3f}", "GFLOP": "{:.1f}", "GFLOP/s": "{:.0f}", "% own GEMM": "{:.0f}", "% fp32 GEMM": "{:.0f}",
                 "% fp32 GEMM same round": "{:.0f}",
                 "speed-up vs eager": "{:.2f}", "subdiv share %": "{:.1f}", "refined agree": "{:.5f}",
                 "coarse agree": "{:.5f}"})

    acc = None
    if args.checkpoint is not None:
        accuracy_paths = [p for p in paths if p != ONNX] + [p for p in ("fast bf16",) if p not in paths]  # any CPU
        # (`evaluate` runs torch modules; predict --onnx is checked against torch by tests/test_onnx_export.py.)
        acc = accuracy(args.checkpoint_row, args.checkpoint, args.data_root, accuracy_paths, args.max_images)
        results["accuracy"] = acc
        print_table("accuracy per path (%, refined and coarse) and difference to eager fp32 (pp)", acc,
                    {c: "{:+.3f}" if c.startswith("d ") else "{:.3f}" for c in acc.columns if c != "path"})
    if args.levers:
        lever_table = levers(args.row, parse_size(args.sizes[0]), args.repeats, rates)
        results["levers"] = lever_table
        print_table("levers, feature extractor only", lever_table,
                    {"ms": "{:.0f}", "GFLOP/s": "{:.0f}", "% own GEMM": "{:.0f}", "first call s": "{:.1f}",
                     "speed-up": "{:.2f}"})

    after = gemm_rates(args.gemm_size, gemm_repeats)
    # The limits a share is taken of: bf16's only where it has fast kernels (the slow path's rate is noise).
    compared = ["fp32", "bf16"] if bf16_native else ["fp32"]
    drift = max(abs(limit(after, d) / limit(rates, d) - 1) for d in compared)
    print("\nGEMM rate again at the end: " + ", ".join(f"{k} {v:.0f}" for k, v in after.items())
          + (f"  -- WARNING: the {'/'.join(compared)} limit moved {100 * drift:.0f} % from the first measurement: the "
             "CPU was shared or changed speed; compare the same-round shares"
             if drift > 0.10 else "  (within 10 % of the first measurement)"))
    target_table = targets(tables, acc, rates, bf16_native)
    results["targets"] = target_table
    print_table("targets", target_table)
    return results


if __name__ == "__main__":
    main()
