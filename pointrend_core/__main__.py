"""Command line: `python -m pointrend_core train | evaluate | check-data | prepare-voc-aug | make-demo-data ...`.

    python -m pointrend_core train --config pointrend_r50_voc --data-root data/VOCdevkit/VOC2012 \\
        --pretrained-backbone resnet50_v1c-2cccc1ad.pth --out runs/r50_voc [--resume]
    torchrun --nproc_per_node=8 -m pointrend_core train --config pointrend_r50_voc ...
    python -m pointrend_core evaluate --config pointrend_r50_voc --checkpoint pointrend_resnet50os32_voc.pth
    python -m pointrend_core check-data --dataset voc --root data/VOCdevkit/VOC2012
    python -m pointrend_core prepare-voc-aug --voc VOCdevkit/VOC2012 --sbd benchmark_RELEASE/dataset
    python -m pointrend_core make-demo-data --out data/demo
    python -m pointrend_core predict --run runs/demo --input photos/ --out masks/ [--overlay]
    python -m pointrend_core export --format onnx --run runs/demo --out demo.onnx

Each subcommand is a thin call of the library function of the same job (`engine.train.train`,
`engine.evaluate.evaluate_run`, `data.validate.check_dataset`, `data.voc_aug.prepare_voc_aug`, `data.demo.make_demo_dataset`); the notebooks
call the same functions. Exit codes: 0 success, 1 failure (message on stderr; check-data: problems found),
2 bad arguments, 143 stopped by SIGTERM (resume with --resume).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from pointrend_core.config import DATASETS, RowConfig, default_run_dir, get_row, on_dataset
from pointrend_core.data.demo import make_demo_dataset
from pointrend_core.data.validate import check_dataset
from pointrend_core.data.voc_aug import prepare_voc_aug
from pointrend_core.engine.distributed import launched_rank, start_processes, stop_processes
from pointrend_core.engine.evaluate import default_evaluation_folder, evaluate_run
from pointrend_core.engine.records import RUN_FILE
from pointrend_core.engine.run_folder import run_folder_lock
from pointrend_core.engine.train import NonFiniteLossError, TrainingInterrupted, TrainOptions, train
from pointrend_core.model.inference import PRECISION_DTYPES, check_precision, retain_freed_memory

EXIT_INTERRUPTED = 143  # 128 + SIGTERM, the shell convention


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pointrend_core", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a table row (under torchrun: one process per device)")
    _row_arguments(train)
    train.add_argument("--checkpoint", type=Path, help="initial weights for the whole model, strictly (ignored with --resume)")
    train.add_argument("--init-checkpoint", type=Path, metavar="FILE",
                       help="fine-tune from a model of other classes: matching weights loaded, classifiers re-initialised")
    train.add_argument("--pretrained-backbone", type=Path, help="ImageNet ResNet-v1c weights for the backbone")
    train.add_argument("--out", "--out-dir", dest="out", type=Path, help="run folder (default runs/<config>)")
    train.add_argument("--max-iters", type=_positive_int, help="stop after N iterations (default: the row's epochs)")
    train.add_argument("--checkpoint-every", type=_positive_int, help="iterations between checkpoints (default: one epoch)")
    train.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint_last.pth if it exists")
    train.add_argument("--overwrite", action="store_true", help="start afresh in a folder holding an earlier run, deleting it")
    train.add_argument("--seed", type=_non_negative_int, default=0)
    train.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    train.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="mixed precision (fp16: CUDA only)")
    train.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    train.add_argument("--batch-size", type=_positive_int, help="total batch size over all processes (override)")
    train.add_argument("--crop", type=_positive_int, nargs=2, metavar=("H", "W"), help="training crop size (override)")
    train.add_argument("--workers", type=_non_negative_int, help="data loader workers per process")
    train.add_argument("--log-every", type=_positive_int, default=20, help="iterations between metrics.jsonl records")
    train.add_argument("--evaluate", action="store_true", help="evaluate every eval_every_epochs epochs and at the end")
    train.add_argument("--eval-max-images", type=_positive_int, help="evaluate on the first N validation images only")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint; writes <out>/run.json")
    _row_arguments(evaluate)
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="weights to evaluate")
    evaluate.add_argument("--out", "--out-dir", dest="out", type=Path,
                          help="folder of run.json (default: the checkpoint's, or a sub-folder of it when its run.json "
                               "records another evaluation)")
    evaluate.add_argument("--split", help="dataset split (default: the row's validation split)")
    evaluate.add_argument("--max-images", type=_positive_int, help="evaluate the first N images only")
    evaluate.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    evaluate.add_argument("--precision", choices=tuple(PRECISION_DTYPES), default="fp32",
                          help="inference precision (bf16: CPU or CUDA; fp16: CUDA only); recorded in run.json")
    evaluate.add_argument("--compile", action="store_true",
                          help="torch.compile the feature extractor (the first image and each new size compile)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")

    check = commands.add_parser("check-data", help="report every problem of a dataset folder")
    check.add_argument("--dataset", required=True, choices=tuple(DATASETS), help="layout of the folder")
    check.add_argument("--root", required=True, type=Path, help="dataset root (as the dataset class takes it)")
    check.add_argument("--split", help="split to check (default: every split on disk)")

    voc_aug = commands.add_parser("prepare-voc-aug", help="build VOC's trainaug split from the VOC2012 and SBD downloads")
    voc_aug.add_argument("--voc", required=True, type=Path, help="the VOC2012 folder (VOCdevkit/VOC2012)")
    voc_aug.add_argument("--sbd", required=True, type=Path, help="SBD's dataset folder (benchmark_RELEASE/dataset)")
    voc_aug.add_argument("--no-progress", action="store_true", help="no progress bar")

    demo = commands.add_parser("make-demo-data", help="write the embedded procedural demo dataset")
    demo.add_argument("--out", required=True, type=Path, help="folder to create")
    demo.add_argument("--num-images", type=_positive_int, help="images per split (default: the generator's)")
    demo.add_argument("--seed", type=_non_negative_int, default=0)

    predict = commands.add_parser("predict", help="masks for new images with a trained model (docs/deploy.md)")
    _model_source_arguments(predict)
    predict.add_argument("--onnx", type=Path, help="an exported ONNX file, run in ONNX Runtime (no torch model)")
    predict.add_argument("--input", required=True, type=Path,
                         help="an image, a folder (searched recursively for JPEG/PNG/TIFF) or a list file (.txt)")
    predict.add_argument("--out", required=True, type=Path, help="folder of <stem>.png class-index palette PNGs")
    predict.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.jpg (image and colours 50/50)")
    predict.add_argument("--coarse", action="store_true", help="the coarse head's masks alone (for comparison)")
    predict.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    predict.add_argument("--eager", action="store_true", help="run the plain model instead of the fast path")
    predict.add_argument("--batch-size", type=_positive_int, default=1, help="images per forward pass (default 1)")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")

    export = commands.add_parser("export", help="export a trained model to ONNX, checked in ONNX Runtime")
    _model_source_arguments(export)
    export.add_argument("--format", choices=("onnx",), default="onnx", help="output format (onnx)")
    export.add_argument("--out", required=True, type=Path, help="the file to write, e.g. model.onnx")
    export.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default 18)")
    export.add_argument("--check-size", type=_positive_int, nargs=2, action="append", metavar=("H", "W"),
                        help="input size to compare with torch (repeatable; default 37x53, 255x321, 1031x2053)")
    export.add_argument("--no-check", action="store_true", help="skip the comparison in ONNX Runtime")
    return parser


def _model_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, help="a run folder: its recorded row and checkpoint_final.pth")
    parser.add_argument("--config", help="table row name (with --checkpoint), e.g. pointrend_r50_voc")
    parser.add_argument("--checkpoint", type=Path, help="weights of --config")
    parser.add_argument("--dataset", choices=tuple(DATASETS), help="with --config: the dataset the row was trained on")
    parser.add_argument("--data-root", type=Path, help="with --dataset folder: the folder holding classes.txt")


def _source_row(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RowConfig | None:
    """--config with --dataset applied, or None without --config."""
    if args.config is None:
        return None
    try:
        row = get_row(args.config)
    except KeyError as error:
        parser.error(str(error.args[0]))
    return on_dataset(row, args.dataset, args.data_root)


def _row_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="table row name, e.g. pointrend_r50_voc or demo")
    parser.add_argument("--dataset", choices=tuple(DATASETS),
                        help="run the row's recipe on this dataset (default: the row's own); the classes come from "
                             "the dataset (classes.txt for a folder) and the heads are sized to them")
    parser.add_argument("--data-root", type=Path, help="dataset root (default: the row's default_root)")


def resolve_row(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RowConfig:
    """The named row with the command line's overrides (--batch-size, --crop) applied by `replace`."""
    try:
        row = get_row(args.config)
    except KeyError as error:
        parser.error(str(error.args[0]))
    if getattr(args, "batch_size", None) is not None:
        row = replace(row, schedule=replace(row.schedule, batch_size=args.batch_size))
    if getattr(args, "crop", None) is not None:
        row = replace(row, data=replace(row.data, crop_size=tuple(args.crop)))
    return on_dataset(row, args.dataset, args.data_root)


