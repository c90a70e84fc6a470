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

``audit_writes`` and ``written_outside`` check the other half of surviving: what a process wrote, and
where (rank 1 of a torchrun job writes only into the cache).
"""

from __future__ import annotations

import os
import signal
import tempfile
import textwrap
from pathlib import Path

PHASES = ("scanning", "extracting", "first-epoch", "later-epoch", "checkpoint", "evaluating", "finishing")
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


# every file a process opens for writing, by rank (Python's audit hooks: open, os.open, rename, replace)
_WRITES_HOOK = textwrap.dedent(
    """
    import os, sys
    _log = os.environ.get("POSTERLAB_AUDIT_DIR")
    if _log:
        _path = os.path.join(_log, f"rank{os.environ.get('RANK', 'x')}-{os.getpid()}.txt")

        def _hook(event, args):
            if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
                mode, flags = args[1], args[2] if len(args) > 2 else 0
                if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
                ):
                    _note(os.fsdecode(args[0]))
            elif event in ("os.rename", "os.replace") and len(args) > 1:
                _note(os.fsdecode(args[1]))

        def _note(path):
            if path != _path:
                with open(_path, "a") as handle:
                    handle.write(os.path.abspath(path) + "\\n")

        sys.addaudithook(_hook)
    """
)


def audit_writes(folder: Path) -> dict[str, str]:
    """Environment under which Python processes record every file they open for writing, by rank, in
    ``folder/audit`` (a ``sitecustomize.py`` in ``folder/site``, first on the ``PYTHONPATH`` returned)."""
    (folder / "audit").mkdir(parents=True, exist_ok=True)
    (folder / "site").mkdir(parents=True, exist_ok=True)
    (folder / "site" / "sitecustomize.py").write_text(_WRITES_HOOK)
    path = os.pathsep.join(p for p in (str(folder / "site"), os.environ.get("PYTHONPATH", "")) if p)
    return {"POSTERLAB_AUDIT_DIR": str(folder / "audit"), "PYTHONPATH": path}


def written_outside(folder: Path, rank: int, *allowed: Path) -> list[str]:
    """What rank ``rank``'s processes (under ``audit_writes(folder)``) wrote outside the ``allowed``
    folders, less devices and what is gone again from the temp folder (Python's tempfile probes it once
    with a throwaway file; torchrun keeps its own files there)."""
    written: set[str] = set()
    for path in (folder / "audit").glob(f"rank{rank}-*.txt"):
        written |= set(path.read_text().split())
    temporary = tempfile.gettempdir() + os.sep
    roots = (*(str(Path(a).resolve()) for a in allowed), "/dev/", "/proc/", f"{temporary}torchelastic_")
    return sorted(
        p
        for p in written
        if not p.startswith(roots) and not (p.startswith(temporary) and not os.path.exists(p))
    )
