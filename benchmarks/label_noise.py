"""Label health against known noise: inject seeded label errors into the development set, audit it, and
measure how well ``quality`` ranks the corrupted posters first.

Noise (seeded): on ``--rate`` (5%) of the posters that carry a top-6 genre, either add one top-6 genre the
poster lacks or remove one it carries (a coin flip; a poster with one top-6 genre can only gain one, since
removing its only genre would drop it from the labelled set, and one with all six can only lose one).
``--kind add`` or ``--kind remove`` injects only that kind (removals among posters with two or more).
Figures: AUROC of ``quality`` for corrupted vs clean posters (1 - quality as the score), and precision
among the k most suspicious posters (k = the number corrupted; the base rate is ``--rate``). Beside them,
in the same run: the audit without the posters' other tags (image only), plain self-confidence (the lowest probability of a given side) on the primary view only,
the baseline the issue names (0.79 / 0.23 on 2,000 posters), and cleanlab's multi-label scores on the same
out-of-fold probabilities when cleanlab is installed (``pip install cleanlab``: AGPL-3.0, never a
posterlab dependency).

``--train`` then trains the same probe recipe on the real (un-injected) labels twice, uncorrected and with
every suggestion of the audit accepted (``corrections=apply``), and reports their held-out test figures.

    python benchmarks/label_noise.py --data /work/shared/datasets/posters --fits crop,pad --train
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from posterlab.config import DataConfig, LabelConfig
from posterlab.data.labels import Labelled
from posterlab.data.prepare import Prepared, prepare_data
from posterlab.evaluation.label_health import audit_features, embeddings

TOP6 = ("Drama", "Comedy", "Romance", "Action", "Thriller", "Horror")


KINDS = ("both", "add", "remove")


def inject(y: np.ndarray, rate: float, seed: int, kind: str = "both") -> tuple[np.ndarray, np.ndarray]:
    """(noisy targets, corrupted mask): on ``rate`` of the rows, one label added or removed (``kind``
    "both": a coin flip per row), or only added, or only removed (then among rows with two or more)."""
    rng = np.random.default_rng(seed)
    n, k = y.shape
    pool = np.nonzero(y.sum(1) >= 2)[0] if kind == "remove" else np.arange(n)
    rows = rng.choice(pool, size=int(round(rate * n)), replace=False)
    noisy, corrupted = y.copy(), np.zeros(n, bool)
    for row in rows:
        present, absent = np.nonzero(y[row] > 0.5)[0], np.nonzero(y[row] < 0.5)[0]
        if kind == "both":
            remove = len(present) >= 2 and (len(absent) == 0 or rng.random() < 0.5)
        else:
            remove = kind == "remove"
        column = rng.choice(present) if remove else rng.choice(absent)
        noisy[row, column] = 0.0 if remove else 1.0
        corrupted[row] = True
    return noisy, corrupted


def ranking(score: np.ndarray, corrupted: np.ndarray) -> dict:
    """AUROC and precision@k of ``score`` (low = suspicious) for finding the corrupted rows."""
    from sklearn.metrics import roc_auc_score

    k = int(corrupted.sum())
    order = np.argsort(score, kind="stable")[:k]
    return {
        "auroc": float(roc_auc_score(corrupted, -score)),
        "precision_at_k": float(corrupted[order].mean()),
    }


def self_confidence(probabilities: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The plain baseline: each poster's lowest probability of a given side."""
    return np.where(y > 0.5, probabilities, 1 - probabilities).min(1)


def with_targets(prepared: Prepared, y: np.ndarray) -> Prepared:
    labelled = prepared.labelled
    return dataclasses.replace(
        prepared, labelled=Labelled(labelled.frame, y.astype(np.float32), labelled.rule, labelled.dropped)
    )


def cleanlab_scores(probabilities: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray] | None:
    try:
        from cleanlab.multilabel_classification import get_label_quality_scores
        from cleanlab.multilabel_classification.filter import find_label_issues
    except ImportError:
        return None
    labels = [list(np.nonzero(row > 0.5)[0]) for row in y]
    return {
        "quality": get_label_quality_scores(labels, probabilities),
        "issues": find_label_issues(labels, probabilities),
    }


def train_pair(data: str, backbone: str, fits: tuple[str, ...], out: Path) -> dict:
    """The probe recipe on the real labels, uncorrected and with every suggestion accepted."""
    from posterlab.config import RunConfig, TrainConfig
    from posterlab.data.corrections import ACCEPT, Corrections
    from posterlab.evaluation.evaluate import evaluate_run
    from posterlab.evaluation.label_health import audit_dataset, record
    from posterlab.runs import load_run
    from posterlab.training.trainer import train_run

    base = DataConfig(path=data, labels=LabelConfig(genres=TOP6), fit=fits[0], extra_fits=fits[1:])
    audit = audit_dataset(base, backbone)
    record(audit, data)
    corrections = Corrections.load(data)
    saved = {key: dict(value) for key, value in corrections.decisions.items()}
    for poster in corrections.flagged["genres"]:
        corrections.decide("genres", poster, ACCEPT)
    corrections.save()
    results: dict = {"flagged": int(audit.flagged.sum()), "audit": audit.summary()}
    runs = {}
    try:
        for mode in ("none", "apply"):
            config = RunConfig(
                data=dataclasses.replace(base, corrections=mode),
                train=TrainConfig(backbone=backbone, mode="probe", epochs=30, patience=6),
                name=f"label-noise-{mode}",
            )
            shutil.rmtree(out / config.name, ignore_errors=True)  # this benchmark's own run of a former call
            runs[mode] = train_run(config, out)
            metrics = load_run(runs[mode]).metrics["test"]
            results[mode] = {
                "own test split": {k: metrics["metrics"][k] for k in ("map", "micro_f1", "macro_f1")},
                "own test posters": metrics["n"],
            }
    finally:  # the benchmark leaves the user's decisions as they were
        corrections = Corrections.load(data)
        corrections.decisions = saved
        corrections.save()
    # the same posters and the labels as given, for both: the posters in both runs' test splits (the
    # corrected labels stratify the split differently, so the corrected run trained on some of the
    # uncorrected run's test posters: those would flatter it)
    same = _as_given(data, list(runs.values()), out / "label-noise-test")
    for mode, run_dir in runs.items():
        scored = evaluate_run(run_dir, same)
        results[mode]["both runs' test posters, labels as given"] = {
            k: scored["metrics"][k] for k in ("map", "micro_f1", "macro_f1")
        }
        results[mode]["posters"] = scored["n"]
    return results


