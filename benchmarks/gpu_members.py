"""The top-6 ensemble's fine-tuned members, trained on a GPU; the ensemble picked on validation.

Every member trains every layer of a larger EfficientNet-Lite (Lite1 at 240 px, Lite2 at 260 px) on the
posters themselves (augmented, the three fits of the `best` recipe: centre crop, padded, squashed; the
fits averaged at test time), on the same movie-level split as the committed demo model. Then members are
added greedily while the validation mAP of their average rises (test figures are printed, never used to
choose).

    # on a machine with a GPU and the posters
    python benchmarks/gpu_members.py train --data ../shared/datasets/posters --out benchmarks/results/gpu
    # score returned runs here on the original posters (val + test), then the ensemble
    python benchmarks/gpu_members.py rescore benchmarks/results/gpu/runs/* --data ../shared/datasets/posters
    python benchmarks/gpu_members.py choose benchmarks/results/gpu/runs/* checkpoints/demo-genres

`pack` writes a compact copy for a remote GPU machine that takes a size-limited working tree: the
posters of the task (after the cleaning the split was made on, so the copy needs none) re-encoded as
WebP in two archives, the split they must reproduce, and the Lite1/Lite2 weights in float16:

    python benchmarks/gpu_members.py pack --data ../shared/datasets/posters --out .device
    # there (carrying .device/site too): tar -xzf p1.tar.gz -C /tmp && tar -xzf p2.tar.gz -C /tmp, then
    PYTHONPATH=.:.device/site python benchmarks/gpu_members.py train --data /tmp/posters \
        --near-duplicate-bits -1 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import json
import shutil
import sys
import tarfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ensemble import RESCORED, SHOWN, read, score  # noqa: E402

from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig  # noqa: E402

TOP6 = ("Drama", "Comedy", "Romance", "Action", "Thriller", "Horror")
# posterlab's pure-Python dependencies that training imports and the lent machine's image lacks (its
# KINDS.md list); `pack` copies them to OUT/site, to carry and put on PYTHONPATH there
CARRIED = ("platformdirs", "imagehash", "iterstrat")
FITS = {"fit": "crop", "extra_fits": ("pad", "squash")}


def _member(backbone: str, scale: float, seed: int = 0) -> TrainConfig:
    return TrainConfig(
        backbone=backbone,
        mode="full",
        epochs=14,
        lr=1e-3,
        backbone_lr_scale=scale,
        warmup_epochs=1,
        patience=4,
        dropout=0.3,
        weight_decay=1e-2,
        seed=seed,
        save_dtype="float16",
    )


# in the order they train when the time budget runs short
MEMBERS = {
    "lite2-s01": _member("tf_efficientnet_lite2", 0.1),
    "lite1-s01": _member("tf_efficientnet_lite1", 0.1),
    "lite2-s03": _member("tf_efficientnet_lite2", 0.3),
    "lite1-s03": _member("tf_efficientnet_lite1", 0.3),
    "lite2-s01-seed1": _member("tf_efficientnet_lite2", 0.1, seed=1),
    "lite1-s01-seed1": _member("tf_efficientnet_lite1", 0.1, seed=1),
    # more seeds of the members validation ranked first (the second round, for the ensemble)
    **{f"lite2-s01-seed{s}": _member("tf_efficientnet_lite2", 0.1, seed=s) for s in (2, 3, 4)},
}


def data_config(path: str, near_duplicate_bits: int = 4) -> DataConfig:
    return DataConfig(
        path=path, labels=LabelConfig(genres=TOP6), near_duplicate_bits=near_duplicate_bits, **FITS
    )


def pack(args: argparse.Namespace) -> int:
    """The task's posters after cleaning, in the order the split was drawn on, as WebP in two parts."""
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from posterlab.data.prepare import prepare_data

    prepared = prepare_data(data_config(args.data))
    frame = prepared.labelled.frame
    ids = frame["id"].astype(str).tolist()
    source = pd.read_csv(Path(args.data) / "labels.csv", dtype={"imdb_id": str}).set_index("imdb_id")
    rows = source.loc[ids].reset_index()
    rows.insert(1, "image", [f"images/{i}.webp" for i in ids])
    out = Path(args.out)
    shutil.rmtree(out / "p1", ignore_errors=True)
    shutil.rmtree(out / "p2", ignore_errors=True)
    sizes, part = [], "p1"
    for number, (poster_id, path) in enumerate(zip(ids, frame["image"], strict=True)):
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, "WEBP", quality=args.quality, method=6)
        sizes.append(buffer.tell())
        if part == "p1" and sum(sizes) > args.first_part_mb * 2**20:
            part = "p2"
        target = out / part / "posters" / "images" / f"{poster_id}.webp"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buffer.getvalue())
        if number % 1000 == 0:
            print(f"{number}/{len(ids)} posters, {sum(sizes) / 2**20:.1f} MiB", flush=True)
    (out / "p2" / "posters").mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / "p2" / "posters" / "labels.csv", index=False)
    split = {name: [ids[i] for i in rows_] for name, rows_ in prepared.splits.items()}
    (out / "p2" / "posters" / "expected_split.json").write_text(json.dumps(split))
    weights = out / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    for name in ("tf_efficientnet_lite1", "tf_efficientnet_lite2"):
        state = load_file(str(Path(args.weights) / f"{name}.safetensors"))
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
        save_file(half, str(weights / f"{name}.safetensors"), metadata={"format": "pt"})
    for part in ("p1", "p2"):  # one file per part: no per-file overhead in the size limit
        with tarfile.open(out / f"{part}.tar.gz", "w:gz", compresslevel=1) as tar:
            tar.add(out / part / "posters", arcname="posters")
        shutil.rmtree(out / part)
        print(f"{out / part}.tar.gz: {(out / f'{part}.tar.gz').stat().st_size / 2**20:.1f} MiB")
    print(f"{weights}: {sum(f.stat().st_size for f in weights.iterdir()) / 2**20:.1f} MiB")
    copy_packages(out / "site")
    print(f"{len(ids)} posters, mean {np.mean(sizes) / 1024:.1f} KiB (WebP quality {args.quality})")
    return 0


