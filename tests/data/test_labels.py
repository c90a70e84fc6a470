"""Targets and genre selection: top-N, lists, Other, synonyms, single-label from genres, thresholds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from posterlab.config import LabelConfig
from posterlab.data.labels import apply_rule, genre_counts, resolve_rule
from posterlab.data.sources import load_dataset
from posterlab.errors import ConfigError, DataError


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"id": f"m{i}", "image": f"/x/{i}.jpg", "genres": g, "label": lab, "imdb_score": s}
            for i, (g, lab, s) in enumerate(rows)
        ]
    )


FRAME = _frame(
    [
        (("Drama", "Romance"), None, "7.5"),
        (("Comedy",), None, "6.0"),
        (("Drama",), None, "8.1"),
        (("Horror", "Thriller"), None, ""),
        (("Musical", "Comedy"), None, "7.0"),
        (("Documentary",), None, "7.9"),
        ((), None, "5.0"),
    ]
)


def test_top_n_multilabel_drops_and_counts():
    rule = resolve_rule(FRAME, LabelConfig(top_n=2))
    assert rule.labels == ("Drama", "Comedy") and rule.task == "multilabel"
    labelled = apply_rule(FRAME, rule)
    assert labelled.y.tolist() == [[1, 0], [0, 1], [1, 0], [0, 1]]
    assert labelled.dropped["reason"].value_counts().to_dict() == {"no selected genre": 2, "no genre": 1}


def test_other_and_synonym_merge():
    rule = resolve_rule(
        FRAME, LabelConfig(genres=("Drama", "Music"), other=True, merge=(("Musical", "Music"),))
    )
    assert rule.labels == ("Drama", "Music", "Other")
    labelled = apply_rule(FRAME, rule)
    by_id = dict(zip(labelled.frame["id"], labelled.y.tolist(), strict=True))
    assert by_id["m4"] == [0, 1, 1]  # Musical → Music, Comedy → Other
    assert by_id["m5"] == [0, 0, 1]
    assert labelled.dropped["reason"].tolist() == ["no genre"]


def test_unknown_genre_is_a_one_line_error():
    with pytest.raises(DataError) as info:
        resolve_rule(FRAME, LabelConfig(genres=("Drama", "Westernn")))
    assert str(info.value).startswith("unknown genre(s) Westernn; this dataset has: Drama, Comedy")


def test_single_label_from_genres_keeps_posters_with_exactly_one():
    frame = _frame(
        [
            (("Drama", "Romance"), None, "7.5"),
            (("Comedy",), None, "6.0"),
            (("Drama",), None, "8.1"),
            (("Romance", "Musical"), None, "7.0"),
            (("Comedy", "Drama"), None, "5.0"),
        ]
    )
    rule = resolve_rule(frame, LabelConfig(target="label", genres=("Drama", "Comedy", "Romance")))
    assert rule.target == "single" and rule.task == "multiclass"
    labelled = apply_rule(frame, rule)
    assert labelled.frame["id"].tolist() == ["m1", "m2", "m3"]
    assert labelled.y.tolist() == [1, 0, 2]
    assert labelled.dropped["reason"].value_counts()["more than one selected genre"] == 2
    # in FRAME no poster carries Romance as its only one of these: a class with no poster is refused
    with pytest.raises(DataError, match="no poster carries Romance as its only selected genre"):
        resolve_rule(FRAME, LabelConfig(target="label", genres=("Drama", "Comedy", "Romance")))


def test_four_single_genres_on_the_sample():
    frame = load_dataset("sample").frame
    rule = resolve_rule(frame, LabelConfig(target="label", genres=("Action", "Comedy", "Horror", "Romance")))
    labelled = apply_rule(frame, rule)
    for genres, y in zip(labelled.frame["genres"], labelled.y, strict=True):
        assert len(set(genres) & set(rule.labels)) == 1 and rule.labels[y] in genres


def test_one_label_per_poster_keeps_only_genres_some_poster_carries_alone():
    """All 24 sample genres as one label each: 11 were carried alone by no poster, trained as classes with
    no poster in any split, and counted as zeros in macro F1. Left out of an 'all' or top-N selection
    (which lets more posters carry one selected genre); refused in an explicit pick."""
    frame = load_dataset("sample").frame
    rule = resolve_rule(frame, LabelConfig(target="label"))
    counts = np.bincount(apply_rule(frame, rule).y, minlength=len(rule.labels))
    assert 2 <= len(rule.labels) < len(genre_counts(frame)) and counts.min() >= 1, (rule.labels, counts)
    with pytest.raises(DataError, match="no poster carries .* as its only selected genre; leave"):
        resolve_rule(frame, LabelConfig(target="label", genres=tuple(genre_counts(frame).index)))


def test_label_column_binary():
    frame = load_dataset("sample-rt").frame
    rule = resolve_rule(frame, LabelConfig(target="label"))
    assert rule.labels == ("fresh", "rotten") and rule.task == "binary"
    labelled = apply_rule(frame, rule)
    assert len(labelled.y) == len(frame) and set(labelled.y.tolist()) == {0, 1}


def test_threshold_target():
    rule = resolve_rule(FRAME, LabelConfig(target="imdb_score>=7"))
    assert rule.labels == ("imdb_score<7", "imdb_score>=7") and rule.task == "binary"
    labelled = apply_rule(FRAME, rule)
    assert labelled.y.tolist() == [1, 0, 1, 1, 1, 0]
    assert labelled.dropped["reason"].tolist() == ["no imdb_score value"]


def test_bad_targets():
    with pytest.raises(ConfigError, match="target must be"):
        LabelConfig(target="genre")
    with pytest.raises(DataError, match="needs a column 'budget'"):
        resolve_rule(FRAME, LabelConfig(target="budget>=10"))
    with pytest.raises(ConfigError, match="either a genre list or top_n"):
        LabelConfig(top_n=3, genres=("Drama",))


def test_genre_counts_on_sample_match_csv():
    frame = load_dataset("sample").frame
    counts = genre_counts(frame)
    assert counts.index[0] == "Drama"
    assert counts["Drama"] == sum("Drama" in g for g in frame["genres"])
    assert np.all(np.diff(counts.values) <= 0)
