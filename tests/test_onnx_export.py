"""ONNX export with every subdivision point: the export forward equals the model, the file agrees with torch in
ONNX Runtime at odd, small and large sizes, and `predict --onnx` runs the same pipeline."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from pointrend_core.__main__ import main
from pointrend_core.checkpoints import save_checkpoint
from pointrend_core.config import ROWS
from pointrend_core.deploy import OnnxModel, Predictor, check_agreement, export_onnx
from pointrend_core.deploy.onnx import CELL_TOLERANCE, ROW_METADATA, ExportForward
from pointrend_core.model import build_model

ROW = ROWS["demo"]  # ResNet-18, 4096 points per step: the same graph as a table row, cheaper
SMALL_ROW = replace(ROW, data=replace(ROW.data, base_size=(64, 64)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """(random-weight demo model in eval mode, its checkpoint, its ONNX file)."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = build_model(SMALL_ROW).eval()
    checkpoint = save_checkpoint(folder / "weights.pth", model=model)
    return model, checkpoint, export_onnx(model, SMALL_ROW, folder / "demo.onnx")


@pytest.mark.parametrize("size", [(37, 53), (64, 96), (131, 97)])
def test_export_forward_is_the_model_bit_for_bit(size: tuple[int, int]) -> None:
    torch.manual_seed(1)
    model = build_model(ROW).eval()
    image = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = model(image)
        refined, coarse = ExportForward(model)(image)
    assert torch.equal(refined, expected.logits) and torch.equal(coarse, expected.coarse_logits)


def test_the_file_is_valid_and_carries_its_row(exported) -> None:
    _, _, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    (image,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))  # N, H, W dynamic
    assert [o.name for o in proto.graph.output] == ["logits", "coarse_logits"]
    assert {"TopK", "GridSample", "ScatterElements"} <= {node.op_type for node in proto.graph.node}
    assert OnnxModel(path).row == SMALL_ROW
    assert ROW_METADATA in {p.key for p in proto.metadata_props}


def _assert_agrees(model, path: Path, sizes) -> None:
    for agreement in check_agreement(model, OnnxModel(path), sizes):
        # Float rounding differs between the runtimes (~1e-6 of a logit); a near-tied k-th point may be chosen
        # differently, changing a few cells by the point head's correction, rarely their class.
        assert agreement.argmax_agreement >= 0.999, agreement.describe()
        assert agreement.differing_cells <= 1e-3, agreement.describe()
        assert agreement.coarse_max_abs_diff < 1e-3, agreement.describe()


def test_onnxruntime_agrees_with_torch_at_odd_and_small_sizes(exported) -> None:
    model, _, path = exported
    # 37 x 53: 560 and 2240 cells at the two steps, fewer than the 4096 points: k = h * w at runtime.
    _assert_agrees(model, path, [(37, 53), (129, 211)])
    torch.manual_seed(2)
    image = torch.randn(3, 3, 45, 67)  # a batch of 3
    with torch.no_grad():
        expected = model(image).logits
    got = OnnxModel(path)(image).logits
    assert got.shape == expected.shape == (3, ROW.model.num_classes, 48, 68)
    assert ((got - expected).abs() > CELL_TOLERANCE).double().mean() <= 1e-3


@pytest.mark.slow
def test_onnxruntime_agrees_with_torch_above_1024_by_2048(exported) -> None:
    model, _, path = exported
    _assert_agrees(model, path, [(1031, 2053)])


def test_predict_onnx_gives_the_torch_masks(exported, tmp_path: Path) -> None:
    model, checkpoint, path = exported
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in ((50, 70), (64, 64))]
    torch_masks = Predictor(SMALL_ROW, checkpoint).predict_batch(images)
    onnx_masks = Predictor.from_onnx(path).predict_batch(images)
    for a, b in zip(torch_masks, onnx_masks):
        assert a.shape == b.shape and (a != b).mean() <= 1e-3
    image_file = tmp_path / "photo.png"
    Image.fromarray(images[0]).save(image_file)
    assert main(["predict", "--onnx", str(path), "--input", str(image_file), "--out", str(tmp_path / "masks"),
                 "--no-progress"]) == 0
    assert np.array_equal(np.array(Image.open(tmp_path / "masks" / "photo.png")), onnx_masks[0])


@pytest.mark.slow
def test_the_export_command_writes_and_checks_the_file(exported, tmp_path: Path, capsys) -> None:
    _, checkpoint, _ = exported
    out = tmp_path / "cli.onnx"
    assert main(["export", "--config", "demo", "--checkpoint", str(checkpoint), "--out", str(out),
                 "--check-size", "37", "53"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "at 37x53: argmax agreement" in printed
    assert OnnxModel(out).row == ROW
