"""Movie-level stratified splits and balancing with before/after counts."""

from __future__ import annotations

import numpy as np
import pytest

from posterlab.config import LabelConfig
from posterlab.data.balance import balance_table, loss_weights, resample
from posterlab.data.labels import apply_rule, resolve_rule
from posterlab.data.sources import load_dataset
from posterlab.data.split import kfold_indices, split_indices
from posterlab.errors import DataError


@pytest.fixture(scope="module")
def labelled():
    frame = load_dataset("sample").frame
    return apply_rule(frame, resolve_rule(frame, LabelConfig(top_n=6)))


def test_split_is_a_partition_and_reproducible(labelled):
    a = split_indices(labelled.y, 0.2, 0.2, seed=0)
    b = split_indices(labelled.y, 0.2, 0.2, seed=0)
    c = split_indices(labelled.y, 0.2, 0.2, seed=1)
    everything = np.concatenate(list(a.values()))
    assert sorted(everything.tolist()) == list(range(len(labelled.y)))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    assert abs(len(a["test"]) / len(labelled.y) - 0.2) < 0.03


def test_iterative_stratification_keeps_label_shares(labelled):
    parts = split_indices(labelled.y, 0.2, 0.2, seed=0)
    overall = labelled.y.mean(axis=0)
    for rows in parts.values():
        assert np.abs(labelled.y[rows].mean(axis=0) - overall).max() < 0.06


def test_single_label_split_stratified():
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    parts = split_indices(y, 0.2, 0.2, seed=0)
    assert np.bincount(y[parts["test"]]).tolist() == [12, 6, 2]


def test_too_few_posters():
    with pytest.raises(DataError, match="at least 10"):
        split_indices(np.zeros(5, dtype=int), 0.2, 0.2, 0)


def test_kfold(labelled):
    folds = kfold_indices(labelled.y, 3, seed=0)
    assert len(folds) == 3
    assert sorted(np.concatenate([held for _, held in folds]).tolist()) == list(range(len(labelled.y)))


def test_loss_weights():
    y = np.array([[1, 0], [1, 0], [1, 1], [1, 0]], dtype=np.float32)
    assert loss_weights(y, 2).tolist() == [0.0, 3.0]
    single = loss_weights(np.array([0, 0, 0, 1]), 2)
    assert single[1] > single[0] and abs(single.mean() - 1) < 1e-6


def test_undersample_and_oversample_single_label():
    y = np.array([0] * 30 + [1] * 10 + [2] * 5)
    under = resample(y, 3, "undersample", seed=0)
    assert np.bincount(y[under]).tolist() == [5, 5, 5]
    over = resample(y, 3, "oversample", seed=0)
    assert np.bincount(y[over]).tolist() == [30, 30, 30]
    table = balance_table(y, over, ("a", "b", "c"))
    assert table["before"].tolist() == [30, 10, 5] and table["after"].tolist() == [30, 30, 30]


def test_multilabel_balancing_moves_shares(labelled):
    y = labelled.y
    over = resample(y, y.shape[1], "oversample", seed=0)
    table = balance_table(y, over, labelled.rule.labels)
    rare = table["before"].idxmin()
    assert table.loc[rare, "after"] > table.loc[rare, "before"]
    under = resample(y, y.shape[1], "undersample", seed=0)
    assert len(under) < len(y)
    assert resample(y, y.shape[1], "none", seed=0).tolist() == list(range(len(y)))
