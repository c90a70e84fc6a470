"""Compare: every run against its baseline, curves of the ones picked, per-label tables, ROC/PR,
confusion; delete a run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from posterlab.config import EVERY_HEADLINE as HEADLINE
from posterlab.errors import PosterlabError, one_line
from posterlab.evaluation import figures, interpret
from posterlab.runs import Run, delete_run, list_runs, runs_table
from workbench import state, through_app
from workbench.widgets import forget_invalid, integer_epochs, when

through_app()  # before anything is drawn: see workbench.through_app

FLASH_KEY = "compare_flash"
LEADING = ("run", "status", "backbone", "mode", "data", "target")
TRAILING = ("epochs", "seconds", "started", "labels", "error")
MISSING = "–"  # a metric a run does not have (st.dataframe's own word for it is "None")


def delete(path: Path) -> None:
    """Delete button: remove a run folder (refused while it trains)."""
    try:
        delete_run(path)
        st.session_state[FLASH_KEY] = ("success", f"Deleted {path.name}")
        picked = st.session_state.get("compare_runs") or []
        if path.name in picked:  # out of the picks and the URL (a reload would have brought it back)
            st.session_state["compare_runs"] = [name for name in picked if name != path.name]
    except PosterlabError as error:
        st.session_state[FLASH_KEY] = ("error", one_line(error))


def runs_overview(runs: list[Run]) -> None:
    """The runs table: what was trained on what, how long it took, test metrics beside baselines, and a
    plain word where a run does no better than its baseline."""
    table = runs_table(runs)
    table["started"] = table["started"].map(when)
    table["data"] = table["data"].map(state.display_name)
    table = table.dropna(axis=1, how="all")  # a metric no run has is no column
    metrics = [m for m in HEADLINE if m in table.columns]
    table["vs baseline"] = [_verdict(row, metrics) for _, row in table.iterrows()]
    columns = [c for c in LEADING if c in table.columns]
    for metric in metrics:
        columns += [metric] + ([f"baseline_{metric}"] if f"baseline_{metric}" in table.columns else [])
    columns += ["vs baseline"] + [c for c in TRAILING if c in table.columns]
    config = {m: st.column_config.NumberColumn(m, format="%.3f") for m in metrics}
    config |= {
        f"baseline_{m}": st.column_config.NumberColumn(f"{m} (baseline)", format="%.3f") for m in metrics
    }
    config["seconds"] = st.column_config.NumberColumn("time (s)", format="%.0f")
    st.dataframe(
        table,
        hide_index=True,
        column_order=columns,
        column_config=config,
        placeholder=MISSING,
        key="compare_table",
    )
    st.caption(
        "Test-split metrics. The baseline predicts each label's training prevalence (multi-label) or the "
        "majority class (single-label): a run is only useful where it beats it."
    )


def curves(chosen: list[Run]) -> None:
    """A metric against epoch, one line per picked run."""
    keys = sorted({k for r in chosen for row in r.history for k in row} - {"epoch", "seconds", "lr"})
    if not keys:
        st.caption("These runs have no per-epoch history.")
        return
    default = next((k for k in ("val_map", "val_balanced_accuracy", "val_loss") if k in keys), keys[0])
    forget_invalid("compare_curve_metric", keys)
    metric = st.selectbox(
        "Metric per epoch",
        keys,
        index=keys.index(default),
        key="compare_curve_metric",
        persist_state="session",
        bind="query-params",
    )
    longest = max(len(r.history) for r in chosen)
    figure = figures.curves({r.name: r.history for r in chosen}, metric)
    st.plotly_chart(integer_epochs(figure, longest), key="compare_curves")


def _verdict(row: pd.Series, metrics: list[str]) -> str:
    """'below baseline (map)' when a headline metric is no better than the baseline's, else ''."""
    lower = {"hamming", "loss"}
    worse = [
        m
        for m in metrics
        if pd.notna(row.get(m))
        and pd.notna(row.get(f"baseline_{m}"))
        and (row[m] >= row[f"baseline_{m}"] if m in lower else row[m] <= row[f"baseline_{m}"])
    ]
    return f"below baseline ({', '.join(worse)})" if worse else ("above baseline" if metrics else "")


def test_metrics(chosen: list[Run]) -> None:
    """Model vs baseline for each picked run, one row per metric (metrics no picked run has are left out);
    a metric where a run does no better than its baseline is marked."""
    rows = {}
    for run in chosen:
        test = (run.metrics or {}).get("test", {})
        rows[run.name] = pd.Series(test.get("metrics", {}))
        rows[f"{run.name} (baseline)"] = pd.Series(test.get("baseline", {}))
    table = pd.DataFrame(rows).dropna(how="all")
    for run in chosen:
        if run.name in table:
            lower = table.index.isin(["hamming", "loss"])
            model, base = table[run.name], table[f"{run.name} (baseline)"]
            worse = (model >= base) & lower | (model <= base) & ~lower
            table[f"{run.name}: vs baseline"] = ["below" if w else "" for w in worse.fillna(False)]
    numbers = {
        c: st.column_config.NumberColumn(format="%.3f")
        for c in table.columns
        if not str(c).endswith(": vs baseline")
    }
    st.dataframe(table, column_config=numbers, placeholder=MISSING, key="compare_test_metrics")
    st.caption(
        "“below”: no better than the baseline that predicts the training prevalence (or majority class)."
    )


