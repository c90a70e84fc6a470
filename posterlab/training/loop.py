"""The one training loop: every backbone, mode and input kind goes through ``fit``.

What changes between modes is only *what* is trained (a head, a backbone's top, the whole network)
and *what it is fed* (cached embeddings, cached activations, or augmented images). Both are inputs.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import timm.loss
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from posterlab.config import AugmentConfig, TrainConfig
from posterlab.data.images import load_image
from posterlab.data.labels import LabelRule
from posterlab.data.transforms import Preprocess
from posterlab.evaluation.metrics import multilabel_metrics, single_label_metrics, tune_thresholds
from posterlab.events import EpochEnd, EventSink, Progress, StopRequested, ignore
from posterlab.models.factory import freeze_norm_stats

# ---------------------------------------------------------------------------------------- inputs


class CachedInputs(Dataset):
    """Cached frozen-part outputs per view. Training draws one view at random (flips and other fits
    are free augmentation); evaluation returns the ``eval_views`` stacked and the loop averages them."""

    def __init__(
        self,
        views: dict[str, np.ndarray],
        y: np.ndarray,
        rows: np.ndarray,
        train: bool,
        eval_views: list[str],
    ) -> None:
        self.train_views = [torch.from_numpy(np.ascontiguousarray(v)) for v in views.values()]
        self.eval_views = [torch.from_numpy(np.ascontiguousarray(views[name])) for name in eval_views]
        self.y = torch.from_numpy(y)
        self.rows = rows
        self.train = train

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[index])
        if self.train:
            view = self.train_views[random.randrange(len(self.train_views))]
            return view[row].float(), self.y[row]
        return torch.stack([v[row].float() for v in self.eval_views]), self.y[row]


class ImageInputs(Dataset):
    """Posters decoded on the fly: augmented through a random fit for training; every fit, stacked, for
    evaluation (the loop averages their predictions)."""

    def __init__(
        self,
        paths: list[str],
        y: np.ndarray,
        rows: np.ndarray,
        preprocesses: list[Preprocess],
        train: bool,
        augment: AugmentConfig,
    ) -> None:
        self.paths = paths
        self.y = torch.from_numpy(y)
        self.rows = rows
        self.train = train
        self.transforms = [p.train_transform(augment) if train else p.eval_transform() for p in preprocesses]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[index])
        image = load_image(self.paths[row]).image
        if self.train:
            return self.transforms[random.randrange(len(self.transforms))](image), self.y[row]
        return torch.stack([transform(image) for transform in self.transforms]), self.y[row]


# ---------------------------------------------------------------------------------------- pieces


def make_loss(
    rule: LabelRule, config: TrainConfig, weights: np.ndarray | None, device: torch.device
) -> nn.Module:
    weight = torch.as_tensor(weights, device=device) if weights is not None else None
    loss = config.loss if config.loss != "auto" else ("bce" if rule.multilabel else "ce")
    if rule.multilabel:
        if loss == "ce":
            raise ValueError("loss 'ce' is for single-label targets; use bce or asl for genres")
        if loss == "asl":
            return timm.loss.AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=0, clip=0.05, pos_weight=weight)
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    if loss != "ce":
        raise ValueError(f"loss {loss!r} is for multi-label targets; use ce for a single label")
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def make_optimizer(params: list[nn.Parameter], head: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Head at ``lr``; every other parameter that trains at ``lr * backbone_lr_scale``."""
    head_ids = {id(p) for p in head.parameters()}
    head_params = [p for p in params if id(p) in head_ids]
    body_params = [p for p in params if id(p) not in head_ids]
    groups = [{"params": head_params, "lr": config.lr}]
    if body_params:
        groups.append({"params": body_params, "lr": config.lr * config.backbone_lr_scale})
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch factor: linear warm-up, then cosine to zero or a 10x drop every ``step_every`` epochs."""

    def factor(epoch: int) -> float:
        if epoch < config.warmup_epochs:
            return (epoch + 1) / (config.warmup_epochs + 1)
        if config.schedule == "cosine":
            span = max(config.epochs - config.warmup_epochs, 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - config.warmup_epochs) / span))
        if config.schedule == "step":
            return 0.1 ** ((epoch - config.warmup_epochs) // max(config.step_every, 1))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def higher_is_better(metric: str) -> bool:
    return metric not in ("loss", "hamming")


# ---------------------------------------------------------------------------------------- loop


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if x.ndim == 4 and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(device: torch.device, amp: bool):
    if device.type == "cuda" and amp:
        return torch.autocast(
            "cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        )
    return torch.autocast(device.type, enabled=False)


def train_one_epoch(
    module: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    amp: bool,
    scaler: torch.amp.GradScaler | None,
    should_stop: Callable[[], bool],
    on_event: EventSink,
    epoch: int,
) -> float:
    """One pass over ``loader``; checks for a stop request before every batch."""
    module.train()
    freeze_norm_stats(module)
    total, count = 0.0, 0
    steps = len(loader)
    for step, (x, y) in enumerate(loader, start=1):
        if should_stop():
            raise StopRequested()
        x, y = _to_device(x, device), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            loss = loss_fn(module(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
        if steps > 20 and (step % max(steps // 20, 1) == 0 or step == steps):
            on_event(Progress("training", step, steps, f"epoch {epoch + 1}"))
    return total / max(count, 1)


@torch.no_grad()
def predict(
    module: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool,
    multilabel: bool,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities averaged over each item's views, and the targets."""
    module.eval()
    probs, targets = [], []
    for views, y in loader:
        if should_stop():
            raise StopRequested()
        batch, count = views.shape[0], views.shape[1]
        x = _to_device(views.flatten(0, 1), device)
        with _autocast(device, amp):
            logits = module(x).float()
        p = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
        probs.append(p.view(batch, count, -1).mean(dim=1).cpu().numpy())
        targets.append(y.numpy())
    return np.concatenate(probs), np.concatenate(targets)


