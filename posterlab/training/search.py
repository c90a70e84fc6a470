"""Hyper-parameter search on Optuna: lr, dropout and weight decay, optionally k-fold, stored as a study.

The study lives in the run folder (``search.db``, SQLite) unless ``--storage URL --study NAME`` names a
shared one: any SQLAlchemy URL Optuna's ``RDBStorage`` accepts (a SQLite file for processes on one
machine; PostgreSQL or MySQL across machines). Every process that shares a study asks it for trials
until the study holds ``search_trials`` finished ones (complete or pruned), then waits for the trials
still running elsewhere, and trains its run with the study's best configuration: the result of a search
is a normal run folder, as it was with the hand-written random search of seed report 001.

- Samplers: ``random`` (seed 001's method: log-uniform lr and weight decay, uniform dropout) and ``tpe``
  (the default). The configuration given is always trial 0, as before.
- Pruning: each epoch reports the validation metric (the fold's best so far, the value the trial is
  scored by; step = fold × epochs + epoch, so a trial is only compared with others on the same fold and
  epoch) and ``MedianPruner`` stops a trial that is below the median of the completed ones there.
- Stop and resume: a stop request ends the trial running (its parameters are queued again, so a resumed
  search runs it first); the finished trials stay in the study, and ``posterlab train --resume RUN``
  continues from them. A process that dies leaves a trial whose heartbeat goes stale: the next process
  to ask for a trial marks it failed and queues it again (``RetryFailedTrialCallback``).
- Under torchrun, rank 0 alone talks to the study and hands each trial's parameters (and each prune
  decision) to the other ranks, which train in step with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from posterlab.config import TrainConfig
from posterlab.data.balance import resample
from posterlab.data.prepare import Prepared
from posterlab.data.split import kfold_indices
from posterlab.errors import ConfigError
from posterlab.events import Control, Message, Progress, StopRequested
from posterlab.training.loop import Callback, Fit, Learner, fit, higher_is_better
from posterlab.training.plan import Plan

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

STUDY_FILE = "search.db"  # the run folder's own study (SQLite)
OWN_STUDY = "search"  # its name inside that file
HYPER = ("lr", "dropout", "weight_decay")
HEARTBEAT_S = 5  # a searching process records its trial's heartbeat this often...
GRACE_S = 30  # ...and a trial silent for this long belongs to a dead process: failed, then queued again
WAIT_POLL_S = 2.0


def space(config: TrainConfig) -> dict[str, tuple[float, float, bool]]:
    """Seed 001's search space around the configuration given: name → (low, high, log scale)."""
    return {
        "lr": (config.lr / 10, min(config.lr * 10, 0.5), True),
        "dropout": (0.0, 0.6, False),
        "weight_decay": (1e-6, 1e-1, True),
    }


def storage_url(config: TrainConfig, run_dir: Path) -> str:
    """The study's storage: ``--storage`` as given, else a SQLite file in the run folder."""
    return config.search_storage or f"sqlite:///{(run_dir / STUDY_FILE).resolve()}"


def study_name(config: TrainConfig) -> str:
    return config.search_study or OWN_STUDY


