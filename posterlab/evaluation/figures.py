"""Figure builders (plotly) and poster grids (PIL), shared by the workbench and the demo.

Each takes numbers from ``stats`` / ``interpret`` / a run folder and returns a figure; none computes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

# plotly's tool buttons down the right side: along the top (its default) they covered a title's start
_LAYOUT = {
    "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
    "template": "plotly_white",
    "modebar": {"orientation": "v"},
}
PALETTE = px.colors.qualitative.D3 + px.colors.qualitative.Set2 + px.colors.qualitative.Pastel1
REFERENCE = {"dash": "dot", "color": "grey"}  # chance, perfect calibration: never a label's colour


def label_colours(labels: list[str] | tuple[str, ...]) -> dict[str, str]:
    """One colour per label, by its place in the run's label list: the same label keeps its colour in
    every chart (ROC, precision-recall, per-label bars, the embedding map)."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def bar(
    series: pd.Series, title: str, x: str = "label", y: str = "posters", horizontal: bool = False
) -> go.Figure:
    frame = series.rename(y).rename_axis(x).reset_index()
    figure = px.bar(
        frame,
        x=y if horizontal else x,
        y=x if horizontal else y,
        orientation="h" if horizontal else "v",
        title=title,
    )
    if horizontal:
        figure.update_yaxes(autorange="reversed")
    return figure.update_layout(**_LAYOUT)


def heatmap(matrix: pd.DataFrame, title: str, normalise_rows: bool = False) -> go.Figure:
    values = matrix.to_numpy(dtype=float)
    if normalise_rows:
        values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    figure = px.imshow(
        values,
        x=list(map(str, matrix.columns)),
        y=list(map(str, matrix.index)),
        text_auto=".2f" if normalise_rows else True,
        color_continuous_scale="Blues",
        title=title,
        aspect="auto",
    )
    return figure.update_layout(**_LAYOUT)


def balance_before_after(table: pd.DataFrame) -> go.Figure:
    """Grouped bars of posters per label before and after balancing."""
    long = table.melt(id_vars="label", value_vars=["before", "after"], var_name="when", value_name="posters")
    return px.bar(
        long,
        x="label",
        y="posters",
        color="when",
        barmode="group",
        title="Training posters per label, before and after balancing",
    ).update_layout(**_LAYOUT)


def split_balance(frame: pd.DataFrame) -> go.Figure:
    long = frame.reset_index().melt(id_vars="label", var_name="split", value_name="share")
    return px.bar(
        long,
        x="label",
        y="share",
        color="split",
        barmode="group",
        title="Share of posters per label in each split",
    ).update_layout(yaxis_tickformat=".0%", **_LAYOUT)


def sizes(frame: pd.DataFrame) -> go.Figure:
    return px.scatter(
        frame, x="width", y="height", opacity=0.4, title="Poster sizes (px)", hover_data=["id"]
    ).update_layout(**_LAYOUT)


def curves(histories: dict[str, list[dict]], metric: str) -> go.Figure:
    """One line per run of ``metric`` against epoch (``train_loss``, ``val_loss``, ``val_map`` ...)."""
    figure = go.Figure()
    for name, rows in histories.items():
        points = [(r["epoch"], r[metric]) for r in rows if r.get(metric) is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name))
    return figure.update_layout(title=metric.replace("_", " "), xaxis_title="epoch", **_LAYOUT)


def loss_curves(history: list[dict], loss: str = "") -> go.Figure:
    """Training and validation loss per epoch: the same criterion on both (``loss`` names it)."""
    figure = go.Figure()
    for key in ("train_loss", "val_loss"):
        figure.add_trace(
            go.Scatter(
                x=[r["epoch"] for r in history],
                y=[r[key] for r in history],
                mode="lines+markers",
                name=key.replace("_", " "),
            )
        )
    title = f"loss: {loss} (training and validation)" if loss else "loss (training and validation)"
    return figure.update_layout(title=title, xaxis_title="epoch", **_LAYOUT)


