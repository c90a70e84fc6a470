"""Why the model decided: Grad-CAM family maps (pytorch-grad-cam) and intermediate activation maps.

Targets are logits: one per requested label for multi-label (the sigmoid's input), the class logit for
multi-class, and for two classes the logit difference (``why fresh`` = fresh − rotten, ``why rotten``
the reverse), since a softmax over two classes only depends on that difference. The target layer comes
from the registry; ViT token maps are reshaped with the model's own patch grid. Hooks are released
after every call (``with`` block), and every call holds the predictor's ``lock``: one ``Explainer`` serves
many threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from posterlab.config import CAM_METHODS, SLOW_CAM_METHODS
from posterlab.data.images import load_image
from posterlab.data.transforms import Preprocess
from posterlab.errors import ConfigError
from posterlab.inference import ImageInput, Predictor
from posterlab.models.registry import get_backbone
from posterlab.models.stages import feature_levels, get_module

METHODS = CAM_METHODS
SLOW_METHODS = SLOW_CAM_METHODS
SCORECAM_BATCH = 64  # masked copies of the poster per forward pass (pytorch-grad-cam's batch_size)


class _Quiet:
    """Stands in for the ``tqdm`` module inside pytorch-grad-cam's Score-CAM, whose progress bar per
    call would otherwise go to stderr (the app's log, the CLI's terminal): posterlab reports progress
    itself."""

    @staticmethod
    def tqdm(iterable, *args, **kwargs):
        return iterable


def _cam_class(method: str):
    """pytorch-grad-cam's class for ``method`` (imported when first needed)."""
    import pytorch_grad_cam as cams
    import pytorch_grad_cam.score_cam as score_cam

    score_cam.tqdm = _Quiet

    return {
        "gradcam": cams.GradCAM,
        "gradcam++": cams.GradCAMPlusPlus,
        "hirescam": cams.HiResCAM,
        "eigencam": cams.EigenCAM,
        "scorecam": cams.ScoreCAM,
        "layercam": cams.LayerCAM,
    }[method]


class LogitTarget:
    """The logit of one label (multi-label and multi-class)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.index]


class BinaryTarget:
    """Two-class softmax: evidence for ``index`` over the other class (logit difference)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.index] - output[..., 1 - self.index]


def vit_reshape(backbone: nn.Module):
    """For token outputs (B, prefix + H*W, C): drop the prefix tokens, fold to (B, C, H, W) using the
    backbone's own patch grid. None for CNNs."""
    patch_embed = getattr(backbone, "patch_embed", None)
    grid = getattr(patch_embed, "grid_size", None)
    if grid is None:
        return None
    height, width = int(grid[0]), int(grid[1])
    prefix = int(getattr(backbone, "num_prefix_tokens", 1))

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        maps = tokens[:, prefix:, :].reshape(tokens.size(0), height, width, tokens.size(2))
        return maps.permute(0, 3, 1, 2)

    return reshape


def to_poster_aspect(image: Image.Image, original: tuple[int, int], preprocess: Preprocess) -> Image.Image:
    """Show what the model saw at the poster's own aspect: padding removed (``pad``), the squeeze undone
    (``squash``); a centre crop (``crop``) is already an undistorted part of the poster."""
    width, height = original
    size_h, size_w = preprocess.size
    if preprocess.fit == "pad":
        scale = min(size_w / width, size_h / height)
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        left, top = (size_w - w) // 2, (size_h - h) // 2
        return image.crop((left, top, left + w, top + h))
    if preprocess.fit == "squash":
        return image.resize((max(1, round(size_h * width / height)), size_h), Image.BILINEAR)
    return image


