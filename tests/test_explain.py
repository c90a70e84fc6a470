"""Grad-CAM for every backbone family and target kind; the map follows the evidence; hooks released."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from posterlab.config import AugmentConfig, DataConfig, LabelConfig, RunConfig, TrainConfig
from posterlab.data.labels import LabelRule
from posterlab.data.transforms import Preprocess
from posterlab.errors import ConfigError
from posterlab.explain import (
    METHODS,
    Explainer,
    activation_maps,
    explain_to_file,
    to_poster_aspect,
    vit_reshape,
)
from posterlab.inference import Predictor
from posterlab.models.factory import create_model
from posterlab.models.registry import BACKBONES
from posterlab.models.stages import get_module
from posterlab.training.trainer import train_run

# one of each kind of CAM layer: a CNN's last norm, a ResNet stage, a ViT block (tokens → grid)
FAMILIES = ["tf_efficientnet_lite0", "resnet18", "vit_base_patch32_clip_224.openai"]


class _FakePredictor:
    """A Predictor-shaped object around a freshly built model (no run folder needed)."""

    def __init__(self, name: str, labels=("A", "B", "C"), task="multilabel") -> None:
        self.model = create_model(name, len(labels), pretrained=False).eval()
        self.info = {"backbone": name}
        self.labels = labels
        self.rule = LabelRule("genres" if task == "multilabel" else "label", task, labels)
        self.preprocess = Preprocess.for_model(self.model.backbone)
        self.thresholds = np.full(len(labels), 0.5)
        self.fits = (self.preprocess.fit,)
        self._views = [(self.preprocess.geometry(), self.preprocess.to_tensor())]

    fitted = Predictor.fitted
    probabilities = Predictor.probabilities
    decide = Predictor.decide
    prepare = Predictor.prepare
    multilabel = Predictor.multilabel
    _onnx = None
    device = torch.device("cpu")
    lock = threading.RLock()
    draft = None


@pytest.mark.parametrize("name", FAMILIES)
def test_cam_for_every_family(name, poster_paths):
    predictor = _FakePredictor(name)
    explanation = Explainer(predictor).explain(poster_paths[0], labels=["A", "C"])
    size = predictor.preprocess.size
    assert set(explanation.overlays) == {"A", "C"}
    for heat in explanation.heatmaps.values():
        assert heat.shape == size and np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    assert explanation.crop.size == (size[1], size[0])


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_has_a_spatial_cam_layer(name):
    """The registry's CAM layer exists in every backbone and gives a spatial map (a meta-device forward
    pass: shapes only, no weights, no compute)."""
    with torch.device("meta"):
        backbone = create_model(name, 2, pretrained=False).backbone
        outputs = []
        handle = get_module(backbone, BACKBONES[name].cam_layer).register_forward_hook(
            lambda _m, _i, out: outputs.append(out)
        )
        backbone(torch.empty(1, *Preprocess.for_backbone(name).input_size))
        handle.remove()
    reshape = vit_reshape(backbone)
    shape = (reshape(outputs[0]) if reshape else outputs[0]).shape
    assert len(shape) == 4 and shape[2] > 1 and shape[3] > 1, shape


def test_vit_reshape_uses_the_models_grid():
    for name, grid in (("vit_base_patch32_clip_224.openai", 7), ("vit_base_patch16_clip_224.openai", 14)):
        backbone = create_model(name, 2, pretrained=False).backbone
        tokens = torch.randn(1, 1 + grid * grid, 768)
        assert vit_reshape(backbone)(tokens).shape == (1, 768, grid, grid)
    assert vit_reshape(create_model("resnet18", 2, pretrained=False).backbone) is None


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_a_frozen_backbone(method, poster_paths):
    predictor = _FakePredictor("posterlab_small_cnn")
    for p in predictor.model.backbone.parameters():
        p.requires_grad_(False)  # as in probe training: Grad-CAM must still get gradients
    explanation = Explainer(predictor).explain(poster_paths[1], labels=["B"], method=method)
    assert explanation.heatmaps["B"].shape == (160, 160)


def test_an_empty_map_is_said_not_shown_as_a_blank_overlay(poster_paths):
    """A label whose head weights are all negative: every channel of the (non-negative) CAM layer lowers
    its score, Grad-CAM's ReLU leaves nothing, and the explanation says so instead of a plain blue overlay."""
    predictor = _FakePredictor("tf_efficientnet_lite0")
    linear = [m for m in predictor.model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        linear.weight[1] = -linear.weight[1].abs() - 1e-3
        linear.weight[0] = linear.weight[0].abs() + 1e-3
    explanation = Explainer(predictor).explain(poster_paths[0], labels=["A", "B"])
    assert explanation.heatmaps["B"].max() == 0 and explanation.heatmaps["A"].max() > 0
    assert explanation.notes == [
        "gradcam found no region of the poster that stands out for B, so its map is empty"
    ]


def test_unknown_method_and_label(poster_paths):
    explainer = Explainer(_FakePredictor("posterlab_small_cnn"))
    with pytest.raises(ConfigError, match=r"unknown CAM method 'gradcam\+\+\+'"):
        explainer.explain(poster_paths[0], labels=["A"], method="gradcam+++")
    with pytest.raises(ConfigError, match="unknown label Westerns; this model knows: A, B, C"):
        explainer.explain(poster_paths[0], labels=["Westerns"])


def test_hooks_are_released(poster_paths):
    predictor = _FakePredictor("tf_efficientnet_lite0")
    explainer = Explainer(predictor)
    modules = list(predictor.model.modules())
    for _ in range(4):
        explainer.explain(poster_paths[2], labels=["A", "B"])
    assert all(
        not m._forward_hooks and not m._backward_hooks and not getattr(m, "_forward_pre_hooks", {})
        for m in modules
    )


def test_binary_targets_are_opposite(binary_run, sample_rt_dir):
    predictor = Predictor(binary_run)
    image = next((sample_rt_dir / "images").glob("*.jpg"))
    maps = Explainer(predictor).heatmaps(predictor.prepare(image)[1][0], ["fresh", "rotten"])
    fresh, rotten = maps
    # "why fresh" and "why rotten" weigh the same activations with opposite gradients
    assert not np.allclose(fresh, rotten)


def test_overlay_at_poster_aspect():
    preprocess = Preprocess((3, 224, 224), "bicubic", (0.5,) * 3, (0.5,) * 3, 0.875, fit="pad")
    square = Image.new("RGB", (224, 224))
    assert to_poster_aspect(square, (182, 268), preprocess).size == (152, 224)
    squash = Preprocess((3, 224, 224), "bicubic", (0.5,) * 3, (0.5,) * 3, 0.875, fit="squash")
    assert to_poster_aspect(square, (182, 268), squash).size == (152, 224)


def test_activation_maps_any_stage(genre_run, poster_paths):
    predictor = Predictor(genre_run)
    for level in (0, -1):
        name, maps, mean = activation_maps(predictor, poster_paths[0], level=level, channels=8)
        assert name.startswith("stages.") and maps.shape[0] == 8 and mean.shape == maps.shape[1:]


def test_explain_cli_writes_png(genre_run, poster_paths, tmp_path):
    out = explain_to_file(genre_run, poster_paths[0], tmp_path / "why.png")
    image = Image.open(out)
    assert image.format == "PNG" and image.width > 160


def _moving_patch_dataset(root, count: int = 64) -> None:
    """Grey noisy 'posters'; half carry a red square at a random place: the only signal."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(count):
        pixels = rng.integers(90, 140, size=(240, 160, 3), dtype=np.uint8)
        label = "patch" if i % 2 == 0 else "plain"
        if label == "patch":
            x, y = rng.integers(0, 160 - 48), rng.integers(0, 240 - 48)
            pixels[y : y + 48, x : x + 48] = (230, 20, 20)
        Image.fromarray(pixels).save(root / "images" / f"p{i:03d}.png")
        rows.append({"image": f"images/p{i:03d}.png", "label": label})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)


def test_heatmap_follows_the_evidence(tmp_path):
    _moving_patch_dataset(tmp_path / "patches", count=96)
    still = AugmentConfig(rotate=0, shift=0, shear=0, zoom=0, random_crop=False)
    config = RunConfig(
        DataConfig(
            path=str(tmp_path / "patches"),
            labels=LabelConfig(target="label"),
            fit="squash",
            near_duplicate_bits=-1,
        ),
        TrainConfig(
            backbone="posterlab_small_cnn",
            pretrained=False,
            mode="full",
            epochs=8,
            lr=2e-3,
            batch_size=8,
            patience=0,
            flip_views=False,
            num_workers=0,
            augment=still,
        ),
        name="patches",
    )
    predictor = Predictor(train_run(config, tmp_path / "runs"))
    explainer = Explainer(predictor)
    peaks = []
    for x, y in ((10, 10), (100, 180)):
        pixels = np.full((240, 160, 3), 115, dtype=np.uint8)
        pixels[y : y + 48, x : x + 48] = (230, 20, 20)
        heat = explainer.heatmaps(predictor.prepare(Image.fromarray(pixels))[1][0], ["patch"])[0]
        peaks.append(np.unravel_index(np.argmax(heat), heat.shape))
    # each map peaks on its square (160x240 posters squashed to 160x160: rows scale by 2/3), one feature
    # cell (16 px at this stride) of slack around it
    for (row, col), (x, y) in zip(peaks, ((10, 10), (100, 180)), strict=True):
        assert x - 16 <= col <= x + 48 + 16, (row, col)
        assert y * 2 / 3 - 16 <= row <= (y + 48) * 2 / 3 + 16, (row, col)
