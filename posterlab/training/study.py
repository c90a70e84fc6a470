"""Optuna studies of posterlab searches: where they are stored, how they are opened, and what the app and
the run folder read back from them (torch-free: the Train page imports this, the search runs elsewhere).

A run's study is a SQLite file in its folder (``search.db``) unless ``--storage URL --study NAME`` names a
shared one: any SQLAlchemy URL Optuna's ``RDBStorage`` accepts (a SQLite file for processes on one
machine; PostgreSQL or MySQL across machines). Storages record a heartbeat for each running trial: a
trial whose process died goes stale, is marked failed by the next process that asks for a trial, and is
queued again with the same parameters (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posterlab.config import RunConfig, TrainConfig
from posterlab.errors import ConfigError

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "search.db"  # the run folder's own study (SQLite)
OWN_STUDY = "search"  # its name inside that file
HYPER = ("lr", "dropout", "weight_decay")
HEARTBEAT_S = 5  # a searching process records its trial's heartbeat this often...
GRACE_S = 30  # ...and a trial silent for this long belongs to a dead process: failed, then queued again


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
        missing = error.name or (str(error).strip().splitlines() or ["a module"])[0]
        raise ConfigError(
            f"--storage {shown_url(url)}: its database driver is missing ({missing}); "
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


def open_study(config: TrainConfig, run_dir: Path, monitor: str, maximize: bool) -> optuna.Study:
    """Create or load the study (``load_if_exists``: a resumed run and every sharing process load it)."""
    import optuna

    # posterlab reports trials through its events; Optuna's own warnings would add a traceback for every
    # stop request and every surplus trial (an error that is not one of those still propagates)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url, shared = storage_url(config, run_dir), bool(config.search_storage)
    store = storage(url)
    direction = "maximize" if maximize else "minimize"
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


def alive_trials(study: optuna.Study) -> list:
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return study.get_trials(deepcopy=False, states=states)


def running_trials(study: optuna.Study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def finished_trials(study: optuna.Study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def best_params(study: optuna.Study) -> dict[str, float]:
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
    for t in finished_trials(study):
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


# ------------------------------------------------------------------------------------- reading back


def search_unfinished(config: TrainConfig, run_dir: Path) -> bool:
    """A run stopped (or interrupted) during its search: resuming it continues its study."""
    return bool(config.search_trials) and not (Path(run_dir) / "search.json").exists()


def study_of(
    config: TrainConfig, run_dir: Path, open_storage: Callable[[str], Any] | None = None
) -> optuna.Study | None:
    """A run's study, for reading (None when the run has no search or its study does not exist yet).

    ``open_storage`` (default ``storage``) lets a caller that reads often reuse one storage per URL:
    opening one checks the database's schema, which costs far more than reading the trials."""
    import optuna

    if not config.search_trials:
        return None
    if not config.search_storage and not (Path(run_dir) / STUDY_FILE).exists():
        return None  # loading would create an empty database in the run folder
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        store = (open_storage or storage)(storage_url(config, Path(run_dir)))
        return optuna.load_study(study_name=study_name(config), storage=store)
    except KeyError:  # Optuna's answer for a study name the storage does not hold (yet)
        return None


def best_config(run: RunConfig, study: optuna.Study) -> RunConfig:
    """The run's configuration with the study's best trial's parameters and no search: a new run from it
    trains what the search found."""
    train = dataclasses.replace(
        run.train, **best_params(study), search_trials=0, search_folds=0, search_storage="", search_study=""
    )
    return dataclasses.replace(run, train=train, name="")


def study_figures(study: optuna.Study) -> tuple[dict[str, Any], str]:
    """Optuna's own plotly charts of a study (history, parallel coordinates, importances) and, when a
    chart cannot be drawn yet, why (importances need two complete trials that differ)."""
    from optuna import visualization

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return {}, "no trial has completed yet"
    charts = {
        "history": visualization.plot_optimization_history(study),
        "parallel coordinates": visualization.plot_parallel_coordinate(study),
    }
    note = ""
    if len(complete) >= 2:
        try:
            charts["importances"] = visualization.plot_param_importances(study)
        except (ValueError, RuntimeError) as error:  # e.g. every complete trial scored the same
            note = f"importances: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    else:
        note = "importances appear once two trials have completed"
    return charts, note


def mark_worker(study: optuna.Study, trial: optuna.Trial) -> None:
    """Mark ``trial`` as this process's (its objective has begun), after writing its first heartbeat:
    Optuna's heartbeat thread starts beside the objective and may not have written yet, and a marked
    trial without a heartbeat is seen by neither ``fail_stale`` (no heartbeat) nor ``fail_orphans``
    (marked), so a process killed right then would keep every other worker waiting for ever."""
    store = study._storage  # Optuna gives no public handle on a study's storage
    if getattr(store, "get_heartbeat_interval", lambda: None)():  # an RDB storage with heartbeats
        store.record_heartbeat(trial._trial_id)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")


def fail_stale(study: optuna.Study) -> None:
    """Fail (and queue again) the running trials whose process stopped sending heartbeats."""
    from optuna.storages import fail_stale_trials

    with _quiet_experimental():
        fail_stale_trials(study)


def fail_orphans(study: optuna.Study, after_s: float = 2 * GRACE_S) -> None:
    """Fail (and queue again) trials that went RUNNING but whose process died before the objective began:
    Optuna's staleness needs a heartbeat, and such a trial has none, so it would stay RUNNING for ever
    and keep every worker waiting. The objective marks its trial with ``worker`` first thing."""
    from datetime import datetime

    from optuna.trial import TrialState

    now = datetime.now()  # Optuna stores local naive times
    for trial in running_trials(study):
        started = trial.datetime_start
        if "worker" in trial.user_attrs or started is None or (now - started).total_seconds() < after_s:
            continue
        fixed = trial.system_attrs.get("fixed_params") or trial.params
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # it finished (or was failed by another worker) meanwhile
            continue
        if fixed:
            study.enqueue_trial(fixed, user_attrs={"requeued_from": trial.number})