def run_train(row: RowConfig, args: argparse.Namespace) -> int:
    options = TrainOptions(
        max_iters=args.max_iters,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        workers=args.workers,
        init_checkpoint=args.checkpoint,
        finetune_checkpoint=args.init_checkpoint,
        overwrite=args.overwrite,
        pretrained_backbone=args.pretrained_backbone,
        log_every=args.log_every,
        evaluate=args.evaluate,
        eval_max_images=args.eval_max_images,
        progress=not args.no_progress,
    )
    out = args.out or default_run_dir(row)
    try:
        final = train(row, args.data_root, out, options)
    except TrainingInterrupted as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if launched_rank() == 0:
        print(f"final checkpoint: {final}")
    return 0


def run_evaluate(row: RowConfig, args: argparse.Namespace) -> int:
    processes = start_processes(args.device)
    try:
        check_precision(args.precision, processes.device)  # before the run folder is made
    except ValueError:
        stop_processes(processes)
        raise
    if args.own_process:
        # This process only evaluates and then exits, so keeping its peak memory costs nothing, and each
        # forward stops page-faulting its large activations in again (measured on CPU at 1024x2048: 9.2 s ->
        # 6.6 s per forward; docs/inference.md).
        retain_freed_memory()
    out = args.out or default_evaluation_folder(row, args.checkpoint, args.data_root, args.split, args.max_images)
    try:
        with run_folder_lock(out) if processes.is_main else nullcontext():
            record = evaluate_run(row, args.checkpoint, args.data_root, out, device=processes.device,
                                  split=args.split, max_images=args.max_images, precision=args.precision,
                                  compile=args.compile, progress=not args.no_progress)
    finally:
        stop_processes(processes)
    if processes.is_main:
        refined, coarse = record.metrics.refined, record.metrics.coarse
        print(f"{row.name}: mIoU {refined.mIoU:.2f} (coarse {coarse.mIoU:.2f}), "
              f"boundary mIoU {refined.boundary_mIoU:.2f} (coarse {coarse.boundary_mIoU:.2f}) "
              f"on {record.data.num_images} images ({args.precision}{', compiled' if args.compile else ''}, "
              f"{record.timing.images_per_second:.2f} images/s); {Path(out) / RUN_FILE}")
    return 0


