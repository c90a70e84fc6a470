"""Page pieces used by more than one page: label selection, run pickers, training progress, errors."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from posterlab.config import BALANCE, AugmentConfig, LabelConfig, parse_threshold_target
from posterlab.data.labels import genre_counts
from posterlab.data.sources import PosterDataset
from posterlab.errors import ConfigError, DataError, one_line
from posterlab.runs import Run
from posterlab.training.manager import Snapshot

TARGETS = {
    "genres": "Genres (multi-label)",
    "label": "One label per poster",
    "threshold": "A numeric column over a threshold",
}
HOW = {"top": "Top N", "pick": "Pick", "all": "All"}
OPERATORS = (">=", ">", "<=", "<")
_NOT_NUMERIC = {"id", "image", "genres", "label", "digest", "width", "height"}
TOP_N = 6  # what "Top N" offers first: the six genres of the seed reports
STATUS_ICONS = {
    "running": ":material/autorenew:",
    "completed": ":material/check_circle:",
    "stopped": ":material/stop_circle:",
    "failed": ":material/error:",
}


def show_error(error: BaseException, path: str = "") -> None:
    """An error as one ``st.error`` line (an uploaded dataset named by its file's name, not its cache path)."""
    from workbench.state import display_name, is_upload

    text = one_line(error)
    if path and is_upload(path):
        text = text.replace(path, display_name(path)).replace(str(Path(path).parent), display_name(path))
    st.error(text, icon=":material/error:")


def require_dataset() -> tuple[str, PosterDataset]:
    """The sidebar's dataset (path, posters); stops the page with a hint when there is none."""
    from workbench import state

    path = state.dataset_path()
    if not path:
        st.info("Pick a dataset in the sidebar (the embedded sample works out of the box).")
        st.stop()
    return path, state.dataset(path)


def parse_merges(text: str) -> tuple[tuple[str, str], ...]:
    """``'Musical=Music, Sci-Fi=Science Fiction'`` → ``(('Musical', 'Music'), ('Sci-Fi', 'Science Fiction'))``."""
    pairs = []
    for part in re.split(r"[,;\n]", text or ""):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"merge {part.strip()!r}: write FROM=INTO, e.g. Musical=Music")
        source, target = (side.strip() for side in part.split("=", 1))
        if not source or not target:
            raise ConfigError(f"merge {part.strip()!r}: both sides need a genre name, e.g. Musical=Music")
        pairs.append((source, target))
    return tuple(pairs)


def numeric_columns(frame: pd.DataFrame) -> list[str]:
    """Columns that can carry a threshold target (mostly numbers, more than two values)."""
    found = []
    for column in frame.columns:
        if column in _NOT_NUMERIC:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.notna().mean() >= 0.5 and values.nunique() > 2:
            found.append(column)
    return found


def _usable_targets(frame: pd.DataFrame) -> dict[str, bool]:
    """Which kinds of target this dataset can give: genres, one label, a rule on a numeric column."""
    has_genres = "genres" in frame and int(frame["genres"].map(len).sum()) > 0
    has_label = "label" in frame and bool(frame["label"].notna().any())
    return {"genres": has_genres, "label": has_genres or has_label, "threshold": bool(numeric_columns(frame))}


def _target_choice(key: str, default: LabelConfig, usable: dict[str, bool], name: str) -> str | None:
    """The kind of target; with neither genres nor labels, the user must choose (never a silent guess)."""
    kinds = [kind for kind, ok in usable.items() if ok]
    if not kinds:
        raise DataError(
            f"{name}: has no genres, labels or numeric columns to learn from; add a genres or label "
            "column to its labels.csv"
        )
    wanted = "threshold" if parse_threshold_target(default.target) else default.target
    guessable = usable["genres"] or usable["label"]
    if not guessable:
        st.warning(
            f"`{name}` has no `genres` or `label` column, so there is nothing to predict by default. Choose a "
            "rule on one of its numeric columns below, or add a `genres` or `label` column to its labels.csv.",
            icon=":material/help:",
        )
    return st.radio(
        "What to predict",
        kinds,
        index=(kinds.index(wanted) if wanted in kinds else 0) if guessable else None,
        format_func=TARGETS.get,
        horizontal=True,
        key=f"{key}_target",
        persist_state="session",
        bind="query-params",
        help="Genres: any number per poster (sigmoid). One label: a `label` column, or the one selected "
        "genre of posters that carry exactly one (softmax). Threshold: e.g. imdb_score >= 7.",
    )


