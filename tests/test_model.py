"""The segmentor: shapes for every row, gradients, float64, dilation, BN folding."""

import dataclasses

import pytest
import torch

from pointrend_core import ROWS, build_model, fuse_for_inference
from pointrend_core.config import IGNORE_INDEX, ModelConfig
from pointrend_core.model import PointRend

pytestmark = pytest.mark.numerics  # float results on this CPU's kernels: CI runs these twice (.ci/run)


@pytest.fixture(scope="module")
def demo_model() -> PointRend:
    torch.manual_seed(0)
    return build_model("demo")


@pytest.mark.parametrize("row,size", [(row, (70, 45)) for row in ROWS] + [("demo", (64, 96))])
def test_every_row_gives_refined_and_coarse_logits_of_the_right_shape(row, size):
    model = build_model(row).eval()
    classes = ROWS[row].model.num_classes
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    coarse = (-(-h // 4), -(-w // 4))
    assert out.coarse_logits.shape == (1, classes, *coarse)
    assert out.logits.shape == (1, classes, 4 * coarse[0], 4 * coarse[1])
    assert torch.isfinite(out.logits).all()


def test_subdivision_steps_record_what_was_chosen(demo_model):
    model = demo_model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), subdivision_num_points=100, record_steps=True)
    assert [s.logits.shape[-2:] for s in out.steps] == [(32, 48), (64, 96)]
    last = out.steps[-1]
    assert last.point_indices.shape == (2, 100) and last.point_coords.shape == (2, 100, 2)
    assert last.uncertainty.shape == (2, 1, 64, 96)
    # Only the chosen cells differ from the upsampled prediction.
    changed = (out.logits != last.logits).any(1).view(2, -1)
    for b in range(2):
        assert set(changed[b].nonzero()[:, 0].tolist()) <= set(last.point_indices[b].tolist())
    assert not model(torch.randn(1, 3, 32, 32)).steps  # steps are opt-in


def test_eval_uses_the_reference_point_budget():
    cfg = ROWS["pointrend_r50_voc"].model
    assert (cfg.subdivision_steps, cfg.subdivision_num_points, cfg.train_num_points) == (2, 8196, 2048)
    assert (cfg.oversample_ratio, cfg.importance_sample_ratio) == (3.0, 0.75)
    assert (cfg.aux_loss_weight, cfg.point_loss_weight) == (0.4, 1.0)


def test_training_forward_returns_weighted_losses_and_reaches_every_parameter(demo_model):
    model = demo_model.train()
    model.zero_grad()
    targets = torch.randint(0, model.num_classes, (2, 64, 64))
    targets[:, :8] = IGNORE_INDEX
    losses = model(torch.randn(2, 3, 64, 64), targets)
    assert set(losses) == {"loss_aux", "loss_point"}
    sum(losses.values()).backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


def test_all_ignored_crop_gives_zero_loss_not_nan(demo_model):
    model = demo_model.train()
    targets = torch.full((2, 64, 64), IGNORE_INDEX)
    losses = model(torch.randn(2, 3, 64, 64), targets)
    assert all(v.item() == 0.0 for v in losses.values())


