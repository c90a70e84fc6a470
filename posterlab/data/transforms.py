"""Preprocessing resolved from the model's own config (timm), and training augmentation.

The geometric part (PIL → PIL: the crop the model sees) is kept separate from the tensor part so that
Grad-CAM overlays are drawn on exactly what the model saw.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import nn

from posterlab.config import AugmentConfig

if TYPE_CHECKING:
    from torchvision import transforms as T


def _transforms():
    """torchvision's transforms, imported when a transform is first built (torchvision's import pulls in
    torch's compiler stack, seconds that a run on cached features never needs)."""
    from torchvision import transforms

    return transforms


# timm's eval transform supports these layouts; "pad" and "squash" keep the whole poster (crop_pct 1).
_FIT_TO_TIMM = {"crop": "center", "pad": "border", "squash": "squash"}


@dataclass(frozen=True)
class Preprocess:
    """What a model expects: size, interpolation, normalisation (all from timm) and how posters fit."""

    input_size: tuple[int, int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    fit: str = "crop"

    @classmethod
    def for_model(cls, model: nn.Module, fit: str = "crop") -> Preprocess:
        import timm.data

        return cls._from_timm(timm.data.resolve_data_config({}, model=model), fit)

    @classmethod
    def for_backbone(cls, name: str, fit: str = "crop") -> Preprocess:
        """The same as ``for_model`` from timm's registered config, without building the model."""
        import timm

        from posterlab.models import small_cnn  # noqa: F401  (registers its config)
        from posterlab.models.registry import get_backbone

        get_backbone(name)
        pretrained_cfg = timm.models.get_pretrained_cfg(name).to_dict()
        return cls._from_timm(timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg), fit)

    @classmethod
    def _from_timm(cls, config: dict, fit: str) -> Preprocess:
        return cls(
            input_size=tuple(config["input_size"]),
            interpolation=config["interpolation"],
            mean=tuple(float(v) for v in config["mean"]),
            std=tuple(float(v) for v in config["std"]),
            crop_pct=float(config["crop_pct"]),
            fit=fit,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def size(self) -> tuple[int, int]:
        return self.input_size[1], self.input_size[2]

    @property
    def draft(self) -> int:
        """The smallest side a decoded poster needs for this fit at full quality (``load_image``'s
        ``draft``): the resize before timm's centre crop, or the input's longer side for the whole poster."""
        side = max(self.size)
        return int(-(-side // self.crop_pct)) if self.fit == "crop" else side

    def _timm_eval(self) -> T.Compose:
        import timm.data

        return timm.data.create_transform(
            input_size=self.input_size,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct if self.fit == "crop" else 1.0,
            crop_mode=_FIT_TO_TIMM[self.fit],
            is_training=False,
        )

    def _parts(self) -> tuple[list, list]:
        steps = list(self._timm_eval().transforms)
        cut = next(i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__)
        return steps[:cut], steps[cut:]

    def geometry(self) -> T.Compose:
        """PIL → PIL: the crop the model sees (resize, then centre-crop / pad / squash)."""
        return _transforms().Compose(self._parts()[0])

    def to_tensor(self) -> T.Compose:
        """PIL (already fitted) → normalised tensor."""
        return _transforms().Compose(self._parts()[1])

    def _tensor(self, raw: bool) -> list:
        """The tensor step: normalised float, or ``raw`` uint8 (C, H, W) that ``normalize_on`` turns into
        the same numbers later (on a GPU: the data loader's workers then only decode and resample)."""
        return [_transforms().PILToTensor()] if raw else self._parts()[1]

    def normalize_on(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) → the normalised float tensor ``to_tensor`` would have made, on x's device."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float().div_(255.0) - mean) / std

    def eval_transform(self, raw: bool = False) -> T.Compose:
        return _transforms().Compose(self._parts()[0] + self._tensor(raw))

    def train_transform(self, augment: AugmentConfig, raw: bool = False) -> T.Compose:
        """Random crop, affine (rotate / shift / zoom / shear), then the eval geometry, then flip."""
        T = _transforms()  # noqa: N806
        geometry, _ = self._parts()
        tensor = self._tensor(raw)
        fill = tuple(round(255 * v) for v in self.mean)
        steps: list = []
        if augment.random_crop:
            steps.append(RandomCropFraction(0.85))
        if augment.rotate or augment.shift or augment.zoom or augment.shear:
            steps.append(
                T.RandomAffine(
                    degrees=augment.rotate,
                    translate=(augment.shift, augment.shift) if augment.shift else None,
                    scale=(1 - augment.zoom, 1 + augment.zoom) if augment.zoom else None,
                    shear=augment.shear or None,
                    interpolation=T.InterpolationMode.BILINEAR,
                    fill=fill,
                )
            )
        steps += geometry
        if augment.flip:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose(steps + tensor)


class RandomCropFraction:
    """Crop a random window covering at least ``fraction`` of each side (the seeds' "random crop")."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        w = int(width * random.uniform(self.fraction, 1.0))
        h = int(height * random.uniform(self.fraction, 1.0))
        left = random.randint(0, width - w)
        top = random.randint(0, height - h)
        return image.crop((left, top, left + w, top + h))

    def __repr__(self) -> str:
        return f"RandomCropFraction({self.fraction})"


def denormalize(tensor: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Normalised CHW tensor → 0..1 for display."""
    mean = torch.tensor(preprocess.mean).view(-1, 1, 1)
    std = torch.tensor(preprocess.std).view(-1, 1, 1)
    return (tensor * std + mean).clamp(0, 1)