def per_label(chosen: list[Run]) -> None:
    """One run's per-label table and chart; the same metric for every picked run side by side."""
    run = _pick(chosen, "compare_label_run")
    table = pd.DataFrame(run.metrics["test"]["per_label"]).T
    metric = st.selectbox(
        "Metric",
        [c for c in ("f1", "ap", "roc_auc", "precision", "recall") if c in table],
        key="compare_label_metric",
        persist_state="session",
        bind="query-params",
    )
    rows = run.metrics["test"]["per_label"]
    # a model that guesses has the label's prevalence as its average precision: draw it as the baseline
    baseline = (
        {k: {"ap": v["prevalence"]} for k, v in rows.items()}
        if metric == "ap" and "prevalence" in table
        else None
    )
    st.plotly_chart(figures.per_label_bars(rows, metric, baseline), key="compare_label_bars")
    st.dataframe(table, placeholder=MISSING, key="compare_label_table")
    if "prevalence" in table:
        st.caption("prevalence is also the average precision (ap) of a model that guesses.")
    if len(chosen) > 1:
        st.markdown(f"**{metric} per label, every picked run**")
        side = pd.DataFrame(
            {r.name: {k: v.get(metric) for k, v in r.metrics["test"]["per_label"].items()} for r in chosen}
        )
        st.dataframe(side, placeholder=MISSING, key="compare_label_side")


def curves_roc(chosen: list[Run]) -> None:
    """ROC and precision-recall per label, and calibration, for one run's test posters."""
    run = _pick(chosen, "compare_roc_run")
    predictions = interpret.load_predictions(run, "test")
    if predictions.empty:
        st.info("This run stored no predictions.")
        return
    points = interpret.roc_pr_points(predictions)
    left, right = st.columns(2)
    labels = run.metrics["labels"]
    left.plotly_chart(figures.roc(points, labels=labels), key="compare_roc")
    right.plotly_chart(figures.precision_recall(points, labels=labels), key="compare_pr")
    st.plotly_chart(
        figures.reliability_plot(interpret.reliability(predictions), "Calibration on the test posters"),
        key="compare_reliability",
    )


def errors(chosen: list[Run]) -> None:
    """Single-label: the confusion matrix; multi-label: true/false positives/negatives per label."""
    run = _pick(chosen, "compare_confusion_run")
    predictions = interpret.load_predictions(run, "test")
    if predictions.empty:
        st.info("This run stored no predictions.")
        return
    if run.model and run.model["rule"]["task"] != "multilabel":
        matrix = interpret.confusion(predictions)
        share = st.toggle(
            "Share of each true class",
            key="compare_confusion_norm",
            persist_state="session",
            bind="query-params",
        )
        st.plotly_chart(
            figures.heatmap(matrix, "Confusion on the test posters (rows: truth)", normalise_rows=share),
            key="compare_confusion",
        )
        st.markdown("**Most confused**")
        st.dataframe(interpret.most_confused(matrix), hide_index=True, key="compare_most_confused")
    else:
        st.caption("Multi-label runs have no single confusion matrix: these are per-label decisions.")
        st.dataframe(interpret.per_label_2x2(predictions), hide_index=True, key="compare_2x2")


def _pick(chosen: list[Run], key: str) -> Run:
    """One of the picked runs (a select box only when there is a choice)."""
    if len(chosen) == 1:
        return chosen[0]
    names = [r.name for r in chosen]
    return chosen[names.index(st.selectbox("Run", names, key=key))]


def _target(run: Run) -> tuple:
    """What a run predicts: its task and its set of labels (the same genres in another order, e.g. a Top-N
    selection ranked on other posters, are the same target; each view matches labels by name)."""
    return (run.metrics or {}).get("task"), tuple(sorted((run.metrics or {}).get("labels", ())))


def comparable(runs: list[Run], most: int = 4) -> list[str]:
    """The newest finished run and the other runs that predict the same labels (the committed demo runs
    too, whatever their age): the runs a first look at Compare should put side by side."""
    finished = [r for r in runs if r.metrics]
    if not finished:
        return []
    target = _target(finished[0])
    return [r.name for r in finished if _target(r) == target][:most]


def delete_section(runs: list[Run]) -> None:
    """Delete a run folder, after a confirmation tick."""
    with st.expander("Delete a run", icon=":material/delete:"):
        names = [r.name for r in runs]
        name = st.selectbox("Run to delete", names, key="compare_delete_pick")
        sure = st.checkbox(f"Yes, delete the folder of {name}", key="compare_delete_sure")
        st.button(
            "Delete",
            type="primary",
            disabled=not sure,
            on_click=delete,
            args=(runs[names.index(name)].path,),
            key="compare_delete",
        )


folder = state.checkpoints()
st.title(":material/leaderboard: Compare")
flash = st.session_state.pop(FLASH_KEY, None)
if flash:
    (st.success if flash[0] == "success" else st.error)(flash[1])
runs = list_runs(folder)
if not runs:
    st.info(f"No runs in `{folder}` yet: start one on the Train page.")
    st.stop()

runs_overview(runs)
by_name = {r.name: r for r in runs}
finished = [r.name for r in runs if r.metrics]
picked = st.multiselect(
    "Runs to compare",
    finished,
    default=comparable(runs),
    key="compare_runs",
    persist_state="session",
    bind="query-params",
    help="Completed or stopped runs. At first: the newest finished run and those that predict the same labels.",
)
chosen = [by_name[n] for n in picked]
if len({_target(r) for r in chosen}) > 1:
    st.warning(
        "These runs predict different labels: curves and tables compare what each has in common.",
        icon=":material/compare_arrows:",
    )
if chosen:
    tabs = st.tabs(
        ["Curves", "Test metrics", "Per label", "ROC / PR", "Confusion"],
        key="compare_tab",
        on_change="rerun",
        bind="query-params",
    )
    for tab, view in zip(tabs, (curves, test_metrics, per_label, curves_roc, errors), strict=True):
        if tab.open:  # only the open tab is computed
            with tab:
                view(chosen)
else:
    st.caption("Pick finished runs to compare their curves and tables.")
delete_section(runs)
