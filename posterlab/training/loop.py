"""The one training loop: every backbone, mode, input kind and number of processes goes through ``fit``.

What changes between modes is only *what* is trained (a head, a backbone's top, the whole network) and
*what it is fed* (cached embeddings, cached activations, or augmented images): a ``Learner`` and two
datasets. Everything around the loop (progress events, stop requests, gradual unfreezing, checkpoints)
is a ``Callback``, as in fastai: ``before_epoch`` / ``before_batch`` / ``after_batch`` / ``after_epoch``,
and ``StopRequested`` raised at a batch boundary ends the fit through its normal exit (fastai's
``CancelFitException``).
"""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from posterlab.config import AugmentConfig, TrainConfig
from posterlab.data.images import load_image
from posterlab.data.labels import LabelRule
from posterlab.data.transforms import Preprocess
from posterlab.evaluation.metrics import multilabel_metrics, single_label_metrics, tune_thresholds
from posterlab.events import StopRequested
from posterlab.models.stages import feature_levels, freeze_norm_stats
from posterlab.training.criterion import Criterion
from posterlab.training.distributed import SINGLE, Dist

# ---------------------------------------------------------------------------------------- inputs


class CachedInputs(Dataset):
    """Cached frozen-part outputs per view. Training draws one view at random (flips and other fits are
    free augmentation); evaluation returns the ``eval_views`` stacked and the loop averages them.

    ``views`` maps a view name to anything indexable by dataset row (an array, a memory-mapped table)."""

    def __init__(self, views: dict, y: np.ndarray, rows: np.ndarray, train: bool, eval_views: list[str]):
        self.train_views = list(views.values())
        self.eval_views = [views[name] for name in eval_views]
        self.y = torch.from_numpy(y)
        self.rows = rows
        self.train = train

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole batch at once (the DataLoader asks so): one read per view and chunk, not per poster."""
        rows = self.rows[np.asarray(indices)]
        if self.train:  # each poster through one of its views, drawn at random
            drawn = np.array([random.randrange(len(self.train_views)) for _ in rows])
            x = np.empty((len(rows), *self.train_views[0].shape[1:]), dtype=np.float32)
            for view in np.unique(drawn):
                x[drawn == view] = _take(self.train_views[view], rows[drawn == view])
        else:
            x = np.stack([_take(view, rows) for view in self.eval_views], axis=1)
        x = torch.from_numpy(x)
        return [(x[i], self.y[row]) for i, row in enumerate(rows)]


def _take(table, rows: np.ndarray) -> np.ndarray:
    """Rows of a feature table (memory-mapped chunks) or of a plain array, as float32."""
    if hasattr(table, "take") and not isinstance(table, np.ndarray):
        return table.take(rows)
    return np.asarray(table[rows], dtype=np.float32)


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
        raw: bool = False,
    ) -> None:
        self.paths = paths
        self.y = torch.from_numpy(y)
        self.rows = rows
        self.train = train
        # raw: uint8 pictures, normalised by the loop on the device (workers then decode and resample only)
        self.transforms = [
            p.train_transform(augment, raw) if train else p.eval_transform(raw) for p in preprocesses
        ]
        self.draft = max(p.draft for p in preprocesses)  # decode JPEGs no larger than the fits need

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[index])
        image = load_image(self.paths[row], draft=self.draft).image
        if self.train:
            return self.transforms[random.randrange(len(self.transforms))](image), self.y[row]
        return torch.stack([transform(image) for transform in self.transforms]), self.y[row]


# ---------------------------------------------------------------------------------------- pieces


@dataclass
class Learner:
    """What the loop trains and how it is judged: one object instead of a long parameter list."""

    module: nn.Module  # inputs → logits (a whole PosterModel, or the trainable top of one)
    head: nn.Module  # trains at the full learning rate; everything else at lr * backbone_lr_scale
    backbone: nn.Module | None  # the timm backbone the module's other parameters belong to (lr by level)
    parameters: list[nn.Parameter]  # every parameter that may train (gradual unfreezing switches later)
    criterion: Criterion
    rule: LabelRule
    monitor: str  # the validation metric that picks the best epoch and stops early
    device: torch.device
    dist: Dist = SINGLE
    workers: int = 0  # data-loader processes
    normalize: Preprocess | None = None  # inputs come as uint8: normalise them on the device like this


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 on GPUs that compute it natively (compute capability 8.0 and up), fp16 (with loss scaling)
    on older ones, None (full precision) on CPUs or with AMP off.

    ``torch.cuda.is_bf16_supported()`` is true through emulation on pre-Ampere GPUs, which is slow."""
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def autocast(device: torch.device, amp: bool):
    dtype = amp_dtype(device, amp)
    return (
        torch.autocast("cuda", dtype=dtype)
        if dtype is not None
        else torch.autocast(device.type, enabled=False)
    )


