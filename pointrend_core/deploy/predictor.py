"""`Predictor`: images in, class-index masks out at each image's own size -- what `predict` and notebooks call.

    from pointrend_core.deploy import Predictor
    predictor = Predictor.from_run("runs/demo")                   # or Predictor("pointrend_r50_voc", "model.pth")
    mask = predictor.predict("photo.jpg")                          # uint8 (H, W) class indices
    masks = predictor.predict_batch([image_a, image_b])            # numpy / PIL / tensor / path, any mix
    onnx = Predictor.from_onnx("model.onnx")                       # the same pipeline in ONNX Runtime

The pipeline is `evaluate`'s own, so that predicting a validation split and scoring the masks gives
`evaluate`'s mIoU: the row's test transform (`data.transforms.eval_transforms`: keep-ratio resize to
`base_size`, normalise), `engine.evaluate.predict` (the row's whole / slide mode, scales and flip; the logits
resized bilinearly straight to the image's size) on the network `engine.evaluate.inference_model` runs
(the fast path: BatchNorm folded, channels-last, float32), then argmax. `fast=False` runs the plain model.

Batches: images whose network inputs have the same size run as one batch when the row evaluates one whole
image at one scale without flip (every table row); each image's logits are then resized to its own size.
Convolution kernels may round differently for another batch size, so a batched mask can differ from the
one-image mask where two classes are tied within float rounding (about 1e-6 of a logit); batch 1 is exact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from pointrend_core.checkpoints import load_checkpoint
from pointrend_core.config import RowConfig, get_row
from pointrend_core.data.image_io import read_image
from pointrend_core.data.transforms import eval_transforms
from pointrend_core.deploy.onnx import OnnxModel
from pointrend_core.deploy.rows import palette_for, run_row_and_checkpoint
from pointrend_core.engine.evaluate import inference_model, predict
from pointrend_core.model import build_model

ImageLike = Union[np.ndarray, Image.Image, Tensor, str, os.PathLike]
"""numpy uint8 (H, W, 3) RGB or (H, W) grey; a PIL image (any mode, converted to RGB); a torch uint8
(3, H, W) RGB tensor (as `data.image_io.read_image` returns); or the path of a JPEG / PNG / TIFF file."""


def as_rgb_tensor(image: ImageLike) -> Tensor:
    """Any `ImageLike` -> uint8 (3, H, W) RGB; ValueError naming what was given when it is not an image."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"expected a uint8 numpy image (H, W, 3) RGB or (H, W) grey, got {image.dtype} "
                             f"shape {image.shape}")
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        # A copy: the caller's array may be read-only (torch warns) or change after the call.
        return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).contiguous()
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a uint8 tensor (3, H, W) RGB, got {image.dtype} shape {tuple(image.shape)}")
        return image
    raise ValueError(f"expected an image (numpy array, PIL image, uint8 tensor or file path), got {type(image).__name__}")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch names it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Masks for images with a trained row. See the module docstring for the pipeline and an example.

    Args:
        row: the row (name or `RowConfig`) the weights were trained as.
        checkpoint: weights (`load_checkpoint`: a run's checkpoint or a released file); None keeps `model`'s
            weights, or a freshly initialised model's.
        device: "cpu", "cuda", "cuda:N" or "auto".
        fast: run `prepare_for_inference`'s fast path (as `evaluate` does); False runs the plain model.
        model: a `PointRend` to use instead of building one, or an `OnnxModel` (see `from_onnx`).
    """

    def __init__(self, row: str | RowConfig, checkpoint: str | os.PathLike | None = None, *,
                 device: str | torch.device = "cpu", fast: bool = True,
                 model: nn.Module | OnnxModel | None = None) -> None:
        self.row = get_row(row) if isinstance(row, str) else row
        self.device = resolve_device(device)
        self.palette = palette_for(self.row)
        self.transform = eval_transforms(self.row.data)
        if isinstance(model, OnnxModel):
            self.network: nn.Module | OnnxModel = model
            self.device = torch.device("cpu")  # ORT takes and returns host arrays; its provider picks the chip
            return
        model = build_model(self.row) if model is None else model
        if checkpoint is not None:
            load_checkpoint(model, checkpoint)
        model = model.to(self.device).eval()
        self.network = inference_model(model, "fp32", device=self.device) if fast else model

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, **kwargs) -> Predictor:
        """The final checkpoint of a run folder, with the row its train.json records (a `--dataset folder` run
        included: the class count and palette come from that record, not from the data)."""
        row, checkpoint = run_row_and_checkpoint(run_dir)
        return cls(row, checkpoint, **kwargs)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, device: str = "cpu") -> Predictor:
        """An exported file (`export_onnx`) in ONNX Runtime, with the row stored in it; no torch model is built."""
        onnx_model = OnnxModel(path, "cuda" if str(device).startswith("cuda") else "cpu")
        return cls(onnx_model.row, model=onnx_model)

    @property
    def num_classes(self) -> int:
        return self.row.model.num_classes

    def network_input(self, image: Tensor) -> Tensor:
        """uint8 (3, H, W) -> the normalised float32 (3, H', W') of the row's test transform."""
        # The test transform takes (image, mask) pairs and returns the mask untouched; an empty one stands in.
        normalised, _ = self.transform(image, torch.zeros((0, 0), dtype=torch.uint8))
        return normalised

    def logits(self, image: ImageLike) -> tuple[Tensor, Tensor]:
        """Refined and coarse logits float32 (1, C, H, W) at the image's own size (`engine.evaluate.predict`)."""
        rgb = as_rgb_tensor(image)
        x = self.network_input(rgb).to(self.device)[None]
        refined, coarse = predict(self.network, x, rgb.shape[-2:], self.row.eval)
        return refined, coarse

    def predict(self, image: ImageLike, coarse: bool = False) -> np.ndarray:
        """Class indices uint8 (H, W) at the image's own size; `coarse`: the coarse head's alone."""
        refined, coarse_logits = self.logits(image)
        return _argmax(coarse_logits if coarse else refined)

    def _batchable(self) -> bool:
        cfg = self.row.eval
        return cfg.mode == "whole" and tuple(cfg.scales) == (1.0,) and not cfg.flip

    def predict_batch(self, images: Sequence[ImageLike], coarse: bool = False) -> list[np.ndarray]:
        """`predict` for each image, running consecutive images whose network inputs share a size as one batch
        (see the module docstring); one image at a time for rows with slide, multi-scale or flip evaluation."""
        rgbs = [as_rgb_tensor(image) for image in images]
        if len(rgbs) < 2 or not self._batchable():
            return [self.predict(rgb, coarse) for rgb in rgbs]
        inputs = [self.network_input(rgb) for rgb in rgbs]
        masks: list[np.ndarray] = []
        start = 0
        while start < len(inputs):
            end = start + 1
            while end < len(inputs) and inputs[end].shape == inputs[start].shape:
                end += 1
            if end - start == 1:
                masks.append(self.predict(rgbs[start], coarse))
            else:
                masks.extend(self._predict_same_size(inputs[start:end], rgbs[start:end], coarse))
            start = end
        return masks

    @torch.inference_mode()
    def _predict_same_size(self, inputs: list[Tensor], rgbs: list[Tensor], coarse: bool) -> list[np.ndarray]:
        out = self.network(torch.stack(inputs).to(self.device))
        logits = (out.coarse_logits if coarse else out.logits).float()
        masks = []
        for i, rgb in enumerate(rgbs):
            # As engine.evaluate.predict: bilinear, align_corners=False, straight to the image's size.
            resized = F.interpolate(logits[i:i + 1], size=tuple(rgb.shape[-2:]), mode="bilinear", align_corners=False)
            masks.append(_argmax(resized))
        return masks


def _argmax(logits: Tensor) -> np.ndarray:
    """(1, C, H, W) -> uint8 (H, W) class indices on the host (C <= 255: a folder row's limit)."""
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def load_predictor(run: str | os.PathLike | None = None, row: str | RowConfig | None = None,
                   checkpoint: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
                   **kwargs) -> Predictor:
    """The predictor of exactly one source: a run folder, a row with a checkpoint, or an ONNX file."""
    given = [name for name, value in (("a run", run), ("an ONNX file", onnx)) if value is not None]
    if row is not None or checkpoint is not None:
        given.append("a row and checkpoint")
    if len(given) != 1:
        raise ValueError(f"expected one model source (--run, --config with --checkpoint, or --onnx), got "
                         f"{' and '.join(given) if given else 'none'}")
    if run is not None:
        return Predictor.from_run(run, **kwargs)
    if onnx is not None:
        return Predictor.from_onnx(onnx, device=str(kwargs.get("device", "cpu")))
    if row is None or checkpoint is None:
        raise ValueError("--config and --checkpoint go together: the row says how to build the model, the "
                         "checkpoint holds its weights")
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    return Predictor(row, checkpoint, **kwargs)


__all__ = ["ImageLike", "Predictor", "as_rgb_tensor", "load_predictor", "resolve_device"]
