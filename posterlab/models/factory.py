"""Building models: the only caller of ``timm.create_model``.

A ``PosterModel`` is a timm backbone (its own classifier removed) and a small head. Which parts train
is decided by timm's own ``feature_info`` (the model's stages), so every backbone in the registry gets
probe / finetune / full training and frozen-prefix caching without a line of per-model code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import struct
from pathlib import Path

import timm
import torch
from torch import nn

from posterlab import settings
from posterlab.errors import ModelError, RunError
from posterlab.models import small_cnn  # noqa: F401  (registers posterlab_small_cnn with timm)
from posterlab.models.registry import get_backbone

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
        if head == "mlp":
            hidden = 512
            self.head = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(features, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def weights_file(name: str) -> Path | None:
    """``$POSTERLAB_WEIGHTS_DIR/<name>.safetensors`` when it exists."""
    folder = settings.weights_dir()
    if folder is None:
        return None
    path = folder / f"{name}.safetensors"
    return path if path.is_file() else None


def check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file, before any library parses it.

    A pickle (``torch.save``) can run code when loaded; posterlab never loads one.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if head[:2] == b"PK" or head[:1] == b"\x80":
                raise RunError(
                    f"{path}: is a pickled PyTorch checkpoint, which can run code when loaded and is never "
                    "opened by posterlab; convert it with safetensors.torch.save_file(state_dict, ...) on a machine you trust"
                )
            if len(head) < 8:
                raise RunError(
                    f"{path}: is not a safetensors file (too short); re-save the weights with safetensors"
                )
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000 or length > os.path.getsize(path):
                raise RunError(
                    f"{path}: is not a safetensors file (bad header); re-save the weights with safetensors"
                )
            json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        if isinstance(error, FileNotFoundError):
            raise RunError(f"{path}: file not found") from None
        raise RunError(
            f"{path}: is not a safetensors file ({type(error).__name__}); re-save the weights with safetensors"
        ) from None


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


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_id(name: str, pretrained: bool, seed: int) -> str:
    """Identifies the starting weights, for cache keys: a file hash, a hub name, or a random seed."""
    if not pretrained:
        return f"random:{seed}"
    local = weights_file(name)
    if local is not None:
        stat = local.stat()
        return "sha256:" + _file_sha256(str(local), stat.st_size, stat.st_mtime_ns)
    return f"hub:{name}"


def feature_levels(backbone: nn.Module) -> list[str]:
    """Module names that end each stage, from timm's ``feature_info`` (shallow to deep)."""
    info = backbone.feature_info
    return [entry["module"] for entry in info] if isinstance(info, list) else list(info.module_name())


def boundary_for(backbone: nn.Module, mode: str, unfreeze: int) -> str | None:
    """The last frozen module: everything after it trains. None when nothing is frozen (``full``)."""
    levels = feature_levels(backbone)
    if mode == "probe":
        return ""  # the whole backbone is frozen
    if mode == "full" or unfreeze >= len(levels):
        return None
    return levels[-unfreeze - 1]


def set_trainable(model: PosterModel, boundary: str | None) -> None:
    """Freeze the backbone up to and including ``boundary`` ('' freezes all of it; None none)."""
    # modules come in registration order, which is forward order for timm's CNNs and ViTs
    after = boundary is None
    seen = False
    trainable_modules = set()
    for name, _ in model.backbone.named_modules():
        inside = bool(boundary) and (name == boundary or name.startswith(boundary + "."))
        seen = seen or inside
        after = after or (seen and not inside)
        if after:
            trainable_modules.add(name)
    for name, parameter in model.backbone.named_parameters():
        owner = name.rpartition(".")[0]
        parameter.requires_grad_(owner in trainable_modules)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)


def freeze_norm_stats(module: nn.Module) -> None:
    """Batch-norm layers whose parameters do not train keep their running statistics (eval mode)."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            params = list(sub.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                sub.eval()


def _chain(module: nn.Module, path: list[str]) -> list[tuple[str, nn.Module]]:
    """The module's children in order, expanded along ``path`` so that it becomes one element."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if path and name == path[0] and len(path) > 1:
            out += [(f"{name}.{sub}", m) for sub, m in _chain(child, path[1:])]
        else:
            out.append((name, child))
    return out


def split_backbone(backbone: nn.Module, boundary: str) -> tuple[nn.Module, nn.Module] | None:
    """Cut the backbone after ``boundary`` into (prefix, suffix) with suffix(prefix(x)) == backbone(x).

    Works for backbones whose forward pass is a chain of their modules (CNNs); returns None where it is
    not (e.g. ViTs add position embeddings between modules), which is checked numerically here.
    """
    chain = _chain(backbone, boundary.split(".")) if boundary else []
    names = [name for name, _ in chain]
    if boundary not in names:
        return None
    cut = names.index(boundary) + 1
    prefix = nn.Sequential(*[m for _, m in chain[:cut]])
    suffix = nn.Sequential(*[m for _, m in chain[cut:]])
    was_training = backbone.training
    backbone.eval()
    try:
        size = timm.data.resolve_data_config({}, model=backbone)["input_size"]
        x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = backbone(x)
            got = suffix(prefix(x))
        ok = got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4, rtol=1e-3)
    except (RuntimeError, TypeError):
        ok = False
    finally:
        backbone.train(was_training)
    if not ok:
        log.info("backbone cannot be split at %s; frozen layers will run every epoch", boundary)
        return None
    return prefix, suffix


def get_module(root: nn.Module, path: str) -> nn.Module:
    """``'blocks.-1.norm1'`` → that submodule (negative indices count from the end)."""
    module = root
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            module = module[int(part)]  # type: ignore[index]
        else:
            module = getattr(module, part)
    return module
