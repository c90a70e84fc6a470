"""evaluate_run applies the run's own labels, thresholds and row filter to new data."""

from __future__ import annotations

import shutil

import pandas as pd

from posterlab.evaluation.evaluate import evaluate_run
from posterlab.runs import load_run


def test_evaluate_json_shape(genre_run):
    result = evaluate_run(genre_run, "sample")
    assert {"n", "dropped", "labels", "metrics", "per_label", "baseline"} <= set(result)
    run = load_run(genre_run)
    assert result["labels"] == list(run.model["rule"]["labels"])  # the run's labels, not a new top-N
    assert result["n"] + result["dropped"] == 300
    assert set(result["metrics"]) == set(result["baseline"])
    assert set(result["per_label"]) == set(result["labels"])


def test_evaluate_counts_unreadable_and_unlabelled(tmp_path, binary_run, sample_rt_dir):
    root = tmp_path / "rt"
    shutil.copytree(sample_rt_dir, root)
    table = pd.read_csv(root / "labels.csv", dtype=str)
    (root / table["image"][0]).write_bytes(b"garbage")
    table.loc[1, "label"] = "certified rotten"  # not one of the run's classes
    table.to_csv(root / "labels.csv", index=False)
    result = evaluate_run(binary_run, root)
    assert result["dropped"] == 2 and result["n"] == len(table) - 2
    assert result["dropped_reasons"]["label 'certified rotten' not selected"] == 1
    assert {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc"} <= set(result["metrics"])


def test_a_split_counts_only_its_own_dropped_posters(genre_run):
    """``--split test`` said "108 posters (689 dropped)": the 689 were the whole dataset's posters with
    none of the run's labels, which no split holds."""
    whole = evaluate_run(genre_run, "sample")
    test = evaluate_run(genre_run, "sample", split="test")
    assert whole["dropped"] > 0  # the sample has posters with none of the run's four genres
    assert test["dropped"] == 0 and test["dropped_reasons"] == {}
    assert 0 < test["n"] < whole["n"]