def copy_packages(site: Path) -> None:
    """The ``CARRIED`` packages, as installed here, into ``site``."""
    for name in CARRIED:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{name} is not installed here: pip install -e .")
        target = site / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(
            spec.submodule_search_locations[0], target, ignore=shutil.ignore_patterns("__pycache__")
        )
    print(f"{site}: {', '.join(CARRIED)}")


def train(args: argparse.Namespace) -> int:
    missing = [n for n in (*CARRIED, "timm", "sklearn", "safetensors") if importlib.util.find_spec(n) is None]
    if missing:  # before the members: each would fail on it, one after the other
        raise SystemExit(
            f"not importable here: {', '.join(missing)}; carry .device/site (written by pack) "
            "and run with PYTHONPATH=.:.device/site"
        )
    import torch

    from posterlab.runs import load_run, read_splits
    from posterlab.training.trainer import train_run

    started = time.monotonic()
    out = Path(args.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    print(
        f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
        flush=True,
    )
    expected = Path(args.data) / "expected_split.json"
    names = [n for n in args.members.split(",") if n] if args.members else list(MEMBERS)
    longest, finished = 0.0, []
    for name in names:
        left = args.budget - (time.monotonic() - started)
        if left < 1.15 * longest + 20:
            print(f"{name}: skipped, {left:.0f} s left of the budget and a member took {longest:.0f} s")
            continue
        begun = time.monotonic()
        tc = MEMBERS[name]
        if args.epochs:
            tc = dataclasses.replace(tc, epochs=args.epochs)
        data = data_config(args.data, near_duplicate_bits=args.near_duplicate_bits)
        config = RunConfig(dataclasses.replace(data, limit=args.limit), tc, name)
        shutil.rmtree(runs / name, ignore_errors=True)
        try:
            train_run(config, runs)
        except Exception:
            traceback.print_exc()
            print(f"{name}: failed", flush=True)
            continue
        seconds = time.monotonic() - begun
        longest = max(longest, seconds)
        run = load_run(runs / name)
        history = run.history if isinstance(run.history, list) else []
        same = "no expected split given"
        if expected.is_file():
            want = {k: set(v) for k, v in json.loads(expected.read_text()).items()}
            same = "same split" if read_splits(runs / name) == want else "SPLIT DIFFERS"
        test = run.metrics["test"]["metrics"]
        print(
            f"{name}: {seconds:.0f} s, {len(history)} epochs, best {run.metrics['best_epoch']}, "
            f"test " + " ".join(f"{k} {test[k]:.3f}" for k in SHOWN) + f", {same}",
            flush=True,
        )
        finished.append(runs / name)
    if not finished:
        return 1
    chosen = choose(finished, [Path(p) for p in args.with_runs])
    if args.bundle:
        bundle(finished, chosen, Path(args.bundle), args.bundle_mb)
    return 0


def choose(members: list[Path], extra: list[Path]) -> list[Path]:
    """Greedy forward selection (with replacement off) on validation mAP; prints each step's test."""
    tables = {run: read(run) for run in members + extra}
    labels, first = tables[members[0]]
    columns = [f"p:{label}" for label in labels]
    common = first.index
    for run, (other, table) in tables.items():
        if other != labels:
            raise SystemExit(f"{run}: labels {other} differ from {labels}; use runs of one task")
        common = common.intersection(table.index)
    for run, (_, table) in tables.items():
        if not table.loc[common, "split"].equals(first.loc[common, "split"]):
            raise SystemExit(f"{run}: another split than {members[0]}; train with the same data and seed")
    if len(common) != len(first):
        print(f"ensemble on the {len(common)} posters every member scored (of {len(first)})")
    first = first.loc[common]
    probs = {run: table.loc[common, columns].to_numpy(float) for run, (_, table) in tables.items()}
    chosen: list[Path] = []
    best = -1.0
    print(f"{'members':<70} {'val mAP':>8} " + " ".join(f"{'test ' + k:>14}" for k in SHOWN))
    for run in tables:
        print(_row(run.name, score(labels, first, probs[run])))
    print("greedy, on validation mAP:")
    while True:
        trials = {
            run: score(labels, first, np.mean([probs[r] for r in chosen + [run]], axis=0))
            for run in tables
            if run not in chosen
        }
        if not trials:
            break
        run, figures = max(trials.items(), key=lambda item: item[1]["val"]["map"])
        if figures["val"]["map"] <= best:
            break
        chosen.append(run)
        best = figures["val"]["map"]
        print(_row(" + ".join(r.name for r in chosen), figures), flush=True)
    return chosen


def _row(name: str, figures: dict) -> str:
    shown = " ".join(f"{figures['test'][k]:>14.3f}" for k in SHOWN)
    return f"{name[-70:]:<70} {figures['val']['map']:>8.3f} {shown}"


def bundle(finished: list[Path], chosen: list[Path], out: Path, limit_mb: float) -> None:
    """One .tar.gz per run, the chosen members first, while the total stays under ``limit_mb``."""
    out.mkdir(parents=True, exist_ok=True)
    order = [r for r in chosen if r in finished] + [r for r in finished if r not in chosen]
    total = 0
    for run in order:
        target = out / f"{run.name}.tar.gz"
        with tarfile.open(target, "w:gz") as tar:
            tar.add(run, arcname=run.name)
        size = target.stat().st_size
        if total + size > limit_mb * 2**20 or size > 15.5 * 2**20:
            target.unlink()
            print(f"{run.name}: left behind ({size / 2**20:.1f} MiB would pass the limit)")
            continue
        total += size
    print(f"bundled {total / 2**20:.1f} MiB in {out}")


def rescore(args: argparse.Namespace) -> int:
    """Score runs' validation and test posters again from another copy of the posters (the originals),
    into ``predictions_originals.csv`` beside the run's own ``predictions.csv`` (which stays as trained)."""
    from posterlab.data.sources import load_dataset
    from posterlab.inference import Predictor
    from posterlab.scoring import onnx_folder

    images = load_dataset(args.data).frame.set_index("id")["image"]
    for run in args.runs:
        if (run / RESCORED).is_file():
            print(f"{run}: already re-scored ({RESCORED})")
            continue
        table = pd.read_csv(run / "predictions.csv", dtype={"id": str})
        table = table[table["split"].isin(["val", "test"])][["id", "split", "truth"]].reset_index(drop=True)
        missing = table.loc[~table["id"].isin(images.index), "id"]
        if len(missing):
            raise SystemExit(f"{run}: {len(missing)} posters not in {args.data}, e.g. {missing.iloc[0]}")
        paths = [str(Path(images[i]).resolve()) for i in table["id"]]
        begun = time.monotonic()
        # the CPU engine (a float32 ONNX export checked against torch; ~2.5x torch on Lite2 here), else torch
        served = onnx_folder(run) if args.backend == "onnx" else None
        predictor = Predictor(served, backend="onnx") if served else Predictor(run)
        probs, errors = predictor.score_paths(paths, args.batch_size)
        if any(errors):
            raise SystemExit(f"{run}: {next(e for e in errors if e)}")
        table["image"] = paths
        for j, label in enumerate(predictor.labels):
            table[f"p:{label}"] = np.round(probs[:, j], 5)
        table.to_csv(run / RESCORED, index=False)
        how = "torch" if served is None else "ONNX export, CPU engine"
        print(f"{run}: {len(paths)} posters in {time.monotonic() - begun:.0f} s ({how})", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="a compact copy for a remote GPU machine")
    p.add_argument("--data", default="../shared/datasets/posters")
    p.add_argument("--weights", default="../shared/weights")
    p.add_argument("--out", default=".device")
    p.add_argument("--quality", type=int, default=60)
    p.add_argument("--first-part-mb", type=float, default=14.8)
    t = commands.add_parser("train", help="train the members, then choose the ensemble on validation")
    t.add_argument("--data", required=True)
    t.add_argument("--out", default="benchmarks/results/gpu")
    t.add_argument("--members", default="", help=f"comma-separated, of: {', '.join(MEMBERS)}")
    t.add_argument("--epochs", type=int, default=0, help="override every member's epochs (a smoke run)")
    t.add_argument("--limit", type=int, default=None, help="at most N posters (a smoke run)")
    t.add_argument("--budget", type=float, default=1e9, help="seconds: start no member that cannot finish")
    t.add_argument(
        "--near-duplicate-bits", type=int, default=4, help="-1 for a packed copy (already cleaned)"
    )
    t.add_argument("--with", dest="with_runs", nargs="*", default=[], help="finished runs to ensemble with")
    t.add_argument("--bundle", default="", help="also write one .tar.gz per run here")
    t.add_argument("--bundle-mb", type=float, default=56.0)
    r = commands.add_parser("rescore", help="score runs' val and test posters from the original posters")
    r.add_argument("runs", nargs="+", type=Path)
    r.add_argument("--data", default="../shared/datasets/posters")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--backend", choices=("onnx", "torch"), default="onnx", help="onnx: the CPU engine")
    c = commands.add_parser("choose", help="greedy ensemble on validation mAP over finished runs")
    c.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    if args.command == "choose":
        choose(args.runs, [])
        return 0
    return {"pack": pack, "train": train, "rescore": rescore}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