def _levels_of(backbone: nn.Module | None) -> dict[int, int]:
    """id(parameter) → how many feature levels below the top its stage is (0: the top stage, or after it).

    Modules come in forward order; a module belongs to the first level it is in or comes before."""
    if backbone is None:
        return {}
    levels = feature_levels(backbone)
    depth_of_module: dict[str, int] = {}
    level, seen = 0, False
    for name, _ in backbone.named_modules():
        inside = name == levels[level] or name.startswith(levels[level] + ".")
        if seen and not inside and level < len(levels) - 1:
            level, seen = level + 1, False
            inside = name == levels[level] or name.startswith(levels[level] + ".")
        seen = seen or inside
        depth_of_module[name] = len(levels) - 1 - level
    out = {}
    for name, parameter in backbone.named_parameters():
        out[id(parameter)] = depth_of_module.get(name.rpartition(".")[0], 0)
    return out


def param_groups(learner: Learner, config: TrainConfig) -> list[dict]:
    """Parameter groups by timm's rules (``timm.optim``'s ``param_groups_weight_decay`` and layer-wise
    decay): no weight decay on biases and norm weights (1-d tensors); the head at ``lr``, a backbone stage
    ``depth`` levels below the top at ``lr * backbone_lr_scale * layer_decay ** depth``."""
    head_ids = {id(p) for p in learner.head.parameters()}
    depth = _levels_of(learner.backbone)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for parameter in learner.parameters:
        if id(parameter) in head_ids:
            scale = 1.0
        else:
            scale = config.backbone_lr_scale * config.layer_decay ** depth.get(id(parameter), 0)
        decay = 0.0 if parameter.ndim <= 1 else config.weight_decay
        groups.setdefault((scale, decay), []).append(parameter)
    return [
        {"params": ps, "lr": config.lr * s, "initial_lr": config.lr * s, "lr_scale": s, "weight_decay": d}
        for (s, d), ps in groups.items()
    ]