def _as_given(data: str, run_dirs: list[Path], folder: Path) -> Path:
    """A dataset folder of the posters in every run's test split, with their labels as given (copied)."""
    import pandas as pd

    from posterlab.runs import read_splits

    test = set.intersection(*(set(read_splits(Path(run_dir))["test"]) for run_dir in run_dirs))
    table = pd.read_csv(Path(data) / "labels.csv", dtype=str, keep_default_na=False)
    chosen = table[table["imdb_id"].isin(test)]
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    chosen.to_csv(folder / "labels.csv", index=False)
    for poster in chosen["imdb_id"]:  # copies: a linked folder is refused
        shutil.copyfile(Path(data) / "images" / f"{poster}.jpg", folder / "images" / f"{poster}.jpg")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--fits", default="crop,pad", help="fits to compute (cached flips are used too)")
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--seeds", default="0,1", help="noise seeds (each a separate injection)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="a random subset (quick checks)")
    parser.add_argument(
        "--kind", choices=KINDS, default="both", help="the injected errors: added or removed genres, or both"
    )
    parser.add_argument("--train", action="store_true", help="also train uncorrected vs corrected probes")
    parser.add_argument("--out", default="benchmarks/results/label_noise.json")
    args = parser.parse_args()
    fits = tuple(f for f in args.fits.split(",") if f)

    data = DataConfig(
        path=args.data, labels=LabelConfig(genres=TOP6), fit=fits[0], extra_fits=fits[1:], limit=args.limit
    )
    prepared = prepare_data(data, split=False)
    begun = time.monotonic()
    views = embeddings(prepared, args.backbone, fits)
    extraction = time.monotonic() - begun
    primary = {name: array for name, array in views.items() if name == fits[0]}
    y = prepared.labelled.y
    print(f"{len(y)} posters, views: {', '.join(views)} ({extraction:.0f} s to read or compute embeddings)")
    rows, report = [], {"posters": len(y), "views": list(views), "backbone": args.backbone, "kind": args.kind}
    report["seeds"] = {}
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        noisy, corrupted = inject(y, args.rate, seed, args.kind)
        started = time.monotonic()
        audit = audit_features(with_targets(prepared, noisy), views, args.backbone, args.folds, seed=0)
        seconds = time.monotonic() - started
        plain = audit_features(
            with_targets(prepared, noisy), primary, args.backbone, args.folds, seed=0, tags=False
        )
        image_only = audit_features(
            with_targets(prepared, noisy), views, args.backbone, args.folds, seed=0, tags=False
        )
        figures = {
            "posterlab quality": ranking(audit.found.quality, corrupted),
            "posterlab quality, image only (no tags)": ranking(image_only.found.quality, corrupted),
            "self-confidence, all views": ranking(self_confidence(audit.probabilities, noisy), corrupted),
            f"self-confidence, {fits[0]} only": ranking(
                self_confidence(plain.probabilities, noisy), corrupted
            ),
        }
        flagged = audit.flagged
        figures["posterlab quality"]["flagged"] = int(flagged.sum())
        figures["posterlab quality"]["flagged_precision"] = (
            float(corrupted[flagged].mean()) if flagged.any() else 0.0
        )
        figures["posterlab quality"]["seconds"] = seconds
        lab = cleanlab_scores(audit.probabilities, noisy)
        if lab is not None:
            figures["cleanlab quality (same probabilities)"] = ranking(lab["quality"], corrupted)
            figures["cleanlab quality (same probabilities)"]["flagged"] = int(lab["issues"].sum())
            agree = (lab["issues"] == flagged).mean()
            figures["cleanlab quality (same probabilities)"]["flag_agreement"] = float(agree)
        report["seeds"][seed] = {"corrupted": int(corrupted.sum()), **figures}
        for name, values in figures.items():
            rows.append((seed, int(corrupted.sum()), name, values))
    print(f"{'seed':>4} {'k':>5}  {'score':<40}{'AUROC':>8}{'P@k':>8}  notes")
    for seed, k, name, values in rows:
        notes = ", ".join(
            f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
            for key, value in values.items()
            if key not in ("auroc", "precision_at_k")
        )
        print(f"{seed:>4} {k:>5}  {name:<40}{values['auroc']:>8.3f}{values['precision_at_k']:>8.3f}  {notes}")
    if args.train:
        report["training"] = train_pair(args.data, args.backbone, fits, Path("benchmarks/results/runs"))
        print(json.dumps(report["training"], indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
