"""Optuna searches: one study shared by 2 worker processes against 1, and TPE beside random search.

Every row is the same budget (``--trials`` trials, ``--folds``-fold cross-validation per trial) of the same
probe on cached embeddings, run as separate ``posterlab train`` processes like a user would:

  old random     the hand-written random search posterlab had before Optuna (seed report 001's method),
                 run from a checkout of that code (``--old-code DIR``; the row is left out without it)
  random         Optuna's RandomSampler, no pruning (``--sampler random --pruner none``): the same method
  tpe 1 worker   TPE and the median pruner (the default)
  tpe 2 workers  the same study (one SQLite file, ``--storage``/``--study``) shared by two processes
                 started together; each ends with its own run folder trained on the study's best

Reported: the processes' wall time (start to both finished: start-up, data, search and the final
training), the search's own span (first trial start to last trial end, from the study), the best trial's
cross-validated score, how many trials were pruned, and the final run's test score. The embeddings are
computed once before any timed row. The machine's load average is printed: the CPUs may be shared.

    python benchmarks/search.py --old-code /tmp/posterlab-before-optuna   # results/search.json
    git -C . archive 24d1bcb | tar -x -C /tmp/posterlab-before-optuna    # how that checkout was made
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _command(args: argparse.Namespace, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "posterlab",
        "train",
        "--data",
        args.data,
        "--target",
        args.target,
        "--mode",
        "probe",
        "--epochs",
        str(args.epochs),
        "--fit",
        "pad",
        "--balance",
        "weights",
        "--seed",
        str(args.seed),
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def _launch(command: list[str], code: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.Popen(command, env=env, cwd=code, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait(processes: list[subprocess.Popen], logs: list[Path]) -> None:
    for process, log in zip(processes, logs, strict=True):
        if process.wait() != 0:
            raise SystemExit(f"a worker failed; see {log}:\n{log.read_text()[-2000:]}")


def _test_score(run: Path) -> float:
    metrics = json.loads((run / "metrics.json").read_text())
    return metrics["test"]["metrics"][metrics["monitor"]]


def _study_row(storage: str, name: str) -> dict:
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    return {
        "best_cv": study.best_value,
        "best_params": study.best_trial.params,
        "trials": len(done),
        "pruned": sum(t.state.name == "PRUNED" for t in done),
        "workers": len({t.user_attrs.get("worker") for t in done}),
        "search_s": span.total_seconds(),
    }


def run_row(args: argparse.Namespace, label: str, workers: int, extra: list[str], code: Path = ROOT) -> dict:
    work = args.work / label.replace(" ", "-")
    work.mkdir(parents=True, exist_ok=True)
    shared = workers > 1
    storage = f"sqlite:///{work / 'shared.db'}"
    flags = ["--search", str(args.trials), "--folds", str(args.folds), *extra]
    if shared:
        flags += ["--storage", storage, "--study", "bench"]
    runs = [work / f"run{k}" for k in range(workers)]
    logs = [work / f"worker{k}.log" for k in range(workers)]
    load_before = _load()
    started = time.monotonic()
    processes = [_launch(_command(args, run, *flags), code, log) for run, log in zip(runs, logs, strict=True)]
    _wait(processes, logs)
    wall = time.monotonic() - started
    row = {
        "row": label,
        "workers": workers,
        "wall_s": wall,
        "load_before": load_before,
        "load_after": _load(),
    }
    if code == ROOT:
        row |= _study_row(
            storage if shared else f"sqlite:///{runs[0] / 'search.db'}", "bench" if shared else "search"
        )
    else:  # the old code kept its trials in search.json only
        table = json.loads((runs[0] / "search.json").read_text())
        monitor = json.loads((runs[0] / "metrics.json").read_text())["monitor"]
        best = max(table, key=lambda r: r[monitor])
        row |= {
            "best_cv": best[monitor],
            "best_params": {k: best[k] for k in ("lr", "dropout", "weight_decay")},
            "trials": len(table),
            "pruned": 0,
            "workers": 1,
            "search_s": None,
        }
    row["test"] = [_test_score(run) for run in runs]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/posters_rt"))
    parser.add_argument("--target", default="label")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--old-code", type=Path, help="a checkout of posterlab before Optuna (the old random search)"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/posterlab-bench-search"))
    args = parser.parse_args()
    args.data = str(args.data.resolve())  # the old code runs from its own folder
    args.work = args.work / f"seed{args.seed}"
    if args.work.exists():
        raise SystemExit(f"{args.work} exists: remove it (each row needs fresh run folders)")
    args.work.mkdir(parents=True)

    # the embeddings once, untimed (every row below reads them from the cache)
    warm = _launch(_command(args, args.work / "warm", "--epochs", "1"), ROOT, args.work / "warm.log")
    _wait([warm], [args.work / "warm.log"])

    rows = []
    if args.old_code:
        rows.append(run_row(args, "old random", 1, [], code=args.old_code.resolve()))
    rows.append(run_row(args, "random", 1, ["--sampler", "random", "--pruner", "none"]))
    rows.append(run_row(args, "tpe 1 worker", 1, []))
    rows.append(run_row(args, "tpe 2 workers", 2, []))

    print(
        f"\n{args.trials} trials x {args.folds} folds, probe, {args.data}, seed {args.seed}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'row':15} {'wall s':>7} {'search s':>9} {'best cv':>8} {'pruned':>6} {'workers':>7} {'test':>14}  load"
    )
    for r in rows:
        search = f"{r['search_s']:.1f}" if r["search_s"] is not None else "-"
        tests = ", ".join(f"{t:.3f}" for t in r["test"])
        print(
            f"{r['row']:15} {r['wall_s']:7.1f} {search:>9} {r['best_cv']:8.3f} {r['pruned']:6d} {r['workers']:7d} "
            f"{tests:>14}  {r['load_before']} -> {r['load_after']}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"search-seed{args.seed}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
