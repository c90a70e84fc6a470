"""Hyper-parameter search on Optuna: lr, dropout and weight decay, optionally k-fold, stored as a study.

The study lives in the run folder or in a shared database (``posterlab.training.study``). Every process
that shares a study asks it for trials until the study holds ``search_trials`` finished ones (complete or
pruned), then waits for the trials still running elsewhere, and trains its run with the study's best
configuration: the result of a search is a normal run folder, as it was with the hand-written random
search of seed report 001.

- Samplers: ``random`` (seed 001's method: log-uniform lr and weight decay, uniform dropout) and ``tpe``
  (the default). The configuration given is always trial 0, as before.
- Pruning: each epoch reports the validation metric (the fold's best so far, the value the trial is
  scored by; step = fold × epochs + epoch, so a trial is only compared with others on the same fold and
  epoch) and ``MedianPruner`` stops a trial that is below the median of the completed ones there.
- Stop and resume: a stop request ends the trial running (its parameters are queued again, so a resumed
  search runs it first); the finished trials stay in the study, and ``posterlab train --resume RUN``
  continues from them. A process that dies leaves a trial whose heartbeat goes stale: the next process
  to ask for a trial marks it failed and queues it again.
- Under torchrun, rank 0 alone talks to the study and hands each trial's parameters (and each prune
  decision) to the other ranks, which train in step with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from posterlab.config import TrainConfig
from posterlab.data.balance import resample
from posterlab.data.prepare import Prepared
from posterlab.data.split import kfold_indices
from posterlab.events import Control, Message, Progress, StopRequested
from posterlab.training.loop import Callback, Fit, Learner, fit, higher_is_better
from posterlab.training.plan import Plan
from posterlab.training.study import (
    HYPER,
    alive_trials,
    best_params,
    fail_orphans,
    fail_stale,
    finished_trials,
    mark_worker,
    open_study,
    running_trials,
    shown_url,
    storage_url,
    trials_table,
)

if TYPE_CHECKING:
    import optuna

WAIT_POLL_S = 2.0


def space(config: TrainConfig) -> dict[str, tuple[float, float, bool]]:
    """Seed 001's search space around the configuration given: name → (low, high, log scale)."""
    return {
        "lr": (config.lr / 10, min(config.lr * 10, 0.5), True),
        "dropout": (0.0, 0.6, False),
        "weight_decay": (1e-6, 1e-1, True),
    }


# ------------------------------------------------------------------------------------------ trials


def set_dropout(module: nn.Module, p: float) -> None:
    """Every dropout layer of ``module`` to ``p`` (a trial's dropout; the chosen one before the final fit)."""
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = p


@dataclass
class SearchInputs:
    """What a search trains with: the plan, the data, the balancing, the learner, the run's events."""

    plan: Plan
    prepared: Prepared
    learner: Learner
    balance: str
    control: Control
    run_dir: Path


class _Report(Callback):
    """After every epoch: the fold's best validation metric so far to the trial (what the trial will be
    scored by, so one noisy epoch does not prune it), and the pruner's verdict to every rank."""

    def __init__(self, trial: optuna.Trial | None, learner: Learner, step0: int) -> None:
        self.trial, self.learner, self.step0 = trial, learner, step0

    def after_epoch(self, current: Fit) -> None:
        import optuna

        prune = None
        if self.trial is not None:
            self.trial.report(float(current.state.best_metric), self.step0 + current.epoch)
            prune = self.trial.should_prune()
        if self.learner.dist.broadcast(prune):
            raise optuna.TrialPruned(f"below the median at epoch {current.epoch + 1}")


class _Surplus(Exception):
    """The study already holds its trials (others asked at the same moment): this one is not run."""


class _Trials:
    """Evaluates trials: the same folds, initial weights and balancing for every one."""

    def __init__(self, inputs: SearchInputs, config: TrainConfig) -> None:
        self.inputs, self.config = inputs, config
        plan, y = inputs.plan, inputs.prepared.labelled.y
        self.initial = {k: v.detach().clone() for k, v in plan.trainable.state_dict().items()}
        train, val = inputs.prepared.split_of("train"), inputs.prepared.split_of("val")
        if config.search_folds:
            pool = np.concatenate([train, val])
            self.folds = [
                (pool[a], pool[b]) for a, b in kfold_indices(y[pool], config.search_folds, config.seed)
            ]
        else:
            self.folds = [(train, val)]
        # a trial trains with the search switched off (its own fits are plain fits)
        self.quiet = dataclasses.replace(config, search_trials=0, search_storage="", search_study="")

    def candidate(self, params: dict[str, float]) -> TrainConfig:
        return dataclasses.replace(self.quiet, **{k: float(params[k]) for k in HYPER})

    def evaluate(self, params: dict[str, float], trial: optuna.Trial | None) -> float:
        """Mean over the folds of each fold's best validation metric (what seed 001 compared)."""
        from posterlab.training.trainer import Stop  # the run's own stop callback (trainer imports us)

        inputs, candidate = self.inputs, self.candidate(params)
        plan, y = inputs.plan, inputs.prepared.labelled.y
        labels = len(inputs.prepared.labelled.rule.labels)
        values = []
        for k, (train_rows, val_rows) in enumerate(self.folds):
            plan.trainable.load_state_dict(self.initial)
            set_dropout(plan.head, candidate.dropout)
            train_rows = train_rows[resample(y[train_rows], labels, inputs.balance, self.config.seed)]
            report = _Report(trial, inputs.learner, k * candidate.epochs)
            state = fit(
                inputs.learner,
                plan.inputs(train_rows, True),
                plan.inputs(val_rows, False),
                candidate,
                [Stop(inputs.control), report],
            )
            if state.stopped:
                raise StopRequested()
            values.append(state.best_metric)
        return float(np.mean(values))

    def reset(self, dropout: float) -> None:
        self.inputs.plan.trainable.load_state_dict(self.initial)
        set_dropout(self.inputs.plan.head, dropout)


