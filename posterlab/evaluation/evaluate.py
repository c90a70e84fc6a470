"""Evaluate a trained run on any dataset with the run's own labels, thresholds and filtering rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from posterlab.data.clean import CleaningReport, clean_dataset
from posterlab.data.labels import apply_rule
from posterlab.data.sources import load_dataset
from posterlab.errors import ConfigError, DataError
from posterlab.evaluation.metrics import evaluate_scores
from posterlab.events import EventSink, Progress, ignore
from posterlab.inference import Predictor
from posterlab.runs import read_splits

SPLITS = ("all", "train", "val", "test")  # all: every poster given; the others: the run's own split


def evaluate_run(
    run_dir: str | Path,
    data: str | Path,
    on_event: EventSink = ignore,
    batch_size: int = 8,
    predictor: Predictor | None = None,
    split: str = "all",
) -> dict:
    """The ``posterlab evaluate --json`` object: ``n``, ``dropped`` (of the split's posters, with a split),
    ``labels``, ``metrics``,
    ``per_label``, ``baseline`` (the run's training prevalence / majority class), plus details.

    Unreadable images and rows left without one of the run's labels are dropped and counted; no
    near-duplicate filtering is applied, so every readable poster given is scored. ``split`` (train,
    val, test) keeps only the posters the run put in that split; ``seen_in_training`` counts the scored
    posters that were in the run's training split (their scores flatter the model).
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    predictor = predictor or Predictor(run_dir)
    splits = read_splits(Path(run_dir))
    if split != "all" and not splits:
        raise ConfigError(
            f"{run_dir}: has no split.json, so --split {split} cannot be applied; use --split all"
        )
    dataset = load_dataset(data, progress=lambda d, t: on_event(Progress("downloading", d, t)))
    cleaned, report = clean_dataset(
        dataset, near_duplicate_bits=-1, progress=lambda d, t: on_event(Progress("scanning", d, t))
    )
    labelled = apply_rule(cleaned.frame, predictor.rule)
    frame, y = labelled.frame, labelled.y
    if not len(frame):  # a table of NaN and exit 0 said nothing was wrong
        raise DataError(
            f"{data}: none of its {len(dataset)} posters carries one of the run's labels "
            f"({', '.join(predictor.labels)}); evaluate the run on data with those labels"
        )
    if split != "all":
        keep = frame["id"].astype(str).isin(splits.get(split, set())).to_numpy()
        frame, y = frame[keep].reset_index(drop=True), y[keep]
        if not keep.any():
            raise ConfigError(
                f"none of the posters in {data} is in the run's {split} split; evaluate it on the data it "
                "trained on, or use --split all"
            )
    probs, errors = predictor.score_paths(
        frame["image"].tolist(), batch_size, lambda done, total: on_event(Progress("evaluating", done, total))
    )
    scored = np.array([error is None for error in errors], dtype=bool)
    if not scored.any():
        raise DataError(f"{data}: none of its {len(frame)} labelled posters could be read; check its images")
    probs, y = probs[scored], y[scored]
    seen = int(frame["id"][scored].astype(str).isin(splits.get("train", set())).sum())
    prior = np.asarray(predictor.info["prior"], dtype=np.float64)
    result = evaluate_scores(predictor.rule, y, probs, predictor.thresholds, prior)
    dropped, reasons = _dropped(
        report, labelled.dropped, splits.get(split, set()) if split != "all" else None
    )
    if not scored.all():
        reasons["unreadable when scored"] = int((~scored).sum())
    out = {
        "run": str(Path(run_dir)),
        "data": str(data),
        "split": split,
        "n": int(len(y)),
        "seen_in_training": seen,
        "dropped": dropped + int((~scored).sum()),
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


def _dropped(report: CleaningReport, unlabelled, ids: set[str] | None) -> tuple[int, dict[str, int]]:
    """Posters left out by cleaning or for want of the run's labels, and why: with a split's ``ids``, only
    that split's (689 posters with none of the labels were no split's, yet counted against the test split)."""
    cleaned_out = report.rows[report.rows["action"] == "dropped"]
    if ids is not None:
        cleaned_out = cleaned_out[cleaned_out["id"].astype(str).isin(ids)]
        unlabelled = unlabelled[unlabelled["id"].astype(str).isin(ids)]
    reasons = dict(CleaningReport(cleaned_out, report.total).summary().to_dict())
    for reason, count in unlabelled["reason"].value_counts().items():
        reasons[reason] = reasons.get(reason, 0) + int(count)
    return len(cleaned_out) + len(unlabelled), reasons