def shown_url(url: str) -> str:
    """The URL with any password masked (for logs, the app and the run's files)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: Optuna will say so when it connects
        return url


def storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats (a dead process's trial is failed and queued again)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    # SQLite: several processes write one file; wait for its lock instead of failing at once
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        for attempt in range(5):
            try:
                with _quiet_experimental():
                    return RDBStorage(
                        url,
                        engine_kwargs=engine,
                        heartbeat_interval=HEARTBEAT_S,
                        grace_period=GRACE_S,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                    )
            except Exception as error:
                # two processes creating a new database's tables at once: the loser finds them made
                racing = "already exists" in str(error) or "UNIQUE constraint failed" in str(error)
                if not racing or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except (ImportError, ModuleNotFoundError) as error:
        raise ConfigError(
            f"--storage {shown_url(url)}: its database driver is missing ({error.name}); "
            "pip install psycopg2-binary (PostgreSQL) or pymysql (MySQL)"
        ) from None
    except Exception as error:
        if isinstance(error, optuna.exceptions.OptunaError) or type(error).__module__.startswith(
            "sqlalchemy"
        ):
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"--storage {shown_url(url)}: cannot open it ({first}); check the URL"
            ) from None
        raise


@contextlib.contextmanager
def _quiet_experimental() -> Iterator[None]:
    """Optuna still marks heartbeats experimental (since 2.8); posterlab relies on them knowingly."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _sampler(config: TrainConfig, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if config.search_sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # small budgets: a few random trials, then TPE; constant_liar keeps parallel workers apart
    startup = max(2, min(10, config.search_trials // 3))
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True
    )


def _pruner(config: TrainConfig) -> optuna.pruners.BasePruner:
    import optuna

    if config.search_pruner == "none":
        return optuna.pruners.NopPruner()
    # compare only once a few trials have completed, and not in the first half of the first fold
    startup = max(3, min(5, config.search_trials // 3))
    return optuna.pruners.MedianPruner(
        n_startup_trials=startup, n_warmup_steps=max(1, (config.epochs or 1) // 2)
    )


def open_study(config: TrainConfig, run_dir: Path, monitor: str) -> optuna.Study:
    """Create or load the study (``load_if_exists``: a resumed run and every sharing process load it)."""
    import optuna

    # posterlab reports trials through its events; Optuna's own warnings would add a traceback for every
    # stop request and every surplus trial (an error that is not one of those still propagates)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url, shared = storage_url(config, run_dir), bool(config.search_storage)
    store = storage(url)
    direction = "maximize" if higher_is_better(monitor) else "minimize"
    existing = _count(store, study_name(config))
    # the sampler's seed: the run's seed, moved on by the trials already done (a resumed search must not
    # repeat its first draws); a shared study also mixes in the process, or two workers started together
    # would draw the same parameters
    salt = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) if shared else 0
    seed = (config.seed + existing + salt) % 2**32
    study = optuna.create_study(
        storage=store,
        study_name=study_name(config),
        direction=direction,
        sampler=_sampler(config, seed),
        pruner=_pruner(config),
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {study.study_name!r} in {shown_url(url)} was made to {study.direction.name.lower()}, "
            f"this run watches {monitor} ({direction}); give --study a new name"
        )
    if not study.trials:
        # trial 0 is the configuration given, as in seed 001 (skip_if_exists: two workers starting together)
        study.enqueue_trial({k: getattr(config, k) for k in HYPER}, skip_if_exists=True)
        study.set_user_attr("monitor", monitor)
        study.set_user_attr("trials", config.search_trials)
        study.set_user_attr("folds", config.search_folds)
    return study


def _count(store: optuna.storages.RDBStorage, name: str) -> int:
    from optuna.exceptions import OptunaError

    try:
        return store.get_n_trials(store.get_study_id_from_name(name))
    except (KeyError, OptunaError):
        return 0


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


def _alive(study: optuna.Study) -> list:
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return study.get_trials(deepcopy=False, states=states)


def _running(study: optuna.Study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _finished(study: optuna.Study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def search(inputs: SearchInputs, config: TrainConfig) -> tuple[TrainConfig, list[dict]]:
    """Run (or join, or resume) the study until it holds ``search_trials`` finished trials; returns the
    configuration of its best trial and the table of its trials (``search.json``)."""
    trials, dist, control = _Trials(inputs, config), inputs.learner.dist, inputs.control
    if not dist.main:
        best = _follow(trials, dist)
        trials.reset(best["dropout"])
        return trials.candidate(best), []
    study = open_study(config, inputs.run_dir, inputs.learner.monitor)
    control.emit(
        Message(
            f"study {study.study_name!r} in {shown_url(storage_url(config, inputs.run_dir))}: "
            f"{len(_finished(study))} of {config.search_trials} trials finished "
            f"({config.search_sampler}, pruner {config.search_pruner})"
        )
    )
    _optimize(study, trials, config, control, dist)
    best = _best(study)
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
    from optuna.storages import fail_stale_trials

    budget, monitor = config.search_trials, trials.inputs.learner.monitor
    ranges = space(config)

    def objective(trial: optuna.Trial) -> float:
        ahead = sum(1 for t in _alive(study) if t.number < trial.number)
        if ahead >= budget:
            study.stop()
            raise _Surplus(f"the study already holds its {budget} trials")
        params = {
            name: trial.suggest_float(name, low, high, log=log_scale)
            for name, (low, high, log_scale) in ranges.items()
        }
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("folds", len(trials.folds))
        dist.broadcast(("trial", params))
        try:
            return trials.evaluate(params, trial)
        except StopRequested:
            # queued again so that a resumed (or another) process runs it first; this attempt ends failed
            study.enqueue_trial(params, user_attrs={"requeued_from": trial.number})
            raise

    def after_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        done = len(_finished(study))
        if frozen.state.name in ("COMPLETE", "PRUNED"):
            shown = f"{monitor} {frozen.value:.3f}" if frozen.value is not None else "pruned"
            control.emit(Progress("searching", min(done, budget), budget, f"trial {frozen.number}: {shown}"))
        if done + len(_running(study)) >= budget:  # the rest is being run elsewhere: wait for it below
            study.stop()

    while True:
        if len(_finished(study)) + len(_running(study)) < budget:
            study.optimize(objective, callbacks=[after_trial], catch=(_Surplus,), gc_after_trial=False)
        # trials other processes still run (or queued again after a process died) decide the best too
        with _quiet_experimental():
            fail_stale_trials(study)
        running = _running(study)
        if len(_finished(study)) + len(running) < budget:  # a trial failed elsewhere (and was queued again)
            continue
        if not running:
            return
        if control.should_stop():
            dist.broadcast(("stop", None))
            raise StopRequested()
        control.emit(
            Progress(
                "searching", len(_finished(study)), budget, f"waiting for {len(running)} trial(s) elsewhere"
            )
        )
        time.sleep(WAIT_POLL_S)


def _best(study: optuna.Study) -> dict[str, float]:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ConfigError(
            f"study {study.study_name!r} has no complete trial (all pruned or failed); "
            "search more trials or use --pruner none"
        )
    return {k: float(study.best_trial.params[k]) for k in HYPER}


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per finished trial: its number, parameters, the monitored value (None when pruned), state."""
    monitor = study.user_attrs.get("monitor", "value")
    rows = []
    for t in _finished(study):
        rows.append(
            {
                "trial": t.number,
                **{k: t.params.get(k) for k in HYPER},
                monitor: t.value,
                "folds": t.user_attrs.get("folds"),
                "state": t.state.name.lower(),
                "epochs": len(t.intermediate_values),
                "worker": t.user_attrs.get("worker"),
            }
        )
    return rows
