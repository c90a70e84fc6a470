"""The embedding map's core: every poster of a dataset with its embedding, 2-D projections, the posters
nearest any poster (its own copy first, marked as a near-duplicate) and what the map colours by."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from posterlab.config import DataConfig
from posterlab.evaluation.embedding import colour_columns, embed, poster_space


@pytest.fixture(scope="module")
def space():
    return poster_space(DataConfig(path="sample", limit=None), "posterlab_small_cnn", "crop")


def test_every_readable_poster_is_placed_with_a_unit_embedding(space, sample_dir):
    labels = pd.read_csv(sample_dir / "labels.csv")
    assert len(space.frame) == len(space.vectors) and len(space.frame) >= 0.95 * len(labels)
    assert np.allclose(np.linalg.norm(space.vectors, axis=1), 1.0, atol=1e-5)
    assert space.frame["thumbnail"].str.startswith("data:image/jpeg;base64,").mean() > 0.95
    for method in ("pca", "tsne"):
        xy = space.project(method)
        assert xy.shape == (len(space.frame), 2) and np.isfinite(xy).all()
        assert xy[:, 0].std() > 0 and xy[:, 1].std() > 0
    assert np.array_equal(space.project("pca"), space.project("pca"))  # the same map every time


def test_posters_like_this_one_find_its_copy_first(space):
    """An uploaded poster, embedded on its own, finds itself in the map as a near-duplicate; excluding a
    poster's own row leaves its nearest other posters, most similar first."""
    row = 7
    path = space.frame["image"].iloc[row]
    query = embed(space.backbone, space.fit, path)
    found = space.neighbours(query, k=5)
    assert found["id"].iloc[0] == space.frame["id"].iloc[row]
    assert found["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-4) and found["duplicate"].iloc[0]
    others = space.neighbours(space.vectors[row], k=5, exclude=row)
    assert space.frame["id"].iloc[row] not in set(others["id"])
    assert list(others["similarity"]) == sorted(others["similarity"], reverse=True)


def test_the_map_colours_by_labels_truth_and_the_runs_predictions(space, genre_run):
    from posterlab.evaluation.interpret import load_predictions
    from posterlab.runs import load_run

    run = load_run(genre_run)
    labels = list(run.metrics["labels"])
    predictions = load_predictions(run, None)
    columns = colour_columns(space, predictions, labels)
    assert len(columns) == len(space.frame)
    for label in labels:
        carried = space.frame["genres"].map(lambda genres, label=label: label in genres)
        assert (columns[f"label: {label}"] == "yes").tolist() == carried.tolist()
    scored = columns["id"].isin(set(predictions["id"]))
    assert scored.any() and (~scored).any()  # the training split was not scored
    assert set(columns.loc[scored, "outcome"]) <= {"right", "wrong"}
    assert columns.loc[scored, "loss"].notna().all() and columns.loc[~scored, "loss"].isna().all()
    assert (columns.loc[~scored, "outcome"] == "not scored").all()
