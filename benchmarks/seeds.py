"""The student reports posterlab grew from, each re-run as its task was defined, with posterlab's `best` recipe.

Each report is one row: the figure the seed reported, posterlab's figure on held-out test posters of the
development set (movie-level 60/20/20 split, seed 0, thresholds tuned on validation), the baseline of the
same metric (training prevalence / majority class), and what could not be reproduced, and why.

  six_genres     multi-label over Drama, Comedy, Romance, Action, Thriller, Horror (reported F1 0.403)
  four_genres    single-label: posters carrying exactly one of Action, Comedy, Horror, Romance (65.8%)
  fresh_rotten   fresh vs rotten on posters_rt (62.3%)
  twenty_genres  multi-label over the 20 most common genres, "top-n accuracy" read as hit@k (26.41%)
  mobilenet_six  MobileNetV2 transfer on six genres (~30%)

A seed's own backbone is used when its weights are in POSTERLAB_WEIGHTS_DIR; otherwise (every seed
backbone here: only EfficientNet-Lite0/1/2 weights are available offline) the row runs
tf_efficientnet_lite0 and says so. Rows with the same task and backbone share one run.

    python benchmarks/seeds.py --data ../shared/datasets   # writes benchmarks/results/seeds.json
    python benchmarks/seeds.py --limit 120 --budget 45     # a smoke run

Runs land in <out>/runs/ (quality.py's names: its finished runs are reused when their config is the
same) and are reused when complete; --fresh retrains.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from quality import RECIPES, tasks

from posterlab.config import DataConfig, LabelConfig, RunConfig
from posterlab.models.registry import DEFAULT_BACKBONE, get_backbone
from posterlab.models.weights import weights_file
from posterlab.runs import load_run, write_json
from posterlab.training.trainer import train_run

RECIPE = "best"
NAMES = {  # metric key → how the table writes it
    "micro_f1": "micro-F1",
    "macro_f1": "macro-F1",
    "accuracy": "accuracy",
    "hit_at_1": "hit@1",
    "hit_at_3": "hit@3",
}
SAME_DATA = "dataset differs: the seed's posters are not here (development posters, posterlab's split)"


@dataclass(frozen=True)
class Seed:
    """A student report: its task (a quality.py task name or ``top20``), its figure and what it leaves open."""

    key: str
    title: str
    task: str
    reported: float
    reported_as: str  # the report's own words
    metrics: tuple[str, ...]  # posterlab's figures shown for it
    backbone: str | None = None  # timm name of the seed's backbone, when the report names it
    open_points: tuple[str, ...] = ()


SEEDS = (
    Seed(
        "six_genres",
        "(a) six genres, multi-label",
        "top6",
        0.403,
        "F1 0.403",
        ("micro_f1", "macro_f1"),
        open_points=("which F1 (micro or macro) and which thresholds is not stated: both shown",),
    ),
    Seed(
        "four_genres",
        "(b) four single genres",
        "four_genres",
        0.658,
        "accuracy 65.8%",
        ("accuracy",),
    ),
    Seed(
        "fresh_rotten",
        "(c) fresh vs rotten",
        "fresh_rotten",
        0.623,
        "accuracy 62.3%",
        ("accuracy",),
        open_points=("posters_rt holds 238 posters: one test poster moves accuracy by about 2 points",),
    ),
    Seed(
        "twenty_genres",
        "(d) twenty genres, top-n accuracy",
        "top20",
        0.2641,
        "top-n accuracy 26.41%",
        ("hit_at_1", "hit_at_3"),
        open_points=("'top-n accuracy' read as hit@k (a true genre among the k best scored); n not stated",),
    ),
    Seed(
        "mobilenet_six",
        "(e) MobileNetV2 transfer, six genres",
        "top6",
        0.30,
        "~30%",
        ("micro_f1", "macro_f1"),
        backbone="mobilenetv2_100",
        open_points=("the report's metric is not stated",),
    ),
)


def task_data(root: Path, task: str, limit: int | None) -> DataConfig:
    """quality.py's data config of ``task`` (plus ``top20``), with the recipe's changes and the limit."""
    configs = tasks(root) | {"top20": DataConfig(path=str(root / "posters"), labels=LabelConfig(top_n=20))}
    _, changes = RECIPES[RECIPE]
    return dataclasses.replace(configs[task], limit=limit, **changes)


def backbone_for(seed: Seed) -> tuple[str, list[str]]:
    """The seed's backbone when its weights are on this machine, else the default; and why."""
    if seed.backbone is None:
        return DEFAULT_BACKBONE, [f"the seed's backbone is not recorded here; ran {DEFAULT_BACKBONE}"]
    if weights_file(seed.backbone) is None:
        title = get_backbone(seed.backbone).title
        return DEFAULT_BACKBONE, [
            f"{title} weights unavailable offline (no {seed.backbone}.safetensors in POSTERLAB_WEIGHTS_DIR); "
            f"ran {DEFAULT_BACKBONE} instead"
        ]
    return seed.backbone, []


