"""Building models: the only caller of ``timm.create_model``.

A ``PosterModel`` is a timm backbone (its own classifier removed) and a small head. Which parts train
is decided by timm's own ``feature_info`` (the model's stages), so every backbone in the registry gets
probe / finetune / full training and frozen-prefix caching without a line of per-model code.
"""

from __future__ import annotations

import logging

import timm
import torch
from torch import nn

from posterlab import settings
from posterlab.errors import ModelError
from posterlab.models import small_cnn  # noqa: F401  (registers posterlab_small_cnn with timm)
from posterlab.models.registry import get_backbone
from posterlab.models.stages import make_head
from posterlab.models.weights import check_safetensors, weights_file

log = logging.getLogger(__name__)


class PosterModel(nn.Module):
    """A timm backbone producing pooled features, followed by a classification head."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, head: str = "linear", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # timm: the pooled output is head_hidden_size wide when a model keeps a pre-logits block (VGG)
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.head = make_head(features, num_classes, head, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def create_backbone(name: str, pretrained: bool) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``): forward gives pooled features."""
    spec = get_backbone(name)
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=0)
    if not spec.pretrained:
        raise ModelError(
            f"{name} has no pretrained weights; train it with pretrained=False (--no-pretrained)"
        )
    local = weights_file(name)
    if local is not None:
        check_safetensors(local)
        return timm.create_model(
            name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(local)}
        )
    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as error:  # the hub raises many types: offline, no network, missing file, auth
        where = settings.weights_dir()
        raise ModelError(
            f"no pretrained weights for {name} ({type(error).__name__}): put {name}.safetensors in "
            f"POSTERLAB_WEIGHTS_DIR ({'now ' + str(where) if where else 'unset'}) or connect once so timm can "
            "download them from the Hugging Face hub; or train without pretraining (--no-pretrained)"
        ) from None


def create_model(
    name: str, num_classes: int, *, pretrained: bool = True, head: str = "linear", dropout: float = 0.0
) -> PosterModel:
    """The one factory: a registry backbone (pretrained when asked) with a fresh head."""
    return PosterModel(create_backbone(name, pretrained), num_classes, head=head, dropout=dropout)
