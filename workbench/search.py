"""The Train page's search parts: the search settings of the form, and a study's panel (Optuna's own
charts, the trials, and a new run from the best trial), live while a search runs and for a saved run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import streamlit as st

from posterlab.config import PRUNERS, SAMPLERS, RunConfig, TrainConfig, describe
from posterlab.errors import PosterlabError, one_line
from workbench.widgets import bounded_number

REMEMBER = {"persist_state": "session", "bind": "query-params"}  # as the rest of the Train form


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)


def search_controls(defaults: TrainConfig) -> dict:
    """The search settings (an Optuna study over lr, dropout and weight decay), in two columns."""
    left, right = st.columns(2)
    values = {
        "search_trials": _whole(
            bounded_number(
                left,
                "Search trials (0: no search)",
                0,
                500,
                defaults.search_trials,
                key="train_trials",
                help=describe(TrainConfig, "search_trials"),
                **REMEMBER,
            )
        ),
        "search_folds": _whole(
            bounded_number(
                left,
                "Folds per trial (0: validation split)",
                0,
                10,
                defaults.search_folds,
                key="train_folds",
                help=describe(TrainConfig, "search_folds"),
                **REMEMBER,
            )
        ),
        "search_sampler": left.selectbox(
            "Sampler",
            SAMPLERS,
            index=SAMPLERS.index(defaults.search_sampler),
            key="train_sampler",
            help=describe(TrainConfig, "search_sampler"),
            **REMEMBER,
        ),
        "search_pruner": right.selectbox(
            "Pruner",
            PRUNERS,
            index=PRUNERS.index(defaults.search_pruner),
            key="train_pruner",
            help=describe(TrainConfig, "search_pruner"),
            **REMEMBER,
        ),
        "search_storage": right.text_input(
            "Shared storage URL (optional)",
            defaults.search_storage,
            key="train_storage",
            placeholder="empty: SQLite in the run folder",
            help=describe(TrainConfig, "search_storage"),
            persist_state="session",  # never in the page's URL: a database URL can hold a password
        ).strip(),
        "search_study": right.text_input(
            "Study name (with a shared storage)",
            defaults.search_study,
            key="train_study",
            help=describe(TrainConfig, "search_study"),
            **REMEMBER,
        ).strip(),
    }
    return values


@st.cache_resource(max_entries=8, show_spinner=False)
def _cached_storage(url: str, file_id: int):
    from posterlab.training.study import storage

    return storage(url)


def _storage(url: str):
    """One Optuna storage per database for the whole app: opening one checks the schema (seconds on a busy
    machine), reading trials through it does not. A SQLite file is told apart by its inode too, so a run
    deleted and made again under the same name is not read through the old file's pooled connection."""
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    return _cached_storage(url, path.stat().st_ino if path is not None and path.exists() else 0)


@st.cache_data(max_entries=16, show_spinner=False)
def _figures(url: str, name: str, progress: tuple[int, int]) -> tuple[dict, str]:
    """Optuna's charts of a study, built again only when a trial has finished (``progress``): the live
    view polls every couple of seconds, and building figures holds the lock the training thread needs."""
    import optuna

    from posterlab.training.study import study_figures

    return study_figures(optuna.load_study(study_name=name, storage=_storage(url)))


def study_panel(
    run_dir: Path, config: RunConfig, key: str, on_start: Callable[[RunConfig], None] | None = None
) -> None:
    """A run's study: Optuna's history, parallel-coordinate and importance charts, the trials, and (with
    ``on_start``) the best trial's configuration one click from a new run."""
    from posterlab.training.study import (
        best_config,
        shown_url,
        storage_url,
        study_name,
        study_of,
        trials_table,
    )

    try:
        study = study_of(config.train, run_dir, _storage)
    except PosterlabError as error:
        st.warning(one_line(error), icon=":material/warning:")
        return
    if study is None:
        return
    url = storage_url(config.train, run_dir)
    rows = trials_table(study)
    running = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING")
    st.markdown(
        f"**Search**: study `{study_name(config.train)}` in `{shown_url(url)}` · {len(rows)} of "
        f"{config.train.search_trials} trials finished"
        + (f" · {running} running" if running else "")
        + f" · {config.train.search_sampler}, pruner {config.train.search_pruner}"
    )
    charts, note = _figures(url, study_name(config.train), (len(rows), len(study.trials)))
    if charts:
        for tab, (title, figure) in zip(st.tabs(list(charts)), charts.items(), strict=True):
            tab.plotly_chart(figure, key=f"{key}_{title}")
    if note:
        st.caption(note)
    if rows:
        with st.expander("Trials"):
            st.dataframe(rows, hide_index=True, placeholder="–")
    if on_start is None or not any(row["state"] == "complete" for row in rows):
        return
    best = best_config(config, study)
    hyper = best.train
    st.markdown(
        f"Best trial {study.best_trial.number}: lr `{hyper.lr:.3g}` · dropout `{hyper.dropout:.2f}` · "
        f"weight decay `{hyper.weight_decay:.3g}` ({study.user_attrs.get('monitor', 'value')} "
        f"{study.best_value:.3f})"
    )
    st.button(
        "New run with the best trial's config",
        icon=":material/play_arrow:",
        on_click=on_start,
        args=(best,),
        key=f"{key}_best_run",
        help="Trains the same data and model with these values and no search.",
    )
