"""Metrics, thresholds and baselines (numbers only; charts live in ``figures``).

Multi-label: micro/macro/samples F1, mAP, ROC AUC, Hamming loss, subset accuracy, hit@k.
Single-label: accuracy, balanced accuracy, macro F1, ROC AUC when binary, hit@k, confusion matrix.
Every report carries the same metrics for the trivial predictor (label prevalence / majority class).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm

from posterlab.config import EVERY_HEADLINE, HEADLINE, MULTILABEL_MONITORS, SINGLE_LABEL_MONITORS
from posterlab.data.labels import LabelRule
from posterlab.errors import ConfigError


def _safe(fn, *args, **kwargs) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(fn(*args, **kwargs))
        except ValueError:
            return float("nan")
    return value


# A threshold placed on a handful of validation positives is noise, and it is low: the F1 curve of a label
# seen on one or two posters peaks at their own (small) scores, so the label is then predicted for most
# posters. A probe of every genre on the embedded sample predicted 9.6 labels per test poster (2.0 true):
# 1.4 with this floor, micro-F1 0.18 -> 0.34 (README, "Thresholds").
MIN_POSITIVES = 10


def tune_thresholds(y_true: np.ndarray, scores: np.ndarray, min_positives: int = MIN_POSITIVES) -> np.ndarray:
    """Per-label threshold that maximises F1 on these (validation) scores; 0.5 for a label with fewer than
    ``min_positives`` positives there (too few to place a threshold on).

    The threshold lies midway between the lowest score it lets through and the next lower one (or 0): on
    the best cut itself, the poster scored there flipped on a round-off (another engine, float16 weights),
    and ``posterlab evaluate --split val`` gave other figures than the run's own (micro F1 0.610 / 0.629)."""
    thresholds = np.full(y_true.shape[1], 0.5, dtype=np.float64)
    for k in range(y_true.shape[1]):
        if y_true[:, k].sum() < max(1, min_positives):
            continue
        precision, recall, cuts = skm.precision_recall_curve(y_true[:, k], scores[:, k])
        if not len(cuts):
            continue
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        cut = float(cuts[int(np.nanargmax(f1[:-1]))])
        below = scores[:, k][scores[:, k] < cut]
        thresholds[k] = (cut + (float(below.max()) if below.size else 0.0)) / 2
    return thresholds


