"""Metrics and baselines on hand-checked numbers."""

from __future__ import annotations

import numpy as np
import pytest

from posterlab.data.labels import LabelRule
from posterlab.evaluation.metrics import (
    MIN_POSITIVES,
    evaluate_scores,
    hit_at_k,
    multilabel_metrics,
    tune_thresholds,
)

RULE = LabelRule("genres", "multilabel", ("A", "B"))


def test_perfect_and_constant_predictors():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    perfect = multilabel_metrics(y, y.astype(float), np.array([0.5, 0.5]))
    assert perfect["micro_f1"] == perfect["map"] == perfect["subset_accuracy"] == 1.0
    assert perfect["hamming"] == 0.0
    report = evaluate_scores(RULE, y, y.astype(float), np.array([0.5, 0.5]), prior=np.array([0.5, 0.5]))
    # the baseline predicts every label for every poster: precision 1/2, recall 1
    assert report["baseline"]["micro_f1"] == pytest.approx(2 * 0.5 / 1.5)
    assert report["baseline"]["roc_auc"] == 0.5
    assert report["per_label"]["A"]["support"] == 2


def test_thresholds_maximise_f1_on_validation():
    y = np.array([[1], [1], [0], [0]], dtype=np.float32)
    scores = np.array([[0.3], [0.25], [0.2], [0.1]])
    threshold = tune_thresholds(y, scores, min_positives=2)[0]
    # midway between the lowest score let through and the next: a round-off never flips a poster
    assert threshold == pytest.approx(0.225)


def test_a_label_with_too_few_validation_positives_keeps_one_half():
    """F1 on one positive peaks at that poster's own low score: the label would be predicted for most
    posters. Under MIN_POSITIVES positives the threshold stays 0.5."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 0.3, size=(200, 2))
    y = np.zeros((200, 2), dtype=np.float32)
    y[:MIN_POSITIVES, 0] = 1  # enough to tune
    scores[:MIN_POSITIVES, 0] += 0.5
    y[0, 1] = 1  # one positive, scored 0.02: tuning would put the threshold there
    scores[0, 1] = 0.02
    below = scores[:, 1][scores[:, 1] < 0.02].max()
    assert tune_thresholds(y, scores, min_positives=1)[1] == pytest.approx((0.02 + below) / 2)
    tuned = tune_thresholds(y, scores)
    assert 0.3 < tuned[0] <= scores[:MIN_POSITIVES, 0].min() and tuned[1] == 0.5


def test_hit_at_k():
    y = np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32)
    s = np.array([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3]])
    assert hit_at_k(y, s, 1) == 0.0 and hit_at_k(y, s, 2) == 0.5 and hit_at_k(y, s, 3) == 1.0


def test_single_label_report_with_majority_baseline():
    rule = LabelRule("label", "binary", ("fresh", "rotten"))
    y = np.array([0, 0, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8]])
    report = evaluate_scores(rule, y, probs, None, prior=np.array([0.7, 0.3]))
    assert report["metrics"]["accuracy"] == 0.75 and report["metrics"]["roc_auc"] == 1.0
    assert report["baseline"]["accuracy"] == 0.75 and report["baseline"]["balanced_accuracy"] == 0.5
    assert report["confusion"] == [[2, 1], [0, 1]]
