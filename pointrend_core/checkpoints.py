"""Loading and saving checkpoints, safely and strictly.

Accepted files (all read with `torch.load(..., weights_only=True)`, so a file holding pickled code is refused,
never executed):
- released sssegmentation checkpoints, `{"model": state_dict}` (or a bare state dict), with or without a
  DDP `module.` prefix: their key names are this package's own, so they load as they are;
- this project's training checkpoints (`{"model": ..., "optimizer": ..., ...}`);
- ImageNet ResNet-v1c weights (open-mmlab `resnet{18,50,101}_v1c-*.pth`, bare or under `state_dict`):
  keys `stem.*` / `layerL.*` (+ the classifier `fc.*`, dropped), loaded into the backbone alone.

Loading is strict: any missing, unexpected or mis-shaped key is an error naming the keys and the likely cause.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pointrend_core.files import atomic_torch_save

_SHOW = 8  # keys listed per kind of mismatch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the model; the message says which file and why."""


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The object stored in `path`, read with `weights_only=True`.

    Three kinds of bad file get three messages: a file that is no PyTorch checkpoint at all, one that was
    cut short (a zip archive without its end), and one holding pickled code, which is refused without being
    run. None of them suggests loading with `weights_only=False`: that would run whatever the file holds.
    """
    path = check_checkpoint_path(path)
    with path.open("rb") as f:
        head = f.read(4)
    is_zip, is_pickle = head.startswith(b"PK\x03\x04"), head[:1] == b"\x80"
    if not (is_zip or is_pickle):
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: it is neither a zip archive (what torch.save writes) "
            f"nor a legacy pickle file (it starts with {head!r})"
        )
    if is_zip and not _zip_is_complete(path):
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: the zip archive torch.save wrote is incomplete or "
            "damaged (an interrupted download or copy?); fetch or copy it again"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        raise CheckpointError(
            f"{path} holds pickled Python objects other than tensors and plain containers"
            + (f" ({found.group(1)})" if found else "")
            + "; it was refused without being run. Re-save only the weights: "
            "torch.save({'model': model.state_dict()}, path)"
        ) from None
    except Exception as error:  # a damaged legacy pickle, or a zip archive of something else
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'no detail'})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict (a state dict or {{'model': ...}})")
    return obj


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """`path` as a Path when it is a file; the error a missing file or a folder gets otherwise (cheap: callers
    check before a long setup)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder; expected a .pth file (a run's is "
                                f"{path / 'checkpoint_final.pth'})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _zip_is_complete(path: Path) -> bool:
    """Whether the zip archive at `path` has its central directory and every member's size fits the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            return all(info.header_offset + info.compress_size <= size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return False


def extract_state_dict(obj: dict[str, Any], path: str | os.PathLike = "<checkpoint>") -> dict[str, Tensor]:
    """The model weights inside a checkpoint object: under "model" or "state_dict", or the dict itself;
    a DDP `module.` prefix is removed."""
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path} has no state dict: expected tensors under 'model' or 'state_dict', or at the top level; "
            f"found keys {sorted(obj)[:_SHOW]}"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def is_backbone_only(state_dict: dict[str, Tensor]) -> bool:
    """True for ImageNet classification weights (keys `stem.*`, `layerL.*`, `fc.*`, no segmentor parts)."""
    return any(k.startswith("stem.") for k in state_dict) and not any(k.startswith("backbone_net.") for k in state_dict)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load weights from `path` into `model` (a `PointRend`, or a DDP wrapper of one), strictly.

    ImageNet backbone files go into `model.backbone_net` (their `fc.*` classifier is dropped); anything else must
    match the whole model. Returns the whole checkpoint object (training checkpoints carry optimizer state etc.).
    """
    model = getattr(model, "module", model)
    obj = read_checkpoint(path, map_location)
    state_dict = extract_state_dict(obj, path)
    if is_backbone_only(state_dict):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        load_strict(model.backbone_net, state_dict, path, what="backbone")
    else:
        load_strict(model, state_dict, path, what="model")
    return obj


def load_backbone(model: nn.Module, path: str | os.PathLike) -> None:
    """Load ImageNet backbone weights (the recipe's start) into `model.backbone_net`; a file holding more
    (a whole segmentor) is refused with the option it belongs to."""
    state_dict = extract_state_dict(read_checkpoint(path), path)
    if not is_backbone_only(state_dict):
        raise CheckpointError(
            f"{path} holds a whole segmentation model, not ImageNet backbone weights; pass it as --checkpoint "
            "(every weight, strictly) or --init-checkpoint (fine-tuning on other classes) instead")
    load_checkpoint(model, path)


# Layers sized by the class count: the two classifiers, and every point-head layer (each one takes the coarse
# logits, one channel per class, beside its input).
_CLASS_DEPENDENT = re.compile(r"^(auxiliary_decoder\.1\.|decoder\.1\.|fcs\.\d+\.0\.weight$)")


def load_for_finetuning(model: nn.Module, path: str | os.PathLike) -> list[tuple[str, str]]:
    """Start `model` from a checkpoint trained on other classes: every entry whose name and shape match is
    loaded; the class-dependent layers that do not match keep their fresh initialisation, and so does the
    BatchNorm right after a re-initialised point-head layer (its statistics describe the old layer's output).

    Returns (key, reason) for every entry left re-initialised. Anything else that does not fit (another
    depth, missing or unexpected keys, a mis-shaped layer that does not depend on the classes) raises
    `CheckpointError` as a strict load would: that file is not this network.
    """
    model = getattr(model, "module", model)
    found = extract_state_dict(read_checkpoint(path), path)
    if is_backbone_only(found):
        raise CheckpointError(f"{path} holds backbone weights only; pass it as --pretrained-backbone")
    expected = model.state_dict()
    reinitialised: list[tuple[str, str]] = []
    for key, value in expected.items():
        if key in found and found[key].shape != value.shape and _CLASS_DEPENDENT.match(key):
            reinitialised.append((key, f"one entry per class: shape {tuple(found[key].shape)} in the file, "
                                       f"{tuple(value.shape)} for {model.num_classes} classes here"))
    for key, _ in list(reinitialised):
        if key.startswith("fcs.") and key.endswith(".0.weight"):
            norm = key.removesuffix("0.weight") + "1."
            reinitialised += [(k, f"BatchNorm after the re-initialised {key}") for k in expected if k.startswith(norm)]
    keep = {key for key, _ in reinitialised}
    kept_fresh = {k: v for k, v in expected.items() if k in keep}
    load_strict(model, {**{k: v for k, v in found.items() if k not in keep}, **kept_fresh}, path, what="model")
    return reinitialised


def load_strict(module: nn.Module, state_dict: dict[str, Tensor], path: str | os.PathLike, what: str) -> None:
    """`module.load_state_dict(state_dict)` after checking every key and shape, with an explanatory error."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs {what} {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"{path} does not fit the {what}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if keys:
                more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
                lines.append(f"  {len(keys)} {label} keys: {', '.join(keys[:_SHOW])}{more}")
        lines += [f"  likely cause: {cause}" for cause in _likely_causes(expected, state_dict)]
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state_dict, strict=True)


def _likely_causes(expected: dict[str, Tensor], found: dict[str, Tensor]) -> list[str]:
    causes = []
    classes_expected, classes_found = _num_classes(expected), _num_classes(found)
    if classes_expected and classes_found and classes_expected != classes_found:
        causes.append(
            f"the checkpoint is for {classes_found} classes, the model has {classes_expected} "
            f"(VOC 21, ADE20k 150, Cityscapes 19): use the config of the dataset it was trained on"
        )
    depth_expected, depth_found = _resnet_depth(expected), _resnet_depth(found)
    if depth_expected and depth_found and depth_expected != depth_found:
        causes.append(f"the checkpoint has a ResNet-{depth_found} backbone, the model a ResNet-{depth_expected}")
    if not causes and any(k.startswith("backbone_net.") for k in found) != any(k.startswith("backbone_net.") for k in expected):
        causes.append("one side is a whole segmentor and the other a bare backbone")
    if not causes:
        causes.append("a checkpoint of another architecture or configuration (FPN/head widths, number of point fcs)")
    return causes


def _num_classes(state_dict: dict[str, Tensor]) -> int | None:
    bias = state_dict.get("decoder.1.bias")
    return int(bias.shape[0]) if bias is not None else None


def _resnet_depth(state_dict: dict[str, Tensor]) -> int | None:
    """18/34/50/101 from the number of layer3 blocks and the block type (bottlenecks have conv3)."""
    blocks = {int(m.group(1)) for k in state_dict if (m := re.search(r"layer3\.(\d+)\.", k))}
    if not blocks:
        return None
    bottleneck = any(re.search(r"layer1\.0\.conv3\.", k) for k in state_dict)
    count = max(blocks) + 1
    return {(2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101}.get((count, bottleneck))


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Write `state` (e.g. model=..., optimizer=..., iteration=...) atomically; `model` may be a module."""
    if isinstance(state.get("model"), nn.Module):
        state["model"] = getattr(state["model"], "module", state["model"]).state_dict()
    return atomic_torch_save(state, path)
