"""Quality on the development posters: held-out test metrics beside the baselines, per task and recipe.

Tasks (all on a movie-level 60/20/20 split, seed 0; test = the 20% no model saw):
  top6          multi-label over Drama, Comedy, Romance, Action, Thriller, Horror
  four_genres   single-label: posters carrying exactly one of Action, Comedy, Horror, Romance
  fresh_rotten  binary on posters_rt (small data: 238 posters)
Recipes:
  probe         tf_efficientnet_lite0 frozen, cached embeddings, linear head
  best          tf_efficientnet_lite0 fine-tuned: the top feature level trains (blocks 5-6 + head conv)
                at lr 1e-4 (head 1e-3) on cached frozen activations; each poster seen three ways (centre
                crop, padded whole poster, squashed whole poster) and flipped: a random view per epoch,
                the three fits averaged at test time
  probe_views   the probe on the same six views as `best` (three fits, flipped), fits averaged at test time
  probe_lite2   the probe on frozen tf_efficientnet_lite2 (260 px), crop and flip: an ensemble member
                (python benchmarks/ensemble.py RUN RUN ... averages finished runs)
  probe_pad_weighted  probe on the whole poster padded to square, class weights, flip views, random search
                with 5-fold cross-validation
                (the committed fresh/rotten demo model; use it with --tasks fresh_rotten)

    python benchmarks/quality.py --data ../shared/datasets   # writes benchmarks/results/quality.json

Runs land in benchmarks/results/runs/ and are reused when complete (--fresh retrains).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig
from posterlab.runs import load_run
from posterlab.training.trainer import train_run

TOP6 = ("Drama", "Comedy", "Romance", "Action", "Thriller", "Horror")
FOUR = ("Action", "Comedy", "Horror", "Romance")
RECIPES = {  # name → (training, changes to the task's data config)
    "probe": (TrainConfig(mode="probe", epochs=30, lr=1e-3, patience=6), {}),
    "best": (
        TrainConfig(
            mode="finetune", unfreeze=1, epochs=8, lr=1e-3, backbone_lr_scale=0.1, patience=3, flip_views=True
        ),
        {"fit": "crop", "extra_fits": ("pad", "squash")},
    ),
    "probe_views": (
        TrainConfig(mode="probe", epochs=30, lr=1e-3, patience=6, flip_views=True),
        {"fit": "crop", "extra_fits": ("pad", "squash")},
    ),
    # the frozen Lite2 (260 px) probe, crop and its flip: a cheap second member for benchmarks/ensemble.py
    "probe_lite2": (
        TrainConfig(
            backbone="tf_efficientnet_lite2", mode="probe", epochs=30, lr=1e-3, patience=6, flip_views=True
        ),
        {"fit": "crop"},
    ),
    # the best recipe on the larger EfficientNet-Lites (240 and 260 px): members of the ensembles below
    "best_lite1": (
        TrainConfig(
            backbone="tf_efficientnet_lite1",
            mode="finetune",
            unfreeze=1,
            epochs=8,
            lr=1e-3,
            backbone_lr_scale=0.1,
            patience=3,
            flip_views=True,
        ),
        {"fit": "crop", "extra_fits": ("pad", "squash")},
    ),
    "best_lite2": (
        TrainConfig(
            backbone="tf_efficientnet_lite2",
            mode="finetune",
            unfreeze=1,
            epochs=8,
            lr=1e-3,
            backbone_lr_scale=0.1,
            patience=3,
            flip_views=True,
        ),
        {"fit": "crop", "extra_fits": ("pad", "squash")},
    ),
    # the committed fresh/rotten demo model: whole poster (pad), class weights, flips, lr / dropout / weight
    # decay by a 10-trial random search with 5-fold cross-validation over train+val (picked by that CV score)
    "probe_pad_weighted": (
        TrainConfig(
            mode="probe", epochs=40, lr=1e-3, patience=6, flip_views=True, search_trials=10, search_folds=5
        ),
        {"fit": "pad", "balance": "weights"},
    ),
}
TARGETS = {  # from the issue: (task, recipe) → minimum test values
    ("top6", "probe"): {"micro_f1": 0.54, "macro_f1": 0.47, "map": 0.44},
    ("top6", "best"): {"micro_f1": 0.58, "macro_f1": 0.52, "map": 0.48},
    ("four_genres", "best"): {"accuracy": 0.65},
}


def tasks(root: Path) -> dict[str, DataConfig]:
    return {
        "top6": DataConfig(path=str(root / "posters"), labels=LabelConfig(genres=TOP6)),
        "four_genres": DataConfig(
            path=str(root / "posters"), labels=LabelConfig(target="label", genres=FOUR)
        ),
        "fresh_rotten": DataConfig(path=str(root / "posters_rt"), labels=LabelConfig(target="label")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default="../shared/datasets", help="folder holding posters/ and posters_rt/"
    )
    parser.add_argument("--tasks", default="top6,four_genres,fresh_rotten")
    parser.add_argument("--recipes", default="probe,best")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--fresh", action="store_true", help="retrain even when a finished run exists")
    args = parser.parse_args()
    out = Path(args.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    results = []
    for task_name in args.tasks.split(","):
        data = tasks(Path(args.data))[task_name]
        for recipe in args.recipes.split(","):
            name = f"{task_name}-{recipe}"
            folder = runs / name
            if folder.exists() and (args.fresh or load_run(folder).state != "completed"):
                shutil.rmtree(folder)
            started = time.monotonic()
            if not folder.exists():
                print(f"training {name} ...", file=sys.stderr, flush=True)
                train, changes = RECIPES[recipe]
                train_run(RunConfig(dataclasses.replace(data, **changes), train, name=name), runs)
            run = load_run(folder)
            test = run.metrics["test"]
            row = {
                "task": task_name,
                "recipe": recipe,
                "run": str(folder),
                "n_test": test["n"],
                "metrics": test["metrics"],
                "baseline": test["baseline"],
                "train_seconds": run.status.get("seconds"),
                "best_epoch": run.metrics["best_epoch"],
                "device": run.environment.get("device"),
                "wall_seconds_this_call": round(time.monotonic() - started, 1),
            }
            if task_name != "top6":
                row["majority_rate"] = test["baseline"]["accuracy"]
            target = TARGETS.get((task_name, recipe), {})
            row["targets"] = {
                k: {"target": v, "value": test["metrics"][k], "met": test["metrics"][k] >= v}
                for k, v in target.items()
            }
            results.append(row)
            print(_line(row), flush=True)
    (out / "quality.json").write_text(json.dumps({"results": results}, indent=2))
    print(f"wrote {out / 'quality.json'}")
    return 0 if all(t["met"] for r in results for t in r["targets"].values()) else 1


def _line(row: dict) -> str:
    names = (
        ("micro_f1", "macro_f1", "map", "roc_auc")
        if row["task"] == "top6"
        else ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
    )
    shown = "  ".join(
        f"{k} {row['metrics'][k]:.3f} (base {row['baseline'][k]:.3f})" for k in names if k in row["metrics"]
    )
    checks = " ".join(
        f"[{k}>={t['target']}: {'ok' if t['met'] else 'MISSED'}]" for k, t in row["targets"].items()
    )
    return f"{row['task']:<13} {row['recipe']:<6} n={row['n_test']:<5} {shown} {checks}"


if __name__ == "__main__":
    sys.exit(main())
