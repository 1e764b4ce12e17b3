"""Command line: `python -m pointrend_core train | evaluate | predict | export | check-data | prepare-voc-aug |
make-demo-data ...`.

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
2 bad arguments, 128 + the signal when stopped by one (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; a training stopped
so continues with --resume).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

import torch

from pointrend_core.checks import non_negative_int, positive_int
from pointrend_core.config import DATASETS, RowConfig, default_run_dir, get_row, on_dataset
from pointrend_core.data.demo import demo_parameters, make_demo_dataset
from pointrend_core.data.validate import check_dataset_report, resolution_note
from pointrend_core.data.voc_aug import prepare_voc_aug
from pointrend_core.engine.distributed import launched_rank, start_processes, stop_processes
from pointrend_core.engine.evaluate import default_evaluation_folder, evaluate_run
from pointrend_core.engine.precision import AMP_DTYPES, OLD_SPELLINGS
from pointrend_core.engine.run_folder import RunFolder, hold_on_main
from pointrend_core.engine.train import NonFiniteLossError, TrainingInterrupted, TrainOptions, train
from pointrend_core.interrupts import exit_code, signal_name, signals_raise_stopped
from pointrend_core.model.inference import PRECISION_DTYPES, check_precision, retain_freed_memory
from pointrend_core.overrides import apply_overrides


def _precision(text: str) -> str:
    return OLD_SPELLINGS.get(text, text)  # argparse then checks the choices


def _positive_int(text: str) -> int:
    try:
        return positive_int("the value", text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("the value ")) from None


def _non_negative_int(text: str) -> int:
    try:
        return non_negative_int("the value", text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("the value ")) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pointrend_core", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_command(commands)
    _add_evaluate_command(commands)
    _add_check_command(commands)
    _add_voc_aug_command(commands)
    _add_demo_command(commands)
    _add_predict_command(commands)
    _add_export_command(commands)
    return parser


def _add_train_command(commands: argparse._SubParsersAction) -> None:
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
    train.add_argument("--amp", type=_precision, choices=tuple(AMP_DTYPES), default="fp32",
                       help="training precision (fp16: CUDA only; 'none' is accepted for fp32)")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="train in the channels-last memory format (default: where it is faster on this machine: "
                            "CPUs with AVX-512 convolutions, CUDA under bf16/fp16)")
    train.add_argument("--batch-size", type=_positive_int, help="total batch size over all processes (override)")
    train.add_argument("--crop", type=_positive_int, nargs=2, metavar=("H", "W"), help="training crop size (override)")
    train.add_argument("--workers", type=_non_negative_int, help="data loader workers per process")
    train.add_argument("--log-every", type=_positive_int, default=20, help="iterations between metrics.jsonl records")
    train.add_argument("--evaluate", action="store_true", help="evaluate every eval_every_epochs epochs and at the end")
    train.add_argument("--eval-max-images", type=_positive_int, help="evaluate on the first N validation images only")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_evaluate_command(commands: argparse._SubParsersAction) -> None:
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


def _add_check_command(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser("check-data", help="report every problem of a dataset folder")
    check.add_argument("--dataset", required=True, choices=tuple(DATASETS), help="layout of the folder")
    check.add_argument("--root", required=True, type=Path, help="dataset root (as the dataset class takes it)")
    check.add_argument("--split", help="split to check (default: every split on disk)")


def _add_voc_aug_command(commands: argparse._SubParsersAction) -> None:
    voc_aug = commands.add_parser("prepare-voc-aug", help="build VOC's trainaug split from the VOC2012 and SBD downloads")
    voc_aug.add_argument("--voc", required=True, type=Path, help="the VOC2012 folder (VOCdevkit/VOC2012)")
    voc_aug.add_argument("--sbd", required=True, type=Path, help="SBD's dataset folder (benchmark_RELEASE/dataset)")
    voc_aug.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_demo_command(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("make-demo-data", help="write the embedded procedural demo dataset")
    demo.add_argument("--out", required=True, type=Path, help="folder to create")
    demo.add_argument("--num-images", type=_positive_int,
                      help="images in all; every fifth is a val image (default: the generator's)")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace a demo dataset made with another --num-images or --seed")
    demo.add_argument("--seed", type=_non_negative_int, default=0)


def _add_predict_command(commands: argparse._SubParsersAction) -> None:
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


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a trained model to ONNX, checked in ONNX Runtime")
    _model_source_arguments(export)
    export.add_argument("--format", choices=("onnx",), default="onnx", help="output format (onnx)")
    export.add_argument("--out", required=True, type=Path, help="the file to write, e.g. model.onnx")
    export.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset (default 18)")
    export.add_argument("--check-size", type=_positive_int, nargs=2, action="append", metavar=("H", "W"),
                        help="input size to compare with torch (repeatable; default 37x53, 255x321, 1031x2053)")
    export.add_argument("--no-check", action="store_true", help="skip the comparison in ONNX Runtime")


def _model_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, help="a run folder: its recorded row and checkpoint_final.pth")
    parser.add_argument("--config", help="table row name (with --checkpoint), e.g. pointrend_r50_voc")
    parser.add_argument("--checkpoint", type=Path, help="weights of --config")
    parser.add_argument("--dataset", choices=tuple(DATASETS), help="with --config: the dataset the row was trained on")
    parser.add_argument("--data-root", type=Path, help="with --dataset folder: the folder holding classes.txt")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="overrides",
                        help="change a field of the row (e.g. data.base_size=1024,768, eval.flip=true)")


def _model_source(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The model source of predict/export as `deploy.load_predictor` takes it: the run folder, or the row
    (--config with --dataset, or the run's own row) with every --set applied, and its checkpoint."""
    run, row, checkpoint = args.run, None, args.checkpoint
    if args.config is not None:
        try:
            row = on_dataset(get_row(args.config), args.dataset, args.data_root)
        except KeyError as error:
            parser.error(str(error.args[0]))
    elif run is not None and args.overrides:
        from pointrend_core.deploy.rows import run_row_and_checkpoint

        (row, checkpoint), run = run_row_and_checkpoint(run), None
    if row is not None:
        row = apply_overrides(row, args.overrides)
    return {"run": run, "row": row, "checkpoint": checkpoint}


