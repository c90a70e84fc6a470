"""From a ``RunConfig`` to a finished run folder: data, model, the one loop, evaluation, files.

``train_run`` and ``resume_run`` are what the command line, the background manager and the tests call.
Whatever happens, the run folder ends with a status: ``completed``, ``stopped`` (a stop request, honoured
at a batch boundary, still evaluates and saves the best weights so far) or ``failed`` with the error.
Under ``torchrun`` every process runs the same code with its ``Dist``; rank 0 alone writes the folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from posterlab import __version__, background, faults, settings
from posterlab.config import RunConfig, TrainConfig
from posterlab.data.balance import loss_weights, resample
from posterlab.data.labels import LabelRule, one_hot
from posterlab.data.prepare import Prepared, prepare_data
from posterlab.errors import ConfigError, RunError, one_line
from posterlab.evaluation.metrics import evaluate_scores, headline, main_metric, tune_thresholds
from posterlab.events import (
    Control,
    EpochEnd,
    Event,
    EventSink,
    Finished,
    Message,
    Progress,
    Started,
    StopRequested,
    ignore,
    never,
    to_json,
)
from posterlab.models.stages import boundary_for, set_trainable
from posterlab.runs import (
    LAUNCHED_AT,
    Lease,
    RunFolder,
    list_runs,
    load_run,
    load_tensors,
    now_iso,
    read_json,
)
from posterlab.training import distributed
from posterlab.training.criterion import Criterion
from posterlab.training.distributed import SINGLE, Dist, StopVote
from posterlab.training.loop import (
    Callback,
    Fit,
    FitState,
    Learner,
    fit,
    predict,
    seed_everything,
)
from posterlab.training.plan import Plan, make_plan
from posterlab.training.search import SearchInputs, search, set_dropout

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def environment(device: torch.device, dist: Dist, config: RunConfig) -> dict:
    """Versions, device and processes, saved in ``config.json``."""
    return {
        "posterlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": importlib.metadata.version("timm"),
        "numpy": np.__version__,
        "device": f"cuda ({torch.cuda.get_device_name(device)})"
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "created": now_iso(),
        "world_size": dist.world,
        "backend": dist.backend or "none",
        "per_process_batch": dist.local_batch(config.train.batch_size),
        "launcher": _launcher() if dist.active else None,
    }


def _launcher() -> dict:
    """Who started this process group: torchrun's agent (the parent of every worker, the same across
    elastic restarts) and its rendezvous id. A restarted group finds its run folder by these."""
    return {"pid": os.getppid(), "run_id": os.environ.get("TORCHELASTIC_RUN_ID", "")}


# ----------------------------------------------------------------------------------------- entry


def train_run(
    config: RunConfig,
    checkpoints: Path | None = None,
    on_event: EventSink = ignore,
    should_stop: Callable[[], bool] = never,
    dist: Dist = SINGLE,
) -> Path:
    """Train a new run under ``checkpoints`` (default ``./checkpoints``); returns its folder.

    Under torchrun (``dist`` with several processes) rank 0 creates the folder and the others learn its
    path; after an elastic restart the group carries on with the run it was training: from its last
    finished epoch, or from the start in the same folder when it died before its first checkpoint."""
    device = dist.device(resolve_device(config.train.device))
    root = Path(checkpoints or settings.checkpoints_dir())
    restarted = _restarted_run(root, dist)
    if restarted is not None:
        return resume_run(restarted, on_event, should_stop, dist)
    lease = Lease() if dist.main else None
    path = None
    if dist.main:
        path = RunFolder.create(root, config, environment(device, dist, config), lease).path
    path = Path(dist.broadcast(str(path) if path else None))
    folder = RunFolder(path, writes=dist.main, lease=lease)
    return _run(folder, config, device, Control(on_event, should_stop), dist, resume=False, lease=lease)


def resume_run(
    run_dir: Path,
    on_event: EventSink = ignore,
    should_stop: Callable[[], bool] = never,
    dist: Dist = SINGLE,
) -> Path:
    """Continue a stopped or interrupted run from its last finished epoch (on any number of processes);
    one that ended before its first checkpoint starts over in its folder with its own config (whatever it
    had extracted is in the cache). Refused while another trainer holds the run (its lease is alive)."""
    run = load_run(run_dir)
    lease = Lease() if dist.main else None
    if lease is not None:
        lease.acquire(run.path)  # first: a live run is refused whatever else is true of it
    try:
        if run.state == "completed":
            raise RunError(f"{run.path}: already completed; start a new run to train more")
        device = dist.device(resolve_device(run.config.train.device))
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    folder = RunFolder(run.path, writes=dist.main, lease=lease)
    # rank 0's look decides for every process: on a folder shared by NFS another node may not see the
    # file yet, and a process that started over while the others resumed waited in collectives they never
    # entered (the checkpoint itself is read by every process: the folder must be shared)
    checkpoint = dist.broadcast((run.path / "resume.safetensors").exists())
    dist.barrier()  # every process has read the folder before rank 0 changes its status
    before = run.status.get("seconds") or sum(row.get("seconds", 0) for row in run.history)
    restarts = {"restarts": distributed.restart_count()} if distributed.restart_count() else {}
    folder.set_status(
        "running",
        resumed=now_iso(),
        world_size=dist.world,
        seconds_before=round(before, 1),  # started over or not, the earlier sessions took this long
        **restarts,
    )
    control = Control(on_event, should_stop)
    return _run(folder, run.config, device, control, dist, resume=checkpoint, lease=lease)


def _restarted_run(root: Path, dist: Dist) -> Path | None:
    """After torchrun restarted the group: the unfinished run the same launcher was training (resumed from
    its last finished epoch, or from the start in the same folder when none had finished)."""
    if not dist.active or distributed.restart_count() == 0:
        return None
    found = None
    if dist.main:
        me = _launcher()
        for run in list_runs(root):  # newest first
            if _same_launch(run.environment.get("launcher") or {}, me) and run.state != "completed":
                found = str(run.path)
                break
    found = dist.broadcast(found)
    return Path(found) if found else None


def _same_launch(launcher: dict, me: dict) -> bool:
    """Whether a run was started by the same torchrun job as this process. A rendezvous id names the job
    on every node (after a restart rank 0 may be on another node, whose agent has another pid); torchrun's
    default id, ``none``, names no job, and then the agent's pid must match too."""
    if launcher.get("run_id") != me["run_id"]:
        return False
    return me["run_id"] not in ("", "none") or launcher.get("pid") == me["pid"]


