"""Numbers for browsing a dataset: distributions, co-occurrence, cardinality, sizes, split balance."""

from __future__ import annotations

import numpy as np
import pandas as pd

from posterlab.data.labels import Labelled, merged_genres, one_hot


def cooccurrence(
    frame: pd.DataFrame, labels: list[str], merge: tuple[tuple[str, str], ...] = ()
) -> pd.DataFrame:
    """Posters carrying both genres (diagonal: posters carrying the genre)."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for genres in frame["genres"]:
        hits = [index[g] for g in merged_genres(tuple(genres), merge) if g in index]
        for a in hits:
            for b in hits:
                matrix[a, b] += 1
    return pd.DataFrame(matrix, index=labels, columns=labels)


def cardinality(frame: pd.DataFrame, merge: tuple[tuple[str, str], ...] = ()) -> pd.Series:
    """How many posters carry 0, 1, 2, ... genres."""
    counts = frame["genres"].map(lambda g: len(merged_genres(tuple(g), merge)))
    return counts.value_counts().sort_index().rename("posters")


def size_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Width / height statistics and the most common sizes (needs ``width``/``height`` from cleaning)."""
    stats = (
        frame[["width", "height"]]
        .describe()
        .T[["min", "50%", "mean", "max"]]
        .rename(columns={"50%": "median"})
    )
    return stats.round(1)


def common_sizes(frame: pd.DataFrame, top: int = 5) -> pd.Series:
    return (
        (frame["width"].astype(str) + "x" + frame["height"].astype(str))
        .value_counts()
        .head(top)
        .rename("posters")
    )


def split_balance(labelled: Labelled, splits: dict[str, np.ndarray]) -> pd.DataFrame:
    """Share of posters carrying each label, per split (stratification keeps these close)."""
    onehot = one_hot(labelled.y, labelled.rule)
    data = {name: onehot[rows].mean(axis=0) for name, rows in splits.items()}
    frame = pd.DataFrame(data, index=list(labelled.rule.labels))
    frame.index.name = "label"
    return frame
