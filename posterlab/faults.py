"""Named points where a run can be made to fail on purpose, to prove it survives failing there.

``POSTERLAB_FAULT=PHASE[@RANK][:ACTION]`` makes the process of that rank (default: any) act when it
reaches ``PHASE`` on its first attempt (a group torchrun restarted is left alone): ``kill`` (SIGKILL, the
default: a crash, an out-of-memory kill, a node lost) or ``term`` (SIGTERM: a scheduler's preemption or
Ctrl-C, a graceful stop). ``benchmarks/faults.py`` runs the whole matrix and the tests a few of its rows;
nothing else sets the variable, and when it is unset a point costs one dictionary lookup.

Phases, in the order a run meets them: ``scanning``, ``extracting`` (the first batch of frozen outputs
computed), ``first-epoch`` (a batch into epoch 1, before any checkpoint), ``later-epoch`` (a
batch into epoch 2), ``checkpoint`` (the resume file written, history and status not yet), ``evaluating``
(the validation split scored, not the test split).
"""

from __future__ import annotations

import os
import signal

PHASES = ("scanning", "extracting", "first-epoch", "later-epoch", "checkpoint", "evaluating")
VARIABLE = "POSTERLAB_FAULT"


def point(phase: str) -> None:
    """Fail here if ``POSTERLAB_FAULT`` names this phase (and this rank, on the first attempt)."""
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    where, _, action = spec.partition(":")
    name, _, rank = where.partition("@")
    if name != phase or (rank and rank != os.environ.get("RANK", "0")):
        return
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0:
        return
    if os.environ.get("POSTERLAB_FAULT_DONE") == spec:  # a thread's run: once per process
        return
    os.environ["POSTERLAB_FAULT_DONE"] = spec
    os.kill(os.getpid(), signal.SIGTERM if action == "term" else signal.SIGKILL)
