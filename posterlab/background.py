"""Background threads that end before the interpreter does.

A daemon thread still inside native code (torch, ONNX Runtime, safetensors) when Python finalizes is cut
off where it stands, and C++ answers with ``terminate called without an active exception`` (exit 134).
Every long-lived thread posterlab starts goes through ``start``: at exit each is asked to stop (when it
can be) and joined, after the main thread finished and before finalization.

The registry is process-wide on purpose: threads are.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

JOIN_AT_EXIT_S = 120.0  # a stop is honoured at a batch or chunk boundary; a model loads in seconds

_lock = threading.Lock()
_threads: list[tuple[threading.Thread, Callable[[], None] | None]] = []


def start(target: Callable, *args, name: str, stop: Callable[[], None] | None = None) -> threading.Thread:
    """Start ``target(*args)`` in a daemon thread that is stopped (``stop``) and joined at exit."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    with _lock:
        _threads[:] = [(t, s) for t, s in _threads if t.is_alive()]
        _threads.append((thread, stop))
    thread.start()
    return thread


@atexit.register
def _drain() -> None:
    import time

    with _lock:
        live = [(t, s) for t, s in _threads if t.is_alive()]
    for _, stop in live:
        if stop is not None:
            stop()
    deadline = time.monotonic() + JOIN_AT_EXIT_S
    for thread, _ in live:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("%s still running at exit", thread.name)


_threads_lock = threading.Lock()
_one_thread_blocks = 0
_threads_before = 0


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread, in the calling thread, inside the block: for small work beside busy
    cores, where torch's threads wait for each other (a check batch beside an engine's compiling, a label
    audit's fits).

    torch's count (OpenMP) is each thread's own, and also the count a thread started later begins with.
    So a block sets 1 in its thread, and on leaving puts its thread back to the count from before the
    first open block, which is also the count new threads start with again. A get/set/restore in each
    block would not do: a thread started inside another thread's block begins at 1, and would restore 1
    for itself and for every thread started after it."""
    import torch

    global _one_thread_blocks, _threads_before
    with _threads_lock:
        # a thread's first call reads the count new threads start with; its first torch operation would
        # otherwise do so later, over the 1 set here, if another block had ended in between
        count = torch.get_num_threads()
        if _one_thread_blocks == 0:
            _threads_before = count
        _one_thread_blocks += 1
        torch.set_num_threads(1)
    try:
        yield
    finally:
        with _threads_lock:
            _one_thread_blocks -= 1
            torch.set_num_threads(_threads_before)