def label_controls(
    frame: pd.DataFrame, key: str, name: str = "this dataset", default: LabelConfig | None = None
) -> LabelConfig | None:
    """Widgets for what to learn (target, which labels, merges); returns the ``LabelConfig`` they describe,
    or None while the user has still to choose a target (or a number typed is out of range). Initial values come from ``LabelConfig()``.

    Raises ``ConfigError`` / ``DataError`` with a one-line message for a selection that cannot work."""
    default = default or LabelConfig()
    usable = _usable_targets(frame)
    kind = _target_choice(key, default, usable, name)
    if kind is None:
        return None
    if kind == "threshold":
        return _threshold_controls(frame, key, numeric_columns(frame), parse_threshold_target(default.target))
    return _label_selection(
        frame,
        key,
        default,
        kind,
        from_label_column=kind == "label" and "label" in frame and bool(frame["label"].notna().any()),
    )


def _label_selection(
    frame: pd.DataFrame, key: str, default: LabelConfig, kind: str, from_label_column: bool
) -> LabelConfig | None:
    """Which labels (top N, a pick, all), synonym merges, the minimum count and the Other bucket (None
    while a number is out of range: refused under its field)."""
    how_col, amount_col = st.columns([1, 1])
    merge_col = st.container()
    min_col, other_col = st.columns([1, 1], vertical_alignment="bottom")
    merge = parse_merges(
        merge_col.text_input(
            "Merge synonyms",
            value=", ".join(f"{a}={b}" for a, b in default.merge),
            placeholder="Musical=Music, Sci-Fi=Science Fiction",
            key=f"{key}_merge",
            persist_state="session",
            bind="query-params",
            help="FROM=INTO pairs, comma-separated: posters tagged FROM count as INTO.",
        )
    )
    counts = (
        frame["label"].dropna().map(str).value_counts().rename("posters")
        if from_label_column
        else genre_counts(frame, merge)
    )
    same_kind = default.target == kind
    default_how = ("pick" if default.genres else "top" if default.top_n else "all") if same_kind else "all"
    how = how_col.radio(
        "Which labels",
        list(HOW),
        index=list(HOW).index(default_how),
        format_func=HOW.get,
        horizontal=True,
        key=f"{key}_how",
        persist_state="session",
        bind="query-params",
    )
    top_n, picked = _how_many(amount_col, key, how, counts, default if same_kind else LabelConfig())
    min_count = bounded_number(
        min_col,
        "Min. posters per label",
        1,
        None,
        default.min_count,
        key=f"{key}_min",
        persist_state="session",
        bind="query-params",
        help="Labels with fewer posters are left out (or merged into Other).",
    )
    other = other_col.checkbox(
        "Merge the rest into “Other”",
        value=default.other,
        key=f"{key}_other",
        persist_state="session",
        bind="query-params",
        help="Posters whose labels are all outside the selection get the label Other instead of being dropped.",
    )
    if min_count is None or top_n == 0:  # a number out of range, refused under its field
        return None
    return LabelConfig(
        target=kind, genres=picked, top_n=top_n, min_count=int(min_count), other=other, merge=merge
    )


