"""From a ``RunConfig`` to a finished run folder: data, model, the one loop, evaluation, files.

``train_run`` and ``resume_run`` are what the command line, the background manager and the tests call.
Whatever happens, the run folder ends with a status: ``completed``, ``stopped`` (a stop request, honoured
at a batch boundary, still evaluates and saves the best weights so far) or ``failed`` with the error.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

from posterlab import __version__, settings
from posterlab.config import RunConfig, TrainConfig
from posterlab.data.balance import loss_weights, resample
from posterlab.data.labels import LabelRule, one_hot
from posterlab.data.prepare import Prepared, prepare_data
from posterlab.data.split import kfold_indices
from posterlab.data.transforms import Preprocess
from posterlab.errors import ConfigError, PosterlabError, RunError
from posterlab.evaluation.metrics import evaluate_scores, main_metric, tune_thresholds
from posterlab.events import EventSink, Finished, Message, Progress, Started, StopRequested, ignore
from posterlab.models.factory import (
    PosterModel,
    boundary_for,
    create_model,
    set_trainable,
    split_backbone,
    weights_id,
)
from posterlab.runs import RunFolder, load_run, load_tensors, now_iso, save_tensors
from posterlab.training.features import compute_features, feature_key, views_for
from posterlab.training.loop import (
    CachedInputs,
    FitState,
    ImageInputs,
    fit,
    higher_is_better,
    make_loss,
    predict,
    seed_everything,
)

log = logging.getLogger(__name__)

Never: Callable[[], bool] = lambda: False  # noqa: E731


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def environment(device: torch.device) -> dict:
    return {
        "posterlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "created": now_iso(),
    }


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (
        text[0]
        if text and isinstance(error, PosterlabError)
        else f"{type(error).__name__}: {text[0] if text else ''}".strip()
    )


def train_run(
    config: RunConfig,
    checkpoints: Path | None = None,
    on_event: EventSink = ignore,
    should_stop: Callable[[], bool] = Never,
) -> Path:
    """Train a new run under ``checkpoints`` (default ``./checkpoints``); returns its folder."""
    device = resolve_device(config.train.device)
    folder = RunFolder.create(checkpoints or settings.checkpoints_dir(), config, environment(device))
    return _run(folder, config, device, on_event, should_stop, resume=False)


def resume_run(run_dir: Path, on_event: EventSink = ignore, should_stop: Callable[[], bool] = Never) -> Path:
    """Continue a stopped or interrupted run from its last finished epoch."""
    run = load_run(run_dir)
    if run.state == "completed":
        raise RunError(f"{run.path}: already completed; start a new run to train more")
    if not (run.path / "resume.json").exists():
        raise RunError(f"{run.path}: no resume checkpoint (it ended before its first epoch); start a new run")
    device = resolve_device(run.config.train.device)
    folder = RunFolder(run.path)
    folder.set_status("running", resumed=now_iso())
    return _run(folder, run.config, device, on_event, should_stop, resume=True)


def _run(
    folder: RunFolder,
    config: RunConfig,
    device: torch.device,
    on_event: EventSink,
    should_stop: Callable[[], bool],
    resume: bool,
) -> Path:
    started = time.monotonic()
    on_event(Started(str(folder.path), resumed=resume))
    try:
        headline, stopped = _train(folder, config, device, on_event, should_stop, resume)
    except StopRequested:
        folder.set_status(
            "stopped", finished=now_iso(), note="stopped before the first epoch finished; nothing to keep"
        )
        on_event(Finished("stopped", str(folder.path)))
        return folder.path
    except BaseException as error:
        message = _one_line(error)
        folder.set_status("failed", finished=now_iso(), error=message)
        on_event(Finished("failed", str(folder.path), error=message))
        raise
    status = "stopped" if stopped else "completed"
    folder.set_status(
        status, finished=now_iso(), seconds=round(time.monotonic() - started, 1), metrics=headline
    )
    on_event(Finished(status, str(folder.path), metrics=headline))
    return folder.path


def headline_metrics(rule: LabelRule, metrics: dict) -> dict:
    names = (
        ("map", "micro_f1", "macro_f1")
        if rule.multilabel
        else ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
    )
    return {k: metrics[k] for k in names if k in metrics}


# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Setup:
    """What the loop trains and how its inputs are made, decided once per run."""

    model: PosterModel
    trainable: nn.Module
    make_set: Callable[[np.ndarray, bool], torch.utils.data.Dataset]
    parameters: list[nn.Parameter]
    preprocess: Preprocess  # the primary fit's
    fits: tuple[str, ...]  # every fit, averaged at test time
    cached: bool
    workers: int
    feature_seconds: float


def _setup(
    config: RunConfig,
    prepared: Prepared,
    device: torch.device,
    on_event: EventSink,
    should_stop: Callable[[], bool],
) -> _Setup:
    tc = config.train
    labelled = prepared.labelled
    model = create_model(
        tc.backbone, len(labelled.rule.labels), pretrained=tc.pretrained, head=tc.head, dropout=tc.dropout
    )
    preprocess = Preprocess.for_model(model.backbone, config.data.fit)
    boundary = boundary_for(model.backbone, tc.mode, tc.unfreeze)
    set_trainable(model, boundary)
    parameters = [p for p in model.parameters() if p.requires_grad]
    paths, digests, y = labelled.frame["image"].tolist(), labelled.frame["digest"].tolist(), labelled.y
    fits = config.data.fits
    eval_views = [view.name for view in views_for(preprocess, fits, flips=False)]

    split = None
    if tc.mode == "finetune" and tc.cache_activations and device.type == "cpu":
        split = split_backbone(model.backbone, boundary)
        if split is None:
            on_event(
                Message(f"{tc.backbone} cannot be cut at {boundary}; its frozen layers will run every epoch")
            )
    if tc.mode == "probe" or split is not None:
        frozen, trainable = (
            (model.backbone, model.head) if split is None else (split[0], nn.Sequential(split[1], model.head))
        )
        views = views_for(preprocess, fits, flips=tc.flip_views)
        start = weights_id(tc.backbone, tc.pretrained, tc.seed)
        keys = [feature_key(tc.backbone, start, boundary or "", view) for view in views]
        what = "embeddings" if tc.mode == "probe" else f"activations after {boundary}"
        shown = ", ".join(view.name for view in views)
        on_event(Message(f"computing {what} once for {len(paths)} posters ({shown}; cached for later runs)"))
        begun = time.monotonic()
        features = compute_features(
            frozen,
            paths,
            digests,
            views,
            keys,
            device,
            num_workers=tc.num_workers,
            on_event=on_event,
            should_stop=should_stop,
            about=f"{tc.backbone} {what}",
        )
        seconds = time.monotonic() - begun
        if tc.mode != "probe" and device.type == "cpu":
            frozen.to("cpu")
        return _Setup(
            model,
            trainable,
            lambda rows, train: CachedInputs(features, y, rows, train, eval_views),
            parameters,
            preprocess,
            fits,
            True,
            0,
            seconds,
        )
    workers = tc.num_workers if tc.num_workers >= 0 else min(8, (os.cpu_count() or 2) - 1)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    fitted = [replace(preprocess, fit=fit) for fit in fits]
    return _Setup(
        model,
        model,
        lambda rows, train: ImageInputs(paths, y, rows, fitted, train, tc.augment),
        parameters,
        preprocess,
        fits,
        False,
        workers,
        0.0,
    )


def _set_dropout(module: nn.Module, p: float) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = p


def _random_search(
    setup: _Setup,
    prepared: Prepared,
    config: TrainConfig,
    loss_fn: nn.Module,
    device: torch.device,
    monitor: str,
    seed: int,
    balance: str,
    on_event: EventSink,
    should_stop: Callable[[], bool],
) -> tuple[TrainConfig, list[dict]]:
    """Random search over lr / dropout / weight decay (the given values are trial 0); optional k-fold."""
    rng = np.random.default_rng(seed)
    initial = {k: v.detach().clone() for k, v in setup.trainable.state_dict().items()}
    y = prepared.labelled.y
    labels = len(prepared.labelled.rule.labels)
    if config.search_folds:
        pool = np.concatenate([prepared.split_of("train"), prepared.split_of("val")])
        folds = [(pool[a], pool[b]) for a, b in kfold_indices(y[pool], config.search_folds, seed)]
    else:
        folds = [(prepared.split_of("train"), prepared.split_of("val"))]
    rows, best = [], (None, config)
    quiet = dataclasses.replace(config, search_trials=0)
    for trial in range(config.search_trials):
        if trial == 0:
            candidate = quiet
        else:
            candidate = dataclasses.replace(
                quiet,
                lr=float(np.exp(rng.uniform(np.log(config.lr / 10), np.log(min(config.lr * 10, 0.5))))),
                dropout=float(rng.uniform(0.0, 0.6)),
                weight_decay=float(np.exp(rng.uniform(np.log(1e-6), np.log(1e-1)))),
            )
        values = []
        for train_rows, val_rows in folds:
            setup.trainable.load_state_dict(initial)
            _set_dropout(setup.model.head, candidate.dropout)
            train_rows = train_rows[resample(y[train_rows], labels, balance, seed)]
            state = fit(
                setup.trainable,
                setup.model.head,
                setup.make_set(train_rows, True),
                setup.make_set(val_rows, False),
                prepared.labelled.rule,
                candidate,
                loss_fn,
                device,
                monitor,
                should_stop=should_stop,
                parameters=setup.parameters,
                num_workers=setup.workers,
            )
            if state.stopped:
                raise StopRequested()
            values.append(state.best_metric)
        row = {
            "trial": trial,
            "lr": candidate.lr,
            "dropout": candidate.dropout,
            "weight_decay": candidate.weight_decay,
            monitor: float(np.mean(values)),
            "folds": len(folds),
        }
        rows.append(row)
        on_event(Progress("searching", trial + 1, config.search_trials, f"{monitor} {row[monitor]:.3f}"))
        score = row[monitor] if higher_is_better(monitor) else -row[monitor]
        if best[0] is None or score > best[0]:
            best = (score, candidate)
    setup.trainable.load_state_dict(initial)
    _set_dropout(setup.model.head, best[1].dropout)
    on_event(
        Message(
            f"search picked lr={best[1].lr:.2g} dropout={best[1].dropout:.2f} weight_decay={best[1].weight_decay:.2g}"
        )
    )
    return best[1], rows


def _save_resume(
    folder: RunFolder, state: FitState, optimizer: torch.optim.Optimizer, schedule, trainable: nn.Module
) -> None:
    tensors = {f"module.{k}": v for k, v in trainable.state_dict().items()}
    if state.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in state.best_state.items()})
    optim = optimizer.state_dict()
    plain_state: dict[str, dict] = {}
    for pid, entry in optim["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                plain_state.setdefault(str(pid), {})[name] = value
    save_tensors(folder.path / "resume.safetensors", tensors)
    folder.write(
        "resume.json",
        {
            "epoch": state.epoch,
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
            "bad_epochs": state.bad_epochs,
            "history": state.history,
            "param_groups": optim["param_groups"],
            "optimizer_state": plain_state,
            "schedule": schedule.state_dict(),
        },
    )


def _load_resume(folder: RunFolder, trainable: nn.Module) -> tuple[FitState, dict]:
    meta = __import__("json").loads((folder.path / "resume.json").read_text())
    tensors = load_tensors(folder.path / "resume.safetensors")
    trainable.load_state_dict({k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")})
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")} or None
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            optim_state.setdefault(int(pid), {})[name] = value
    for pid, entry in meta["optimizer_state"].items():
        optim_state.setdefault(int(pid), {}).update(entry)
    state = FitState(
        meta["epoch"],
        float("nan") if meta["best_metric"] is None else meta["best_metric"],
        meta["best_epoch"],
        meta["bad_epochs"],
        best,
        meta["history"],
    )
    return state, {
        "optimizer": {"state": optim_state, "param_groups": meta["param_groups"]},
        "schedule": meta["schedule"],
    }


def _train(
    folder: RunFolder,
    config: RunConfig,
    device: torch.device,
    on_event: EventSink,
    should_stop: Callable[[], bool],
    resume: bool,
) -> tuple[dict, bool]:
    tc, dc = config.train, config.data
    seed_everything(tc.seed)
    on_event(Message(f"reading posters from {dc.path}"))
    prepared = prepare_data(dc, on_event)
    labelled, rule = prepared.labelled, prepared.labelled.rule
    frame, y, splits = labelled.frame, labelled.y, prepared.splits
    labels = len(rule.labels)
    monitor = main_metric(rule, tc.monitor)  # before any long work: a wrong monitor fails here
    folder.write("split.json", {name: frame["id"].iloc[rows].tolist() for name, rows in splits.items()})
    onehot = one_hot(y, rule)
    prior = onehot[splits["train"]].mean(axis=0)
    data_summary = {
        "dataset": prepared.dataset.name,
        "kind": prepared.dataset.kind,
        "read": prepared.report.total,
        "cleaning_dropped": prepared.report.dropped,
        "cleaning": prepared.report.summary().to_dict(),
        "labelled": len(frame),
        "label_dropped": len(labelled.dropped),
        "label_dropped_reasons": labelled.dropped["reason"].value_counts().to_dict(),
        "rule": rule.describe(),
        "counts": {
            name: dict(zip(rule.labels, onehot[rows].sum(axis=0).astype(int).tolist(), strict=True))
            for name, rows in splits.items()
        },
        "sizes": {name: len(rows) for name, rows in splits.items()},
    }
    folder.write("data.json", data_summary)
    on_event(
        Message(
            f"{len(frame)} posters labelled ({rule.describe()}); {len(labelled.dropped)} dropped without a label"
        )
    )

    setup = _setup(config, prepared, device, on_event, should_stop)
    setup.trainable.to(device)
    seed_everything(tc.seed)  # again: extraction may or may not have run (and drawn random numbers)
    train_rows = splits["train"][resample(y[splits["train"]], labels, dc.balance, dc.seed)]
    weights = loss_weights(y[splits["train"]], labels) if dc.balance == "weights" else None
    loss_fn = make_loss(rule, tc, weights, device)
    chosen = tc
    if tc.search_trials and not resume:
        chosen, table = _random_search(
            setup, prepared, tc, loss_fn, device, monitor, tc.seed, dc.balance, on_event, should_stop
        )
        folder.write("search.json", table)

    unfreeze = None
    if tc.mode == "finetune" and tc.gradual_every > 0:

        def unfreeze(epoch: int) -> None:
            level = min(tc.unfreeze, epoch // tc.gradual_every)
            set_trainable(
                setup.model, boundary_for(setup.model.backbone, "finetune" if level else "probe", level)
            )

    state, optimizer_state = (None, None)
    if resume:
        state, optimizer_state = _load_resume(folder, setup.trainable)
        on_event(Message(f"resuming after epoch {state.epoch}"))

    last_beat = [0.0]

    def on_epoch(fit_state: FitState, optimizer, schedule) -> None:
        _save_resume(folder, fit_state, optimizer, schedule, setup.trainable)
        folder.write("history.json", fit_state.history)
        folder.set_status("running", epoch=fit_state.epoch, epochs=tc.epochs)
        last_beat[0] = time.monotonic()

    fit_started = time.monotonic()
    state = fit(
        setup.trainable,
        setup.model.head,
        setup.make_set(train_rows, True),
        setup.make_set(splits["val"], False),
        rule,
        chosen,
        loss_fn,
        device,
        monitor,
        on_event=on_event,
        should_stop=should_stop,
        on_epoch=on_epoch,
        unfreeze=unfreeze,
        parameters=setup.parameters,
        state=state,
        optimizer_state=optimizer_state,
        num_workers=setup.workers,
    )
    fit_seconds = time.monotonic() - fit_started
    if state.best_state is None:
        raise StopRequested()

    on_event(Progress("evaluating", 0, 2))
    results = {}
    for name in ("val", "test"):
        loader = DataLoader(
            setup.make_set(splits[name], False), batch_size=max(tc.batch_size, 64), num_workers=setup.workers
        )
        results[name] = predict(setup.trainable, loader, device, tc.amp, rule.multilabel)
        on_event(Progress("evaluating", len(results), 2))
    thresholds = (
        tune_thresholds(one_hot(results["val"][1], rule), results["val"][0]) if rule.multilabel else None
    )
    reports = {
        name: evaluate_scores(rule, truth, probs, thresholds, prior)
        for name, (probs, truth) in results.items()
    }

    setup.model.to("cpu")
    folder.save_weights(setup.model.state_dict(), tc.save_dtype)
    folder.write(
        "model.json",
        {
            "format": "posterlab-run/1",
            "backbone": tc.backbone,
            "head": tc.head,
            "dropout": chosen.dropout,
            "rule": asdict(rule),
            "thresholds": thresholds.tolist() if thresholds is not None else None,
            "prior": prior.tolist(),
            "preprocess": setup.preprocess.to_dict(),
            "fits": list(setup.fits),
            "weights_dtype": tc.save_dtype,
            "monitor": monitor,
            "best_epoch": state.best_epoch + 1,
            "hyper": {"lr": chosen.lr, "dropout": chosen.dropout, "weight_decay": chosen.weight_decay},
        },
    )
    folder.write_predictions(_predictions_frame(frame, rule, splits, results))
    folder.write(
        "metrics.json",
        {
            "task": rule.task,
            "labels": list(rule.labels),
            "monitor": monitor,
            "best_epoch": state.best_epoch + 1,
            "epochs_run": state.epoch,
            "val": reports["val"],
            "test": reports["test"],
            "seconds": {"features": round(setup.feature_seconds, 2), "fit": round(fit_seconds, 2)},
            "cached_inputs": setup.cached,
        },
    )
    folder.write("history.json", state.history)
    if not state.stopped:
        for name in ("resume.safetensors", "resume.json"):
            (folder.path / name).unlink(missing_ok=True)
    headline = headline_metrics(rule, reports["test"]["metrics"])
    on_event(Message("test " + ", ".join(f"{k} {v:.3f}" for k, v in headline.items() if not math.isnan(v))))
    return headline, state.stopped


def _predictions_frame(frame: pd.DataFrame, rule: LabelRule, splits: dict, results: dict) -> pd.DataFrame:
    parts = []
    for name, (probs, truth) in results.items():
        rows = splits[name]
        onehot = one_hot(truth, rule)
        part = pd.DataFrame(
            {
                "id": frame["id"].iloc[rows].values,
                "split": name,
                "image": frame["image"].iloc[rows].values,
                "title": frame["title"].iloc[rows].values if "title" in frame else "",
                "truth": ["|".join(np.asarray(rule.labels)[vector > 0]) for vector in onehot],
            }
        )
        for k, label in enumerate(rule.labels):
            part[f"p:{label}"] = np.round(probs[:, k], 5)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
