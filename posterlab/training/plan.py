"""What the loop trains and what feeds it, decided once per run: a ``Plan``.

- ``probe``: the head alone, fed cached embeddings. The backbone is built (and timm imported) only when
  some embedding is missing from the cache; its weights and preprocessing are then remembered beside the
  embeddings, so a re-run on cached posters builds nothing and still writes a complete run folder.
- ``finetune`` on a CPU: the backbone's top, fed cached activations of its frozen part.
- ``full`` and ``finetune`` on a GPU: the whole network, fed augmented posters (uint8 on a GPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from posterlab.config import RunConfig
from posterlab.data.prepare import Prepared
from posterlab.data.transforms import Preprocess
from posterlab.events import Control, Message, Progress
from posterlab.models.stages import boundary_for, make_head, set_trainable, split_backbone
from posterlab.models.weights import weights_id
from posterlab.training.distributed import Dist
from posterlab.training.features import (
    Extraction,
    Runtime,
    compute_features,
    default_workers,
    feature_key,
    remember_backbone,
    remembered_backbone,
    views_for,
)
from posterlab.training.loop import CachedInputs, ImageInputs, amp_dtype, seed_everything


@dataclass
class Plan:
    """The trainable part, its inputs, and what a run folder needs to describe the model."""

    head: nn.Module
    trainable: nn.Module  # the head, the backbone's top + head, or the whole model
    parameters: list[nn.Parameter]  # every parameter that may train
    preprocess: Preprocess  # the primary fit's
    fits: tuple[str, ...]  # every fit, averaged at test time
    cached: bool  # fed cached frozen-part outputs (probe, CPU finetune)
    inputs: Callable[[np.ndarray, bool], torch.utils.data.Dataset]  # (rows, train) → dataset
    backbone_weights: Callable[[], dict[str, torch.Tensor]]  # the backbone's weights, for the run folder
    model: nn.Module | None = None  # the PosterModel, when the network was built (finetune / full)
    workers: int = 0
    feature_seconds: float = 0.0
    normalize: Preprocess | None = None  # image inputs come as uint8: normalise them on the device

    @property
    def backbone(self) -> nn.Module | None:
        return self.model.backbone if self.model is not None else None

    def weights(self) -> dict[str, torch.Tensor]:
        """``model.safetensors``: backbone and head weights, named as a ``PosterModel`` names them."""
        head = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        return {f"backbone.{k}": v for k, v in self.backbone_weights().items()} | head


def make_plan(
    config: RunConfig, prepared: Prepared, device: torch.device, control: Control, dist: Dist
) -> Plan:
    """The plan for ``config``'s mode (see the module docstring)."""
    if config.train.mode == "probe":
        return _probe(config, prepared, device, control, dist)
    return _network(config, prepared, device, control, dist)


def _precision(device: torch.device, config) -> str:
    """What the frozen part computes in (part of every cache key): int8 (opt-in, CPU), bf16 / fp16 (AMP on
    CUDA) or fp32."""
    if config.int8 and device.type == "cpu":
        return "int8"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype(device, config.amp), "fp32")


def _extract(
    job: Extraction, prepared: Prepared, device: torch.device, control: Control, dist: Dist, workers: int
) -> tuple[dict, float]:
    frame = prepared.labelled.frame
    begun = time.monotonic()
    tables = compute_features(
        job,
        frame["image"].tolist(),
        frame["digest"].tolist(),
        Runtime(device, dist, workers, control=control),
    )
    return tables, time.monotonic() - begun


