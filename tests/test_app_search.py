"""The Train page's search: a study started from the form, Optuna's charts, a new run from the best trial."""

from __future__ import annotations

import json

import optuna

from tests.test_app import (  # noqa: F401  (fixtures)
    app,
    assert_clean,
    checkpoints,
    fake_demo,
    page,
    small_run,
    trainers,
    wait_until_idle,
)


def test_search_from_the_form_then_a_run_from_its_best_trial(app, checkpoints) -> None:  # noqa: F811
    page(app, "train")
    small_run(app, "apptest-search", epochs=2)
    app.number_input(key="train_trials").set_value(4)
    app.selectbox(key="train_sampler").set_value("random").run()
    assert_clean(app)
    app.button(key="train_start").click().run()
    assert_clean(app)
    wait_until_idle(app)
    run_dir = checkpoints / "apptest-search"
    config = json.loads((run_dir / "config.json").read_text())["run"]["train"]
    assert config["search_trials"] == 4 and config["search_sampler"] == "random"
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{run_dir / 'search.db'}")
    assert len(study.trials) == 4

    # the saved run (picked first: the newest) shows its study with Optuna's charts and the best trial
    assert any("study `search`" in str(m.value) and "4 of 4 trials" in str(m.value) for m in app.markdown)
    assert len(app.get("plotly_chart")) >= 3  # history, parallel coordinates (importances when computable)
    assert any(f"Best trial {study.best_trial.number}" in str(m.value) for m in app.markdown)

    app.button(key="train_saved_study_best_run").click().run()
    assert_clean(app)
    wait_until_idle(app)
    runs = [p for p in checkpoints.iterdir() if p.is_dir() and p.name not in ("apptest-search",)]
    newest = max(runs, key=lambda p: (p / "config.json").stat().st_mtime)
    train = json.loads((newest / "config.json").read_text())["run"]["train"]
    assert train["search_trials"] == 0
    assert {k: train[k] for k in ("lr", "dropout", "weight_decay")} == study.best_trial.params
    assert json.loads((newest / "status.json").read_text())["status"] == "completed"
    assert trainers().active() is None