def test_float64_model_matches_float32():
    torch.manual_seed(0)
    model = build_model("demo").eval()
    for m in model.modules():  # realistic BN statistics keep logits O(1)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_var.fill_(2.0)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        out32 = model(x)
        out64 = model.double()(x.double())
    assert out64.logits.dtype == torch.float64
    assert torch.allclose(out32.coarse_logits.double(), out64.coarse_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_backbones_keep_resolution(depth, output_stride):
    model = PointRend(ModelConfig(num_classes=3, depth=depth, output_stride=output_stride)).eval()
    with torch.no_grad():
        features = model.backbone_net(torch.randn(1, 3, 64, 64))
    expected = {16: [16, 8, 4, 4], 8: [16, 8, 8, 8]}[output_stride]
    assert [f.shape[-1] for f in features] == expected
    # Shapes alone would also pass with the strides removed but no dilation added: check the 3x3 convolutions'
    # dilation block by block. The first block of a dilated stage keeps the previous stage's dilation (mmseg's
    # contract_dilation): output stride 16 -> stage 4 = 1, 2, 2, ...; output stride 8 -> stage 3 = 1, 2, ...
    # and stage 4 = 2, 4, 4, ...
    def dilations(stage: torch.nn.Sequential) -> list[int]:
        return [block.conv2.dilation[0] for block in stage]

    backbone = model.backbone_net
    blocks3, blocks4 = len(backbone.layer3), len(backbone.layer4)
    if output_stride == 16:
        assert dilations(backbone.layer3) == [1] * blocks3
        assert dilations(backbone.layer4) == [1] + [2] * (blocks4 - 1)
    else:
        assert dilations(backbone.layer3) == [1] + [2] * (blocks3 - 1)
        assert dilations(backbone.layer4) == [2] + [4] * (blocks4 - 1)
    assert all(block.conv2.padding == block.conv2.dilation for block in backbone.layer4)  # same size out
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 3, 64, 64)


def test_bad_model_settings_are_rejected():
    # The config refuses what no network can be built from, before any model is made.
    with pytest.raises(ValueError, match="model.depth must be 18, 34, 50 or 101, got 42"):
        ModelConfig(num_classes=3, depth=42)
    with pytest.raises(ValueError, match="model.output_stride must be 8, 16 or 32, got 4"):
        ModelConfig(num_classes=3, output_stride=4)
    with pytest.raises(ValueError, match="at least 2 classes"):
        PointRend(ModelConfig(num_classes=1))


def test_row_class_count_must_match_its_dataset():
    with pytest.raises(ValueError, match="model has 5 classes but VOCSegmentation has 21"):
        dataclasses.replace(ROWS["pointrend_r50_voc"], model=ModelConfig(num_classes=5))


def test_bn_folding_keeps_outputs(demo_model):
    model = demo_model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(1.0, 2.0)
        x = torch.randn(1, 3, 64, 64)
        plain = model(x)
        fused_model = fuse_for_inference(model)
        fused = fused_model(x)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused_model.modules())
    assert torch.allclose(plain.coarse_logits, fused.coarse_logits, rtol=1e-4, atol=1e-4)
    assert torch.allclose(plain.logits, fused.logits, rtol=1e-4, atol=1e-4)


def test_r101_has_the_reference_layout_and_torchvision_values():
    """R-101 (3, 4, 23, 3 Bottleneck blocks): the released checkpoints' entry counts (636 backbone entries, 748 in
    all, recipe key list), and stages 1-4 compute what torchvision's own ResNet-101 stages compute with the same
    weights (same block type; only the stem differs: v1c's three 3x3 convolutions)."""
    import torchvision

    model = PointRend(ModelConfig(num_classes=21, depth=101)).eval()
    state = model.state_dict()
    assert len(state) == 748 and sum(key.startswith("backbone_net.") for key in state) == 636
    assert "backbone_net.layer3.22.conv3.weight" in state and "backbone_net.layer3.23.conv1.weight" not in state
    backbone = model.backbone_net
    with torch.no_grad():
        for m in backbone.modules():  # non-trivial statistics, so that a misplaced BatchNorm shows in the values
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        reference = torchvision.models.resnet101().eval()
        stages = {k: v for k, v in backbone.state_dict().items() if k.startswith("layer")}
        missing, unexpected = reference.load_state_dict(stages, strict=False)
        assert not unexpected and all(not k.startswith("layer") for k in missing)
        x = backbone.maxpool(backbone.stem(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))))
        ours = backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x))))
        theirs = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
        features = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1:] for f in features] == [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]
    # Same kernels in one process on both sides: exact up to float32 summation order.
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))