class StopSignal:
    """The caller's stop request or a ``stop.request`` file made after this session was launched.

    The file is looked at twice a second at most: a stop is a human's click, and a ``stat`` per batch
    is a system call on every step of a fast loop. A run another trainer took over raises here (the lease's
    ``check``): the loop stops at the next batch, with an error, having written nothing since."""

    def __init__(self, folder: RunFolder, asked: Callable[[], bool], since: float) -> None:
        self.folder, self.asked, self.since = folder, asked, since
        self._looked, self._filed = 0.0, False

    def __call__(self) -> bool:
        self.folder.check_held()  # a run another trainer took over is its: this process stops with an error
        if self.asked():
            return True
        now = time.monotonic()
        if not self._filed and now - self._looked >= 0.5:
            self._looked, self._filed = now, self.folder.stop_requested(self.since)
        return self._filed


def _launched_at() -> float:
    try:
        return float(os.environ.get(LAUNCHED_AT, ""))
    except ValueError:
        return time.time()


class _EventLog:
    """The run's events to the caller's sink and, on rank 0, to ``events.jsonl`` (followed by the app
    when the run trains in other processes)."""

    def __init__(self, folder: RunFolder, sink: EventSink, dist: Dist) -> None:
        self.folder, self.sink, self.dist = folder, sink, dist
        self.last_progress = 0.0

    def __call__(self, event: Event) -> None:
        if not self.dist.main:
            return
        # progress goes to the file twice a second at most (and at the end of a stage): a reader only
        # needs the latest, and a 100,000-poster scan would otherwise write 100,000 lines
        now = time.monotonic()
        if not isinstance(event, Progress) or event.done >= event.total or now - self.last_progress >= 0.5:
            self.folder.append_event(to_json(event))
            if isinstance(event, Progress):
                self.last_progress = now
        self.sink(event)