def blend(crop: Image.Image, heat: np.ndarray) -> Image.Image:
    """A 0..1 heatmap (any size) drawn over ``crop`` in the jet colormap: every overlay posterlab shows."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    base = np.asarray(crop.convert("RGB"), dtype=np.float32) / 255.0
    if heat.shape != base.shape[:2]:
        resized = Image.fromarray(np.uint8(np.clip(heat, 0, 1) * 255)).resize(crop.size, Image.BILINEAR)
        heat = np.asarray(resized, dtype=np.float32) / 255.0
    return Image.fromarray(show_cam_on_image(base, heat.astype(np.float32), use_rgb=True, image_weight=0.55))


@dataclass
class Explanation:
    """Scores for a poster and, per explained label, its heatmap (0..1, model input size) and overlay."""

    crop: Image.Image  # what the model saw
    scores: dict[str, float]
    predicted: list[str]
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    overlays: dict[str, Image.Image] = field(default_factory=dict)  # at the poster's aspect
    method: str = "gradcam"
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)


class Explainer:
    """Grad-CAM for a ``Predictor``'s model. Build once per predictor; each call hooks and unhooks, holding
    the predictor's lock."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.model = predictor.model
        spec = get_backbone(predictor.info["backbone"])
        self.layer = get_module(self.model.backbone, spec.cam_layer)
        self.reshape = vit_reshape(self.model.backbone)
        self.binary = predictor.rule.task == "binary"

    def targets(self, labels: list[str]):
        index = {label: i for i, label in enumerate(self.predictor.labels)}
        unknown = [label for label in labels if label not in index]
        if unknown:
            raise ConfigError(
                f"unknown label {', '.join(unknown)}; this model knows: {', '.join(self.predictor.labels)}"
            )
        kind = BinaryTarget if self.binary else LogitTarget
        return [kind(index[label]) for label in labels]

    def heatmaps(self, tensor: torch.Tensor, labels: list[str], method: str = "gradcam") -> np.ndarray:
        """(len(labels), H, W) maps in 0..1 for one normalised image tensor (3, H, W)."""
        if method not in METHODS:
            raise ConfigError(f"unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
        batch = tensor[None].repeat(len(labels), 1, 1, 1)
        cam_class = _cam_class(method)
        with (
            self.predictor.lock,
            torch.enable_grad(),
            cam_class(model=self.model, target_layers=[self.layer], reshape_transform=self.reshape) as cam,
        ):
            # a leaf that requires grad makes activations carry gradients even when the backbone is frozen
            cam.compute_input_gradient = True
            if method == "scorecam":
                cam.batch_size = SCORECAM_BATCH
            maps = cam(input_tensor=batch, targets=self.targets(labels))
        return np.nan_to_num(maps.astype(np.float32))

    def explain(
        self,
        image: ImageInput,
        labels: list[str] | None = None,
        top_k: int = 3,
        method: str = "gradcam",
        name: str | None = None,
    ) -> Explanation:
        """Scores, and a map + overlay for each of ``labels`` (default: the predicted ones, else the top one)."""
        loaded = load_image(image, name=name, draft=self.predictor.draft)
        crop, views = self.predictor.fitted(loaded.image)
        probs = self.predictor.probabilities(views[None])[0]  # the scores a prediction gives
        tensor = views[0]  # Grad-CAM on the primary fit, the crop shown
        scores = {label: float(p) for label, p in zip(self.predictor.labels, probs, strict=True)}
        predicted = self.predictor.decide(probs)
        if labels is None:
            ranked = sorted(scores, key=lambda k: -scores[k])
            labels = [label for label in ranked if label in predicted][:top_k] or ranked[:1]
        maps = self.heatmaps(tensor, labels, method)
        result = Explanation(
            crop, scores, predicted, method=method, notes=list(loaded.notes), original_size=loaded.image.size
        )
        empty = [label for label, heat in zip(labels, maps, strict=True) if not heat.max() > 0]
        if empty:  # e.g. Grad-CAM where every region lowers the score: nothing to show, which is worth saying
            result.notes.append(
                f"{method} found no region of the poster that stands out for {', '.join(empty)}, so "
                f"{'its map is' if len(empty) == 1 else 'their maps are'} empty"
            )
        for label, heat in zip(labels, maps, strict=True):
            overlay = blend(crop, heat)
            result.heatmaps[label] = heat
            result.overlays[label] = to_poster_aspect(overlay, loaded.image.size, self.predictor.preprocess)
        return result


def activation_maps(
    predictor: Predictor, image: ImageInput, level: int = -1, channels: int = 16
) -> tuple[str, np.ndarray, np.ndarray]:
    """The output of feature level ``level`` (timm's stages; -1 the deepest) for one poster:
    (module name, the ``channels`` most active channel maps (c, h, w) in 0..1, their mean map)."""
    backbone = predictor.model.backbone
    names = feature_levels(backbone)
    name = names[level]
    module = get_module(backbone, name)
    captured: list[torch.Tensor] = []
    _, views, _ = predictor.prepare(image)
    with predictor.lock:  # the hook must see this forward pass only
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().cpu()))
        try:
            with torch.inference_mode():
                predictor.model(views[:1].to(predictor.device))
        finally:
            handle.remove()
    output = captured[0][0].float()
    if output.ndim == 2:  # ViT tokens → grid
        reshape = vit_reshape(backbone)
        output = reshape(captured[0].float())[0]
    strength = output.mean(dim=(1, 2))
    top = torch.argsort(strength, descending=True)[:channels]
    maps = output[top]
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    maps = ((maps - low) / (high - low).clamp_min(1e-6)).numpy()
    mean = output.mean(dim=0)
    mean = ((mean - mean.min()) / (mean.max() - mean.min()).clamp_min(1e-6)).numpy()
    return name, maps, mean


def captioned(image: Image.Image, caption: str) -> Image.Image:
    """The image with a caption strip underneath (for PNGs written by the CLI)."""
    strip = 22
    canvas = Image.new("RGB", (image.width, image.height + strip), (20, 20, 20))
    canvas.paste(image.convert("RGB"), (0, 0))
    ImageDraw.Draw(canvas).text((6, image.height + 5), caption, fill=(240, 240, 240))
    return canvas


def explain_to_file(
    run: str | Path, image: str | Path, out: str | Path, label: str | None = None, method: str = "gradcam"
) -> Path:
    """``posterlab explain``: write the overlay for ``label`` (default: the top-scored one) as a PNG,
    beside the crop the model saw."""
    if Path(out).suffix.lower() != ".png":  # before the work: a .txt got PNG bytes without a word
        raise ConfigError(f"{out}: explain writes a PNG image; give --out ending in .png")
    predictor = Predictor(run)
    explanation = Explainer(predictor).explain(
        image, labels=[label] if label else None, top_k=1, method=method, name=str(image)
    )
    chosen = next(iter(explanation.overlays))
    overlay = explanation.overlays[chosen]
    plain = to_poster_aspect(explanation.crop, explanation.original_size, predictor.preprocess)
    pair = Image.new(
        "RGB", (plain.width + overlay.width + 6, max(plain.height, overlay.height)), (20, 20, 20)
    )
    pair.paste(plain.convert("RGB"), (0, 0))
    pair.paste(overlay, (plain.width + 6, 0))
    caption = f"{method}: {chosen} {explanation.scores[chosen]:.2f}"
    if predictor.rule.task == "binary":
        caption = f"{method}: why {chosen} (p={explanation.scores[chosen]:.2f})"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    captioned(pair, caption).save(out, format="PNG")
    return out
