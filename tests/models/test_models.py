"""Registry and factory: every backbone builds, has a CAM layer, trains in each mode; weights are safe."""

from __future__ import annotations

import pytest
import torch

from posterlab.data.transforms import Preprocess
from posterlab.errors import ModelError, RunError
from posterlab.models.factory import create_backbone, create_model
from posterlab.models.registry import BACKBONES, get_backbone
from posterlab.models.stages import boundary_for, feature_levels, get_module, set_trainable, split_backbone
from posterlab.models.weights import check_safetensors
from tests.conftest import LITE0, lite0_weights, needs_weights

SEED_FAMILIES = [
    "mobilenetv2_100",
    "resnet18",
    "resnet50",
    "inception_v3",
    "vgg16",
    "densenet121",
    "efficientnet_b0",
]
LIGHT = [
    "tf_efficientnet_lite0",
    "resnet18",
    "mobilenetv2_100",
    "densenet121",
    "efficientnet_b0",
    "posterlab_small_cnn",
    "vit_base_patch32_clip_224.openai",
]


def test_registry_covers_the_seed_models_and_more():
    names = set(BACKBONES)
    assert set(SEED_FAMILIES) <= names
    assert {
        "tf_efficientnet_lite0",
        "tf_efficientnet_lite1",
        "tf_efficientnet_lite2",
        "posterlab_small_cnn",
    } <= names
    assert any("clip" in n for n in names)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ModelError) as info:
        get_backbone("resnet5O")
    assert str(info.value).startswith("unknown backbone 'resnet5O'; choose one of: tf_efficientnet_lite0, ")


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_with_its_cam_layer(name):
    model = create_model(name, 5, pretrained=False).eval()
    layer = get_module(model.backbone, BACKBONES[name].cam_layer)
    assert isinstance(layer, torch.nn.Module)
    assert len(feature_levels(model.backbone)) >= 4
    size = Preprocess.for_backbone(name).input_size
    assert Preprocess.for_model(model.backbone).input_size == size  # same config with or without the model
    with torch.no_grad():
        assert model(torch.randn(1, *size)).shape == (1, 5)


@pytest.mark.parametrize("name", LIGHT)
def test_forward_and_trainable_parts(name):
    model = create_model(name, 3, pretrained=False).eval()
    size = 224 if name != "posterlab_small_cnn" else 160
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 3)
    counts = {}
    for mode in ("probe", "finetune", "full"):
        set_trainable(model, boundary_for(model.backbone, mode, 1))
        counts[mode] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.head.parameters())
    assert counts["probe"] == head < counts["finetune"] < counts["full"]


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18", "densenet121", "posterlab_small_cnn"])
def test_cnns_split_at_the_frozen_boundary(name):
    backbone = create_model(name, 2, pretrained=False).backbone
    parts = split_backbone(
        backbone, boundary_for(backbone, "finetune", 1), Preprocess.for_model(backbone).input_size
    )
    assert parts is not None
    backbone.eval()
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.allclose(parts[1](parts[0](x)), backbone(x), atol=1e-4)


def test_vit_cannot_be_split_and_says_so():
    backbone = create_model("vit_base_patch32_clip_224.openai", 2, pretrained=False).backbone
    assert split_backbone(backbone, boundary_for(backbone, "finetune", 1), (3, 224, 224)) is None


def test_offline_without_weights_is_one_actionable_line(monkeypatch):
    monkeypatch.delenv("POSTERLAB_WEIGHTS_DIR", raising=False)
    with pytest.raises(ModelError) as info:
        create_backbone("resnet18", pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert (
        "POSTERLAB_WEIGHTS_DIR" in message and "Hugging Face hub" in message and "--no-pretrained" in message
    )


def test_small_cnn_has_no_pretrained_weights():
    with pytest.raises(ModelError, match="no pretrained weights; train it with pretrained=False"):
        create_backbone("posterlab_small_cnn", pretrained=True)


def test_pickled_weights_are_refused_without_loading(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Boom()}, tmp_path / f"{LITE0}.safetensors")
    monkeypatch.setenv("POSTERLAB_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(RunError, match="pickled PyTorch checkpoint, which can run code"):
        create_backbone(LITE0, pretrained=True)
    assert not marker.exists()
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(RunError, match="is not a safetensors file"):
        check_safetensors(tmp_path / "junk.safetensors")


@needs_weights
def test_local_imagenet_weights_are_used():
    backbone = create_backbone(LITE0, pretrained=True)
    assert backbone.pretrained_cfg["file"] == str(lite0_weights())
    random = create_backbone(LITE0, pretrained=False)
    assert not torch.equal(backbone.conv_stem.weight, random.conv_stem.weight)
