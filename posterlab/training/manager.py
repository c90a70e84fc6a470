"""One background training run per process, observed by polling.

A run trains either in a worker thread of this process (one process: the default) or as a ``torchrun``
subprocess (several processes, e.g. one per GPU). Either way its progress is the same stream of typed
events, folded into a ``Snapshot`` under a lock: the thread's event sink folds them as they happen; for
a subprocess a follower thread reads them from the run folder's append-only ``events.jsonl``, which
rank 0 writes. The worker never touches any UI; pages call ``snapshot()`` on a timer. Everything durable
(status, history, metrics) is in the run folder, so a page shown after a restart reads ``checkpoints/``.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from posterlab import background
from posterlab.config import RunConfig, to_dict
from posterlab.errors import BusyError, one_line
from posterlab.events import EpochEnd, Event, Finished, Message, Progress, Started, from_json
from posterlab.runs import EVENTS_FILE, LAUNCHED_AT, RunFolder, check_not_live, load_run, new_run_id

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """What the run has reported so far (a copy; safe to read anywhere)."""

    status: str = "idle"  # idle | running | completed | stopped | failed
    run_dir: str | None = None
    name: str = ""
    stage: str = ""
    done: int = 0
    total: int = 0
    detail: str = ""
    epochs: int = 0  # planned
    history: list[dict] = field(default_factory=list)  # every epoch, those before a resume included
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    reason: str = ""  # why it stopped (a stop request; before its first epoch: Resume starts it over)
    metrics: dict = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    seconds_before: float = 0.0  # time spent in earlier sessions of a resumed run
    stop_requested: bool = False
    processes: int = 1

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def elapsed(self) -> float:
        """Time this run has trained, its earlier sessions included."""
        now = self.finished or time.time()
        return self.seconds_before + ((now - self.started) if self.started else 0.0)

    @property
    def resumable(self) -> bool:
        return self.status in ("stopped", "failed") and bool(self.history)


def fold(snapshot: Snapshot, event: Event) -> None:
    """Apply one event to a snapshot: the one place events become what a page shows."""
    if isinstance(event, Started):
        snapshot.run_dir = event.run_dir
        snapshot.name = Path(event.run_dir).name
        if event.resumed:  # the curves keep the epochs before the resume; the clock keeps their time
            run = load_run(event.run_dir)
            snapshot.history = list(run.history)
            snapshot.seconds_before = float(run.status.get("seconds_before") or 0.0)
    elif isinstance(event, Progress):
        snapshot.stage, snapshot.done, snapshot.total, snapshot.detail = (
            event.stage,
            event.done,
            event.total,
            event.detail,
        )
    elif isinstance(event, EpochEnd):
        snapshot.stage, snapshot.done, snapshot.total, snapshot.epochs = (
            "training",
            event.epoch,
            event.epochs,
            event.epochs,
        )
        row = {
            "epoch": event.epoch,
            "train_loss": event.train_loss,
            "val_loss": event.val_loss,
            "seconds": event.seconds,
            **{f"val_{k}": v for k, v in event.metrics.items() if k != "loss"},
        }
        snapshot.history = [r for r in snapshot.history if r["epoch"] < event.epoch] + [row]
    elif isinstance(event, Message):
        snapshot.messages = (snapshot.messages + [event.text])[-50:]
    elif isinstance(event, Finished):
        snapshot.status = event.status
        snapshot.error = event.error
        snapshot.metrics = dict(event.metrics)
        snapshot.stage = "done"
        if event.status == "stopped":
            snapshot.reason = _stop_reason(event.run_dir)


def _stop_reason(run_dir: str) -> str:
    try:
        status = load_run(run_dir).status
    except Exception:  # the folder may be gone; the reason is a courtesy
        return "stopped"
    return status.get("reason") or "stopped"  # short: the page says what a Stop keeps (status' note)


class TrainingManager:
    """Starts, stops and reports on one training run at a time (per process)."""

    def __init__(self, checkpoints: Path) -> None:
        self.checkpoints = Path(checkpoints)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self._snapshot = Snapshot()
        self._launched_at = 0.0

    def snapshot(self) -> Snapshot:
        with self._lock:
            return copy.deepcopy(self._snapshot)

    def start(self, config: RunConfig, processes: int = 1) -> None:
        """Train ``config`` in the background (``processes`` > 1: a torchrun subprocess); refused while
        another run trains."""
        if processes > 1:
            name = config.name or new_run_id(config)
            out = self.checkpoints / name
            self._begin(name, self._torchrun, (config, out, processes), processes, config.train.epochs, out)
        else:
            self._begin(config.name or config.train.backbone, self._train, (config,), 1, config.train.epochs)

    def resume(self, run_dir: Path, processes: int = 1) -> None:
        """Continue a stopped or interrupted run in the background (refused while another trainer holds it)."""
        run = load_run(run_dir)
        check_not_live(run.path, "resume it")
        target = self._resume if processes <= 1 else self._torchrun_resume
        folder = Path(run_dir) if processes > 1 else None
        self._begin(
            Path(run_dir).name, target, (Path(run_dir), processes), processes, run.config.train.epochs, folder
        )

    def stop(self) -> None:
        """Ask the run to stop at the next batch boundary (it still saves and evaluates). For a torchrun job
        the request goes to its run folder, known from the start: a Stop before it began is kept too."""
        self._stop.set()
        with self._lock:
            self._snapshot.stop_requested = True
            run_dir = self._snapshot.run_dir
            processes = self._snapshot.processes
        if processes > 1 and run_dir:  # the subprocess's ranks watch the run folder
            RunFolder(Path(run_dir)).request_stop()

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _begin(
        self, name: str, target, arguments: tuple, processes: int, epochs: int, run_dir: Path | None = None
    ) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise BusyError(
                    f"a run is already training ({self._snapshot.name}); stop it or wait for it to finish"
                )
            self._stop.clear()
            self._process = None
            self._snapshot = Snapshot(
                status="running",
                name=name,
                started=time.time(),
                stage="starting",
                processes=processes,
                epochs=epochs,
                run_dir=str(run_dir) if run_dir else None,
            )
            self._launched_at = time.time()
            self._thread = background.start(
                self._guard, target, arguments, name=f"posterlab-train-{name}", stop=self.stop
            )

    # ---------------------------------------------------------------------------------- in-thread

    def _train(self, config: RunConfig) -> None:
        from posterlab.training.trainer import train_run

        train_run(config, self.checkpoints, on_event=self._on_event, should_stop=self._stop.is_set)

    def _resume(self, run_dir: Path, processes: int) -> None:
        from posterlab.training.trainer import resume_run

        resume_run(run_dir, on_event=self._on_event, should_stop=self._stop.is_set)

    # --------------------------------------------------------------------------------- subprocess

    def _torchrun(self, config: RunConfig, out: Path, processes: int) -> None:
        from posterlab.launch import torchrun_command

        with tempfile.TemporaryDirectory(prefix="posterlab-config-") as folder:
            path = Path(folder) / "config.json"
            path.write_text(json.dumps(to_dict(config)))
            command = torchrun_command(
                ["--config", str(path), "--out", str(out), "-q"], processes, rdzv_id=out.name
            )
            self._follow(command, out)

    def _torchrun_resume(self, run_dir: Path, processes: int) -> None:
        from posterlab.launch import torchrun_command

        command = torchrun_command(["--resume", str(run_dir), "-q"], processes, rdzv_id=Path(run_dir).name)
        self._follow(command, Path(run_dir))

    def _follow(self, command: list[str], run_dir: Path) -> None:
        """Run the torchrun command and fold the events rank 0 appends to ``run_dir/events.jsonl``."""
        from posterlab.launch import worker_environment

        events = run_dir / EVENTS_FILE
        offset = events.stat().st_size if events.exists() else 0
        finished = False
        with tempfile.TemporaryFile("w+") as output:
            self._process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**worker_environment(True), LAUNCHED_AT: repr(self._launched_at)},
            )
            while True:
                done = self._process.poll() is not None
                offset, seen = self._read_events(events, offset)
                finished = finished or seen
                if done:
                    break
                time.sleep(0.3)
            if not finished:  # it died without a word: say what its output says
                output.seek(0)
                tail = [line for line in output.read().splitlines() if line.strip()][-1:] or ["no output"]
                raise RuntimeError(
                    f"the training processes ended (exit {self._process.returncode}): {tail[0]}"
                )

    def _read_events(self, path: Path, offset: int) -> tuple[int, bool]:
        if not path.exists():
            return offset, False
        finished = False
        with open(path, encoding="utf-8") as handle:
            handle.seek(offset)
            for line in handle:
                if not line.endswith("\n"):  # being written: read it next time
                    break
                offset += len(line.encode("utf-8"))
                event = from_json(line)
                if event is not None:
                    self._on_event(event)
                    finished = finished or isinstance(event, Finished)
        return offset, finished

    # ------------------------------------------------------------------------------------- common

    def _guard(self, target, arguments: tuple) -> None:
        """Run ``target``; whatever happens, the snapshot ends in a final status (a thread never dies silently)."""
        try:
            target(*arguments)
        except BaseException as error:  # recorded for the UI; the trainer already wrote status.json
            log.exception("training failed")
            with self._lock:
                if self._snapshot.status == "running":
                    self._snapshot.status = "failed"
                    self._snapshot.error = one_line(error)
        finally:
            with self._lock:
                if self._snapshot.status == "running":
                    self._snapshot.status = "failed"
                    self._snapshot.error = self._snapshot.error or "the training ended without a status"
                self._snapshot.finished = time.time()
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()  # the app lives on: give the run's cached GPU memory back

    def _on_event(self, event: Event) -> None:
        with self._lock:
            fold(self._snapshot, event)