def _row_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="table row name, e.g. pointrend_r50_voc or demo")
    parser.add_argument("--dataset", choices=tuple(DATASETS),
                        help="run the row's recipe on this dataset (default: the row's own); the classes come from "
                             "the dataset (classes.txt for a folder) and the heads are sized to them")
    parser.add_argument("--data-root", type=Path, help="dataset root (default: the row's default_root)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="overrides",
                        help="change a field of the row's model, data, schedule or eval section, e.g. "
                             "data.crop_size=384,384 or schedule.lr=0.005 (repeatable; docs/own-data.md)")


def resolve_row(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RowConfig:
    """The named row on its dataset, with the command line's overrides: the shortcuts (--batch-size N,
    --crop H W) first, then every --set in order."""
    try:
        row = get_row(args.config)
    except KeyError as error:
        parser.error(str(error.args[0]))
    shortcuts = []
    if getattr(args, "batch_size", None) is not None:
        shortcuts.append(f"schedule.batch_size={args.batch_size}")
    if getattr(args, "crop", None) is not None:
        shortcuts.append(f"data.crop_size={args.crop[0]},{args.crop[1]}")
    return apply_overrides(on_dataset(row, args.dataset, args.data_root), [*shortcuts, *args.overrides])


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
        checkpoint=args.checkpoint,
        init_checkpoint=args.init_checkpoint,
        overwrite=args.overwrite,
        pretrained_backbone=args.pretrained_backbone,
        log_every=args.log_every,
        evaluate=args.evaluate,
        eval_max_images=args.eval_max_images,
        progress=not args.no_progress,
    )
    out = args.out = args.out or default_run_dir(row)  # the stop message names this folder's checkpoint
    try:
        final = train(row, args.data_root, out, options)
    except TrainingInterrupted as stopped:
        print(f"stopped: {str(stopped).removesuffix('continue with --resume')}continue with: "
              f"{resume_command(args.argv)}", file=sys.stderr)
        return exit_code(stopped.signum)
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
    out = RunFolder(args.out or default_evaluation_folder(row, args.checkpoint, args.data_root, args.split,
                                                          args.max_images, args.precision))
    if processes.is_main:
        try:
            note = resolution_note(row.data.dataset(row.data.resolve_root(args.data_root),
                                                   args.split or row.data.val_split), row.data.base_size)
        except (OSError, ValueError):
            note = None  # evaluate_run reports a dataset that cannot be opened
        if note is not None:
            print(note, file=sys.stderr)
    try:
        with hold_on_main(out, processes):
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
              f"{record.timing.images_per_second:.2f} images/s); {out.run_record}")
    return 0