def _probe(config: RunConfig, prepared: Prepared, device: torch.device, control: Control, dist: Dist) -> Plan:
    tc, labelled = config.train, prepared.labelled
    start = weights_id(tc.backbone, tc.pretrained, tc.seed)

    def build() -> nn.Module:  # only when an embedding is missing: imports timm, builds the backbone
        from posterlab.models.factory import create_backbone

        seed_everything(tc.seed)
        backbone = create_backbone(tc.backbone, tc.pretrained)
        remember_backbone(tc.backbone, start, backbone, Preprocess.for_model(backbone))
        return backbone

    job = Extraction(
        build, [], [], about="embeddings", amp=tc.amp, identity=f"{tc.backbone}|{start}|", int8=tc.int8
    )
    preprocess = remembered_backbone(tc.backbone, start).preprocess(config.data.fit, job.module)
    job.views = views_for(preprocess, config.data.fits, flips=tc.flip_views)
    job.keys = [feature_key(tc.backbone, start, "", view, _precision(device, tc)) for view in job.views]
    tables, seconds = _extract(job, prepared, device, control, dist, tc.num_workers)
    seed_everything(tc.seed)  # the head starts the same whether or not the backbone was built
    head = make_head(tables[job.views[0].name].shape[1], len(labelled.rule.labels), tc.head, tc.dropout)
    eval_views = [view.name for view in views_for(preprocess, config.data.fits, flips=False)]
    return Plan(
        head,
        head,
        list(head.parameters()),
        preprocess,
        config.data.fits,
        True,
        lambda rows, train: CachedInputs(tables, labelled.y, rows, train, eval_views),
        backbone_weights=lambda: remembered_backbone(tc.backbone, start).weights(job.module),
        feature_seconds=seconds,
    )


def _network(
    config: RunConfig, prepared: Prepared, device: torch.device, control: Control, dist: Dist
) -> Plan:
    from posterlab.models.factory import create_model

    tc, labelled = config.train, prepared.labelled
    control.emit(Progress("building", 0, 0, tc.backbone))
    model = create_model(
        tc.backbone, len(labelled.rule.labels), pretrained=tc.pretrained, head=tc.head, dropout=tc.dropout
    )
    preprocess = Preprocess.for_model(model.backbone, config.data.fit)
    boundary = boundary_for(model.backbone, tc.mode, tc.unfreeze)
    set_trainable(model, boundary)
    parameters = [p for p in model.parameters() if p.requires_grad]
    fits, weights = config.data.fits, model.backbone.state_dict
    split = None
    if tc.mode == "finetune" and tc.cache_activations and device.type == "cpu":
        split = split_backbone(model.backbone, boundary, preprocess.input_size)
        if split is None:
            control.emit(
                Message(f"{tc.backbone} cannot be cut at {boundary}; its frozen layers will run every epoch")
            )
    if split is not None:
        start = weights_id(tc.backbone, tc.pretrained, tc.seed)
        job = Extraction(
            lambda: split[0],
            views_for(preprocess, fits, flips=tc.flip_views),
            [],
            about=f"activations after {boundary}",
            amp=tc.amp,
            identity=f"{tc.backbone}|{start}|{boundary}",
            int8=tc.int8,
        )
        job.keys = [
            feature_key(tc.backbone, start, boundary, view, _precision(device, tc)) for view in job.views
        ]
        tables, seconds = _extract(job, prepared, device, control, dist, tc.num_workers)
        split[0].to("cpu")  # only the trainable part stays on the device
        eval_views = [view.name for view in views_for(preprocess, fits, flips=False)]
        return Plan(
            model.head,
            nn.Sequential(split[1], model.head),
            parameters,
            preprocess,
            fits,
            True,
            lambda rows, train: CachedInputs(tables, labelled.y, rows, train, eval_views),
            weights,
            model=model,
            feature_seconds=seconds,
        )
    raw = device.type == "cuda"  # workers send uint8; the GPU normalises (a quarter of the bytes to copy)
    if raw:
        model.to(memory_format=torch.channels_last)
    fitted = [replace(preprocess, fit=fit) for fit in fits]
    paths = labelled.frame["image"].tolist()
    return Plan(
        model.head,
        model,
        parameters,
        preprocess,
        fits,
        False,
        lambda rows, train: ImageInputs(paths, labelled.y, rows, fitted, train, tc.augment, raw),
        weights,
        model=model,
        workers=tc.num_workers if tc.num_workers >= 0 else default_workers(device),
        normalize=preprocess if raw else None,
    )
