"""One background training run per process, observed by polling.

The worker thread runs ``train_run`` with an event sink that only updates a snapshot under a lock; it
never touches any UI. Pages call ``snapshot()`` on a timer. Everything durable (status, history,
metrics) is in the run folder, so a page shown after a restart reads ``checkpoints/`` instead.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from posterlab.config import RunConfig
from posterlab.errors import BusyError
from posterlab.events import EpochEnd, Event, Finished, Message, Progress, Started

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """What the worker has reported so far (a copy; safe to read anywhere)."""

    status: str = "idle"  # idle | running | completed | stopped | failed
    run_dir: str | None = None
    name: str = ""
    stage: str = ""
    done: int = 0
    total: int = 0
    detail: str = ""
    history: list[dict] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    metrics: dict = field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    stop_requested: bool = False

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started if self.started else 0.0


class TrainingManager:
    """Starts, stops and reports on one training run at a time (per process)."""

    def __init__(self, checkpoints: Path) -> None:
        self.checkpoints = Path(checkpoints)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot = Snapshot()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return copy.deepcopy(self._snapshot)

    def start(self, config: RunConfig) -> None:
        """Train ``config`` in a background thread; refused while another run trains."""
        self._begin(config.name or config.train.backbone, target=self._train, argument=config)

    def resume(self, run_dir: Path) -> None:
        """Continue a stopped or interrupted run in the background."""
        self._begin(Path(run_dir).name, target=self._resume, argument=Path(run_dir))

    def stop(self) -> None:
        """Ask the run to stop at the next batch boundary (it still saves and evaluates)."""
        self._stop.set()
        with self._lock:
            self._snapshot.stop_requested = True

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _begin(self, name: str, target, argument) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise BusyError(
                    f"a run is already training ({self._snapshot.name}); stop it or wait for it to finish"
                )
            self._stop.clear()
            self._snapshot = Snapshot(status="running", name=name, started=time.time(), stage="starting")
            self._thread = threading.Thread(
                target=target, args=(argument,), name=f"posterlab-train-{name}", daemon=True
            )
            self._thread.start()

    def _train(self, config: RunConfig) -> None:
        from posterlab.training.trainer import train_run

        self._guard(
            lambda: train_run(
                config, self.checkpoints, on_event=self._on_event, should_stop=self._stop.is_set
            )
        )

    def _resume(self, run_dir: Path) -> None:
        from posterlab.training.trainer import resume_run

        self._guard(lambda: resume_run(run_dir, on_event=self._on_event, should_stop=self._stop.is_set))

    def _guard(self, work) -> None:
        """Run ``work``; whatever happens, the snapshot ends in a final status (a thread never dies silently)."""
        try:
            work()
        except BaseException as error:  # recorded for the UI; the trainer already wrote status.json
            log.exception("training failed")
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            with self._lock:
                if self._snapshot.status == "running":
                    self._snapshot.status = "failed"
                    self._snapshot.error = message
        finally:
            with self._lock:
                if self._snapshot.status == "running":
                    self._snapshot.status = "failed"
                    self._snapshot.error = (
                        self._snapshot.error or "the training thread ended without a status"
                    )
                self._snapshot.finished = time.time()

    def _on_event(self, event: Event) -> None:
        with self._lock:
            snap = self._snapshot
            if isinstance(event, Started):
                snap.run_dir = event.run_dir
                snap.name = Path(event.run_dir).name
            elif isinstance(event, Progress):
                snap.stage, snap.done, snap.total, snap.detail = (
                    event.stage,
                    event.done,
                    event.total,
                    event.detail,
                )
            elif isinstance(event, EpochEnd):
                snap.stage, snap.done, snap.total = "training", event.epoch, event.epochs
                snap.history.append(
                    {
                        "epoch": event.epoch,
                        "train_loss": event.train_loss,
                        "val_loss": event.val_loss,
                        "seconds": event.seconds,
                        **{f"val_{k}": v for k, v in event.metrics.items() if k != "loss"},
                    }
                )
            elif isinstance(event, Message):
                snap.messages = (snap.messages + [event.text])[-50:]
            elif isinstance(event, Finished):
                snap.status = event.status
                snap.error = event.error
                snap.metrics = dict(event.metrics)
                snap.stage = "done"
