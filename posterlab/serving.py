"""Trained runs loaded once and shared: the one loader behind the workbench and the Gradio demo.

``ModelCache`` keeps the most recently used runs (a ``Predictor`` and, built on first use, its Grad-CAM
``Explainer``), keyed by folder and weights file, so a retrained run is reloaded. A run exported to ONNX
in its own folder is scored by the CPU engine (``served_backend``); Grad-CAM always runs in torch. Both are safe to share
between threads (``Predictor.lock``), so callers only ask and use. Each UI owns its cache (the workbench
through ``st.cache_resource``, a demo in its own state): nothing here is module-level.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from posterlab.explain import Explainer
    from posterlab.inference import Predictor

log = logging.getLogger(__name__)


class Loaded:
    """A run's predictor and its explainer (built when first asked for)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._explainer: Explainer | None = None
        self._lock = threading.Lock()

    @property
    def explainer(self) -> Explainer:
        with self._lock:
            if self._explainer is None:
                from posterlab.explain import Explainer

                self._explainer = Explainer(self.predictor)
            return self._explainer


def run_key(run_dir: str | Path) -> tuple[str, int]:
    """A run's identity for caches: its resolved folder and its weights file's modification time."""
    path = Path(run_dir).resolve()
    try:
        stamp = (path / "model.safetensors").stat().st_mtime_ns
    except OSError:
        stamp = 0
    return str(path), stamp


def served_backend(run_dir: Path) -> str:
    """``onnx`` when the run holds a ``model.onnx`` at least as new as its weights (``posterlab export RUN
    --format onnx --out RUN``, checked against torch when written): its scores then come from the CPU
    engine, as ``posterlab predict --onnx`` does; ``torch`` otherwise."""
    try:
        fresh = (run_dir / "model.onnx").stat().st_mtime_ns >= (
            run_dir / "model.safetensors"
        ).stat().st_mtime_ns
    except OSError:
        return "torch"
    return "onnx" if fresh else "torch"


class ModelCache:
    """The ``capacity`` most recently used runs, loaded once each (thread-safe)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int], Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: str | Path) -> Loaded:
        """The run at ``run_dir``, loaded (``RunError`` with a one-line reason when it cannot be)."""
        key = run_key(run_dir)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            from posterlab.inference import Predictor  # torch: imported when a model is first needed

            loaded = Loaded(Predictor(key[0], backend=served_backend(Path(key[0]))))
            self._items[key] = loaded
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            log.info("loaded %s", key[0])
            return loaded

    def __contains__(self, run_dir: str | Path) -> bool:
        with self._lock:
            return run_key(run_dir) in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