def make_optimizer(learner: Learner, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA) or SGD with Nesterov momentum 0.9, over ``param_groups``.

    This is what ``timm.optim.create_optimizer_v2`` builds for these groups; it is built here with torch
    directly because importing timm costs time (its layers pull in torchvision models and ops),
    which a probe on cached embeddings, that never builds a network, would otherwise pay on every run
    (measured: 1.1 s on top of the 2-3 s torch itself spends importing torch._dynamo for any optimizer)."""
    groups = param_groups(learner, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr, fused=learner.device.type == "cuda" or None)


class Schedule:
    """Per-epoch learning rates, stateless as timm's schedulers are: ``step(epoch)`` sets every group to
    its ``initial_lr`` times the factor of that epoch (linear warm-up, then cosine to zero, a 10x drop
    every ``step_every`` epochs, or constant), so a resumed fit only needs its epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
        self.optimizer, self.config = optimizer, config

    def factor(self, epoch: int) -> float:
        c = self.config
        if epoch < c.warmup_epochs:
            return (epoch + 1) / (c.warmup_epochs + 1)
        if c.schedule == "cosine":
            span = max(c.epochs - c.warmup_epochs, 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - c.warmup_epochs) / span))
        if c.schedule == "step":
            return 0.1 ** ((epoch - c.warmup_epochs) // max(c.step_every, 1))
        return 1.0

    def step(self, epoch: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.factor(epoch)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Schedule:
    return Schedule(optimizer, config)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def higher_is_better(metric: str) -> bool:
    return metric not in ("loss", "hamming")


# ------------------------------------------------------------------------------------ callbacks


class Callback:
    """A piece around the loop; override what it needs. ``fit`` is the running ``Fit``."""

    def before_fit(self, fit: Fit) -> None: ...

    def before_epoch(self, fit: Fit) -> None: ...

    def before_batch(self, fit: Fit) -> None: ...

    def after_batch(self, fit: Fit) -> None: ...

    def after_epoch(self, fit: Fit) -> None: ...

    def after_fit(self, fit: Fit) -> None: ...


@dataclass
class FitState:
    """Where a fit stands; what a resumed fit continues from (also written after every epoch)."""

    epoch: int = 0  # epochs completed
    best_metric: float = float("nan")
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict] = field(default_factory=list)
    stopped: bool = False
    session: int = 0  # 0 for the first attempt; one more for every resume (a restart included)


@dataclass
class Fit:
    """One fit in progress, as callbacks see it."""

    learner: Learner
    config: TrainConfig
    state: FitState
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None
    module: nn.Module  # the learner's module, wrapped for several processes
    epoch: int = 0  # the epoch running (0-based)
    step: int = 0  # batch within the epoch (1-based after the first)
    steps: int = 0
    row: dict = field(default_factory=dict)  # the finished epoch's history row (after_epoch)
    improved: bool = False

    def rewrap(self) -> None:
        """Rebuild the process wrapper after the trainable parameters changed."""
        self.module = self.learner.dist.wrap(self.learner.module, self.learner.device)


def _run(callbacks: Sequence[Callback], event: str, fit: Fit) -> None:
    for callback in callbacks:
        getattr(callback, event)(fit)


# ---------------------------------------------------------------------------------------- loop


def _to_device(x: torch.Tensor, learner: Learner) -> torch.Tensor:
    device = learner.device
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = learner.normalize.normalize_on(x)
    if x.ndim == 4 and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def quiet_worker(_: int) -> None:
    """A data-loader process ignores SIGTERM: sent to a whole job (Slurm, ``timeout``, systemd stop every
    process of it) it killed the loader processes too, and their deaths failed a run that the main process
    was stopping gracefully; the main process ends them itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader(dataset: Dataset, batch_size: int, learner: Learner, sampler=None) -> DataLoader:
    workers = learner.workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=sampler is not None and len(dataset) > batch_size * learner.dist.world,
        num_workers=workers,
        worker_init_fn=quiet_worker,
        pin_memory=learner.device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def train_one_epoch(fit: Fit, loader: DataLoader, callbacks: Sequence[Callback]) -> float:
    """One pass over ``loader``; callbacks run around every batch. The running loss stays on the device
    (no host sync per step) and is read once at the end: the mean over every process's posters, each
    weighted as the criterion weighs it (as the validation loss is)."""
    learner = fit.learner
    fit.module.train()
    freeze_norm_stats(learner.module)
    total = torch.zeros(2, device=learner.device)  # summed loss, summed poster weights
    fit.steps = len(loader)
    for fit.step, (x, y) in enumerate(loader, start=1):
        _run(callbacks, "before_batch", fit)
        x, y = _to_device(x, learner), y.to(learner.device, non_blocking=True)
        with autocast(learner.device, fit.config.amp):
            loss = learner.criterion(fit.module(x).float(), y)
        fit.optimizer.zero_grad(set_to_none=True)
        if fit.scaler is not None:
            fit.scaler.scale(loss).backward()
            fit.scaler.step(fit.optimizer)
            fit.scaler.update()
        else:
            loss.backward()
            fit.optimizer.step()
        weight = learner.criterion.item_weights(y).sum()
        total += torch.stack([loss.detach() * weight, weight])
        _run(callbacks, "after_batch", fit)
    loss_sum, weight_sum = learner.dist.sum(total).tolist()
    return loss_sum / max(weight_sum, 1e-12)


@torch.no_grad()
def predict(
    learner: Learner,
    dataset: Dataset,
    batch_size: int,
    amp: bool,
    callbacks: Sequence[Callback] = (),
    fit=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities averaged over each item's views, and the targets, for every item of ``dataset`` in
    order. With several processes each scores its ``shard`` and the results are gathered."""
    dist = learner.dist
    shard = dist.shard(len(dataset))
    loader = _loader(Subset(dataset, shard.tolist()) if dist.active else dataset, batch_size, learner)
    module = learner.module.eval()
    probs, targets = [], []
    for views, y in loader:
        if fit is not None:
            _run(callbacks, "before_batch", fit)
        batch, count = views.shape[0], views.shape[1]
        x = _to_device(views.flatten(0, 1), learner)
        with autocast(learner.device, amp):
            logits = module(x).float()
        p = torch.sigmoid(logits) if learner.rule.multilabel else torch.softmax(logits, dim=1)
        probs.append(p.view(batch, count, -1).mean(dim=1).cpu().numpy())
        targets.append(y.numpy())
    classes = len(learner.rule.labels)
    local_p = np.concatenate(probs) if probs else np.zeros((0, classes), dtype=np.float32)
    local_y = np.concatenate(targets) if targets else np.zeros((0,), dtype=np.int64)
    return dist.gather_rows(local_p, len(dataset)), dist.gather_rows(local_y, len(dataset))


def score(rule: LabelRule, criterion: Criterion, y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Validation metrics (multi-label F1s use thresholds tuned on these scores) and the run's own loss."""
    if rule.multilabel:
        metrics = multilabel_metrics(y, probs, tune_thresholds(y, probs))
    else:
        metrics = single_label_metrics(y, probs)
    metrics["loss"] = criterion.mean(criterion.from_probabilities(probs, y), y)
    return metrics


def _restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load saved optimizer state, each moment in its parameter's own memory layout (channels_last
    parameters with plain-layout moments would take the optimizer's slow per-tensor path)."""
    optimizer.load_state_dict(saved)
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if torch.is_tensor(value) and value.shape == parameter.shape:
                    optimizer.state[parameter][name] = torch.empty_like(parameter).copy_(value)


def _epoch_row(fit: Fit, train_loss: float, metrics: dict, lr: float, seconds: float) -> dict:
    return {
        "epoch": fit.epoch + 1,
        "train_loss": train_loss,
        "val_loss": metrics["loss"],
        "lr": lr,
        "seconds": seconds,
        "session": fit.state.session,
        **{f"val_{k}": v for k, v in metrics.items() if k != "loss"},
    }


def fit(
    learner: Learner,
    train_set: Dataset,
    val_set: Dataset,
    config: TrainConfig,
    callbacks: Sequence[Callback] = (),
    state: FitState | None = None,
    resume: dict | None = None,
) -> FitState:
    """Train ``learner`` for ``config.epochs`` with early stopping on its monitor; keep the best weights.

    ``config.batch_size`` is the global batch (each of several processes takes its share). A ``StopRequested``
    from a callback ends the fit at a batch boundary with ``stopped=True``; the best weights so far are
    loaded either way. ``resume`` holds optimizer (and loss-scaler) state saved by a checkpoint."""
    learner.module.to(learner.device)
    if learner.device.type == "cuda":  # what timm's train.py sets: fastest kernels for fixed shapes, TF32
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    state = state or FitState()
    sampler = learner.dist.train_sampler(train_set, config.seed)
    train_loader = _loader(train_set, learner.dist.local_batch(config.batch_size), learner, sampler)
    optimizer = make_optimizer(learner, config)
    schedule = make_schedule(optimizer, config)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype(learner.device, config.amp) == torch.float16 else None
    if resume is not None:
        _restore_optimizer(optimizer, resume["optimizer"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
    current = Fit(learner, config, state, optimizer, schedule, scaler, learner.module)
    current.rewrap()
    better = higher_is_better(learner.monitor)
    eval_batch = max(config.batch_size, 64)
    _run(callbacks, "before_fit", current)
    try:
        for current.epoch in range(state.epoch, config.epochs):
            # patience before the epoch, not after: a run resumed after it stopped early stays stopped
            if config.patience and state.bad_epochs >= config.patience:
                break
            started = time.monotonic()
            schedule.step(current.epoch)
            sampler.set_epoch(current.epoch)
            _run(callbacks, "before_epoch", current)
            train_loss = train_one_epoch(current, train_loader, callbacks)
            probs, y = predict(learner, val_set, eval_batch, config.amp, callbacks, current)
            metrics = score(learner.rule, learner.criterion, y, probs)
            value = metrics[learner.monitor]
            current.improved = math.isnan(state.best_metric) or (
                value > state.best_metric if better else value < state.best_metric
            )
            if current.improved:
                state.best_metric, state.best_epoch, state.bad_epochs = value, current.epoch, 0
                state.best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in learner.module.state_dict().items()
                }
            else:
                state.bad_epochs += 1
            lr = next((g["lr"] for g in optimizer.param_groups if g.get("lr_scale") == 1.0), config.lr)
            current.row = _epoch_row(current, train_loss, metrics, lr, time.monotonic() - started)
            state.history.append(current.row)
            state.epoch = current.epoch + 1
            _run(callbacks, "after_epoch", current)
    except StopRequested:
        state.stopped = True
    finally:  # a failing epoch too: callbacks finish their work (the checkpoint writer) before the trainer
        _run(callbacks, "after_fit", current)  # writes the failure
    if state.best_state is not None:
        learner.module.load_state_dict(state.best_state)
    return state