def _run(
    folder: RunFolder,
    config: RunConfig,
    device: torch.device,
    control: Control,
    dist: Dist,
    resume: bool,
    lease: Lease | None,
) -> Path:
    started = time.monotonic()
    # a resumed run's earlier sessions (rank 0 writes the status: only it reads the folder, which another
    # node's processes may not see)
    earlier = float(read_json(folder.path / "status.json").get("seconds_before") or 0) if dist.main else 0.0

    def took() -> float:
        """This run's time, its earlier sessions' too."""
        return round(earlier + time.monotonic() - started, 1)

    log_events = _EventLog(folder, control.on_event, dist)
    control = Control(log_events, StopSignal(folder, control.should_stop, _launched_at()))
    try:
        log_events(Started(str(folder.path), resumed=resume))
        try:
            result = _train(folder, config, device, control, dist, resume, took)
        except StopRequested:
            folder.set_status(
                "stopped",
                finished=now_iso(),
                seconds=took(),
                note="stopped before its first epoch finished; Resume starts it over in this folder "
                "(what was extracted, and any search trials, are kept)",
                reason="stop requested",
            )
            log_events(Finished("stopped", str(folder.path)))
            return folder.path
        except BaseException as error:
            if lease is not None and lease.lost.is_set():
                raise  # the run trains on under another trainer: it has not failed, this process has
            message = one_line(error)
            folder.set_status("failed", finished=now_iso(), seconds=took(), error=message)
            log_events(Finished("failed", str(folder.path), error=message))
            raise
        folder.check_held(look=True)  # taken over as the run ended: not this process's to call finished
        status = "stopped" if result.stopped else "completed"
        # a completed run (resumed after a Stop) no longer says why it stopped, nor a Stop after its first
        # epoch that it would start over
        fields = {"reason": "stop requested" if result.stopped else None, "note": None}
        faults.point("finishing")  # every file written, the status not yet
        folder.set_status(status, finished=now_iso(), seconds=took(), metrics=result.headline, **fields)
        if not result.stopped:
            # only now: removed before the status said completed, a kill between the two left a finished
            # run that read as interrupted with no checkpoint, and Resume trained it again from epoch 1
            folder.remove_checkpoint()
        log_events(Finished(status, str(folder.path), metrics=result.headline))
        return folder.path
    finally:
        folder.clear_stop()
        if lease is not None:  # last: until the final status is written the run is live
            lease.release()


def _learner(
    plan: Plan, rule: LabelRule, criterion: Criterion, monitor: str, device: torch.device, dist: Dist
) -> Learner:
    return Learner(
        plan.trainable,
        plan.head,
        plan.backbone,
        plan.parameters,
        criterion,
        rule,
        monitor,
        device,
        dist,
        plan.workers,
        plan.normalize,
    )


# ------------------------------------------------------------------------------------- callbacks


