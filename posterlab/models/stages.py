"""The stages of a backbone, read from timm's ``feature_info`` on a built model (this module imports only
torch): which modules end each stage, what trains in each mode, frozen batch-norm statistics, cutting a
backbone at a stage boundary, and the classification head every ``PosterModel`` carries."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def make_head(features: int, num_classes: int, head: str = "linear", dropout: float = 0.0) -> nn.Sequential:
    """The head on pooled features: dropout + linear, or a 512-wide MLP."""
    if head == "mlp":
        return nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(features, 512),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(512, num_classes),
        )
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))


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


def set_trainable(model: nn.Module, boundary: str | None) -> None:
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


def split_backbone(
    backbone: nn.Module, boundary: str, input_size: tuple[int, int, int]
) -> tuple[nn.Module, nn.Module] | None:
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
        x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
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
