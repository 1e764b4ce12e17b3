"""Checkpoint loading: the reference's key names and shapes load strictly; mismatches are explained."""

import os

import pytest
import torch

from pointrend_core import build_model, load_checkpoint, save_checkpoint
from pointrend_core.checkpoints import CheckpointError

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def reference_keys(depth: int, classes: int) -> dict[str, tuple]:
    """Key -> shape of a released sssegmentation PointRend checkpoint, written out from the reference
    description (section 4), independently of this package's modules."""
    keys: dict[str, tuple] = {}
    for i, (cin, cout) in zip((0, 3, 6), ((3, 32), (32, 32), (32, 64))):
        keys[f"backbone_net.stem.{i}.weight"] = (cout, cin, 3, 3)
        keys.update(bn(f"backbone_net.stem.{i + 1}", cout))
    in_ch = 64
    for layer, (blocks, planes) in enumerate(zip(BLOCKS[depth], (64, 128, 256, 512)), start=1):
        for j in range(blocks):
            p = f"backbone_net.layer{layer}.{j}"
            cin = in_ch if j == 0 else 4 * planes
            if j == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * planes, in_ch, 1, 1)
                keys.update(bn(f"{p}.downsample.1", 4 * planes))
            keys[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            keys.update(bn(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(bn(f"{p}.bn2", planes))
            keys[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            keys.update(bn(f"{p}.bn3", 4 * planes))
        in_ch = 4 * planes
    for i, cin in enumerate((256, 512, 1024, 2048)):
        keys[f"fpn_neck.lateral_convs.{i}.0.weight"] = (256, cin, 1, 1)
        keys.update(bn(f"fpn_neck.lateral_convs.{i}.1", 256))
        keys[f"fpn_neck.fpn_convs.{i}.0.weight"] = (256, 256, 3, 3)
        keys.update(bn(f"fpn_neck.fpn_convs.{i}.1", 256))
    for head, convs in enumerate((1, 1, 2, 3)):
        for k in range(convs):
            index = k if head == 0 else 2 * k
            keys[f"scale_heads.{head}.{index}.0.weight"] = (128, 256 if k == 0 else 128, 3, 3)
            keys.update(bn(f"scale_heads.{head}.{index}.1", 128))
    for k in range(3):
        keys[f"fcs.{k}.0.weight"] = (256, 256 + classes, 1)
        keys.update(bn(f"fcs.{k}.1", 256))
    keys["decoder.1.weight"] = (classes, 256 + classes, 1)
    keys["decoder.1.bias"] = (classes,)
    keys["auxiliary_decoder.1.weight"] = (classes, 128, 1, 1)
    keys["auxiliary_decoder.1.bias"] = (classes,)
    return keys


def synthetic_state_dict(depth: int, classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.zeros((), dtype=torch.int64) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g)
        for k, s in reference_keys(depth, classes).items()
    }


@pytest.mark.parametrize("depth,row,entries", [(50, "pointrend_r50_voc", 442), (101, "pointrend_r101_voc", 748)])
def test_released_layout_loads_strictly_and_round_trips(tmp_path, depth, row, entries):
    sd = synthetic_state_dict(depth, 21)
    assert len(sd) == entries
    path = tmp_path / "release.pth"
    torch.save({"model": sd}, path)
    model = build_model(row)
    load_checkpoint(model, path)
    loaded = model.state_dict()
    assert len(loaded) == entries
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    if depth == 50:
        assert sum(p.numel() for p in model.parameters()) == 28_720_323
    # Our own save goes back to exactly the same file contents.
    save_checkpoint(tmp_path / "again.pth", model=model)
    again = torch.load(tmp_path / "again.pth", weights_only=True)["model"]
    assert again.keys() == sd.keys() and all(torch.equal(again[k], sd[k]) for k in sd)


def test_bare_and_ddp_prefixed_state_dicts_load(tmp_path):
    sd = build_model("demo").state_dict()
    torch.save(sd, tmp_path / "bare.pth")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    for name in ("bare.pth", "ddp.pth"):
        model = build_model("demo")
        load_checkpoint(model, tmp_path / name)
        assert torch.equal(model.state_dict()["decoder.1.weight"], sd["decoder.1.weight"])


def test_imagenet_backbone_file_loads_into_the_backbone_only(tmp_path):
    model = build_model("pointrend_r50_voc")
    backbone = {k.removeprefix("backbone_net."): v for k, v in synthetic_state_dict(50, 21).items()
                if k.startswith("backbone_net.")}
    backbone["fc.weight"], backbone["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    head_before = model.decoder[1].weight.clone()
    torch.save({"state_dict": backbone}, tmp_path / "resnet50_v1c.pth")
    load_checkpoint(model, tmp_path / "resnet50_v1c.pth")
    assert torch.equal(model.backbone_net.stem[0].weight, backbone["stem.0.weight"])
    assert torch.equal(model.decoder[1].weight, head_before)


def test_another_class_count_is_named(tmp_path):
    torch.save({"model": synthetic_state_dict(50, 21)}, tmp_path / "voc.pth")
    with pytest.raises(CheckpointError, match="for 21 classes, the model has 150") as error:
        load_checkpoint(build_model("pointrend_r50_ade20k"), tmp_path / "voc.pth")
    assert "decoder.1.bias: checkpoint (21,) vs model (150,)" in str(error.value)


def test_another_depth_is_named(tmp_path):
    torch.save({"model": synthetic_state_dict(50, 21)}, tmp_path / "r50.pth")
    with pytest.raises(CheckpointError, match="ResNet-50 backbone, the model a ResNet-101") as error:
        load_checkpoint(build_model("pointrend_r101_voc"), tmp_path / "r50.pth")
    assert "missing keys: backbone_net.layer3.6." in str(error.value)


def test_unexpected_keys_are_listed(tmp_path):
    sd = build_model("demo").state_dict()
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="1 unexpected keys: extra.weight"):
        load_checkpoint(build_model("demo"), tmp_path / "extra.pth")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused") as error:
        load_checkpoint(build_model("demo"), path)
    message = str(error.value)
    assert "pickled Python objects" in message and "system" in message  # names what it would have run
    assert "weights_only" not in message  # never advise turning the safety off


def test_foreign_truncated_and_code_files_get_three_messages(tmp_path):
    (tmp_path / "random.pth").write_bytes(bytes(range(7, 200)))
    full = tmp_path / "full.pth"
    torch.save(build_model("demo").state_dict(), full)
    (tmp_path / "cut.pth").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    torch.save({"model": Payload()}, tmp_path / "code.pth")
    messages = {}
    for name in ("random", "cut", "code"):
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(build_model("demo"), tmp_path / f"{name}.pth")
        messages[name] = str(error.value)
    assert "neither a zip archive" in messages["random"]
    assert "incomplete or damaged" in messages["cut"]
    assert "refused without being run" in messages["code"]
    assert all("weights_only" not in m for m in messages.values())


def test_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth is not a readable PyTorch checkpoint"):
        load_checkpoint(build_model("demo"), tmp_path / "notes.pth")
    torch.save({"epoch": 3}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointError, match="has no state dict"):
        load_checkpoint(build_model("demo"), tmp_path / "nomodel.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        load_checkpoint(build_model("demo"), tmp_path / "missing.pth")
    full = tmp_path / "full.pth"
    torch.save(build_model("demo").state_dict(), full)
    (tmp_path / "truncated.pth").write_bytes(full.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pth is not a readable"):
        load_checkpoint(build_model("demo"), tmp_path / "truncated.pth")
