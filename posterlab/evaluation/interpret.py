"""Interpretation data (numbers, not plots): predictions vs truth, top losses, confusion, per-label 2x2,
top-k / bottom-k posters by a label's probability, ROC/PR points, reliability.

Everything works on a *predictions table*: one row per poster with ``id, split, image, title, truth``
(pipe-joined labels) and ``p:<label>`` columns, as a run stores in ``predictions.csv`` for its validation
and test posters, or as ``score_frame`` makes for any labelled posters. Losses are the run's own training
criterion (``posterlab.training.criterion``), as fastai's ``Interpretation`` ranks by the learner's loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from posterlab.config import from_dict
from posterlab.data.labels import Labelled, LabelRule, one_hot
from posterlab.inference import Predictor
from posterlab.runs import Run
from posterlab.training.criterion import Criterion


def score_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("p:")]


def labels_of(table: pd.DataFrame) -> list[str]:
    return [c[2:] for c in score_columns(table)]


def truth_matrix(table: pd.DataFrame) -> np.ndarray:
    labels = labels_of(table)
    truth = table["truth"].fillna("").map(lambda s: set(str(s).split("|")) - {""})
    return np.array([[label in t for label in labels] for t in truth], dtype=np.float32).reshape(
        len(table), len(labels)
    )


def scores(table: pd.DataFrame) -> np.ndarray:
    return table[score_columns(table)].to_numpy(dtype=np.float64)


def criterion_of(model: dict) -> Criterion:
    """The criterion a run trained with (``model.json``); plain BCE / CE for runs that predate storing it."""
    if model.get("loss"):
        return Criterion.from_dict(model["loss"])
    return Criterion("bce" if model["rule"]["task"] == "multilabel" else "ce")


def load_predictions(run: Run, split: str | None = "test") -> pd.DataFrame:
    """A run's stored predictions, with ``predicted`` (labels over threshold / top class) and ``loss``."""
    table = run.predictions()
    if table is None:
        return pd.DataFrame()
    if split:
        table = table[table["split"] == split].reset_index(drop=True)
    rule = from_dict(LabelRule, run.model["rule"])
    thresholds = np.asarray(run.model["thresholds"]) if run.model.get("thresholds") else None
    return with_decisions(table, rule, thresholds, criterion_of(run.model))


def _targets(table: pd.DataFrame, rule: LabelRule) -> np.ndarray:
    """The truth as the criterion takes it: (n, k) 0/1 for multi-label, class indices otherwise."""
    y = truth_matrix(table)
    return y if rule.multilabel else y.argmax(axis=1)


def with_decisions(
    table: pd.DataFrame, rule: LabelRule, thresholds: np.ndarray | None, criterion: Criterion
) -> pd.DataFrame:
    """Add ``predicted`` (pipe-joined), ``correct`` and per-poster ``loss`` (the run's criterion; the
    stored column when the table has one) columns."""
    if table.empty:
        return table
    p = scores(table)
    y = truth_matrix(table)
    labels = np.asarray(labels_of(table))
    out = table.copy()
    if "loss" not in out or out["loss"].isna().any():
        out["loss"] = criterion.from_probabilities(p, _targets(table, rule))
    if rule.multilabel:
        decided = p >= thresholds[None, :]
        out["correct"] = (decided == (y > 0)).all(axis=1)
    else:
        decided = np.eye(p.shape[1], dtype=bool)[p.argmax(axis=1)]
        out["correct"] = (decided & (y > 0)).any(axis=1)
    out["predicted"] = ["|".join(labels[row]) for row in decided]
    return out


def score_frame(
    predictor: Predictor, labelled: Labelled, split: str = "all", batch_size: int = 8
) -> pd.DataFrame:
    """A predictions table for labelled posters scored now with ``predictor`` (unreadable ones left out)."""
    frame = labelled.frame
    paths = frame["image"].tolist()
    probs, errors = predictor.score_paths(paths, batch_size)
    onehot = one_hot(labelled.y, labelled.rule)
    table = pd.DataFrame(
        {
            "id": frame["id"].values,
            "split": split,
            "image": paths,
            "title": frame["title"].values if "title" in frame else "",
            "truth": ["|".join(np.asarray(labelled.rule.labels)[v > 0]) for v in onehot],
        }
    )
    for k, label in enumerate(predictor.labels):
        table[f"p:{label}"] = probs[:, k]
    table = table[[error is None for error in errors]].reset_index(drop=True)
    return with_decisions(table, predictor.rule, predictor.thresholds, criterion_of(predictor.info))


