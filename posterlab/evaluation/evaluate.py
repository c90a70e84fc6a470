"""Evaluate a trained run on any dataset with the run's own labels, thresholds and filtering rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from posterlab.data.clean import clean_dataset
from posterlab.data.labels import apply_rule
from posterlab.data.sources import load_dataset
from posterlab.evaluation.metrics import evaluate_scores
from posterlab.events import EventSink, Progress, ignore
from posterlab.inference import Predictor


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    on_event: EventSink = ignore,
    batch_size: int = 8,
    predictor: Predictor | None = None,
) -> dict:
    """The ``posterlab evaluate --json`` object: ``n``, ``dropped``, ``labels``, ``metrics``,
    ``per_label``, ``baseline`` (the run's training prevalence / majority class), plus details.

    Unreadable images and rows left without one of the run's labels are dropped and counted; no
    near-duplicate filtering is applied, so every readable poster given is scored.
    """
    predictor = predictor or Predictor(run_dir)
    dataset = load_dataset(data, progress=lambda d, t: on_event(Progress("downloading", d, t)))
    cleaned, report = clean_dataset(
        dataset, near_duplicate_bits=-1, progress=lambda d, t: on_event(Progress("scanning", d, t))
    )
    labelled = apply_rule(cleaned.frame, predictor.rule)
    paths = labelled.frame["image"].tolist()
    probs = np.zeros((len(paths), len(predictor.labels)), dtype=np.float64)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        tensors = [predictor.prepare(path)[1] for path in chunk]
        probs[start : start + len(chunk)] = predictor.probabilities(__import__("torch").stack(tensors))
        on_event(Progress("evaluating", min(start + batch_size, len(paths)), len(paths)))
    prior = np.asarray(predictor.info["prior"], dtype=np.float64)
    result = evaluate_scores(predictor.rule, labelled.y, probs, predictor.thresholds, prior)
    reasons = dict(report.summary().to_dict())
    for reason, count in labelled.dropped["reason"].value_counts().items():
        reasons[reason] = reasons.get(reason, 0) + int(count)
    out = {
        "run": str(Path(run_dir)),
        "data": str(data),
        "n": int(len(labelled.y)),
        "dropped": int(report.dropped + len(labelled.dropped)),
        "dropped_reasons": reasons,
        "labels": list(predictor.labels),
        "task": predictor.rule.task,
        "metrics": result["metrics"],
        "per_label": result["per_label"],
        "baseline": result["baseline"],
    }
    if "confusion" in result:
        out["confusion"] = result["confusion"]
    return out
