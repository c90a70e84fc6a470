"""Searches on Optuna: a study in the run folder that resumes, and one study shared by two processes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig
from posterlab.errors import ConfigError
from posterlab.events import Progress
from posterlab.runs import load_run
from posterlab.training.study import OWN_STUDY, STUDY_FILE
from posterlab.training.trainer import resume_run, train_run
from tests.conftest import LITE0
from tests.training.test_distributed import cluster  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]


def _search(name: str, **train) -> RunConfig:
    values = {
        "backbone": LITE0,
        "pretrained": False,
        "mode": "probe",
        "epochs": 3,
        "flip_views": False,
        "search_trials": 6,
        **train,
    }
    return RunConfig(DataConfig(path="sample", labels=LabelConfig(top_n=4)), TrainConfig(**values), name=name)


def _study(path: Path, name: str = OWN_STUDY) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path}")


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(states=states)


def test_random_search_records_its_study_and_config(runs_root):
    """``--sampler random --pruner none`` is seed 001's method: every trial complete, the configuration
    given is trial 0, the best trial's parameters are the run's; config.json records how it searched."""
    path = train_run(_search("random-search", search_sampler="random", search_pruner="none"), runs_root)
    run = load_run(path)
    assert run.state == "completed"
    recorded = json.loads((path / "config.json").read_text())["run"]["train"]
    assert recorded["search_sampler"] == "random" and recorded["search_pruner"] == "none"
    assert recorded["search_trials"] == 6 and recorded["search_storage"] == ""
    study = _study(path / STUDY_FILE)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert study.trials[0].params == {"lr": 1e-3, "dropout": 0.2, "weight_decay": 1e-4}
    table = json.loads((path / "search.json").read_text())
    assert [row["trial"] for row in table] == list(range(6))
    assert run.model["hyper"] == study.best_trial.params
    assert max(row["map"] for row in table) == pytest.approx(study.best_value)
    # every trial drew its own parameters (the seeded sampler moves on)
    assert len({row["lr"] for row in table}) == 6


def test_stopped_search_resumes_from_its_study(runs_root):
    """A stop during the search keeps the finished trials; ``resume_run`` continues the same study to its
    budget (the interrupted trial first) and then trains the best configuration."""
    events: list = []

    def should_stop() -> bool:  # after two trials have finished
        return sum(isinstance(e, Progress) and e.stage == "searching" for e in events) >= 2

    config = _search("stopped-search", search_trials=5, search_pruner="none")
    path = train_run(config, runs_root, on_event=events.append, should_stop=should_stop)
    assert load_run(path).state == "stopped" and not (path / "search.json").exists()
    study = _study(path / STUDY_FILE)
    before = {t.number: t.params for t in _finished(study)}
    assert len(before) == 2
    requeued = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(requeued) == 1  # the trial the stop interrupted, queued to run first

    path = resume_run(path)
    run = load_run(path)
    assert run.state == "completed"
    study = _study(path / STUDY_FILE)
    finished = _finished(study)
    assert len(finished) == 5
    assert {t.number: t.params for t in finished if t.number in before} == before
    assert requeued[0].system_attrs["fixed_params"] in [t.params for t in finished]
    assert run.model["hyper"] == study.best_trial.params


def _worker(out: Path, storage: str, trials: int = 8, epochs: int = 3) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "posterlab", "train", "--data", "sample", "--genres", "4"]
    args += ["--backbone", LITE0, "--no-pretrained", "--mode", "probe", "--epochs", str(epochs)]
    args += ["--no-flip-views", "--patience", "0", "--search", str(trials), "--folds", "2"]
    args += ["--storage", storage, "--study", "shared", "--quiet", "--out", str(out)]
    return subprocess.Popen(args, env=env, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_processes_share_one_sqlite_study(tmp_path):
    """Two real processes on one SQLite-backed study finish its 8 trials between them, no trial twice,
    and each ends with a run folder trained on the study's best configuration."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [_worker(tmp_path / name, storage) for name in ("a", "b")]
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err.decode()[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = _finished(study)
    assert len(finished) == 8
    assert len({t.number for t in finished}) == 8
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 8  # no parameters drawn twice
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both processes ran trials
    for name in ("a", "b"):
        run = load_run(tmp_path / name)
        assert run.state == "completed" and run.model["hyper"] == study.best_trial.params
        assert len(json.loads((tmp_path / name / "search.json").read_text())) == 8


def test_a_killed_workers_trial_is_run_again_by_another(tmp_path):
    """A worker killed mid-trial leaves a RUNNING trial whose heartbeat stops: once it is stale (30 s), the
    next worker marks it failed and runs its parameters again, and the study still ends with its trials."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    first = _worker(tmp_path / "a", storage, trials=3, epochs=12)
    deadline = time.monotonic() + 240
    running = []
    while not running:
        assert time.monotonic() < deadline and first.poll() is None, "no trial started"
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="shared", storage=storage)
        except KeyError:  # not created yet
            continue
        # a trial under way (its objective has begun: the heartbeat is recorded from then on)
        running = [t for t in study.get_trials() if t.state.name == "RUNNING" and "worker" in t.user_attrs]
    first.kill()
    first.communicate()
    killed = running[0]
    second = _worker(tmp_path / "b", storage, trials=3, epochs=12)
    _, err = second.communicate(timeout=400)
    assert second.returncode == 0, err.decode()[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    assert study.trials[killed.number].state.name == "FAIL"
    finished = _finished(study)
    assert len(finished) == 3
    retried = [t for t in finished if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params


def test_a_marked_trial_always_has_a_heartbeat_so_it_can_go_stale(tmp_path):
    """A process killed right after marking its trial, before Optuna's heartbeat thread wrote, left a trial
    neither stale (no heartbeat) nor orphaned (marked): every other worker waited for ever (CI saw it)."""
    from optuna.storages import RDBStorage

    from posterlab.training.study import fail_stale, mark_worker

    store = RDBStorage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=60, grace_period=1)
    study = optuna.create_study(storage=store, study_name="s")
    trial = study.ask()  # no heartbeat thread: the process "dies" right after the mark
    mark_worker(study, trial)
    assert "worker" in study.trials[trial.number].user_attrs
    time.sleep(2.5)  # SQLite keeps heartbeats to the second: more than the 1-s grace after truncation
    fail_stale(study)
    assert study.trials[trial.number].state.name == "FAIL"


def test_a_trial_orphaned_before_its_first_heartbeat_is_failed_and_queued_again(tmp_path):
    """A process that dies between taking a trial and starting it leaves no heartbeat, so Optuna never
    calls the trial stale: posterlab fails it after twice the grace period and queues its parameters."""
    from posterlab.training.study import fail_orphans, storage

    study = optuna.create_study(storage=storage(f"sqlite:///{tmp_path / 's.db'}"), study_name="s")
    study.enqueue_trial({"lr": 0.01})
    orphan = study.ask()  # taken, never started: no worker mark, no heartbeat
    fail_orphans(study, after_s=3600)
    assert study.trials[orphan.number].state.name == "RUNNING"  # too young to call dead
    fail_orphans(study, after_s=0)
    assert study.trials[orphan.number].state.name == "FAIL"
    (waiting,) = [t for t in study.trials if t.state.name == "WAITING"]
    assert waiting.system_attrs["fixed_params"] == {"lr": 0.01}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: TrainConfig(search_trials=4, search_storage="sqlite:///x.db"),
            "--storage and --study go together",
        ),
        (lambda: TrainConfig(search_storage="sqlite:///x.db", search_study="s"), "add --search N"),
        (lambda: TrainConfig(search_sampler="grid"), "search_sampler"),
    ],
)
def test_search_settings_are_checked(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_search_under_torchrun_trains_every_trial_on_both_ranks(cluster):  # noqa: F811
    """Under torchrun rank 0 alone talks to the study and hands each trial (and each prune verdict) to
    rank 1, which trains in step: the job completes with the study's trials, and rank 1 wrote nothing
    but cache entries (no second study, no run files)."""
    from posterlab import faults
    from tests.training.test_distributed import _config, _config_file, _finish, _launch

    config = _config("torchrun-search", epochs=2, limit=80)
    config = RunConfig(config.data, dataclasses.replace(config.train, search_trials=3), name=config.name)
    process = _launch(cluster, ["--config", str(_config_file(cluster, config)), "-q"], nproc=2, log="search")
    _finish(cluster, process, log="search")
    run_dir = cluster["checkpoints"] / "torchrun-search"
    run = load_run(run_dir)
    assert run.state == "completed" and run.environment["world_size"] == 2
    study = _study(run_dir / STUDY_FILE)
    assert len(_finished(study)) == 3
    assert run.model["hyper"] == study.best_trial.params
    assert not faults.written_outside(cluster["tmp"], 1, cluster["env"]["POSTERLAB_CACHE_DIR"])


def test_a_storage_without_its_driver_names_the_fix():
    from posterlab.training.study import storage

    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("psycopg2 is installed here")
    with pytest.raises(ConfigError, match="database driver is missing.*pip install psycopg2-binary"):
        storage("postgresql://bench@127.0.0.1/posterlab")
