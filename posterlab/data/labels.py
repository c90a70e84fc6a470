"""From raw genres / labels / numeric columns to training targets.

``resolve_rule`` turns a ``LabelConfig`` (top-N, a list, merges...) into an explicit ``LabelRule`` on
the data at hand; ``apply_rule`` labels any data with a rule. A run stores its rule, so evaluating it on
new posters uses the run's own labels, not a new top-N.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from posterlab.config import LabelConfig, parse_threshold_target
from posterlab.errors import DataError

OTHER = "Other"
_COMPLEMENT = {">=": "<", ">": "<=", "<=": ">", "<": ">="}


@dataclass(frozen=True)
class LabelRule:
    """An explicit labelling rule: which labels, in which order, and how rows map to them."""

    target: str  # genres | label | single (the one selected genre a poster carries) | threshold
    task: str  # multilabel | multiclass | binary
    labels: tuple[str, ...]
    other: bool = False
    merge: tuple[tuple[str, str], ...] = ()
    column: str | None = None
    op: str | None = None
    value: float | None = None

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def describe(self) -> str:
        if self.target == "threshold":
            return f"binary: {self.labels[1]} vs {self.labels[0]}"
        kind = {"multilabel": "multi-label", "multiclass": "single-label", "binary": "binary"}[self.task]
        return f"{kind} over {len(self.labels)} labels: {', '.join(self.labels)}"


@dataclass
class Labelled:
    """Rows that carry at least one label, their targets, and the rows dropped (with reasons)."""

    frame: pd.DataFrame
    y: np.ndarray  # multilabel: (n, k) float32 of 0/1; otherwise (n,) int64 class indices
    rule: LabelRule
    dropped: pd.DataFrame  # id, image, reason

    def counts(self) -> pd.Series:
        """Posters per label."""
        if self.rule.multilabel:
            values = self.y.sum(axis=0).astype(int)
        else:
            values = np.bincount(self.y, minlength=len(self.rule.labels))
        return pd.Series(values, index=list(self.rule.labels), name="posters")


def merged_genres(genres: tuple[str, ...], merge: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    mapping = dict(merge)
    out: list[str] = []
    for genre in genres:
        genre = mapping.get(genre, genre)
        if genre not in out:
            out.append(genre)
    return tuple(out)


def genre_counts(frame: pd.DataFrame, merge: tuple[tuple[str, str], ...] = ()) -> pd.Series:
    """How many posters carry each genre (after merges), most common first."""
    counter = Counter(g for genres in frame["genres"] for g in merged_genres(genres, merge))
    return pd.Series(dict(counter.most_common()), dtype=int, name="posters")


def _format_value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _select(counts: pd.Series, config: LabelConfig, what: str) -> list[str]:
    if config.genres:
        unknown = [g for g in config.genres if g not in counts.index]
        if unknown:
            known = ", ".join(counts.index[:30])
            raise DataError(f"unknown {what}(s) {', '.join(unknown)}; this dataset has: {known}")
        return list(config.genres)
    kept = counts[counts >= config.min_count]
    if config.top_n is not None:
        kept = kept.iloc[: config.top_n]
    return list(kept.index)


def resolve_rule(frame: pd.DataFrame, config: LabelConfig) -> LabelRule:
    """Make ``config`` explicit on ``frame``: pick the top-N, check the list, fix the label order."""
    threshold = parse_threshold_target(config.target)
    if threshold is not None:
        column, op, value = threshold
        if column not in frame.columns:
            raise DataError(
                f"target {config.target!r} needs a column {column!r}; columns: {', '.join(map(str, frame.columns))}"
            )
        numbers = pd.to_numeric(frame[column], errors="coerce")
        if numbers.notna().sum() == 0:
            raise DataError(
                f"column {column!r} has no numeric values; pick a numeric column for {config.target!r}"
            )
        shown = _format_value(value)
        labels = (f"{column}{_COMPLEMENT[op]}{shown}", f"{column}{op}{shown}")
        return LabelRule("threshold", "binary", labels, column=column, op=op, value=value)

    has_genres = "genres" in frame.columns and frame["genres"].map(len).sum() > 0
    has_label = "label" in frame.columns and frame["label"].notna().any()
    if config.target == "genres":
        if not has_genres:
            raise DataError(
                "target 'genres' needs a 'genres' column (pipe-separated, e.g. Action|Comedy); use --target label for one class per poster"
            )
        labels = _select(genre_counts(frame, config.merge), config, "genre")
        if config.other and OTHER not in labels:
            labels.append(OTHER)
        if not labels:
            raise DataError(f"no genre has at least {config.min_count} posters; lower min_count")
        return LabelRule("genres", "multilabel", tuple(labels), other=config.other, merge=config.merge)

    # target == "label": a label column, or the one selected genre a poster carries
    if has_label:
        counts = frame["label"].dropna().map(str).value_counts()
        labels = _select(counts, config, "label")
        target = "label"
    elif has_genres:
        labels = _select(genre_counts(frame, config.merge), config, "genre")
        target = "single"
    else:
        raise DataError(
            "target 'label' needs a 'label' column (or genres to pick one from); this dataset has neither"
        )
    if target == "label" and not config.genres:
        labels = sorted(labels)
    if target == "single":
        labels = _carried_alone(frame, labels, config)
    if config.other and OTHER not in labels:
        labels.append(OTHER)
    if len(labels) < 2:
        raise DataError(
            f"a single-label target needs at least two classes (found {', '.join(labels) or 'none'}); widen the selection"
        )
    task = "binary" if len(labels) == 2 else "multiclass"
    return LabelRule(target, task, tuple(labels), other=config.other, merge=config.merge)


def _carried_alone(frame: pd.DataFrame, labels: list[str], config: LabelConfig) -> list[str]:
    """The selected genres that some poster carries as its only selected one (what a one-label target
    learns). A genre no poster stands for is left out of a top-N or all selection (all 24 genres of the
    sample kept 11 such classes, with no poster in any split, and macro F1 averaged their zeros); an
    explicit pick that holds one is refused. Leaving one out can let more posters carry a single selected
    genre, so this repeats until none is left out."""
    posters = [merged_genres(tuple(genres), config.merge) for genres in frame["genres"]]
    chosen = list(labels)
    while True:
        selected = set(chosen)
        alone = Counter(
            hits[0] for hits in ([g for g in p if g in selected] for p in posters) if len(hits) == 1
        )
        empty = [label for label in chosen if alone[label] == 0]
        if not empty:
            return chosen
        if config.genres:
            raise DataError(
                f"no poster carries {', '.join(empty)} as its only selected genre; leave "
                f"{'it' if len(empty) == 1 else 'them'} out of the selection (--genres) or pick fewer genres"
            )
        chosen = [label for label in chosen if label not in empty]


def apply_rule(frame: pd.DataFrame, rule: LabelRule) -> Labelled:
    """Label ``frame`` with ``rule``; rows left without a label are dropped with a reason."""
    index = {label: i for i, label in enumerate(rule.labels)}
    keep: list[int] = []
    targets: list = []
    dropped: list[dict] = []

    def drop(row, reason: str) -> None:
        dropped.append({"id": row.id, "image": row.image, "reason": reason})

    for position, row in enumerate(frame.itertuples(index=False)):
        if rule.target == "threshold":
            value = pd.to_numeric(getattr(row, rule.column), errors="coerce")
            if value is None or (isinstance(value, float) and math.isnan(value)):
                drop(row, f"no {rule.column} value")
                continue
            positive = {
                ">=": value >= rule.value,
                ">": value > rule.value,
                "<=": value <= rule.value,
                "<": value < rule.value,
            }[rule.op]
            keep.append(position)
            targets.append(int(positive))
        elif rule.target == "genres":
            genres = merged_genres(tuple(row.genres), rule.merge)
            hits = [index[g] for g in genres if g in index and g != OTHER]
            if rule.other and any(g not in index for g in genres):
                hits.append(index[OTHER])
            if not hits:
                drop(row, "no selected genre" if genres else "no genre")
                continue
            vector = np.zeros(len(rule.labels), dtype=np.float32)
            vector[hits] = 1.0
            keep.append(position)
            targets.append(vector)
        elif rule.target == "single":
            genres = merged_genres(tuple(row.genres), rule.merge)
            hits = [g for g in genres if g in index and g != OTHER]
            if not hits and rule.other and genres:
                hits = [OTHER]
            if len(hits) != 1:
                drop(
                    row,
                    "more than one selected genre"
                    if hits
                    else ("no selected genre" if genres else "no genre"),
                )
                continue
            keep.append(position)
            targets.append(index[hits[0]])
        else:
            label = row.label if isinstance(row.label, str) else None
            if label is None:
                drop(row, "no label")
            elif label in index:
                keep.append(position)
                targets.append(index[label])
            elif rule.other:
                keep.append(position)
                targets.append(index[OTHER])
            else:
                drop(row, f"label {label!r} not selected")
    kept = frame.iloc[keep].reset_index(drop=True)
    if rule.multilabel:
        y = np.stack(targets) if targets else np.zeros((0, len(rule.labels)), dtype=np.float32)
    else:
        y = np.asarray(targets, dtype=np.int64)
    return Labelled(kept, y, rule, pd.DataFrame(dropped, columns=["id", "image", "reason"]))


def one_hot(y: np.ndarray, rule: LabelRule) -> np.ndarray:
    """Targets as an (n, k) 0/1 matrix whatever the task (for metrics and charts)."""
    if rule.multilabel:
        return y.astype(np.float32)
    out = np.zeros((len(y), len(rule.labels)), dtype=np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out