def roc(points: dict[str, dict], title: str = "ROC", labels: list[str] | None = None) -> go.Figure:
    colours = label_colours(labels or list(points))
    figure = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=REFERENCE, name="chance")])
    for label, p in points.items():
        figure.add_trace(
            go.Scatter(
                x=p["fpr"],
                y=p["tpr"],
                mode="lines",
                name=f"{label} (AUC {p['auc']:.2f})",
                line={"color": colours[label]},
            )
        )
    return figure.update_layout(
        title=title, xaxis_title="false positive rate", yaxis_title="true positive rate", **_LAYOUT
    )


def precision_recall(
    points: dict[str, dict], title: str = "Precision-recall", labels: list[str] | None = None
) -> go.Figure:
    colours = label_colours(labels or list(points))
    figure = go.Figure()
    for label, p in points.items():
        figure.add_trace(
            go.Scatter(
                x=p["recall"],
                y=p["precision"],
                mode="lines",
                name=f"{label} (AP {p['ap']:.2f})",
                line={"color": colours[label]},
            )
        )
    return figure.update_layout(title=title, xaxis_title="recall", yaxis_title="precision", **_LAYOUT)


def per_label_bars(
    per_label: dict[str, dict], metric: str = "f1", baseline: dict[str, dict] | None = None
) -> go.Figure:
    labels = list(per_label)
    colours = label_colours(labels)
    figure = go.Figure(
        [
            go.Bar(
                x=labels,
                y=[per_label[k][metric] for k in labels],
                name="model",
                marker_color=[colours[k] for k in labels],
            )
        ]
    )
    if baseline:
        figure.add_trace(
            go.Bar(
                x=labels, y=[baseline[k][metric] for k in labels], name="baseline", marker_color="lightgrey"
            )
        )
    return figure.update_layout(title=f"{metric} per label", barmode="group", **_LAYOUT)


def reliability_plot(table: pd.DataFrame, title: str = "Reliability") -> go.Figure:
    figure = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=REFERENCE, name="calibrated")])
    figure.add_trace(
        go.Scatter(
            x=table["predicted"],
            y=table["observed"],
            mode="lines+markers",
            text=table["posters"],
            name="model",
        )
    )
    return figure.update_layout(
        title=title, xaxis_title="mean predicted probability", yaxis_title="observed frequency", **_LAYOUT
    )


def scores_bar(scores: dict[str, float], thresholds: dict[str, float] | None = None) -> go.Figure:
    """One poster's probabilities, with each label's threshold as a tick."""
    labels = sorted(scores, key=lambda k: scores[k])
    figure = go.Figure([go.Bar(x=[scores[k] for k in labels], y=labels, orientation="h", name="probability")])
    if thresholds:
        figure.add_trace(
            go.Scatter(
                x=[thresholds[k] for k in labels],
                y=labels,
                mode="markers",
                marker={"symbol": "line-ns-open", "size": 18, "color": "black"},
                name="threshold",
            )
        )
    return figure.update_layout(xaxis_range=[0, 1], height=60 + 28 * len(labels), **_LAYOUT)


def feature_maps(maps: np.ndarray, title: str) -> go.Figure:
    """A grid of activation maps (c, h, w)."""
    count = len(maps)
    cols = min(8, count)
    rows = math.ceil(count / cols)
    grid = np.full((rows * (maps.shape[1] + 1), cols * (maps.shape[2] + 1)), np.nan)
    for i, m in enumerate(maps):
        r, c = divmod(i, cols)
        grid[
            r * (m.shape[0] + 1) : r * (m.shape[0] + 1) + m.shape[0],
            c * (m.shape[1] + 1) : c * (m.shape[1] + 1) + m.shape[1],
        ] = m
    figure = px.imshow(grid, color_continuous_scale="Viridis", title=title)
    figure.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
    return figure.update_layout(coloraxis_showscale=False, **_LAYOUT)