def score(rule: LabelRule, y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Validation metrics (multi-label F1s use thresholds tuned on these scores) and the loss."""
    eps = 1e-7
    if rule.multilabel:
        loss = float(-(y * np.log(probs + eps) + (1 - y) * np.log(1 - probs + eps)).mean())
        metrics = multilabel_metrics(y, probs, tune_thresholds(y, probs))
    else:
        loss = float(-np.log(probs[np.arange(len(y)), y] + eps).mean())
        metrics = single_label_metrics(y, probs)
    metrics["loss"] = loss
    return metrics


@dataclass
class FitState:
    """What a resumed fit continues from (also written after every epoch)."""

    epoch: int = 0
    best_metric: float = float("nan")
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict] = field(default_factory=list)
    stopped: bool = False


def fit(
    module: nn.Module,
    head: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    rule: LabelRule,
    config: TrainConfig,
    loss_fn: nn.Module,
    device: torch.device,
    monitor: str,
    on_event: EventSink = ignore,
    should_stop: Callable[[], bool] = lambda: False,
    on_epoch: Callable[[FitState, torch.optim.Optimizer, object], None] | None = None,
    unfreeze: Callable[[int], None] | None = None,
    parameters: list[nn.Parameter] | None = None,
    state: FitState | None = None,
    optimizer_state: dict | None = None,
    num_workers: int = 0,
) -> FitState:
    """Train ``module`` for ``config.epochs`` with early stopping on ``monitor``; keep the best weights.

    A stop request ends the current epoch early and returns with ``stopped=True`` (the best weights so
    far are kept); ``on_epoch`` is called after every epoch (checkpointing, status). ``unfreeze(epoch)``
    sets which parameters train in that epoch (gradual unfreezing).
    """
    module.to(device)
    state = state or FitState()
    pin = device.type == "cuda"
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_set) > config.batch_size,
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
    )
    val_loader = DataLoader(
        val_set,
        batch_size=max(config.batch_size, 64),
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
    )
    # every parameter that may train (gradual unfreezing switches requires_grad on later)
    parameters = parameters if parameters is not None else [p for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer(parameters, head, config)
    schedule = make_schedule(optimizer, config)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state["optimizer"])
        schedule.load_state_dict(optimizer_state["schedule"])
    scaler = (
        torch.amp.GradScaler("cuda")
        if device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
        else None
    )
    better = higher_is_better(monitor)
    for epoch in range(state.epoch, config.epochs):
        started = time.monotonic()
        if unfreeze is not None:
            unfreeze(epoch)
        try:
            train_loss = train_one_epoch(
                module,
                train_loader,
                loss_fn,
                optimizer,
                device,
                config.amp,
                scaler,
                should_stop,
                on_event,
                epoch,
            )
            probs, y = predict(module, val_loader, device, config.amp, rule.multilabel, should_stop)
        except StopRequested:
            state.stopped = True
            break
        lr = optimizer.param_groups[0]["lr"]
        schedule.step()
        metrics = score(rule, y, probs)
        value = metrics[monitor]
        improved = math.isnan(state.best_metric) or (
            value > state.best_metric if better else value < state.best_metric
        )
        if improved:
            state.best_metric, state.best_epoch, state.bad_epochs = value, epoch, 0
            state.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
        else:
            state.bad_epochs += 1
        seconds = time.monotonic() - started
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": metrics["loss"],
            "lr": lr,
            "seconds": seconds,
            **{f"val_{k}": v for k, v in metrics.items() if k != "loss"},
        }
        state.history.append(row)
        state.epoch = epoch + 1
        on_event(
            EpochEnd(epoch + 1, config.epochs, train_loss, metrics["loss"], metrics, lr, seconds, improved)
        )
        if on_epoch is not None:
            on_epoch(state, optimizer, schedule)
        if config.patience and state.bad_epochs >= config.patience:
            break
    if state.best_state is not None:
        module.load_state_dict(state.best_state)
    return state