def top_losses(
    table: pd.DataFrame, k: int = 12, label: str | None = None, criterion: Criterion | None = None
) -> pd.DataFrame:
    """The posters the model got most wrong: by the run's loss (``loss`` column), or on one label by that
    label's share of it (its binary cross-entropy term, weighted as the criterion weighs it)."""
    if table.empty:
        return table
    if label is None:
        return table.sort_values("loss", ascending=False).head(k)
    criterion = criterion or Criterion("bce")
    index = labels_of(table).index(label)
    loss = criterion.label_losses(scores(table), truth_matrix(table))[:, index]
    return table.assign(label_loss=loss).sort_values("label_loss", ascending=False).head(k)


def ranked_by_label(table: pd.DataFrame, label: str, k: int = 8, lowest: bool = False) -> pd.DataFrame:
    """Top-k (or bottom-k) posters by one label's probability: the seeds' "most fresh / most rotten"."""
    return table.sort_values(f"p:{label}", ascending=lowest).head(k)


def confusion(table: pd.DataFrame) -> pd.DataFrame:
    """Single-label confusion matrix (rows: truth, columns: predicted)."""
    labels = labels_of(table)
    truth = truth_matrix(table).argmax(axis=1)
    guess = scores(table).argmax(axis=1)
    matrix = skm.confusion_matrix(truth, guess, labels=list(range(len(labels))))
    return pd.DataFrame(
        matrix, index=pd.Index(labels, name="truth"), columns=pd.Index(labels, name="predicted")
    )


def most_confused(matrix: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Off-diagonal cells, largest first: (truth, predicted, posters)."""
    rows = [
        (t, p, int(matrix.loc[t, p]))
        for t in matrix.index
        for p in matrix.columns
        if t != p and matrix.loc[t, p] > 0
    ]
    return pd.DataFrame(sorted(rows, key=lambda r: -r[2])[:k], columns=["truth", "predicted", "posters"])


def per_label_2x2(table: pd.DataFrame) -> pd.DataFrame:
    """Multi-label: true/false positives/negatives per label (decisions from ``predicted``)."""
    labels = labels_of(table)
    y = truth_matrix(table) > 0
    decided = np.array(
        [[label in set(str(p).split("|")) for label in labels] for p in table["predicted"].fillna("")]
    ).reshape(len(table), len(labels))
    return pd.DataFrame(
        {
            "label": labels,
            "tp": (y & decided).sum(axis=0),
            "fp": (~y & decided).sum(axis=0),
            "fn": (y & ~decided).sum(axis=0),
            "tn": (~y & ~decided).sum(axis=0),
        }
    )


def roc_pr_points(table: pd.DataFrame) -> dict[str, dict[str, list[float]]]:
    """label → fpr, tpr, precision, recall, auc, ap (one-vs-rest for single-label)."""
    y = truth_matrix(table)
    s = scores(table)
    out = {}
    for k, label in enumerate(labels_of(table)):
        if 0 < y[:, k].sum() < len(y):
            fpr, tpr, _ = skm.roc_curve(y[:, k], s[:, k])
            precision, recall, _ = skm.precision_recall_curve(y[:, k], s[:, k])
            out[label] = {
                "fpr": fpr.tolist(),
                "tpr": tpr.tolist(),
                "precision": precision.tolist(),
                "recall": recall.tolist(),
                "auc": float(skm.roc_auc_score(y[:, k], s[:, k])),
                "ap": float(skm.average_precision_score(y[:, k], s[:, k])),
            }
    return out


def reliability(table: pd.DataFrame, label: str | None = None, bins: int = 10) -> pd.DataFrame:
    """Calibration: mean predicted probability vs observed frequency per probability bin.

    Binary targets default to the second class; multi-label pools every label unless one is given.
    """
    labels = labels_of(table)
    y, s = truth_matrix(table), scores(table)
    if label is None and len(labels) == 2:
        label = labels[1]
    if label is not None:
        k = labels.index(label)
        y, s = y[:, k], s[:, k]
    else:
        y, s = y.ravel(), s.ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append(
                {
                    "bin": b,
                    "low": edges[b],
                    "high": edges[b + 1],
                    "predicted": float(s[mask].mean()),
                    "observed": float(y[mask].mean()),
                    "posters": int(mask.sum()),
                }
            )
    return pd.DataFrame(rows)


def exists(path: str) -> bool:
    return bool(path) and Path(path).is_file()