def run_check_data(args: argparse.Namespace) -> int:
    dataset_cls = DATASETS[args.dataset]
    report = check_dataset_report(dataset_cls, args.root, args.split)
    for warning in report.warnings:
        print(f"warning: {warning}")
    if report.problems:
        for problem in report.problems:
            print(problem)
        print(f"{len(report.problems)} problem(s) in {dataset_cls.__name__} at {args.root}", file=sys.stderr)
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
    made = demo_parameters(args.out)
    if made and args.num_images is None and not args.overwrite:  # re-running keeps the dataset as it was made
        kwargs["num_images"] = made.get("num_images")
    wanted = {"num_images": kwargs.get("num_images"), "seed": args.seed}
    if made and not args.overwrite and any(made.get(k) != v for k, v in wanted.items() if v is not None):
        raise ValueError(f"{args.out} holds the demo dataset made with num_images {made.get('num_images')}, seed "
                         f"{made.get('seed')}; pass --overwrite to replace it, or another --out")
    root = make_demo_dataset(args.out, **kwargs)
    print(f"demo dataset written to {root}")
    return 0


def resume_command(argv: Sequence[str]) -> str:
    """The command line that continues an interrupted training: this one, with --resume."""
    words = ["python", "-m", "pointrend_core", *argv]
    if "--resume" not in words:
        words = [w for w in words if w != "--overwrite"] + ["--resume"]
    return " ".join(shlex.quote(str(w)) for w in words)


def _stopped_message(args: argparse.Namespace, signum: int) -> str:
    what = {"train": "training", "evaluate": "evaluation"}.get(args.command, args.command)
    line = f"stopped: {signal_name(signum)} during {what}"
    if args.command == "train":
        kept = next((f"the last checkpoint is {path}" for path in RunFolder(args.out).checkpoints_to_resume()),
                    "no checkpoint was written yet") if args.out else "no checkpoint was written yet"
        return f"{line}; {kept}; continue with: {resume_command(args.argv)}"
    if args.command == "evaluate":
        return f"{line}; nothing was recorded (run.json is written when it ends): run the same command again"
    return f"{line}; run the same command again"


def run_predict(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from pointrend_core.deploy import load_predictor, predict_files
    from pointrend_core.deploy.images import list_inputs

    images = list_inputs(args.input)
    predictor = load_predictor(**_model_source(parser, args), onnx=args.onnx, device=args.device,
                               **({} if args.onnx else {"fast": not args.eager}))
    summary = predict_files(predictor, images, args.out, overlay=args.overlay, coarse=args.coarse,
                            batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.no_progress)
    print(summary.describe(args.out))
    return 1 if summary.skipped else 0


def run_export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from pointrend_core.deploy import OnnxModel, check_agreement, export_onnx, load_predictor
    from pointrend_core.deploy.onnx import DEFAULT_CHECK_SIZES

    predictor = load_predictor(**_model_source(parser, args), device="cpu", fast=False)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.own_process, args.argv = own_process, argv
    try:
        with signals_raise_stopped():
            return _run(parser, args)
    except KeyboardInterrupt as stop:  # Stopped is one; a bare KeyboardInterrupt is Ctrl-C before our handlers
        print(_stopped_message(args, getattr(stop, "signum", 2)), file=sys.stderr)
        return exit_code(getattr(stop, "signum", 2))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
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
        print(f"error: {error_sentence(error)}", file=sys.stderr)
        return 1
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if not isinstance(error, (torch.OutOfMemoryError, MemoryError)) and "can't allocate memory" not in str(error):
            raise
        print(f"error: out of memory during {args.command} ({str(error).splitlines()[0][:160]}); use a smaller "
              "--crop or --batch-size, or a device with more memory", file=sys.stderr)
        return 1


def error_sentence(error: BaseException) -> str:
    """The one line shown for a bad input: an OSError as its sentence and file name, without '[Errno N]'."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    return str(error)


if __name__ == "__main__":
    sys.exit(main(own_process=True))
