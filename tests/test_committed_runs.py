"""The ready-made demo runs in checkpoints/: small, pickle-free, as good as their metrics say, and the
embedded sample really is held out for them (its predictions are the run's own test predictions)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from posterlab.inference import Predictor
from posterlab.runs import load_run

from .conftest import SAMPLE, SAMPLE_RT

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
TOP6 = ["Drama", "Comedy", "Romance", "Action", "Thriller", "Horror"]


def figures(name: str) -> tuple[dict, dict]:
    test = json.loads((CHECKPOINTS / name / "metrics.json").read_text())["test"]
    return test["metrics"], test["baseline"]


@pytest.mark.parametrize("name", ["demo-genres", "demo-fresh-rotten"])
def test_committed_run_is_small_and_complete(name):
    folder = CHECKPOINTS / name
    run = load_run(folder)
    assert run.status["status"] == "completed" and run.config.train.backbone == "tf_efficientnet_lite0"
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 15 * 2**20
    assert not [p for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".pkl", ".ckpt")]


def test_genre_model_meets_its_targets_beside_the_baseline():
    assert Predictor(CHECKPOINTS / "demo-genres").labels == tuple(TOP6)
    metrics, baseline = figures("demo-genres")
    assert metrics["map"] >= 0.48 and metrics["macro_f1"] >= 0.52
    assert metrics["micro_f1"] > baseline["micro_f1"] and metrics["map"] > baseline["map"]


def test_fresh_rotten_model_reports_the_majority_rate():
    metrics, baseline = figures("demo-fresh-rotten")
    assert {"accuracy", "balanced_accuracy", "roc_auc"} <= set(metrics)
    assert baseline["balanced_accuracy"] == 0.5 and 0.5 < baseline["accuracy"] < 0.7


@pytest.mark.parametrize(
    ("name", "sample", "held_out"),
    [("demo-genres", SAMPLE, ("test",)), ("demo-fresh-rotten", SAMPLE_RT, ("val", "test"))],
)
def test_sample_is_held_out_and_predictions_reproduce(name, sample, held_out):
    folder = CHECKPOINTS / name
    split = json.loads((folder / "split.json").read_text())
    labels = pd.read_csv(sample / "labels.csv")
    ids = set(labels["imdb_id"])
    assert not ids & set(split["train"]), "a sample poster was in the run's training split"

    saved = pd.read_csv(folder / "predictions.csv").set_index("id")
    chosen = [i for i in sorted(ids & set(saved.index)) if saved.loc[i, "split"] in held_out][:8]
    assert len(chosen) == 8
    images = [sample / "images" / f"{i}.jpg" for i in chosen]
    predictor = Predictor(folder)
    for movie, prediction in zip(chosen, predictor.predict(images), strict=True):
        assert prediction.ok, prediction.error
        for label, score in prediction.scores.items():
            assert score == pytest.approx(saved.loc[movie, f"p:{label}"], abs=0.02), (movie, label)
