"""Inference latency per stage and peak memory, R-50 and R-101, batch 1.

    python benchmarks/inference.py                       # CPU: 512x512 and 1024x2048, both depths
    python benchmarks/inference.py --device cuda --repeats 20
    python benchmarks/inference.py --sizes 512x512 --depths 50

Each configuration runs in a fresh process so that peak memory (CUDA: max_memory_allocated; CPU: the rise
of peak RSS over the model's own footprint) belongs to it alone. Two variants are timed: `eager` (plain
eval under no_grad) and `fast` (inference_mode, channels-last, BatchNorm folded into convolutions), and the
agreement of their logits is reported (target: <= 1e-4 relative to the logit range, apart from points
reselected at near-ties of the uncertainty).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import pandas as pd
import torch

from pointrend_core.config import ModelConfig
from pointrend_core.model import PointRend, fuse_for_inference

STAGES = ["backbone", "fpn", "coarse_head", "subdivision_1", "subdivision_2"]


def staged_forward(model: PointRend, images: torch.Tensor, sync) -> tuple[dict[str, float], torch.Tensor]:
    """The eval forward, stage by stage, with wall times in seconds."""
    times: dict[str, float] = {}

    def timed(name, fn, *args):
        sync()
        start = time.perf_counter()
        result = fn(*args)
        sync()
        times[name] = time.perf_counter() - start
        return result

    features = timed("backbone", model.backbone_net, images)
    pyramid = timed("fpn", model.fpn_neck, features)
    coarse = timed("coarse_head", lambda p: model.auxiliary_decoder(model.scale_heads(p)), pyramid)
    refined = coarse
    num_points = model.cfg.subdivision_num_points
    for step in range(model.cfg.subdivision_steps):
        refined = timed(f"subdivision_{step + 1}", lambda r: model.subdivide(r, pyramid[0], coarse, num_points)[0], refined)
    return times, refined


def calibrate_batchnorm(model: PointRend) -> None:
    """Give BatchNorm statistics of a trained network's order of magnitude, so logits are O(1) and the
    fused/eager comparison means something (random init with unit variance explodes through 100 layers)."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1, generator=generator)
            m.running_var.uniform_(1.0, 2.0, generator=generator)
            m.weight.data.uniform_(0.2, 0.5, generator=generator)


def measure(depth: int, size: tuple[int, int], device: str, repeats: int, classes: int, queue) -> None:
    torch.manual_seed(0)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = PointRend(ModelConfig(num_classes=classes, depth=depth)).eval()
    calibrate_batchnorm(model)
    model.to(dev)
    images = torch.randn(1, 3, *size, device=dev)
    fast_model = fuse_for_inference(model).to(memory_format=torch.channels_last)
    fast_images = images.contiguous(memory_format=torch.channels_last)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows = []
    outputs = {}
    for variant, net, x, context in (
        ("eager", model, images, torch.no_grad),
        ("fast", fast_model, fast_images, torch.inference_mode),
    ):
        with context():
            staged_forward(net, x, sync)  # warm-up
            runs = []
            for _ in range(repeats):
                times, refined = staged_forward(net, x, sync)
                runs.append(times)
            outputs[variant] = refined.float().cpu()
        mean = pd.DataFrame(runs).mean()
        total = mean.sum()
        rows.append(
            {
                "depth": f"R-{depth}",
                "size": f"{size[0]}x{size[1]}",
                "variant": variant,
                **{f"{s} (ms)": 1000 * mean[s] for s in STAGES},
                "total (ms)": 1000 * total,
                "subdivision share": (mean["subdivision_1"] + mean["subdivision_2"]) / total,
            }
        )
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    agreement = compare(model, images, fast_model, fast_images)
    for row in rows:
        row["peak memory (MiB)"] = peak
        row.update(agreement)
    queue.put(rows)


def compare(model: PointRend, images: torch.Tensor, fast_model: PointRend, fast_images: torch.Tensor) -> dict[str, float]:
    """How closely the fast variant reproduces eager eval.

    Coarse logits are compared directly. Refined logits can differ where the top-k point choice met a near-tie
    (two uncertainties within float noise, reference quirk 15): then another point is refined. We report how
    many points were chosen differently, and the share of refined pixels off by more than 1e-4 of the range.
    """
    with torch.inference_mode():
        eager = model(images, record_steps=True)
        fast = fast_model(fast_images, record_steps=True)
    scale = eager.coarse_logits.abs().max().item()
    reselected = sum(
        len(set(a.point_indices[0].tolist()) ^ set(b.point_indices[0].tolist())) // 2
        for a, b in zip(eager.steps, fast.steps)
    )
    refined_diff = (eager.logits - fast.logits).abs().amax(1)
    return {
        "coarse max rel diff": (eager.coarse_logits - fast.coarse_logits).abs().max().item() / scale,
        "points reselected": reselected,
        "refined pixels off >1e-4": (refined_diff > 1e-4 * scale).float().mean().item(),
    }


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depths", type=int, nargs="+", default=[50, 101])
    parser.add_argument("--sizes", nargs="+", default=["512x512", "1024x2048"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--classes", type=int, default=19)
    args = parser.parse_args(argv)
    context = mp.get_context("spawn")
    rows = []
    for depth in args.depths:
        for size_text in args.sizes:
            size = tuple(int(v) for v in size_text.split("x"))
            queue = context.Queue()
            process = context.Process(target=measure, args=(depth, size, args.device, args.repeats, args.classes, queue))
            process.start()
            rows += queue.get()
            process.join()
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
        print(table.to_string(index=False))
        fast = table[table.variant == "fast"]
        eager = table[table.variant == "eager"].set_index(["depth", "size"])["total (ms)"]
        speedup = eager / fast.set_index(["depth", "size"])["total (ms)"]
        print("\nspeed-up of fast over eager:")
        print(speedup.to_string())
    return table


if __name__ == "__main__":
    main()