def run_check_data(args: argparse.Namespace) -> int:
    dataset_cls = DATASETS[args.dataset]
    problems = check_dataset(dataset_cls, args.root, args.split)
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) in {dataset_cls.__name__} at {args.root}", file=sys.stderr)
        return 1
    splits = [args.split] if args.split else dataset_cls.splits_on_disk(args.root)
    counts = ", ".join(f"{split} {len(dataset_cls(args.root, split))} images" for split in splits)
    print(f"ok: {dataset_cls.__name__} at {args.root}: {counts}")
    return 0


def run_prepare_voc_aug(args: argparse.Namespace) -> int:
    print(prepare_voc_aug(args.voc, args.sbd, progress=not args.no_progress).describe())
    return 0


def run_make_demo_data(args: argparse.Namespace) -> int:
    kwargs = {"seed": args.seed} if args.num_images is None else {"num_images": args.num_images, "seed": args.seed}
    root = make_demo_dataset(args.out, **kwargs)
    print(f"demo dataset written to {root}")
    return 0


def run_predict(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from pointrend_core.deploy import load_predictor, predict_files
    from pointrend_core.deploy.images import list_inputs

    images = list_inputs(args.input)
    predictor = load_predictor(args.run, _source_row(parser, args), args.checkpoint, args.onnx, device=args.device,
                               **({} if args.onnx else {"fast": not args.eager}))
    summary = predict_files(predictor, images, args.out, overlay=args.overlay, coarse=args.coarse,
                            batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.no_progress)
    print(summary.describe(args.out))
    return 1 if summary.skipped else 0


def run_export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from pointrend_core.deploy import OnnxModel, check_agreement, export_onnx, load_predictor
    from pointrend_core.deploy.onnx import DEFAULT_CHECK_SIZES

    predictor = load_predictor(args.run, _source_row(parser, args), args.checkpoint, device="cpu", fast=False)
    path = export_onnx(predictor.network, predictor.row, args.out, args.opset)
    print(f"wrote {path} ({predictor.row.name}, opset {args.opset})")
    if not args.no_check:
        sizes = [tuple(size) for size in args.check_size] if args.check_size else DEFAULT_CHECK_SIZES
        for agreement in check_agreement(predictor.network, OnnxModel(path), sizes):
            print(f"onnxruntime vs torch at {agreement.describe()}")
    return 0


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Parse `argv` (default sys.argv[1:]) and run the subcommand; returns the exit code. `own_process`: the
    process runs only this command (`python -m pointrend_core`), so process-wide settings are allowed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.own_process = own_process
    try:
        if args.command == "train":
            return run_train(resolve_row(parser, args), args)
        if args.command == "evaluate":
            return run_evaluate(resolve_row(parser, args), args)
        if args.command == "check-data":
            return run_check_data(args)
        if args.command == "prepare-voc-aug":
            return run_prepare_voc_aug(args)
        if args.command == "predict":
            return run_predict(parser, args)
        if args.command == "export":
            return run_export(parser, args)
        return run_make_demo_data(args)
    except (ValueError, OSError, NonFiniteLossError) as error:
        # These errors already name the file or value and what was expected; other exceptions keep their
        # traceback (they are bugs, not bad input).
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(own_process=True))
