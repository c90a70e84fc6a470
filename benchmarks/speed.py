"""Speed of probe training against a plain seed-style loop, on the same 400 posters, in one run.

plain      every epoch decodes, resizes and runs the frozen tf_efficientnet_lite0 over all posters,
           then updates the head (what the student seeds did, in a plain PyTorch loop)
cold       `posterlab train --mode probe --epochs 10` with an empty feature cache
warm       the same command again: embeddings come from the cache, the backbone never runs

Each measurement runs in its own process (wall time end to end, peak RSS of that process).

    python benchmarks/speed.py --data ../shared/datasets/posters   # writes benchmarks/results/speed.json
Targets on a 2-core CPU: cold probe >= 3x faster than 10 plain epochs, warm <= 10 s, extraction >= 40 posters/s.
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

import pandas as pd

EPOCHS = 10


def make_subset(source: Path, count: int, dest: Path) -> Path:
    """The first ``count`` posters (by a fixed shuffle) that carry one of the top-6 genres."""
    table = pd.read_csv(source / "labels.csv", dtype=str, keep_default_na=False)
    top6 = {"Drama", "Comedy", "Romance", "Action", "Thriller", "Horror"}
    table = table[table["genres"].map(lambda g: bool(set(g.split("|")) & top6))]
    table = table.sample(frac=1.0, random_state=0).head(count)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for movie in table["imdb_id"]:
        shutil.copy(source / "images" / f"{movie}.jpg", dest / "images" / f"{movie}.jpg")
    table.to_csv(dest / "labels.csv", index=False)
    return dest


def plain_loop(data: Path, epochs: int) -> dict:
    """The seed-style baseline, run in this process."""
    import timm
    import torch
    from PIL import Image

    from posterlab.config import LabelConfig
    from posterlab.data.labels import apply_rule, resolve_rule
    from posterlab.data.sources import load_dataset
    from posterlab.models.factory import create_model

    torch.manual_seed(0)
    frame = load_dataset(data).frame
    labelled = apply_rule(frame, resolve_rule(frame, LabelConfig(top_n=6)))
    model = create_model("tf_efficientnet_lite0", 6, pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model.backbone))
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    y = torch.from_numpy(labelled.y)
    paths = labelled.frame["image"].tolist()
    started = time.monotonic()
    for _ in range(epochs):
        for start in range(0, len(paths), 32):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start : start + 32]])
            with torch.no_grad():
                features = model.backbone(batch)
            loss = loss_fn(model.head(features), y[start : start + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.monotonic() - started
    return {
        "seconds": seconds,
        "posters": len(paths),
        "epochs": epochs,
        "posters_per_second": len(paths) * epochs / seconds,
    }


def timed(command: list[str], env: dict) -> dict:
    """Run ``command``; its wall time, stdout, and its own peak RSS (from wait4's rusage)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read()[-2000:]}")
        return {
            "seconds": seconds,
            "stdout": out.read().strip(),
            "peak_rss_mib": round(usage.ru_maxrss / 1024),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/datasets/posters")
    parser.add_argument("--posters", type=int, default=400)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--subset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_only:
        result = plain_loop(Path(args.subset), EPOCHS)
        print(json.dumps(result))
        return 0

    work = Path(tempfile.mkdtemp(prefix="posterlab-speed-"))
    subset = make_subset(Path(args.data), args.posters, work / "posters")
    env = {**os.environ, "POSTERLAB_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    train = [
        sys.executable,
        "-m",
        "posterlab.cli",
        "train",
        "--data",
        str(subset),
        "--genres",
        "6",
        "--mode",
        "probe",
        "--epochs",
        str(EPOCHS),
        "--patience",
        "0",
        "-q",
    ]

    print(f"plain loop: {EPOCHS} epochs over {args.posters} posters ...", flush=True)
    plain = timed([sys.executable, __file__, "--plain-only", "--subset", str(subset)], env)
    plain.update(json.loads(plain["stdout"].splitlines()[-1]))
    print(
        f"  {plain['seconds']:.1f} s ({plain['posters_per_second']:.1f} posters/s), peak {plain['peak_rss_mib']} MiB",
        flush=True,
    )

    print("posterlab probe, cold cache ...", flush=True)
    cold = timed([*train, "--out", str(work / "runs" / "cold")], env)
    cold_metrics = json.loads((work / "runs" / "cold" / "metrics.json").read_text())
    extraction_seconds = cold_metrics["seconds"]["features"]
    extraction_rate = args.posters / extraction_seconds
    print(
        f"  {cold['seconds']:.1f} s end to end; extraction {extraction_rate:.1f} posters/s; peak {cold['peak_rss_mib']} MiB",
        flush=True,
    )

    print("posterlab probe, warm cache ...", flush=True)
    warm = timed([*train, "--out", str(work / "runs" / "warm")], env)
    warm_metrics = json.loads((work / "runs" / "warm" / "metrics.json").read_text())
    print(
        f"  {warm['seconds']:.1f} s end to end (features {warm_metrics['seconds']['features']:.2f} s, fit {warm_metrics['seconds']['fit']:.2f} s)",
        flush=True,
    )

    result = {
        "posters": args.posters,
        "epochs": EPOCHS,
        "cpu_count": os.cpu_count(),
        "plain_loop_seconds": round(plain["seconds"], 1),
        "plain_loop_peak_rss_mib": plain["peak_rss_mib"],
        "probe_cold_seconds": round(cold["seconds"], 1),
        "probe_warm_seconds": round(warm["seconds"], 1),
        "extraction_posters_per_second": round(extraction_rate, 1),
        "speedup_cold_vs_plain": round(plain["seconds"] / cold["seconds"], 1),
        "probe_cold_peak_rss_mib": cold["peak_rss_mib"],
        "probe_warm_peak_rss_mib": warm["peak_rss_mib"],
        "targets": {
            "cold >= 3x faster than plain": plain["seconds"] / cold["seconds"] >= 3,
            "warm <= 10 s": warm["seconds"] <= 10,
            "extraction >= 40 posters/s": extraction_rate >= 40,
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