class Events(Callback):
    """Progress within an epoch (every 5% of its batches) and one ``EpochEnd`` after it."""

    def __init__(self, control: Control) -> None:
        self.control = control

    def after_batch(self, fit: Fit) -> None:
        if fit.step == 1 and fit.epoch <= 1:
            faults.point("first-epoch" if fit.epoch == 0 else "later-epoch")
        steps = fit.steps
        if steps > 20 and (fit.step % max(steps // 20, 1) == 0 or fit.step == steps):
            self.control.emit(Progress("training", fit.step, steps, f"epoch {fit.epoch + 1}"))

    def after_epoch(self, fit: Fit) -> None:
        row = fit.row
        metrics = {k[4:]: v for k, v in row.items() if k.startswith("val_")} | {"loss": row["val_loss"]}
        self.control.emit(
            EpochEnd(
                row["epoch"],
                fit.config.epochs,
                row["train_loss"],
                row["val_loss"],
                metrics,
                row["lr"],
                row["seconds"],
                fit.improved,
            )
        )


class Stop(Callback):
    """A stop request ends the fit at a batch boundary, on every process at the same one (one batch after
    it was asked for when there are several: the processes agree on it without a host sync per step)."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.vote: StopVote | None = None
        self.noticed: tuple[int, int] | None = None  # (epoch, batch) where this process saw the request

    def before_fit(self, fit: Fit) -> None:
        self.vote = StopVote(fit.learner.dist)

    def before_batch(self, fit: Fit) -> None:
        asked = self.control.should_stop()
        if asked and self.noticed is None:
            self.noticed = (fit.epoch, fit.step)
        if self.vote.ask(asked):
            self.control.emit(Message(f"stop honoured in epoch {fit.epoch + 1}, {self._where(fit)}"))
            raise StopRequested()

    def _where(self, fit: Fit) -> str:
        """Where the stop landed, and where this process noticed it (the batch before, with several)."""
        where = "validation" if fit.step == fit.steps else f"batch {fit.step} of {fit.steps}"
        if self.noticed is None:  # another process noticed it first
            return where
        epoch, step = self.noticed
        seen = f"batch {step}" if epoch == fit.epoch else f"epoch {epoch + 1}, batch {step}"
        return f"{where} (noticed here at {seen})"

    def after_fit(self, fit: Fit) -> None:
        self.vote.settle()  # no collective left in flight


class GradualUnfreeze(Callback):
    """Finetune: one more feature level trains every ``every`` epochs, up to ``levels``."""

    def __init__(self, model: nn.Module, every: int, levels: int) -> None:
        self.model, self.every, self.levels = model, every, levels

    def before_epoch(self, fit: Fit) -> None:
        level = min(self.levels, fit.epoch // self.every)
        before = [p.requires_grad for p in fit.learner.parameters]
        set_trainable(self.model, boundary_for(self.model.backbone, "finetune" if level else "probe", level))
        if [p.requires_grad for p in fit.learner.parameters] != before:
            fit.rewrap()


class Checkpoint(Callback):
    """After every epoch: the resume checkpoint (one safetensors file), history and status, written by
    rank 0 in a background thread so that the next epoch starts at once (the tensors are copied first)."""

    def __init__(self, folder: RunFolder, hyper: dict, epochs: int, took: Callable[[], float]) -> None:
        self.folder, self.hyper, self.epochs, self.took = folder, hyper, epochs, took
        self.thread: threading.Thread | None = None
        self.failed: Exception | None = None

    def after_epoch(self, fit: Fit) -> None:
        if not self.folder.may_write():
            return
        tensors, meta = _resume_state(fit, self.hyper)
        history, epoch, seconds = list(fit.state.history), fit.state.epoch, self.took()
        self.wait()

        def write() -> None:
            try:
                self.folder.save_checkpoint(tensors, meta)
                faults.point("checkpoint")
                self.folder.write("history.json", history)
                # the time so far, earlier sessions' too: a session killed later adds it to the next one's
                self.folder.set_status("running", epoch=epoch, epochs=self.epochs, seconds=seconds)
            except Exception as error:  # raised in the training thread by ``wait``
                self.failed = error

        self.thread = background.start(write, name="posterlab-checkpoint")

    def after_fit(self, fit: Fit) -> None:
        self.wait()

    def wait(self) -> None:
        """Until the last checkpoint is written; its error, if it failed (a full disk went unnoticed: the run
        trained on for hours while its resumable point stayed where the disk filled)."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.failed is not None:
            error, self.failed = self.failed, None
            raise RunError(
                f"{self.folder.path}: writing the epoch's checkpoint failed ({one_line(error)}); free the "
                "space or fix the folder's permissions, then Resume from the last checkpoint written"
            ) from error


def _resume_state(fit: Fit, hyper: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (module, best weights, optimizer moments) copied to the CPU, and the rest as JSON."""
    state = fit.state
    copy = lambda v: v.detach().to("cpu", copy=True)  # noqa: E731
    tensors = {f"module.{k}": copy(v) for k, v in fit.learner.module.state_dict().items()}
    if state.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in state.best_state.items()})
    optim = fit.optimizer.state_dict()
    plain: dict[str, dict] = {}
    for pid, entry in optim["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = copy(value)
            else:
                plain.setdefault(str(pid), {})[name] = value
    meta = {
        "epoch": state.epoch,
        "best_metric": state.best_metric if not math.isnan(state.best_metric) else None,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "history": [dict(row) for row in state.history],  # serialised later, in the writer's thread
        "session": state.session,
        "param_groups": optim["param_groups"],
        "optimizer_state": plain,
        "scaler": fit.scaler.state_dict() if fit.scaler is not None else None,
        "hyper": hyper,
    }
    return tensors, meta


def _load_resume(folder: RunFolder, trainable: nn.Module) -> tuple[FitState, dict]:
    path = folder.path / "resume.safetensors"
    from safetensors import safe_open

    tensors = load_tensors(path)  # checked to be safetensors first
    with safe_open(str(path), "pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("resume", "{}"))
    if not meta:
        raise RunError(f"{path}: not a posterlab resume checkpoint; start a new run")
    trainable.load_state_dict({k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")})
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")} or None
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            optim_state.setdefault(int(pid), {})[name] = value
    for pid, entry in meta["optimizer_state"].items():
        optim_state.setdefault(int(pid), {}).update(entry)
    best_metric = float("nan") if meta["best_metric"] is None else meta["best_metric"]
    state = FitState(
        meta["epoch"],
        best_metric,
        meta["best_epoch"],
        meta["bad_epochs"],
        best,
        meta["history"],
        session=meta.get("session", 0) + 1,
    )
    saved = {
        "optimizer": {"state": optim_state, "param_groups": meta["param_groups"]},
        "scaler": meta.get("scaler"),
    }
    return state, saved | {"hyper": meta.get("hyper") or {}}


# ----------------------------------------------------------------------------------------- train


@dataclass
class _Result:
    headline: dict
    stopped: bool


def _data_summary(prepared: Prepared, onehot: np.ndarray) -> dict:
    rule, splits, labelled = prepared.labelled.rule, prepared.splits, prepared.labelled
    return {
        "dataset": prepared.dataset.name,
        "kind": prepared.dataset.kind,
        "read": prepared.report.total,
        "cleaning_dropped": prepared.report.dropped,
        "cleaning": prepared.report.summary().to_dict(),
        "labelled": len(labelled.frame),
        "label_dropped": len(labelled.dropped),
        "label_dropped_reasons": labelled.dropped["reason"].value_counts().to_dict(),
        "rule": rule.describe(),
        "counts": {
            name: dict(zip(rule.labels, onehot[rows].sum(axis=0).astype(int).tolist(), strict=True))
            for name, rows in splits.items()
        },
        "sizes": {name: len(rows) for name, rows in splits.items()},
    }


def _prepare(config: RunConfig, folder: RunFolder, control: Control, dist: Dist) -> Prepared:
    """Read, clean, label and split (every process the same; rank 0 writes the split and a summary)."""
    control.emit(Message(f"reading posters from {config.data.path}"))
    control.emit(Progress("reading", 0, 0, "the posters and their labels"))
    faults.point("scanning")
    if dist.active:  # each process opens its share of the images first, into the shared scan cache
        from posterlab.data.prepare import warm_scan

        warm_scan(config.data, dist.rank, dist.world)
        dist.barrier()
    prepared = prepare_data(config.data, control.on_event)
    labelled, splits = prepared.labelled, prepared.splits
    folder.write(
        "split.json", {name: labelled.frame["id"].iloc[rows].tolist() for name, rows in splits.items()}
    )
    folder.write("data.json", _data_summary(prepared, one_hot(labelled.y, labelled.rule)))
    control.emit(
        Message(
            f"{len(labelled.frame)} posters labelled ({labelled.rule.describe()}); {len(labelled.dropped)} dropped without a label"
        )
    )
    return prepared


def _train(
    folder: RunFolder,
    config: RunConfig,
    device: torch.device,
    control: Control,
    dist: Dist,
    resume: bool,
    took: Callable[[], float],
) -> _Result:
    tc, dc = config.train, config.data
    seed_everything(tc.seed)
    prepared = _prepare(config, folder, control, dist)
    rule, y, splits = prepared.labelled.rule, prepared.labelled.y, prepared.splits
    monitor = main_metric(rule, tc.monitor)  # before any long work: a wrong monitor fails here
    plan = make_plan(config, prepared, device, control, dist)
    plan.trainable.to(device)
    # again: extraction may or may not have run (and drawn random numbers); each process its own stream
    # for augmentation and dropout (the sampler's shuffle keeps the shared seed)
    seed_everything(tc.seed + dist.seed_offset)
    train_rows = splits["train"][resample(y[splits["train"]], len(rule.labels), dc.balance, dc.seed)]
    weights = loss_weights(y[splits["train"]], len(rule.labels)) if dc.balance == "weights" else None
    criterion = Criterion.for_target(rule.multilabel, tc.loss, weights, tc.label_smoothing).to(device)
    learner = _learner(plan, rule, criterion, monitor, device, dist)
    state, saved, chosen = None, None, tc
    if resume:  # agreed by every process (``resume_run``)
        state, saved = _load_resume(folder, plan.trainable)
        chosen = replace(tc, **saved["hyper"]) if saved["hyper"] else tc
        set_dropout(plan.head, chosen.dropout)
        control.emit(Message(f"resuming after epoch {state.epoch}"))
    elif tc.search_trials:  # a new run, or one stopped during its search (the study keeps its trials)
        chosen, table = search(SearchInputs(plan, prepared, learner, dc.balance, control, folder.path), tc)
        folder.write("search.json", table)
    hyper = {"lr": chosen.lr, "dropout": chosen.dropout, "weight_decay": chosen.weight_decay}
    callbacks: list[Callback] = [Stop(control), Events(control), Checkpoint(folder, hyper, tc.epochs, took)]
    if tc.mode == "finetune" and tc.gradual_every > 0:
        callbacks.insert(0, GradualUnfreeze(plan.model, tc.gradual_every, tc.unfreeze))
    begun = time.monotonic()
    state = fit(
        learner,
        plan.inputs(train_rows, True),
        plan.inputs(splits["val"], False),
        chosen,
        callbacks,
        state,
        saved,
    )
    fit_seconds = time.monotonic() - begun
    if state.best_state is None:
        raise StopRequested()
    headline_values = _finish(folder, config, prepared, plan, learner, state, chosen, fit_seconds, control)
    return _Result(headline_values, state.stopped)


def _finish(
    folder: RunFolder,
    config: RunConfig,
    prepared: Prepared,
    plan: Plan,
    learner: Learner,
    state: FitState,
    chosen: TrainConfig,
    fit_seconds: float,
    control: Control,
) -> dict:
    """Score validation and test with the best weights; rank 0 writes model, metrics and predictions."""
    tc, rule, splits = config.train, learner.rule, prepared.splits
    labelled = prepared.labelled
    control.emit(Progress("evaluating", 0, 2))
    results = {}
    for name in ("val", "test"):
        results[name] = predict(learner, plan.inputs(splits[name], False), max(tc.batch_size, 64), tc.amp)
        control.emit(Progress("evaluating", len(results), 2))
        if name == "val":
            faults.point("evaluating")
    prior = one_hot(labelled.y, rule)[splits["train"]].mean(axis=0)
    thresholds = (
        tune_thresholds(one_hot(results["val"][1], rule), results["val"][0]) if rule.multilabel else None
    )
    reports = {
        name: evaluate_scores(rule, truth, probs, thresholds, prior)
        for name, (probs, truth) in results.items()
    }
    for name, (probs, truth) in results.items():
        reports[name]["metrics"]["loss"] = learner.criterion.mean(
            learner.criterion.from_probabilities(probs, truth), truth
        )
    plan.trainable.to("cpu")
    folder.save_weights(plan.weights(), tc.save_dtype)
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
            "preprocess": plan.preprocess.to_dict(),
            "fits": list(plan.fits),
            "weights_dtype": tc.save_dtype,
            "monitor": learner.monitor,
            "loss": learner.criterion.to_dict(),
            "best_epoch": state.best_epoch + 1,
            "hyper": {"lr": chosen.lr, "dropout": chosen.dropout, "weight_decay": chosen.weight_decay},
        },
    )
    folder.write_predictions(_predictions_frame(labelled.frame, rule, splits, results, learner.criterion))
    folder.write(
        "metrics.json",
        {
            "task": rule.task,
            "labels": list(rule.labels),
            "monitor": learner.monitor,
            "loss": learner.criterion.describe(),
            "best_epoch": state.best_epoch + 1,
            "epochs_run": state.epoch,
            "val": reports["val"],
            "test": reports["test"],
            "seconds": {"features": round(plan.feature_seconds, 2), "fit": round(fit_seconds, 2)},
            "cached_inputs": plan.cached,
        },
    )
    folder.write("history.json", state.history)
    shown = headline(rule.task, reports["test"]["metrics"])
    control.emit(Message("test " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items() if not math.isnan(v))))
    return shown


def _predictions_frame(
    frame: pd.DataFrame, rule: LabelRule, splits: dict, results: dict, criterion: Criterion
) -> pd.DataFrame:
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
                "loss": np.round(criterion.from_probabilities(probs, truth), 5),
            }
        )
        for k, label in enumerate(rule.labels):
            part[f"p:{label}"] = np.round(probs[:, k], 5)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
