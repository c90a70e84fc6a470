"""The backbones posterlab offers: one table. A new backbone is one entry here, nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from posterlab.errors import ModelError


@dataclass(frozen=True)
class Backbone:
    """A timm model and what posterlab needs to know about it."""

    name: str  # timm's name (with pretrained tag when it matters); also the weights file's stem
    title: str  # for people
    cam_layer: str  # module (inside the timm model) whose activations Grad-CAM weighs
    pretrained: bool = True  # ImageNet (or CLIP) weights exist for it
    notes: str = ""


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        Backbone(
            "tf_efficientnet_lite0",
            "EfficientNet-Lite0",
            "bn2",
            notes="4.7 M params, 224 px; fast on CPU; the default",
        ),
        Backbone("tf_efficientnet_lite1", "EfficientNet-Lite1", "bn2", notes="5.4 M params, 240 px"),
        Backbone("tf_efficientnet_lite2", "EfficientNet-Lite2", "bn2", notes="6.1 M params, 260 px"),
        Backbone("efficientnet_b0", "EfficientNet-B0", "bn2", notes="5.3 M params, 224 px (seed model)"),
        Backbone("mobilenetv2_100", "MobileNetV2", "bn2", notes="3.5 M params, 224 px (seed model)"),
        Backbone("resnet18", "ResNet-18", "layer4", notes="11.7 M params, 224 px (seed model)"),
        Backbone("resnet50", "ResNet-50", "layer4", notes="25.6 M params, 224 px (seed model)"),
        Backbone(
            "inception_v3",
            "Inception-v3 (GoogLeNet family)",
            "Mixed_7c",
            notes="23.8 M params, 299 px (seed model)",
        ),
        Backbone("vgg16", "VGG-16", "features.29", notes="138 M params, 224 px; slow on CPU (seed model)"),
        Backbone("densenet121", "DenseNet-121", "features.norm5", notes="8.0 M params, 224 px (seed model)"),
        Backbone(
            "vit_base_patch16_clip_224.openai",
            "CLIP ViT-B/16 (OpenAI)",
            "blocks.-1.norm1",
            notes="86 M params; slow on CPU",
        ),
        Backbone(
            "vit_base_patch32_clip_224.openai",
            "CLIP ViT-B/32 (OpenAI)",
            "blocks.-1.norm1",
            notes="88 M params, 7x7 grid; CPU-friendly ViT",
        ),
        Backbone(
            "posterlab_small_cnn",
            "Small CNN (from scratch)",
            "stages.3",
            pretrained=False,
            notes="1.2 M params, 160 px; no pretraining",
        ),
    ]
}

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


def get_backbone(name: str) -> Backbone:
    """The registry entry for ``name``; an unknown name lists the valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ModelError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None
