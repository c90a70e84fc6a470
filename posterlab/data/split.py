"""Movie-level splits, stratified, with a fixed seed, made before any balancing."""

from __future__ import annotations

import logging

import numpy as np

from posterlab.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def split_indices(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Split rows (one row per movie) into train / val / test.

    Multi-label targets (2-D) use iterative stratification so that every genre keeps its share in
    each split; single-label targets use ordinary stratification. Indices come back sorted.
    """
    n = len(y)
    if n < 10:
        raise DataError(f"only {n} labelled posters; a train/val/test split needs at least 10")
    rows = np.arange(n)
    rest, test = _split(rows, y, test_fraction, seed)
    train, val = _split(rest, y[rest], val_fraction / (1.0 - test_fraction), seed + 1)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _split(rows: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if y.ndim == 2:
        from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        keep, held = next(splitter.split(rows.reshape(-1, 1), y))
        return rows[keep], rows[held]
    try:
        return train_test_split(rows, test_size=fraction, random_state=seed, stratify=y)
    except ValueError:
        # a class with a single poster cannot be stratified; fall back to a plain random split
        log.warning("some class has too few posters to stratify; using a random split")
        return train_test_split(rows, test_size=fraction, random_state=seed)


def kfold_indices(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K stratified folds over ``y`` (iterative stratification for multi-label)."""
    from sklearn.model_selection import StratifiedKFold

    rows = np.arange(len(y))
    smallest = len(y) if y.ndim == 2 else int(np.bincount(y).min(initial=len(y)) if len(y) else 0)
    if folds > smallest:
        raise DataError(
            f"{folds} folds need at least {folds} posters "
            + ("" if y.ndim == 2 else "of every class ")
            + f"in the training split (it has {smallest}); give fewer --folds"
        )
    if y.ndim == 2:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(rows[a], rows[b]) for a, b in splitter.split(rows.reshape(-1, 1), y)]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(rows[a], rows[b]) for a, b in splitter.split(rows.reshape(-1, 1), y)]
