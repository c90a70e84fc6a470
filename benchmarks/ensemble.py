"""Would an ensemble of finished multi-label runs beat its best member? Averages their validation and
test probabilities (each run's ``predictions.csv``), tunes the per-label thresholds on validation as a
run does, and prints every member and the average on the test split, with the validation mAP the
choice would be made on.

    python benchmarks/ensemble.py benchmarks/results/runs/top6-best benchmarks/results/runs/top6-lite2-probe

The runs must share their labels and their split (the same data config and seed: posterlab's split is a
function of them); the script checks both. Nothing is trained here: it reads finished runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from posterlab.evaluation.metrics import multilabel_metrics, tune_thresholds

SHOWN = ("micro_f1", "macro_f1", "map")


RESCORED = "predictions_originals.csv"  # benchmarks/gpu_members.py rescore: scores from the original posters


def read(run: Path) -> tuple[list[str], pd.DataFrame]:
    """A run's validation and test scores: re-scored from the original posters where that was done."""
    table = pd.read_csv(
        run / (RESCORED if (run / RESCORED).is_file() else "predictions.csv"), dtype={"id": str}
    )
    labels = [c.removeprefix("p:") for c in table.columns if c.startswith("p:")]
    return labels, table[table["split"].isin(["val", "test"])].set_index("id").sort_index()


def truth(table: pd.DataFrame, labels: list[str]) -> np.ndarray:
    sets = table["truth"].fillna("").str.split("|")
    return np.array([[label in s for label in labels] for s in sets], dtype=int)


def score(labels: list[str], table: pd.DataFrame, probs: np.ndarray) -> dict:
    val, test = (table["split"] == "val").to_numpy(), (table["split"] == "test").to_numpy()
    y = truth(table, labels)
    thresholds = tune_thresholds(y[val], probs[val])
    return {
        "val": multilabel_metrics(y[val], probs[val], thresholds),
        "test": multilabel_metrics(y[test], probs[test], thresholds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="finished multi-label run folders")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    members = [read(run) for run in args.runs]
    labels, first = members[0]
    for run, (other_labels, table) in zip(args.runs, members, strict=True):
        if other_labels != labels:
            raise SystemExit(f"{run}: labels {other_labels} differ from {labels}; use runs of one task")
        if not table.index.equals(first.index) or not table["split"].equals(first["split"]):
            raise SystemExit(
                f"{run}: another split than {args.runs[0]}; train with the same data config and seed"
            )
    columns = [f"p:{label}" for label in labels]
    results = {}
    for run, (_, table) in zip(args.runs, members, strict=True):
        results[str(run)] = score(labels, first, table[columns].to_numpy(float))
    average = np.mean([table[columns].to_numpy(float) for _, table in members], axis=0)
    results["average"] = score(labels, first, average)
    n_val, n_test = int((first["split"] == "val").sum()), int((first["split"] == "test").sum())
    print(f"{len(labels)} labels, {n_val} validation and {n_test} test posters")
    print(f"{'':<52} {'val mAP':>8} " + " ".join(f"{'test ' + k:>14}" for k in SHOWN))
    for name, figures in results.items():
        shown = " ".join(f"{figures['test'][k]:>14.3f}" for k in SHOWN)
        print(f"{name[-52:]:<52} {figures['val']['map']:>8.3f} {shown}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