def ensure_run(config: RunConfig, runs: Path, fresh: bool, budget: float | None) -> Path:
    """A finished run of ``config`` under ``runs``: reused when complete and the same, else trained."""
    folder = runs / config.name
    if folder.exists():
        run = load_run(folder)
        if run.state == "completed" and not fresh:
            if run.config != config:
                raise SystemExit(
                    f"{folder}: a finished run with another config holds this name; pass --fresh to "
                    "retrain it or --out to use another folder"
                )
            return folder
        shutil.rmtree(folder)
    print(f"training {config.name} ...", file=sys.stderr, flush=True)
    deadline = time.monotonic() + budget if budget else float("inf")
    return train_run(config, runs, should_stop=lambda: time.monotonic() >= deadline)


def run_name(task: str, backbone: str, limit: int | None) -> str:
    """quality.py's run name for the default backbone and full data, so that its runs are reused."""
    name = f"{task}-{RECIPE}"
    if backbone != DEFAULT_BACKBONE:
        name += f"-{backbone}"
    return name + (f"-limit{limit}" if limit else "")


def row_for(seed: Seed, folder: Path, backbone: str, reasons: list[str]) -> dict:
    """One table row: the seed's figure, posterlab's, the baseline, and what was not reproduced."""
    run = load_run(folder)
    if run.metrics is None:
        reasons = [*reasons, f"run {run.state} before its first epoch ended: no figure"]
        return {"seed": seed.key, "title": seed.title, "run": str(folder), "state": run.state, "why": reasons}
    test = run.metrics["test"]
    if run.state != "completed":
        reasons = [*reasons, f"run {run.state} at the budget after {run.metrics['epochs_run']} epoch(s)"]
    return {
        "seed": seed.key,
        "title": seed.title,
        "reported": seed.reported,
        "reported_as": seed.reported_as,
        "posterlab": {k: test["metrics"][k] for k in seed.metrics},
        "baseline": {k: test["baseline"][k] for k in seed.metrics},
        "n_test": test["n"],
        "labels": run.metrics["labels"],
        "backbone": backbone,
        "recipe": RECIPE,
        "run": str(folder),
        "state": run.state,
        "train_seconds": run.status.get("seconds"),
        "why": [*reasons, SAME_DATA, *seed.open_points],
    }


def _figures(values: dict) -> str:
    return ", ".join(f"{NAMES[k]} {v:.3f}" for k, v in values.items())


def markdown(rows: list[dict]) -> str:
    """The seeds table."""
    lines = [
        "| seed report | reported | posterlab (test) | baseline | n test | backbone | not reproduced, and why |",
        "|---|---|---|---|---:|---|---|",
    ]
    for row in rows:
        if "posterlab" not in row:
            lines.append(f"| {row['title']} | | no result | | | | {'; '.join(row['why'])} |")
            continue
        lines.append(
            f"| {row['title']} | {row['reported_as']} | {_figures(row['posterlab'])} | "
            f"{_figures(row['baseline'])} | {row['n_test']} | {row['backbone']} | {'; '.join(row['why'])} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default="../shared/datasets", help="folder holding posters/ and posters_rt/"
    )
    parser.add_argument(
        "--seeds", default=",".join(seed.key for seed in SEEDS), help="comma-separated subset"
    )
    parser.add_argument("--limit", type=int, help="use N posters per task (a seeded subset): smoke runs")
    parser.add_argument("--budget", type=float, help="stop each run after this many seconds (default: none)")
    parser.add_argument("--out", default="benchmarks/results", help="writes seeds.json and runs/ here")
    parser.add_argument("--fresh", action="store_true", help="retrain even when a finished run exists")
    args = parser.parse_args()
    chosen = [seed for seed in SEEDS if seed.key in args.seeds.split(",")]
    unknown = sorted(set(args.seeds.split(",")) - {seed.key for seed in SEEDS})
    if unknown:
        raise SystemExit(
            f"unknown seed(s) {', '.join(unknown)}; choose from {', '.join(s.key for s in SEEDS)}"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    train, _ = RECIPES[RECIPE]
    rows, done = [], {}  # run name → folder: rows sharing a run train it once per call
    for seed in chosen:
        backbone, reasons = backbone_for(seed)
        data = task_data(Path(args.data), seed.task, args.limit)
        name = run_name(seed.task, backbone, args.limit)
        config = RunConfig(data, dataclasses.replace(train, backbone=backbone), name=name)
        if name not in done:
            done[name] = ensure_run(config, runs, args.fresh, args.budget)
        rows.append(row_for(seed, done[name], backbone, reasons))
    write_json(
        out / "seeds.json", {"recipe": RECIPE, "limit": args.limit, "budget": args.budget, "rows": rows}
    )
    print(markdown(rows))
    print(f"wrote {out / 'seeds.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
