"""Typed progress events. The training code calls ``on_event(event)``; sinks (the CLI's progress bars,
the background manager's snapshot) decide what to do with them. Sinks never call back into training."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Started:
    """A run began (or resumed) in ``run_dir``."""

    run_dir: str
    resumed: bool = False


@dataclass(frozen=True)
class Progress:
    """Work within a stage: ``done`` of ``total`` items (posters, batches)."""

    stage: str  # scanning | extracting | training | evaluating | searching
    done: int
    total: int
    detail: str = ""


@dataclass(frozen=True)
class EpochEnd:
    """One epoch finished: losses, validation metrics, learning rate, time."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    seconds: float = 0.0
    best: bool = False


@dataclass(frozen=True)
class Message:
    """Something worth telling the user (a decision, a fallback, a count)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The run ended: ``completed``, ``stopped`` or ``failed`` (with the error)."""

    status: str
    run_dir: str
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


Event = Started | Progress | EpochEnd | Message | Finished
EventSink = Callable[[Event], None]


def ignore(_: Event) -> None:
    """The default sink."""


def never() -> bool:
    """The default stop request: none."""
    return False


class StopRequested(Exception):
    """Raised at a safe point (a batch boundary) when a stop was asked for; handled by the trainer."""


@dataclass(frozen=True)
class Control:
    """How a long job reports (``on_event``) and learns that it should stop (``should_stop``)."""

    on_event: EventSink = ignore
    should_stop: Callable[[], bool] = never

    def emit(self, event: Event) -> None:
        self.on_event(event)

    def check(self) -> None:
        """Raise ``StopRequested`` when a stop was asked for."""
        if self.should_stop():
            raise StopRequested()


_KINDS = {kind.__name__: kind for kind in (Started, Progress, EpochEnd, Message, Finished)}


def to_json(event: Event) -> str:
    """One line of an event log: the event's fields and its ``type``."""
    return json.dumps({"type": type(event).__name__, **dataclasses.asdict(event)}, allow_nan=True)


def from_json(line: str) -> Event | None:
    """An event back from ``to_json`` (None for a line that is not one, e.g. cut short by a crash)."""
    try:
        values = json.loads(line)
        kind = _KINDS[values.pop("type")]
        return kind(**values)
    except (ValueError, KeyError, TypeError):
        return None