def hit_at_k(y_onehot: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of posters whose k best-scored labels include a true one (the seeds' "top-n accuracy")."""
    if len(scores) == 0:
        return float("nan")
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.take_along_axis(y_onehot, top, axis=1).max(axis=1).mean())


def multilabel_metrics(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    predicted = (scores >= thresholds[None, :]).astype(int)
    present = y.sum(axis=0) > 0
    both = present & (y.sum(axis=0) < len(y))
    return {
        "micro_f1": _safe(skm.f1_score, y, predicted, average="micro", zero_division=0),
        "macro_f1": _safe(
            skm.f1_score, y[:, present], predicted[:, present], average="macro", zero_division=0
        ),
        "samples_f1": _safe(skm.f1_score, y, predicted, average="samples", zero_division=0),
        "map": _safe(skm.average_precision_score, y[:, present], scores[:, present], average="macro"),
        "roc_auc": _safe(skm.roc_auc_score, y[:, both], scores[:, both], average="macro")
        if both.any()
        else float("nan"),
        "hamming": _safe(skm.hamming_loss, y, predicted),
        "subset_accuracy": _safe(skm.accuracy_score, y, predicted),
        "hit_at_1": hit_at_k(y, scores, 1),
        "hit_at_3": hit_at_k(y, scores, min(3, y.shape[1])),
    }


def single_label_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    predicted = probs.argmax(axis=1)
    k = probs.shape[1]
    onehot = np.eye(k, dtype=np.float32)[y]
    out = {
        "accuracy": _safe(skm.accuracy_score, y, predicted),
        "balanced_accuracy": _safe(skm.balanced_accuracy_score, y, predicted),
        "macro_f1": _safe(
            skm.f1_score, y, predicted, average="macro", labels=list(range(k)), zero_division=0
        ),
        "hit_at_2": hit_at_k(onehot, probs, min(2, k)),
    }
    if k == 2:
        out["roc_auc"] = (
            _safe(skm.roc_auc_score, y, probs[:, 1]) if len(set(y.tolist())) == 2 else float("nan")
        )
    return out


def per_label_table(
    y_onehot: np.ndarray,
    scores: np.ndarray,
    predicted: np.ndarray,
    labels: tuple[str, ...],
    thresholds: np.ndarray | None,
) -> dict[str, dict]:
    """label → support, precision, recall, F1, AP, ROC AUC, threshold, prevalence."""
    rows = {}
    for k, label in enumerate(labels):
        truth, score, guess = y_onehot[:, k], scores[:, k], predicted[:, k]
        has_both = 0 < truth.sum() < len(truth)
        rows[label] = {
            "support": int(truth.sum()),
            "precision": _safe(skm.precision_score, truth, guess, zero_division=0),
            "recall": _safe(skm.recall_score, truth, guess, zero_division=0),
            "f1": _safe(skm.f1_score, truth, guess, zero_division=0),
            "ap": _safe(skm.average_precision_score, truth, score) if truth.sum() else float("nan"),
            "roc_auc": _safe(skm.roc_auc_score, truth, score) if has_both else float("nan"),
            "threshold": float(thresholds[k]) if thresholds is not None else float("nan"),
            "prevalence": float(truth.mean()) if len(truth) else float("nan"),
        }
    return rows


def evaluate_scores(
    rule: LabelRule, y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray | None, prior: np.ndarray
) -> dict:
    """The full report for one split: metrics, per-label table, baseline, confusion (single-label).

    ``prior``: label prevalence (multi-label) or class shares (single-label) on the training split. The
    baseline scores every poster with it: single-label, that is "always the majority class";
    multi-label, with thresholds tuned for F1 as the model's are, it predicts every label for every
    poster (the F1-optimal constant predictor), so its AUC is 0.5 and its AP the prevalence.
    """
    n = len(y)
    prior_scores = np.tile(prior[None, :], (n, 1))
    if rule.multilabel:
        base_thresholds = prior - 1e-9  # every label clears its threshold
        report = {
            "metrics": multilabel_metrics(y, scores, thresholds),
            "baseline": multilabel_metrics(y, prior_scores, base_thresholds),
            "per_label": per_label_table(
                y, scores, (scores >= thresholds[None, :]).astype(int), rule.labels, thresholds
            ),
        }
    else:
        onehot = np.eye(len(rule.labels), dtype=np.float32)[y] if n else np.zeros((0, len(rule.labels)))
        predicted = np.eye(len(rule.labels), dtype=int)[scores.argmax(axis=1)] if n else onehot.astype(int)
        report = {
            "metrics": single_label_metrics(y, scores),
            "baseline": single_label_metrics(y, prior_scores),
            "per_label": per_label_table(onehot, scores, predicted, rule.labels, None),
            "confusion": skm.confusion_matrix(
                y, scores.argmax(axis=1), labels=list(range(len(rule.labels)))
            ).tolist()
            if n
            else [],
        }
    report["n"] = n
    return report


def headline(task: str, metrics: dict) -> dict[str, float]:
    """The headline metrics of ``task`` that ``metrics`` has (any task: every known headline metric)."""
    names = HEADLINE.get(task, EVERY_HEADLINE)
    return {name: metrics[name] for name in names if metrics.get(name) is not None}


def main_metric(rule: LabelRule, monitor: str) -> str:
    """The validation metric that early stopping and model selection watch."""
    allowed = MULTILABEL_MONITORS if rule.multilabel else SINGLE_LABEL_MONITORS
    if monitor == "auto":
        return allowed[0]
    if monitor not in allowed:
        kind = "multi-label" if rule.multilabel else "single-label"
        raise ConfigError(
            f"monitor {monitor!r} is not measured on a {kind} target; use one of: auto, {', '.join(allowed)}"
        )
    return monitor