def _how_many(
    column, key: str, how: str, counts: pd.Series, default: LabelConfig
) -> tuple[int | None, tuple]:
    """(top_n, picked labels) for the chosen way of selecting labels."""
    if how == "top":
        top = bounded_number(
            column,
            "How many of the most common",
            1,
            max(1, len(counts)),
            min(default.top_n or TOP_N, max(1, len(counts))),
            key=f"{key}_top",
            persist_state="session",
            bind="query-params",
        )
        return (0 if top is None else int(top)), ()  # 0: refused (``_label_selection``)
    if how == "pick":
        chosen = [g for g in default.genres if g in counts.index]
        picked = tuple(
            column.multiselect(
                "Labels",
                list(counts.index),
                default=chosen or list(counts.index[: min(4, len(counts))]),
                format_func=lambda g: f"{g} ({counts[g]})",
                key=f"{key}_pick",
                persist_state="session",
                bind="query-params",
            )
        )
        if not picked:
            raise ConfigError("pick at least one label (or choose Top N / All)")
        return None, picked
    column.caption(
        f"All {len(counts)} labels: "
        + ", ".join(map(str, counts.index[:12]))
        + ("…" if len(counts) > 12 else "")
    )
    return None, ()


def _threshold_controls(
    frame: pd.DataFrame, key: str, numeric: list[str], default: tuple[str, str, float] | None
) -> LabelConfig:
    """Column, comparison and value of a binary target such as ``imdb_score>=7``."""
    column0, op0, value0 = default or (
        "imdb_score" if "imdb_score" in numeric else numeric[0],
        ">=",
        None,
    )
    left, middle, right = st.columns([2, 1, 1])
    forget_invalid(f"{key}_column", numeric)
    column = left.selectbox(
        "Column",
        numeric,
        index=numeric.index(column0) if column0 in numeric else 0,
        key=f"{key}_column",
        persist_state="session",
        bind="query-params",
    )
    op = middle.selectbox(
        "Rule",
        OPERATORS,
        index=OPERATORS.index(op0),
        key=f"{key}_op",
        persist_state="session",
        bind="query-params",
    )
    values = pd.to_numeric(frame[column], errors="coerce")
    start = value0 if value0 is not None and column == column0 else round(float(values.median()), 1)
    value = right.number_input(
        "Value", value=float(start), key=f"{key}_value_{column}", persist_state="session", bind="query-params"
    )
    known = values.dropna()
    share = float(
        {">=": known >= value, ">": known > value, "<=": known <= value, "<": known < value}[op].mean()
    )
    st.caption(f"{share:.0%} of posters with a {column} value are positive.")
    return LabelConfig(target=f"{column}{op}{value:g}")


BALANCE_HELP = {
    "none": "train on the posters as they are",
    "weights": "weigh the loss: BCE pos_weight / CE class weights",
    "undersample": "drop posters of common labels down to the rarest label's count",
    "oversample": "repeat posters of rare labels (augmented differently each epoch)",
}


def augment_controls(key: str) -> AugmentConfig:
    """A row of augmentation controls (defaults from ``AugmentConfig``), remembered per session."""
    d = AugmentConfig()
    a1, a2, a3, a4, a5, a6 = st.columns(6)
    remember = {"persist_state": "session", "bind": "query-params"}
    return AugmentConfig(
        flip=a1.checkbox("Flip", d.flip, key=f"{key}_flip", **remember),
        random_crop=a2.checkbox("Random crop", d.random_crop, key=f"{key}_crop", **remember),
        rotate=a3.slider("Rotate (°)", 0.0, 30.0, d.rotate, key=f"{key}_rotate", **remember),
        shift=a4.slider("Shift", 0.0, 0.3, d.shift, key=f"{key}_shift", **remember),
        shear=a5.slider("Shear (°)", 0.0, 20.0, d.shear, key=f"{key}_shear", **remember),
        zoom=a6.slider("Zoom ±", 0.0, 0.5, d.zoom, key=f"{key}_zoom", **remember),
    )


def balance_control(key: str) -> str:
    """How to balance the training split (shared by the Dataset and Train pages through ``key``)."""
    return st.selectbox(
        "Balancing (training split)",
        BALANCE,
        format_func=lambda m: f"{m}: {BALANCE_HELP[m]}",
        key=f"{key}_balance",
        persist_state="session",
        bind="query-params",
    )


