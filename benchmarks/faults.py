"""The fault matrix: a crash or a stop at every phase of a run, from every launcher, and what is left.

Rows are phases (``posterlab.faults.PHASES``), columns are launchers; each cell is a fresh tiny run (the
small CNN on the embedded sample, 3 epochs; ``probe`` for the extraction phase, ``full`` otherwise):

  kill   SIGKILL at the phase (``POSTERLAB_FAULT=PHASE@RANK``):
         cli          ``posterlab train`` in one process: the run must read as interrupted within a minute
                      (its lease's heartbeat stops), then ``posterlab train --resume`` completes it
         torchrun     2 processes under ``torchrun --max-restarts 1``, rank 1 killed (rank 0 for the
                      checkpoint phase, the only writer): the group restarts and completes by itself
         page-torchrun the Train page's torchrun job (``TrainingManager``, 2 processes, no restarts): the
                      job fails, the run reads failed (the surviving rank's collective failed with
                      the killed one's connection), Resume completes it
  stop   a graceful stop at the phase:
         cli          SIGTERM at the phase (``POSTERLAB_FAULT=PHASE:term``)
         torchrun     SIGTERM to rank 0 at the phase (a scheduler's preemption)
         page-thread  the Train page's Stop (``TrainingManager.stop``) when the run reports the phase
         page-torchrun the same for a torchrun job, and once before the job has started

A cell's outcome: the state the fault left (``before resume``), then the state after ``posterlab train
--resume`` where it was not completed (a run stopped or killed before its first checkpoint starts over in
its folder), the epochs in the history, epochs trained twice, the stop latency (Stop → the run's end)
where there is one. Every cell must end completed with at most one epoch trained twice.

    python benchmarks/faults.py                 # the whole matrix, ~15-25 min on 2 cores
    python benchmarks/faults.py --only kill --launchers torchrun

Writes benchmarks/results/faults.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig, to_dict  # noqa: E402
from posterlab.faults import PHASES  # noqa: E402
from posterlab.launch import torchrun_command, worker_environment  # noqa: E402
from posterlab.runs import LEASE_STALE_S, load_run  # noqa: E402

CELL = ["-"]  # the cell being run: its own cache folder

# what a page Stop waits to see before it is clicked, per phase (the Train page shows the same snapshot)
PAGE_STAGE = {
    "scanning": lambda s: s.stage in ("reading", "scanning"),
    "extracting": lambda s: s.stage == "extracting",
    "first-epoch": lambda s: s.stage == "training" and not s.history,
    "later-epoch": lambda s: s.stage == "training" and len(s.history) == 1,
    "evaluating": lambda s: s.stage == "evaluating",
}


def config(name: str, phase: str) -> RunConfig:
    probe = phase == "extracting"
    return RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=4), limit=300 if probe else 160),
        TrainConfig(
            backbone="posterlab_small_cnn",
            pretrained=False,
            mode="probe" if probe else "full",
            epochs=3,
            batch_size=8,
            lr=3e-3,
            patience=0,
            num_workers=0,
            flip_views=False,
        ),
        name=name,
    )


def outcome(run_dir: Path, stop_s: float | None = None) -> dict:
    run = load_run(run_dir)
    epochs = [row["epoch"] for row in run.history]
    return {
        "state": run.state,
        "epochs": epochs,
        "repeated": len(epochs) - len(set(epochs)),
        "restarts": run.status.get("restarts", 0),
        "stop_latency_s": None if stop_s is None else round(stop_s, 2),
        "ok": run.state == "completed" and len(epochs) - len(set(epochs)) <= 1,
    }


def env_for(work: Path, **extra: str) -> dict:
    return {
        **worker_environment(True),
        "POSTERLAB_CACHE_DIR": str(work / "cache" / CELL[0]),  # each cell extracts for itself
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def config_file(work: Path, cfg: RunConfig) -> Path:
    path = work / f"{cfg.name}.json"
    path.write_text(json.dumps(to_dict(cfg)))
    return path


def resume(run_dir: Path, env: dict) -> None:
    subprocess.run(
        [sys.executable, "-m", "posterlab", "train", "--resume", str(run_dir), "-q"],
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )


def cli_cell(work: Path, phase: str, fault: str) -> dict:
    cfg = config(f"cli-{fault}-{phase}", phase)
    run_dir = work / "runs" / cfg.name
    action = "" if fault == "kill" else ":term"
    env = env_for(work, POSTERLAB_FAULT=f"{phase}{action}")
    command = [sys.executable, "-m", "posterlab", "train", "--config", str(config_file(work, cfg))]
    started = time.monotonic()
    process = subprocess.run(
        [*command, "--out", str(run_dir), "-q"], env=env, capture_output=True, timeout=900
    )
    stop_s = time.monotonic() - started
    cell = {"exit": process.returncode}
    if fault == "kill":
        seen = time.monotonic()
        while load_run(run_dir).state == "running" and time.monotonic() - seen < 2 * LEASE_STALE_S:
            time.sleep(1)
        cell["reads_interrupted_after_s"] = round(time.monotonic() - seen, 1)
        cell["before_resume"] = load_run(run_dir).state
        resume(run_dir, env_for(work))
        return cell | outcome(run_dir)
    state = load_run(run_dir).state
    if state != "completed":
        cell["stopped_at_epoch"] = len(load_run(run_dir).history)
        resume(run_dir, env_for(work))  # resumable in fact, not only on paper
    return (
        cell | outcome(run_dir) | {"before_resume": state, "stop_latency_s": None, "wall_s": round(stop_s, 1)}
    )


def torchrun_cell(work: Path, phase: str, fault: str) -> dict:
    cfg = config(f"torchrun-{fault}-{phase}", phase)
    run_dir = work / "runs" / cfg.name
    rank = "0" if phase == "checkpoint" or fault == "stop" else "1"
    action = "" if fault == "kill" else ":term"
    env = env_for(work, POSTERLAB_FAULT=f"{phase}@{rank}{action}")
    args = ["--config", str(config_file(work, cfg)), "--out", str(run_dir), "-q"]
    command = torchrun_command(args, 2, rdzv_id=cfg.name, max_restarts=1 if fault == "kill" else 0)
    process = subprocess.run(command, env=env, capture_output=True, timeout=900)
    state = load_run(run_dir).state
    cell = {"exit": process.returncode, "before_resume": state}
    if state != "completed":
        resume(run_dir, env_for(work))
    return cell | outcome(run_dir)


def page_cell(work: Path, phase: str, fault: str, processes: int) -> dict:
    from posterlab.training.manager import TrainingManager

    launcher = "page-torchrun" if processes > 1 else "page-thread"
    cfg = config(f"{launcher}-{fault}-{phase}", phase)
    run_dir = work / "runs" / cfg.name
    manager = TrainingManager(work / "runs")
    previous = dict(os.environ)
    os.environ.update(env_for(work))
    if fault == "kill":
        os.environ["POSTERLAB_FAULT"] = f"{phase}@{'0' if phase == 'checkpoint' else '1'}"
    try:
        manager.start(cfg, processes=processes)
        stop_s = None
        if fault == "stop":
            asked = None
            if phase == "before-started":
                manager.stop()
                asked = time.monotonic()
            deadline = time.monotonic() + 600
            while asked is None and manager.snapshot().running and time.monotonic() < deadline:
                if PAGE_STAGE[phase](manager.snapshot()):
                    manager.stop()
                    asked = time.monotonic()
                time.sleep(0.05)
            manager.join(timeout=900)
            stop_s = time.monotonic() - asked if asked else None
        else:
            manager.join(timeout=900)
        state = load_run(run_dir).state
        cell = {"before_resume": state, "snapshot": manager.snapshot().status}
    finally:
        os.environ.clear()
        os.environ.update(previous)
    if state != "completed":
        resume(run_dir, env_for(work))
    return cell | outcome(run_dir, stop_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=("kill", "stop"), help="one kind of fault")
    parser.add_argument("--launchers", default="cli,torchrun,page-thread,page-torchrun")
    parser.add_argument("--phases", default=",".join(PHASES))
    args = parser.parse_args(argv)
    launchers = args.launchers.split(",")
    phases = args.phases.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="posterlab-faults-") as folder:
        work = Path(folder)
        for fault in ("kill", "stop") if not args.only else (args.only,):
            cells = [(p, launcher) for p in phases for launcher in launchers]
            if fault == "stop" and "page-torchrun" in launchers:
                cells.append(("before-started", "page-torchrun"))
            for phase, launcher in cells:
                if fault == "kill" and launcher == "page-thread":
                    continue  # a SIGKILL of the app process is the cli row: the same run folder, no thread left
                if fault == "stop" and launcher.startswith("page") and phase == "checkpoint":
                    continue  # a click cannot be timed inside a file write; the cli and torchrun rows cover it
                started = time.monotonic()
                CELL[0] = f"{fault}-{phase}-{launcher}"
                try:
                    if launcher == "cli":
                        cell = cli_cell(work, phase, fault)
                    elif launcher == "torchrun":
                        cell = torchrun_cell(work, phase, fault)
                    else:
                        cell = page_cell(work, phase, fault, 2 if launcher == "page-torchrun" else 1)
                except Exception as error:  # noqa: BLE001 (a broken cell is a finding, not the end of the matrix)
                    cell = {"ok": False, "error": f"{type(error).__name__}: {error}"[:300]}
                row = {
                    "fault": fault,
                    "phase": phase,
                    "launcher": launcher,
                    "seconds": round(time.monotonic() - started, 1),
                }
                rows.append(row | cell)
                print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faults.json").write_text(json.dumps(rows, indent=2))
    print()
    print(
        "| fault | phase | launcher | before resume | final | epochs | repeated | restarts | stop latency | ok |"
    )
    print("|---|---|---|---|---|---|---:|---:|---:|---|")
    for r in rows:
        latency = "" if r.get("stop_latency_s") is None else f"{r['stop_latency_s']} s"
        print(
            f"| {r['fault']} | {r['phase']} | {r['launcher']} | {r.get('before_resume', '')} | {r.get('state', r.get('error', ''))} "
            f"| {r.get('epochs', '')} | {r.get('repeated', '')} | {r.get('restarts', '')} | {latency} | {'yes' if r.get('ok') else 'NO'} |"
        )
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
