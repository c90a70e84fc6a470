"""How late Stop lands on a probe, without the page: ``TrainingManager.stop()`` called directly.

Trains a Lite0 probe of the embedded sample (top 6 genres) in the background, as the Train page does, calls
``stop()`` once ``--at`` epochs have finished, and reports the epochs finished when it was called, the
epochs the run ended with, and the seconds from the call to the run's end. A gap between this and what the
page shows is the page's (its polling and its click handling), not the training loop's.

    python benchmarks/stop_latency.py [--at 10] [--repeats 3] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig
from posterlab.training.manager import TrainingManager

RESULTS = Path(__file__).resolve().parent / "results" / "stop_latency.json"


def one(folder: Path, at: int, batch: int, index: int) -> dict:
    manager = TrainingManager(folder)
    config = RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=6)),
        TrainConfig(mode="probe", epochs=400, patience=0, batch_size=batch),
        name=f"stop-{index}",
    )
    manager.start(config)
    while len(manager.snapshot().history) < at:
        time.sleep(0.005)
    asked = len(manager.snapshot().history)
    called = time.monotonic()
    manager.stop()
    manager.join()
    ended = time.monotonic() - called
    snapshot = manager.snapshot()
    epoch = sum(row["seconds"] for row in snapshot.history) / max(1, len(snapshot.history))
    return {
        "epochs_at_stop": asked,
        "epochs_at_end": len(snapshot.history),
        "seconds_to_end": round(ended, 2),
        "seconds_per_epoch": round(epoch, 3),
        "status": snapshot.status,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--at", type=int, default=10, help="epochs finished before stop() is called")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [one(Path(folder), args.at, args.batch, i) for i in range(args.repeats)]
    print("| run | epochs at stop() | epochs at the end | s to the end | s per epoch | status |")
    print("|---|---:|---:|---:|---:|---|")
    for i, row in enumerate(rows, 1):
        print(
            f"| {i} | {row['epochs_at_stop']} | {row['epochs_at_end']} | {row['seconds_to_end']} | "
            f"{row['seconds_per_epoch']} | {row['status']} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
