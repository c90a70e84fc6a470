"""Class imbalance: loss weights, under-sampling and over-sampling, always with before/after counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight


def _label_matrix(y: np.ndarray, num_labels: int) -> np.ndarray:
    if y.ndim == 2:
        return y
    out = np.zeros((len(y), num_labels), dtype=np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def loss_weights(y: np.ndarray, num_labels: int, max_weight: float = 20.0) -> np.ndarray:
    """Multi-label: BCE ``pos_weight`` = negatives / positives per label. Single-label: CE class
    weights = n / (k * count), normalised to mean 1. Both are capped at ``max_weight``."""
    counts = _label_matrix(y, num_labels).sum(axis=0)
    if y.ndim == 2:
        weights = (len(y) - counts) / np.maximum(counts, 1.0)
    else:
        weights = np.ones(num_labels)
        present = np.unique(y)
        weights[present] = compute_class_weight("balanced", classes=present, y=y)  # n / (k * count)
        weights = weights / weights.mean()
    return np.clip(weights, 0.0, max_weight).astype(np.float32)


def resample(y: np.ndarray, num_labels: int, method: str, seed: int) -> np.ndarray:
    """Row indices into ``y`` after balancing (``none`` / ``weights`` return every row once).

    ``undersample``: single-label keeps as many posters per class as the rarest class has;
    multi-label keeps a poster while any of its labels is still under that cap.
    ``oversample``: repeats posters of rare labels (augmented differently each epoch) until each
    label reaches the count of the most common one (multi-label: half of it, to limit repeats).
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(len(y))
    if method in ("none", "weights") or len(y) == 0:
        return rows
    matrix = _label_matrix(y, num_labels)
    counts = matrix.sum(axis=0)
    present = counts > 0
    if method == "undersample":
        cap = counts[present].min()
        kept, running = [], np.zeros(num_labels)
        for row in rng.permutation(rows):
            labels = matrix[row] > 0
            if (running[labels] < cap).any():
                kept.append(row)
                running += matrix[row]
        return np.sort(np.asarray(kept, dtype=np.int64))
    if method == "oversample":
        goal = counts.max() if y.ndim == 1 else counts.max() / 2
        extra: list[int] = []
        running = counts.copy()
        for label in np.argsort(counts):
            if not present[label] or running[label] >= goal:
                continue
            candidates = rows[matrix[:, label] > 0]
            need = int(goal - running[label])
            picks = rng.choice(candidates, size=need, replace=True)
            extra.extend(picks.tolist())
            running += matrix[picks].sum(axis=0)
        return np.sort(np.concatenate([rows, np.asarray(extra, dtype=np.int64)]))
    raise ValueError(f"unknown balancing method {method!r}")


def balance_table(y: np.ndarray, rows: np.ndarray, labels: tuple[str, ...]) -> pd.DataFrame:
    """Per-label counts and shares before and after balancing (``rows`` from ``resample``)."""
    matrix = _label_matrix(y, len(labels))
    before = matrix.sum(axis=0)
    after = matrix[rows].sum(axis=0)
    return pd.DataFrame(
        {
            "label": list(labels),
            "before": before.astype(int),
            "after": after.astype(int),
            "before_share": before / max(len(y), 1),
            "after_share": after / max(len(rows), 1),
        }
    )
