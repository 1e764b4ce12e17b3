"""Record sssegmentation's own PointRend (R-50, VOC, 21 classes) on deterministic weights and inputs.

Writes `tests/data/ssseg_pointrend_r50_golden.pt`, which `tests/test_reference_parity.py` compares our model
against without sssegmentation installed. Run it by hand (never in CI) with this repository's venv:

    .venv/bin/python tests/data/make_ssseg_golden.py \
        --ssseg-root /tmp/ssseg_src/sssegmentation-1.7.0 \
        --mmcv-root /tmp/mmcv_lite --extra-path /tmp/refdeps

- `--ssseg-root`: the unpacked PyPI sdist `sssegmentation-1.7.0.tar.gz` (the folder holding `ssseg/`). Nothing
  from it is copied here: its `PointRend` class is imported and run as is.
- `--mmcv-root`: a folder holding `mmcv/ops/point_sample.py`, e.g. the unpacked `mmcv-lite` 2.2.0 wheel. The
  reference imports `mmcv.ops.point_sample`; a full mmcv needs compiled ops, but that one function is pure
  torch, so only its file is loaded (the `mmcv.ops` package `__init__`, which loads the compiled library, is not).
  If `import mmcv.ops` works, the installed one is used instead.
- `--extra-path`: folders put on `sys.path` first, for small pure-python dependencies of ssseg's import chain
  (`dill`, installed with `pip install --target DIR --no-deps dill`).

How the reference is run (everything else is its own code, config values of
`ssseg/configs/pointrend/pointrend_resnet50os32_voc.py` over its base `_base_/segmentors/pointrend.py`):
- `backbone.pretrained = False` (no download); the weights are `golden.deterministic_state_dict`, loaded strictly.
- norm stays the config's `SyncBatchNorm`: in one process without `torch.distributed` it runs plain
  `batch_norm` (eval and train), i.e. it is BatchNorm.
- losses use the HEAD ignore label -100; our targets' 255 is mapped to it.
- Modules stubbed because ssseg's package `__init__`s import them for *other* models, never for PointRend:
  `cv2` (sam/samv2 mask generators, dataset readers), `scipy.interpolate` (BEiT), `scipy.optimize`
  (MaskFormer / Mask2Former matchers), `sklearn.*` (MCIBI memory init). A real installed module is used when
  importable. `ssseg/__init__` and `ssseg/modules/__init__` (datasets, dataloaders) are bypassed by
  registering `ssseg.modules` as a bare package, so only `ssseg.modules.models` and `ssseg.modules.utils` run.
- float64: the reference cannot run in float64 unchanged — `getpointstest` makes float32 grid coordinates
  (explicit `dtype=torch.float`) and `F.grid_sample` refuses a float64 input with a float32 grid. So the
  float64 pass (a) runs under `torch.set_default_dtype(torch.float64)`, which makes its training `torch.rand`
  draws (default dtype) float64, and (b) calls mmcv's `point_sample` with the points cast to the input's dtype
  (a no-op in float32). The float32 grid coordinates of test-time refinement are kept: they are the reference's
  explicit choice. The float32 pass runs the reference unchanged (the cast is then a no-op).

Stored (tensors only, `torch.load(..., weights_only=True)`); prefix `f64/` or `f32/` per pass:
- `reference_keys`: uint8 text "key shape\\n" for every state-dict entry, sorted; `state_dict_checksums`;
  `input_checksums` (see `golden.py`), so that regenerated weights/inputs are checked before any logits.
- `{p}coarse_logits` (1, 21, 32, 40) in the pass dtype: the reference's `seg_logits_aux`.
- `{p}step{k}_indices` (1, n_k) int64: `getpointstest`'s chosen indices per subdivision step (n = 5120, 8196).
- `f64/refined_logits` (1, 21, 128, 160) float32 (float64 would not fit the size budget).
- `{p}refined_subset_index` (1024,) int64 flat positions among the last step's points, and
  `{p}refined_subset_logits` (1, 21, 1024) in the pass dtype: the final logits there, at full precision.
- `{p}loss_aux`, `{p}loss_point` () in the pass dtype (the reference's `loss_aux` and `loss_cls`, weighted), and
  `{p}train_points` (2, 2048, 2): the points `getpointstrain` chose, after `torch.manual_seed(TRAIN_RNG_SEED)`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision  # noqa: F401  (imported before any stub exists: torch._dynamo probes installed modules)
from torch import Tensor, nn

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

import golden  # noqa: E402
from pointrend_core.config import IGNORE_INDEX  # noqa: E402
from pointrend_core.files import atomic_torch_save  # noqa: E402

DEFAULT_OUT = TESTS / "data" / "ssseg_pointrend_r50_golden.pt"
REFERENCE_IGNORE = -100
SUBSET_SIZE = 1024

# Modules imported by ssseg for models other than PointRend; stubbed only if not installed.
UNUSED_BY_POINTREND: dict[str, dict[str, Any]] = {
    "cv2": {},
    "scipy": {},
    "scipy.interpolate": {},
    "scipy.optimize": {"linear_sum_assignment": None},
    "sklearn": {},
    "sklearn.cluster": {"_kmeans": None},
    "sklearn.preprocessing": {"StandardScaler": None},
    "sklearn.metrics": {},
    "sklearn.metrics.pairwise": {"cosine_similarity": None},
}


def _stub(name: str, attributes: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    return module


def _stub_unused_modules() -> list[str]:
    stubbed = []
    for name, attributes in UNUSED_BY_POINTREND.items():
        try:
            importlib.import_module(name)
        except ImportError:
            _stub(name, attributes)
            stubbed.append(name)
    return stubbed


def _mmcv_point_sample(mmcv_root: Path | None) -> Callable[..., Tensor]:
    """mmcv's own `point_sample`: from an installed mmcv with ops, else from `mmcv_root/mmcv/ops/point_sample.py`."""
    try:
        from mmcv.ops import point_sample  # type: ignore[import-not-found]

        return point_sample
    except ImportError:
        pass
    if mmcv_root is None:
        raise SystemExit("mmcv.ops is not importable: pass --mmcv-root DIR with DIR/mmcv/ops/point_sample.py")
    path = mmcv_root / "mmcv" / "ops" / "point_sample.py"
    if not path.is_file():
        raise SystemExit(f"--mmcv-root {mmcv_root}: {path} does not exist (unpack the mmcv-lite wheel there)")
    spec = importlib.util.spec_from_file_location("_mmcv_point_sample", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.point_sample


def import_reference(ssseg_root: Path, mmcv_root: Path | None) -> tuple[type[nn.Module], type, list[str]]:
    """(ssseg PointRend class, SSSegInputStructure, names of stubbed modules)."""
    if not (ssseg_root / "ssseg" / "modules" / "models" / "segmentors" / "pointrend" / "pointrend.py").is_file():
        raise SystemExit(f"--ssseg-root {ssseg_root}: not an unpacked sssegmentation source (no ssseg/modules/...)")
    stubbed = _stub_unused_modules()
    point_sample = _mmcv_point_sample(mmcv_root)

    def point_sample_any_dtype(input: Tensor, points: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        # grid_sample needs one dtype; float32 points are exact in float64. A no-op for float32 inputs.
        return point_sample(input, points.to(input.dtype), *args, **kwargs)

    if "mmcv.ops" not in sys.modules or getattr(sys.modules["mmcv.ops"], "point_sample", None) is not point_sample:
        _stub("mmcv", {})
        _stub("mmcv.ops", {})
    sys.modules["mmcv.ops"].point_sample = point_sample_any_dtype
    sys.path.insert(0, str(ssseg_root))
    import ssseg  # noqa: F401

    bare = types.ModuleType("ssseg.modules")
    bare.__path__ = [str(ssseg_root / "ssseg" / "modules")]
    sys.modules["ssseg.modules"] = bare
    pointrend = importlib.import_module("ssseg.modules.models.segmentors.pointrend.pointrend")
    utils = importlib.import_module("ssseg.modules.utils")
    if pointrend.PointSample is not point_sample_any_dtype:
        raise SystemExit("ssseg's pointrend.py did not pick up mmcv.ops.point_sample")
    return pointrend.PointRend, utils.SSSegInputStructure, stubbed


def reference_config() -> dict[str, Any]:
    """The reference's config values for pointrend_resnet50os32_voc (its own key names), pretrained off."""
    ce = {"type": "CrossEntropyLoss", "ignore_index": REFERENCE_IGNORE, "reduction": "mean"}
    return {
        "type": "PointRend",
        "num_classes": golden.NUM_CLASSES,
        "align_corners": False,
        "norm_cfg": {"type": "SyncBatchNorm"},
        "act_cfg": {"type": "ReLU", "inplace": True},
        "backbone": {
            "type": "ResNet", "depth": 50, "structure_type": "resnet50conv3x3stem", "pretrained": False,
            "outstride": 32, "use_conv3x3_stem": True, "selected_indices": (0, 1, 2, 3),
        },
        "head": {
            "fpn_in_channels_list": [256, 512, 1024, 2048], "pointrend_in_channels_list": [256],
            "feats_channels": 256, "upsample_cfg": {"mode": "nearest"}, "feature_stride_list": [4, 8, 16, 32],
            "scale_head_channels": 128, "num_fcs": 3, "coarse_pred_each_layer": True,
            "train": {"num_points": 2048, "oversample_ratio": 3, "importance_sample_ratio": 0.75},
            "test": {"subdivision_steps": 2, "subdivision_num_points": 8196, "scale_factor": 2},
            "dropout": 0,
        },
        "auxiliary": {"in_channels": 128, "dropout": 0, "num_convs": 0},
        "losses": {"loss_aux": {**ce, "scale_factor": 0.4}, "loss_cls": {**ce, "scale_factor": 1.0}},
        "inference": {
            "forward": {"mode": "whole", "cropsize": None, "stride": None},
            "tta": {"multiscale": [1], "flip": False, "use_probs_before_resize": False},
        },
    }


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def keys_text(state_dict: dict[str, Tensor]) -> Tensor:
    lines = "".join(f"{k} {tuple(state_dict[k].shape)}\n" for k in sorted(state_dict))
    return torch.frombuffer(bytearray(lines.encode("ascii")), dtype=torch.uint8).clone()


def record_eval(model: nn.Module, input_cls: type, images: Tensor, prefix: str) -> dict[str, Tensor]:
    """Run the reference in TEST mode; record coarse logits, chosen indices per step and the refined logits."""
    recorded: dict[str, Any] = {"indices": []}
    original = model.getpointstest

    def getpointstest(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        indices, points = original(*args, **kwargs)
        recorded["indices"].append(indices.clone())
        return indices, points

    model.getpointstest = getpointstest  # instance attribute: records, changes nothing
    hook = model.auxiliary_decoder.register_forward_hook(lambda m, i, o: recorded.__setitem__("coarse", o.clone()))
    try:
        with torch.no_grad():
            refined = model.eval()(input_cls(images=images, mode="TEST")).seg_logits
    finally:
        hook.remove()
        del model.getpointstest
    last = recorded["indices"][-1][0]
    choice = torch.randperm(last.numel(), generator=torch.Generator().manual_seed(0))[:SUBSET_SIZE]
    subset = last[choice].sort().values
    out = {f"{prefix}coarse_logits": recorded["coarse"]}
    out.update({f"{prefix}step{k}_indices": idx for k, idx in enumerate(recorded["indices"])})
    out[f"{prefix}refined_subset_index"] = subset
    out[f"{prefix}refined_subset_logits"] = refined.flatten(2)[:, :, subset].clone()
    out[f"{prefix}refined_logits"] = refined
    return out


def record_train(model: nn.Module, input_cls: type, images: Tensor, targets: Tensor, prefix: str) -> dict[str, Tensor]:
    """Run the reference in TRAIN mode after `torch.manual_seed(TRAIN_RNG_SEED)`; record both losses and points."""
    recorded: dict[str, Tensor] = {}
    original = model.getpointstrain

    def getpointstrain(*args: Any, **kwargs: Any) -> Tensor:
        points = original(*args, **kwargs)
        recorded["points"] = points.clone()
        return points

    model.getpointstrain = getpointstrain
    try:
        model.train()
        torch.manual_seed(golden.TRAIN_RNG_SEED)
        output = model(input_cls(images=images, seg_targets=targets, mode="TRAIN"))
    finally:
        del model.getpointstrain
    logged = output.losses_log_dict  # python floats from .item(): exact for float32 and float64
    dtype = images.dtype
    return {
        f"{prefix}loss_aux": torch.tensor(logged["loss_aux"], dtype=dtype),
        f"{prefix}loss_point": torch.tensor(logged["loss_cls"], dtype=dtype),
        f"{prefix}train_points": recorded["points"].to(dtype),
    }


def run_pass(
    pointrend_cls: type[nn.Module], input_cls: type, weights: dict[str, Tensor], dtype: torch.dtype, prefix: str
) -> dict[str, Tensor]:
    images = golden.eval_images().to(dtype)
    train_images, targets = golden.train_batch(REFERENCE_IGNORE)
    out: dict[str, Tensor] = {}
    with default_dtype(torch.float64 if dtype == torch.float64 else torch.get_default_dtype()):
        for record in ("eval", "train"):
            model = pointrend_cls(copy.deepcopy(reference_config()), mode="TEST")
            model.load_state_dict(weights, strict=True)
            model.to(dtype)
            if record == "eval":
                out.update(record_eval(model, input_cls, images, prefix))
            else:
                out.update(record_train(model, input_cls, train_images.to(dtype), targets, prefix))
    if dtype == torch.float64:
        out[f"{prefix}refined_logits"] = out[f"{prefix}refined_logits"].float()
    else:
        del out[f"{prefix}refined_logits"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ssseg-root", type=Path, required=True)
    parser.add_argument("--mmcv-root", type=Path, default=None)
    parser.add_argument("--extra-path", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in reversed(args.extra_path):
        sys.path.insert(0, str(path))
    pointrend_cls, input_cls, stubbed = import_reference(args.ssseg_root.resolve(), args.mmcv_root)
    print(f"stubbed (not installed, unused by PointRend): {', '.join(stubbed) or 'none'}")

    shapes = {k: v.shape for k, v in pointrend_cls(copy.deepcopy(reference_config()), mode="TEST").state_dict().items()}
    weights = golden.deterministic_state_dict(shapes)
    train_images, targets = golden.train_batch(IGNORE_INDEX)
    golden_data: dict[str, Tensor] = {
        "reference_keys": keys_text(weights),
        "state_dict_checksums": golden.state_dict_checksums(weights),
        "input_checksums": golden.input_checksums(golden.eval_images(), train_images, targets, IGNORE_INDEX),
    }
    for dtype, prefix in ((torch.float64, "f64/"), (torch.float32, "f32/")):
        golden_data.update(run_pass(pointrend_cls, input_cls, weights, dtype, prefix))
    for key, value in golden_data.items():
        print(f"{key:28s} {str(tuple(value.shape)):20s} {value.dtype}")
    coarse = golden_data["f64/coarse_logits"]
    print(f"coarse logits: max |.| {coarse.abs().max().item():.3f}, std {coarse.std().item():.3f}")
    for prefix in ("f64/", "f32/"):
        print(f"{prefix} loss_aux {golden_data[prefix + 'loss_aux'].item()!r} loss_point {golden_data[prefix + 'loss_point'].item()!r}")
    atomic_torch_save(golden_data, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
