"""Real size: the multi-process paths on the whole development set, with a crash and a stop on the way.

  finetune  a 2-process ``torchrun --max-restarts 1`` fine-tune of Lite0 (top level) over every poster of
            --data: rank 1 is SIGKILLed a batch into epoch 2 (``POSTERLAB_FAULT=later-epoch@1``), torchrun
            restarts the group, which resumes; a Stop is then asked for in epoch --stop-epoch (the app's
            ``stop.request``) and the stopped run is resumed to the end.
  probe     a --rows-poster probe (a labels.csv of hard links to --data's posters, each row its own file)
            through 2 processes: scanning and extraction sharded, the cache shared.

For each: wall time, peak resident memory of each rank (VmHWM, polled), the files rank 1 wrote outside the
cache (Python's audit hook; must be none), epochs trained twice, and the run's test figures.

    python benchmarks/soak.py --data ../shared/datasets/posters               # both, ~40-60 min on 2 cores
    python benchmarks/soak.py --data ../shared/datasets/posters --only probe --rows 30000

Writes benchmarks/results/soak.json and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from posterlab import faults  # noqa: E402
from posterlab.launch import torchrun_command, worker_environment  # noqa: E402
from posterlab.runs import RunFolder, load_run  # noqa: E402


class PeakMemory:
    """Polls every torchrun worker's peak resident memory (VmHWM) by rank and attempt, until stopped."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.wait(1.0):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    environ = dict(
                        item.split("=", 1)
                        for item in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                        if "=" in item
                    )
                    if "TORCHELASTIC_RUN_ID" not in environ or "RANK" not in environ:
                        continue
                    status = (entry / "status").read_text()
                except OSError:
                    continue
                hwm = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")), "0")
                key = f"rank {environ['RANK']}"
                self.peaks[key] = max(self.peaks.get(key, 0.0), int(hwm) / 1024)

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        return {k: round(v) for k, v in sorted(self.peaks.items())}


def environment(work: Path, **extra: str) -> dict:
    audit = faults.audit_writes(work)
    return {
        **worker_environment(True),
        "POSTERLAB_CACHE_DIR": str(work / "cache"),
        **audit,
        "PYTHONPATH": os.pathsep.join([audit["PYTHONPATH"], str(ROOT)]),
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def torchrun(args: list[str], name: str, env: dict, restarts: int, log: Path) -> int:
    command = torchrun_command(args, 2, rdzv_id=name, max_restarts=restarts)
    with open(log, "a") as handle:
        return subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode


def summary(run_dir: Path) -> dict:
    run = load_run(run_dir)
    epochs = [row["epoch"] for row in run.history]
    test = (run.metrics or {}).get("test", {}).get("metrics", {})
    return {
        "state": run.state,
        "epochs": epochs,
        "repeated": len(epochs) - len(set(epochs)),
        "sessions": sorted({row["session"] for row in run.history}),
        "restarts": run.status.get("restarts", 0),
        "test": {k: round(v, 3) for k, v in test.items() if k in ("map", "micro_f1", "macro_f1")},
        "feature_s": (run.metrics or {}).get("seconds", {}).get("features"),
    }


def finetune(data: str, work: Path, args: argparse.Namespace) -> dict:
    run_dir = work / "runs" / "soak-finetune"
    train = ["--data", data, "--genres", "6", "--backbone", "tf_efficientnet_lite0", "--mode", "finetune"]
    train += ["--unfreeze", "1", "--epochs", str(args.epochs), "--patience", "0", "--out", str(run_dir), "-q"]
    log = work / "finetune.log"
    memory = PeakMemory()
    started = time.monotonic()
    stopper = threading.Thread(target=stop_in_epoch, args=(run_dir, args.stop_epoch), daemon=True)
    stopper.start()
    first = torchrun(train, "soak-finetune", environment(work, POSTERLAB_FAULT="later-epoch@1"), 1, log)
    stopped = load_run(run_dir)
    second = torchrun(["--resume", str(run_dir), "-q"], "soak-finetune-resume", environment(work), 0, log)
    wall = time.monotonic() - started
    return {
        "case": f"fine-tune, 2 processes, rank 1 killed in epoch 2, Stop in epoch {args.stop_epoch}, resumed",
        "exit": [first, second],
        "after_stop": {"state": stopped.state, "epochs": len(stopped.history)},
        "wall_s": round(wall, 1),
        "peak_rss_mib": memory.stop(),
        "rank1_outside_cache": faults.written_outside(work, 1, work / "cache"),
    } | summary(run_dir)


def stop_in_epoch(run_dir: Path, epoch: int) -> None:
    """The app's Stop (a stop.request in the run folder) once epoch ``epoch`` is under way."""
    while True:
        try:
            if len(json.loads((run_dir / "history.json").read_text())) >= epoch - 1:
                break
        except (OSError, ValueError):
            pass
        time.sleep(2)
    time.sleep(5)
    RunFolder(run_dir).request_stop()


def probe(data: str, work: Path, rows: int) -> dict:
    source = Path(data)
    with open(source / "labels.csv", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    folder = work / "large"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "genres"])
        writer.writeheader()
        for i in range(rows):
            row = table[i % len(table)]
            name = f"images/{i:06d}.jpg"
            os.link(source / "images" / f"{row['imdb_id']}.jpg", folder / name)
            writer.writerow({"image": name, "genres": row["genres"]})
    run_dir = work / "runs" / "soak-probe"
    memory = PeakMemory()
    started = time.monotonic()
    train = ["--data", str(folder), "--genres", "6", "--backbone", "tf_efficientnet_lite0", "--mode", "probe"]
    code = torchrun(
        [*train, "--epochs", "10", "--out", str(run_dir), "-q"],
        "soak-probe",
        environment(work),
        0,
        work / "probe.log",
    )
    return {
        "case": f"probe, {rows:,} posters (hard links), 2 processes",
        "exit": [code],
        "wall_s": round(time.monotonic() - started, 1),
        "peak_rss_mib": memory.stop(),
        "rank1_outside_cache": faults.written_outside(work, 1, work / "cache"),
    } | summary(run_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", required=True, help="a labels.csv + images/ folder (the development posters)"
    )
    parser.add_argument("--only", choices=("finetune", "probe"))
    parser.add_argument("--rows", type=int, default=30000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--stop-epoch", type=int, default=3)
    parser.add_argument("--work", help="keep the runs and logs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="posterlab-soak-") as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "finetune"):
            results.append(finetune(str(Path(args.data).resolve()), work, args))
            print(json.dumps(results[-1]), flush=True)
        if args.only in (None, "probe"):
            results.append(probe(str(Path(args.data).resolve()), work, args.rows))
            print(json.dumps(results[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(results, indent=2))
    print(
        "\n| case | state | wall | peak RSS per rank (MiB) | rank 1 outside cache | epochs repeated | test |"
    )
    print("|---|---|---:|---|---:|---:|---|")
    for r in results:
        print(
            f"| {r['case']} | {r['state']} | {r['wall_s']:.0f} s | {r['peak_rss_mib']} | "
            f"{len(r['rank1_outside_cache'])} | {r['repeated']} | {r['test']} |"
        )
    return 0 if all(r["state"] == "completed" and not r["rank1_outside_cache"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