# ------------------------------------------------------------------------------------------ search


def search(inputs: SearchInputs, config: TrainConfig) -> tuple[TrainConfig, list[dict]]:
    """Run (or join, or resume) the study until it holds ``search_trials`` finished trials; returns the
    configuration of its best trial and the table of its trials (``search.json``)."""
    trials, dist, control = _Trials(inputs, config), inputs.learner.dist, inputs.control
    if not dist.main:
        best = _follow(trials, dist)
        trials.reset(best["dropout"])
        return trials.candidate(best), []
    monitor = inputs.learner.monitor
    study = open_study(config, inputs.run_dir, monitor, higher_is_better(monitor))
    control.emit(
        Message(
            f"study {study.study_name!r} in {shown_url(storage_url(config, inputs.run_dir))}: "
            f"{len(finished_trials(study))} of {config.search_trials} trials finished "
            f"({config.search_sampler}, pruner {config.search_pruner})"
        )
    )
    _optimize(study, trials, config, control, dist)
    best = best_params(study)
    dist.broadcast(("done", best))
    trials.reset(best["dropout"])
    chosen = trials.candidate(best)
    control.emit(
        Message(
            f"search picked lr={chosen.lr:.2g} dropout={chosen.dropout:.2f} weight_decay={chosen.weight_decay:.2g}"
        )
    )
    return chosen, trials_table(study)


def _follow(trials: _Trials, dist) -> dict[str, float]:
    """Ranks other than 0 train the trials rank 0 hands them (("trial", params)) in step with it, until it
    hands them the best (("done", params)) or a stop (("stop", None))."""
    import optuna

    while True:
        kind, params = dist.broadcast(None)
        if kind == "done":
            return params
        if kind == "stop":
            raise StopRequested()
        with contextlib.suppress(optuna.TrialPruned):  # rank 0 pruned it too (the verdict is broadcast)
            trials.evaluate(params, None)


def _optimize(study: optuna.Study, trials: _Trials, config: TrainConfig, control: Control, dist) -> None:
    budget, monitor = config.search_trials, trials.inputs.learner.monitor
    ranges = space(config)

    def objective(trial: optuna.Trial) -> float:
        ahead = sum(1 for t in alive_trials(study) if t.number < trial.number)
        if ahead >= budget:
            study.stop()
            raise _Surplus(f"the study already holds its {budget} trials")
        params = {
            name: trial.suggest_float(name, low, high, log=log_scale)
            for name, (low, high, log_scale) in ranges.items()
        }
        mark_worker(study, trial)
        trial.set_user_attr("folds", len(trials.folds))
        dist.broadcast(("trial", params))
        try:
            return trials.evaluate(params, trial)
        except StopRequested:
            # queued again so that a resumed (or another) process runs it first; this attempt ends failed
            study.enqueue_trial(params, user_attrs={"requeued_from": trial.number})
            raise

    def after_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        done = len(finished_trials(study))
        if frozen.state.name in ("COMPLETE", "PRUNED"):
            shown = f"{monitor} {frozen.value:.3f}" if frozen.value is not None else "pruned"
            control.emit(Progress("searching", min(done, budget), budget, f"trial {frozen.number}: {shown}"))
        if done + len(running_trials(study)) >= budget:  # the rest is being run elsewhere: wait for it below
            study.stop()

    while True:
        if len(finished_trials(study)) + len(running_trials(study)) < budget:
            study.optimize(objective, callbacks=[after_trial], catch=(_Surplus,), gc_after_trial=False)
        # trials other processes still run (or queued again after a process died) decide the best too
        fail_stale(study)
        fail_orphans(study)
        running = running_trials(study)
        if (
            len(finished_trials(study)) + len(running) < budget
        ):  # a trial failed elsewhere (and was queued again)
            continue
        if not running:
            return
        if control.should_stop():
            dist.broadcast(("stop", None))
            raise StopRequested()
        control.emit(
            Progress(
                "searching",
                len(finished_trials(study)),
                budget,
                f"waiting for {len(running)} trial(s) elsewhere",
            )
        )
        time.sleep(WAIT_POLL_S)