def bounded_number(
    where, label: str, low: float, high: float | None, value: float, key: str, **kwargs
) -> float | None:
    """A number input whose range is checked here rather than in the browser; None when out of range.

    Streamlit's own ``min_value`` / ``max_value`` keep an out-of-range number typed in the box (a red
    border) while Python goes on with the previous value, so a run could train with a value the user
    never saw (issue 18: patience 150 typed, 40 used). Here the typed value always reaches Python, and
    one out of range is refused where it was typed: an error under the field, and None, so the form has
    no config and Start stays disabled."""
    typed = where.number_input(label, value=value, key=key, **kwargs)
    if typed is None:
        where.error(f"{label}: give a number", icon=":material/block:")
        return None
    if typed < low or (high is not None and typed > high):
        span = (
            f"from {_number(low)} to {_number(high)}" if high is not None else f"of at least {_number(low)}"
        )
        where.error(
            f"{label}: {_number(typed)} is out of range; give a value {span}", icon=":material/block:"
        )
        return None
    return typed


def _number(value: float) -> str:
    """A bound as typed: 2147483647, not 2.14748e+09; 0.5, not 0.500000."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def forget_invalid(key: str, options: Sequence) -> None:
    """Drop a remembered choice that is no longer among ``options`` (another run, another dataset)."""
    if key in st.session_state and st.session_state[key] not in list(options):
        del st.session_state[key]


def run_picker(
    runs: Sequence[Run], label: str, key: str, help: str | None = None, in_url: bool = False
) -> Run | None:
    """A select box over runs (newest first); the chosen run, or None when there are none.

    ``in_url``: the choice is kept in the page's URL under ``key`` (a refresh or a link comes back to
    it); otherwise it is keyed by every run's state too, so that a label that says "running" is redrawn
    once it ended."""
    if not runs:
        return None
    by_name = {run.name: run for run in runs}
    if not in_url:
        key = f"{key}_{zlib.crc32(repr([(run.name, run.state) for run in runs]).encode()):08x}"
    forget_invalid(key, list(by_name))
    name = st.selectbox(
        label,
        list(by_name),
        format_func=lambda n: f"{n}  ·  {by_name[n].state}  ·  {by_name[n].config.train.backbone}",
        key=key,
        help=help,
        persist_state="session",
        bind="query-params" if in_url else None,
    )
    return by_name.get(name)


STAGES = {
    "starting": "starting",
    "reading": "reading the posters and their labels",
    "building": "building the model",
    "downloading": "downloading posters",
    "scanning": "opening posters",
    "extracting": "computing",
    "searching": "searching hyper-parameters, trial",
    "evaluating": "evaluating",
}


def epoch_part(snapshot: Snapshot) -> float | None:
    """The share of the current epoch's batches done, from its last batch event (None: no batch event of
    this epoch yet)."""
    in_epoch = snapshot.detail == f"epoch {len(snapshot.history) + 1}" and snapshot.total
    return snapshot.done / snapshot.total if in_epoch else None


def progress(snapshot: Snapshot) -> tuple[float, str]:
    """(fraction done, one line saying what the run is doing or how it ended) for a progress bar.

    While training the bar covers all planned epochs (finished epochs, and the batches of the current
    one); before that, the stage at hand (opening posters, computing embeddings N/M). A run that ended
    shows how far it got, why it stopped, and its whole time (earlier sessions of a resumed run too)."""
    epochs = snapshot.epochs or 0
    finished = len(snapshot.history)
    if not snapshot.running:
        completed = snapshot.status == "completed"
        fraction = 1.0 if completed or not epochs else min(1.0, finished / epochs)
        text = f"{snapshot.status} after epoch {finished}/{epochs}" if epochs else snapshot.status
        if completed and finished >= epochs:
            text = "completed"
        elif completed:
            text += " (early stop: no better validation score for a while)"
        if snapshot.reason and snapshot.status == "stopped":
            text += f" ({snapshot.reason})"
        return fraction, f"{text} · took {elapsed(snapshot.elapsed)}"
    if snapshot.stage == "training" and epochs:
        part = epoch_part(snapshot)
        fraction = min(1.0, (finished + (part or 0.0)) / epochs)
        text = f"epoch {min(finished + 1, epochs)}/{epochs}" + (
            f" · batch {snapshot.done}/{snapshot.total}" if part is not None else ""
        )
    else:
        fraction = min(1.0, snapshot.done / snapshot.total) if snapshot.total else 0.0
        text = STAGES.get(snapshot.stage, snapshot.stage or "starting")
        if snapshot.stage == "extracting" and snapshot.detail:
            what, _, rate = snapshot.detail.partition(" · ")
            text = f"computing {what} {snapshot.done:,}/{snapshot.total:,}" + (f" · {rate}" if rate else "")
        elif snapshot.total:
            text += f" {snapshot.done:,}/{snapshot.total:,}" + (
                f" · {snapshot.detail}" if snapshot.detail else ""
            )
        elif snapshot.detail and snapshot.stage == "building":
            text += f" ({snapshot.detail})"
    text = f"{text} · {elapsed(snapshot.elapsed)}"
    if snapshot.stop_requested:
        text += " · stopping at the next batch…"
    return fraction, text


def ends_within(snapshot: Snapshot, seconds: float) -> bool:
    """Whether the run is expected to end within ``seconds``: its planned last epoch is under way (the
    rest of it, at the mean epoch's pace) or over (the test figures are being computed)."""
    epochs, finished = snapshot.epochs or 0, len(snapshot.history)
    if not snapshot.running or not epochs:
        return False
    if finished >= epochs:  # every epoch done: the test figures are being computed
        return True
    if snapshot.stage != "training" or not finished or finished < epochs - 1:
        return False
    left = 1.0 - (epoch_part(snapshot) or 0.0)
    mean = sum(row.get("seconds") or 0.0 for row in snapshot.history) / finished
    return left * mean < seconds


def integer_epochs(figure: go.Figure, epochs: int) -> go.Figure:
    """Whole-number epoch ticks (plotly would draw 1.5, 2.5 ... for short runs) over the epochs there are;
    after one epoch, its point over an axis from zero (plotly's range around a lone point ran from 0 to 2
    on x and below zero on y)."""
    figure.update_xaxes(tick0=1, dtick=max(1, -(-epochs // 10)), range=[0.5, max(epochs, 1) + 0.5])
    return figure.update_yaxes(rangemode="tozero") if epochs <= 1 else figure


def when(iso: str | None) -> str:
    """``'2026-11-21T12:07:58+00:00'`` → ``'2026-11-21 12:07 UTC'``."""
    try:
        return pd.Timestamp(iso).tz_convert("UTC").strftime("%Y-%m-%d %H:%M UTC") if iso else "?"
    except (ValueError, TypeError):
        return str(iso)


def elapsed(seconds: float) -> str:
    """``75.2`` → ``'1 min 15 s'``."""
    seconds = int(round(seconds or 0))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def live_container(key: str):
    """A container that a polling fragment redraws while a run trains, without CSS transitions: each redraw
    faded its elements in (and slid its progress bar), about 30 frames of the browser's CPU a redraw, and
    on a small machine that CPU is the training's (issue 21: chromium's CPU during a 5-6 s run from the
    Train page, paired before/after: 2.2 -> 1.3 s, 1.45 -> 1.1 s, 1.7 -> 1.4 s)."""
    st.html(
        f"<style>.st-key-{key}, .st-key-{key} * {{ transition: none !important; animation: none !important; }}"
        "</style>"
    )
    return st.container(key=key)


def training_sidebar(active: bool) -> None:
    """The sidebar's training indicator; polls the manager while a run trains, on every page."""
    with live_container("training_sidebar"):
        st.fragment(_training_sidebar, run_every=3.0 if active else None)(active)


def _training_sidebar(was_active: bool) -> None:
    """The indicator's body (a fragment): the active run's progress, or one page refresh when it ends."""
    from workbench.state import trainers

    manager = trainers().active()
    if manager is None:
        if was_active:
            st.rerun()  # the run ended: refresh the whole page once (tables, pickers, this panel)
        return
    snapshot = manager.snapshot()
    fraction, text = progress(snapshot)
    st.markdown(f"**Training** `{snapshot.name}`")
    st.progress(fraction, text=text)
    st.page_link("pages/train.py", label="Follow it on Train", icon=":material/monitoring:")


NOT_SCORED = "#d9d9d9"  # posters the run did not score: grey, never a colour that means something
OUTCOME_COLOURS = {"right": "#2ca02c", "partly": "#ff7f0e", "wrong": "#d62728"}
OTHER_COMBINATIONS = "(other combinations)"
MAP_CATEGORIES = 12  # distinct colours a reader can tell apart; the rarest combinations share one


def _categories(points: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(points, legend order, colours) for a categorical colour: outcomes in their own colours, "not
    scored" always grey, the most common values in distinct colours and the rest as one grey-blue."""
    from posterlab.evaluation.figures import PALETTE

    values = points["colour"].fillna("").astype(str)
    unscored = values.str.startswith("not scored")
    counts = values[~unscored].value_counts()
    if len(counts) > MAP_CATEGORIES:
        keep = set(counts.index[: MAP_CATEGORIES - 1])
        values = values.where(unscored | values.isin(keep), OTHER_COMBINATIONS)
        counts = values[~unscored].value_counts()
    points = points.assign(colour=values)
    if set(counts.index) <= set(OUTCOME_COLOURS):
        domain = [o for o in OUTCOME_COLOURS if o in counts.index]
        colours = [OUTCOME_COLOURS[o] for o in domain]
    else:
        domain = [v for v in counts.index if v != OTHER_COMBINATIONS]
        colours = [PALETTE[i % len(PALETTE)] for i in range(len(domain))]
        if OTHER_COMBINATIONS in counts.index:
            domain, colours = domain + [OTHER_COMBINATIONS], colours + ["#9fb3c8"]
    for value in sorted(set(values[unscored])):
        domain, colours = domain + [value], colours + [NOT_SCORED]
    return points, domain, colours


def map_chart(points: pd.DataFrame, colour: str, labels: list[str]):
    """The map as a Vega-Lite scatter: colour by the chosen column, the poster and title on hover, a
    box selects posters (``explore`` page, ``benchmarks/map.py``)."""
    import altair as alt

    from posterlab.evaluation.figures import label_colours

    # only what is drawn goes to the browser; "label: Drama" as a field would read as a field and a type
    shown = ["x", "y", "thumbnail", "title", "truth"] + [c for c in ("predicted", "outcome") if c in points]
    points = points[shown].assign(colour=points[colour])
    if colour == "loss":
        encoding = alt.Color("colour:Q", scale=alt.Scale(scheme="orangered"), title="loss")
    elif colour == "label quality":  # low = suspicious labels: red
        encoding = alt.Color(
            "colour:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]), title=colour
        )
    elif colour.startswith("label: "):
        tint = label_colours(labels).get(colour[7:], "#1f77b4")
        encoding = alt.Color(
            "colour:N", scale=alt.Scale(domain=["yes", "no"], range=[tint, "#d9d9d9"]), title=colour
        )
    else:
        points, domain, colours = _categories(points)
        encoding = alt.Color(
            "colour:N",
            scale=alt.Scale(domain=domain, range=colours),
            title=colour,
            # the whole name: Vega-Lite cuts labels at 160 px, and "Drama | Comedy | Roma…" stood for
            # three different combinations
            legend=alt.Legend(labelLimit=0, symbolLimit=0),
        )
    picked = alt.selection_interval(name="picked", encodings=["x", "y"])
    tooltip = [
        alt.Tooltip("thumbnail:N", title="image"),
        alt.Tooltip("title:N", title="title"),
        alt.Tooltip("truth:N", title="labels"),
    ] + [alt.Tooltip(f"{c}:N", title=c) for c in ("predicted", "outcome") if c in points]
    return (
        alt.Chart(points)
        .mark_circle(size=40, opacity=0.75)
        .encode(x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None), color=encoding, tooltip=tooltip)
        .add_params(picked)
        .properties(height=560)
    )
