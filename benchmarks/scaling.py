"""How posterlab scales out: 1 vs N processes on this machine, and a 100,000-row dataset.

Three measurements, each in fresh subprocesses (as users run them):

  full      full fine-tune images/s: ``posterlab train --mode full --nproc-per-node N`` on the data,
            training posters over the seconds of the last epoch (its validation pass included)
  extract   probe extraction posters/s: ``posterlab train --mode probe`` with an empty cache, posters over
            the run's feature seconds (rank 0's, which waits for every shard)
  large     a synthetic labels.csv of --rows rows pointing at the data's images (each row its own hard
            link, so every file is read and digested as a real one would be): wall time and peak RSS of
            read + scan + clean + label + split in a fresh process, and of splitting all --rows rows
            (the cleaning keeps one poster per distinct image). Goal: under 60 s and 2 GB.

    python benchmarks/scaling.py                              # embedded sample, 1 and 2 processes
    python benchmarks/scaling.py --data ../shared/datasets/posters --limit 600 --processes 1,2
    python benchmarks/scaling.py --only large --rows 100000

Writes benchmarks/results/scaling.json. On a CPU-only machine N processes share its cores (torchrun
sets OMP_NUM_THREADS=1 per process; posterlab gives each process its share of loader workers and ONNX
threads), so the figure says whether DDP's overhead is small, not that more cores appeared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _train(data: str, mode: str, processes: int, work: Path, extra: list[str]) -> dict:
    """One ``posterlab train`` run in a fresh cache; its run folder's figures."""
    name = f"{mode}-{processes}"
    out = work / "runs" / name
    env = dict(os.environ, POSTERLAB_CACHE_DIR=str(work / f"cache-{name}"), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "posterlab", "train", "--data", data, "--mode", mode, "--out", str(out)]
    command += ["--nproc-per-node", str(processes), "-q", *extra]
    started = time.monotonic()
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    wall = time.monotonic() - started
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    split = json.loads((out / "split.json").read_text())
    counts = {part: len(rows) for part, rows in split.items()}
    config = json.loads((out / "config.json").read_text())
    return dict(
        processes=processes,
        world_size=config.get("environment", {}).get("world_size"),
        posters=counts,
        wall_s=round(wall, 1),
        epoch_s=[round(row["seconds"], 2) for row in history],
        feature_s=metrics.get("seconds", {}).get("features"),
        test=metrics.get("test", {}).get("map"),
    )


def full(data: str, processes: list[int], work: Path, limit: int | None, epochs: int) -> list[dict]:
    rows = []
    for n in processes:
        extra = ["--epochs", str(epochs), "--patience", "0", "--batch-size", "32", "--no-augment"]
        result = _train(data, "full", n, work, extra + (["--limit", str(limit)] if limit else []))
        result["images_per_s"] = round(result["posters"]["train"] / result["epoch_s"][-1], 2)
        print(
            f"full fine-tune, {n} process(es): {result['images_per_s']} training posters/s "
            f"(epochs {result['epoch_s']} s)",
            flush=True,
        )
        rows.append(result)
    return rows


def extract(data: str, processes: list[int], work: Path, limit: int | None) -> list[dict]:
    rows = []
    for n in processes:
        extra = ["--epochs", "1", "--no-flip-views"] + (["--limit", str(limit)] if limit else [])
        result = _train(data, "probe", n, work, extra)
        posters = sum(result["posters"].values())
        result["posters_per_s"] = round(posters / result["feature_s"], 2)
        print(
            f"extraction, {n} process(es): {result['posters_per_s']} posters/s "
            f"({posters} posters in {result['feature_s']} s)",
            flush=True,
        )
        rows.append(result)
    return rows


def make_large(source: str, rows: int, folder: Path) -> Path:
    """``rows`` labelled rows, each its own hard link to one of the source's images."""
    import pandas as pd

    from posterlab.data.sources import load_dataset

    dataset = load_dataset(source)
    table = dataset.frame
    images = folder / "images"
    images.mkdir(parents=True)
    picks = table.iloc[[i % len(table) for i in range(rows)]]
    out = []
    for number, row in enumerate(picks.itertuples()):
        movie = f"syn{number:07d}"
        target = images / f"{movie}.jpg"
        try:
            os.link(row.image, target)
        except OSError:  # another file system: a copy
            shutil.copyfile(row.image, target)
        out.append({"imdb_id": movie, "title": row.title, "genres": "|".join(row.genres)})
    pd.DataFrame(out).to_csv(folder / "labels.csv", index=False)
    return folder


PREPARE = """
import json, resource, sys, time
started = time.monotonic()
from posterlab.config import DataConfig, LabelConfig
from posterlab.data.prepare import prepare_data
from posterlab.data.labels import apply_rule, resolve_rule
from posterlab.data.sources import load_dataset
from posterlab.data.split import split_indices
config = DataConfig(path=sys.argv[1], labels=LabelConfig(top_n=6))
prepared = prepare_data(config)
prepare_s = time.monotonic() - started
begun = time.monotonic()
frame = load_dataset(sys.argv[1]).frame
labelled = apply_rule(frame, resolve_rule(frame, config.labels))
splits = split_indices(labelled.y, 0.2, 0.2, 0)
every_row_s = time.monotonic() - begun
print(json.dumps(dict(
    rows=len(frame), kept=len(prepared.labelled.frame), dropped=prepared.report.dropped,
    prepare_s=round(prepare_s, 1), split_every_row_s=round(every_row_s, 1),
    split_sizes={k: len(v) for k, v in splits.items()},
    peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
)))
"""


def large(data: str, rows: int, work: Path) -> dict:
    folder = make_large(data, rows, work / "large")
    env = dict(os.environ, POSTERLAB_CACHE_DIR=str(work / "cache-large"))
    runs = []
    for attempt in ("cold", "warm"):  # warm: the scan cache of the first pass
        done = subprocess.run(
            [sys.executable, "-c", PREPARE, str(folder)],
            check=True,
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1]) | {"pass": attempt}
        print(
            f"{rows:,} rows, {attempt}: read+scan+clean+label+split {result['prepare_s']} s "
            f"({result['kept']} kept), splitting every row {result['split_every_row_s']} s, "
            f"peak RSS {result['peak_rss_mb']} MB",
            flush=True,
        )
        runs.append(result)
    return {"rows": rows, "passes": runs, "goal": "under 60 s and under 2048 MB"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="sample", help="dataset (default: the embedded sample)")
    parser.add_argument("--processes", default="1,2", help="process counts to compare")
    parser.add_argument("--limit", type=int, default=None, help="posters for the training runs")
    parser.add_argument("--epochs", type=int, default=2, help="full fine-tune epochs (the last is timed)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic large dataset")
    parser.add_argument("--only", choices=("full", "extract", "large"), action="append")
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    args = parser.parse_args()
    processes = [int(n) for n in args.processes.split(",")]
    parts = args.only or ["full", "extract", "large"]
    report: dict = {"data": args.data, "cores": len(os.sched_getaffinity(0)), "limit": args.limit}
    with tempfile.TemporaryDirectory(prefix="posterlab-scaling-") as scratch:
        work = Path(scratch)
        if "full" in parts:
            report["full"] = full(args.data, processes, work, args.limit, args.epochs)
        if "extract" in parts:
            report["extract"] = extract(args.data, processes, work, args.limit)
        if "large" in parts:
            report["large"] = large(args.data, args.rows, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
