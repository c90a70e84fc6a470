"""Typed progress events. The training code calls ``on_event(event)``; sinks (the CLI's progress bars,
the background manager's snapshot) decide what to do with them. Sinks never call back into training."""

from __future__ import annotations

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


class StopRequested(Exception):
    """Raised inside the loop at a batch boundary when a stop was asked for; handled by the trainer."""
