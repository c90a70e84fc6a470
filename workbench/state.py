"""Per-session settings (in ``st.session_state``) and process-wide resources (in ``st.cache_resource``).

Streamlit shares imported modules between every browser session, so nothing here is a mutable global:
the one ``Trainers`` object is created by ``st.cache_resource`` (once per process), datasets and models
are cached by their path and modification time, and each user's choices live in their session state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image

from posterlab import settings
from posterlab.config import DataConfig, RunConfig, from_dict, to_dict
from posterlab.data.prepare import Prepared, prepare_data
from posterlab.data.sources import PosterDataset, load_dataset
from posterlab.errors import BusyError, DataError
from posterlab.training.manager import TrainingManager

if TYPE_CHECKING:
    from posterlab.explain import Explainer
    from posterlab.inference import Predictor

DATASET_KEY = "posterlab_dataset"  # the dataset path the sidebar resolved (a sample name, folder, CSV, zip)
CHECKPOINTS_KEY = "posterlab_checkpoints"  # the checkpoints folder the sidebar resolved
UPLOAD_SUFFIXES = (".csv", ".zip")
MAX_UPLOAD_BYTES = 200 * 2**20  # the same as server.maxUploadSize in .streamlit/config.toml


def dataset_path() -> str:
    """The dataset chosen in the sidebar (the embedded sample by default; empty when it cannot be read)."""
    return st.session_state.get(DATASET_KEY, "sample")


def selection_key(path: str) -> str:
    """Widget-key prefix of the label selection for a dataset: the Dataset and Train pages share it
    (and it persists for the session), so a selection made on one is the one used on the other."""
    return "labels_" + hashlib.sha1(path.encode()).hexdigest()[:8]


def checkpoints() -> Path:
    """The checkpoints folder chosen in the sidebar (``POSTERLAB_CHECKPOINTS`` or ``./checkpoints``)."""
    value = st.session_state.get(CHECKPOINTS_KEY)
    return Path(value).expanduser() if value else settings.checkpoints_dir()


class Trainers:
    """This process's training managers, one per checkpoints folder, with at most one run training.

    ``TrainingManager`` already refuses a second run of its own; this also refuses a run in another
    folder while one trains, so "one run at a time per process" holds whatever the sidebar says.
    """

    def __init__(self) -> None:
        """No managers yet; one is made for each checkpoints folder on first use."""
        self._lock = threading.Lock()
        self._managers: dict[Path, TrainingManager] = {}

    def _get(self, folder: Path) -> TrainingManager:
        """The manager of ``folder`` (callers hold the lock)."""
        key = Path(folder).expanduser().resolve()
        if key not in self._managers:
            self._managers[key] = TrainingManager(key)
        return self._managers[key]

    def manager(self, folder: Path) -> TrainingManager:
        """The manager that trains into ``folder`` (created on first use)."""
        with self._lock:
            return self._get(folder)

    def active(self) -> TrainingManager | None:
        """The manager whose run is training now, if any."""
        with self._lock:
            managers = list(self._managers.values())
        return next((m for m in managers if m.snapshot().running), None)

    def start(self, folder: Path, config: RunConfig) -> None:
        """Train ``config`` into ``folder`` in the background; ``BusyError`` while any run trains."""
        with self._lock:
            manager = self._get(folder)
            for other in self._managers.values():
                snapshot = other.snapshot()
                if other is not manager and snapshot.running:
                    raise BusyError(
                        f"a run is already training ({snapshot.name}); stop it or wait for it to finish"
                    )
            manager.start(config)

    def resume(self, folder: Path, run_dir: Path) -> None:
        """Continue a stopped or interrupted run; ``BusyError`` while any run trains."""
        with self._lock:
            manager = self._get(folder)
            busy = next((m.snapshot() for m in self._managers.values() if m.snapshot().running), None)
            if busy is not None:
                raise BusyError(f"a run is already training ({busy.name}); stop it or wait for it to finish")
            manager.resume(run_dir)


@st.cache_resource(show_spinner=False)
def trainers() -> Trainers:
    """The process's one ``Trainers`` (the worker threads outlive any page run)."""
    return Trainers()


def _stamp(path: str) -> str:
    """Changes when a dataset on disk changes (so cached reads are refreshed); empty for the samples."""
    if path in settings.SAMPLES:
        return ""
    source = Path(path).expanduser()
    marker = source / "labels.csv" if (source / "labels.csv").is_file() else source
    try:
        stat = marker.stat()
    except OSError:
        return "missing"
    return f"{stat.st_mtime_ns}-{stat.st_size}"


@st.cache_resource(max_entries=8, show_spinner="Reading the dataset…")
def _dataset(path: str, stamp: str) -> PosterDataset:
    """``load_dataset``, cached per path and modification stamp."""
    return load_dataset(path)


def dataset(path: str) -> PosterDataset:
    """The posters at ``path`` as read (no image is opened); cached until the files change."""
    return _dataset(path, _stamp(path))


@st.cache_resource(max_entries=8, show_spinner="Checking posters, labelling and splitting…")
def _prepared(config_json: str, stamp: str) -> Prepared:
    """``prepare_data``, cached per config (as JSON) and modification stamp."""
    return prepare_data(from_dict(DataConfig, json.loads(config_json)))


def prepared(config: DataConfig) -> Prepared:
    """``prepare_data(config)``, cached per config: the same cleaning, labels and splits training uses.

    Callers must not modify the result (it is shared between sessions)."""
    return _prepared(json.dumps(to_dict(config), sort_keys=True), _stamp(config.path))


def save_upload(name: str, data: bytes) -> Path:
    """Keep an uploaded dataset (a CSV or a zip) under the cache, named by its content.

    The file is only stored here; ``load_dataset`` reads it (and extracts a zip safely: no ``..``,
    absolute paths or links, size and ratio limits)."""
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise DataError(f"{name}: upload a labels CSV, Kaggle's MovieGenre.csv or a dataset zip")
    if not data:
        raise DataError(f"{name}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(
            f"{name}: {len(data) / 2**20:.0f} MiB is over the {MAX_UPLOAD_BYTES // 2**20} MiB upload limit; "
            "give its folder path instead"
        )
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem).strip("._")[:60] or "dataset"
    folder = settings.cache_dir() / "uploads" / hashlib.sha1(data).hexdigest()[:16]
    target = folder / f"{stem}{suffix}"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{target.name}.{os.getpid()}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, target)
    return target


@dataclass
class LoadedModel:
    """A run's predictor and Grad-CAM explainer, shared by sessions; ``lock`` guards the CAM hooks."""

    predictor: Predictor
    explainer: Explainer
    lock: threading.Lock


def _weights_stamp(run_dir: str) -> float:
    """The weights file's modification time (0 when missing): part of every model cache key."""
    try:
        return (Path(run_dir) / "model.safetensors").stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _model(run_dir: str, stamp: float) -> LoadedModel:
    """A run's predictor and explainer, cached per folder and weights stamp."""
    from posterlab.explain import Explainer
    from posterlab.inference import Predictor

    predictor = Predictor(run_dir)
    return LoadedModel(predictor, Explainer(predictor), threading.Lock())


def model(run_dir: str | Path) -> LoadedModel:
    """The trained model of a run folder (reloaded when its weights file changes)."""
    return _model(str(run_dir), _weights_stamp(str(run_dir)))


@st.cache_data(max_entries=512, show_spinner=False)
def _overlay(run_dir: str, stamp: float, image: str, label: str, method: str) -> tuple[Image.Image, float]:
    """Grad-CAM overlay and score, cached per run, weights stamp, poster, label and method."""
    loaded = _model(run_dir, stamp)
    with loaded.lock:
        explanation = loaded.explainer.explain(image, labels=[label], method=method)
    return explanation.overlays[label], explanation.scores[label]


def overlay(
    run_dir: str | Path, image: str, label: str, method: str = "gradcam"
) -> tuple[Image.Image, float]:
    """Grad-CAM overlay of ``label`` on a poster file, and the label's probability (cached)."""
    return _overlay(str(run_dir), _weights_stamp(str(run_dir)), image, label, method)


@dataclass
class Explained:
    """What Explore shows for one uploaded poster (picklable, so it can be cached)."""

    crop: Image.Image
    scores: dict[str, float]
    predicted: list[str]
    overlays: dict[str, Image.Image]
    notes: list[str]


@st.cache_data(max_entries=64, show_spinner=False)
def _explain_upload(run_dir: str, stamp: float, data: bytes, name: str, method: str) -> Explained:
    """``Explainer.explain`` of uploaded bytes, cached by content, run and method."""
    loaded = _model(run_dir, stamp)
    with loaded.lock:
        result = loaded.explainer.explain(data, top_k=3, method=method, name=name)
    return Explained(result.crop, result.scores, result.predicted, result.overlays, result.notes)


def explain_upload(run_dir: str | Path, data: bytes, name: str, method: str = "gradcam") -> Explained:
    """Scores and Grad-CAM overlays (predicted labels, else the top one) for an uploaded poster.

    Raises ``ImageError`` with a one-line reason for a file that is not a usable image."""
    return _explain_upload(str(run_dir), _weights_stamp(str(run_dir)), data, name, method)


def activations(run_dir: str | Path, image: str | bytes, level: int) -> tuple[str, np.ndarray, Image.Image]:
    """Feature level ``level`` of a run's backbone for one poster: (module name, its most active channel
    maps, their mean drawn as a heatmap over the crop the model saw)."""
    from posterlab.explain import activation_maps

    loaded = model(run_dir)
    with loaded.lock:
        name, maps, mean = activation_maps(loaded.predictor, image, level)
        crop = loaded.predictor.prepare(image)[0].convert("RGB")
    heat = Image.fromarray(np.uint8(mean * 255)).resize(crop.size, Image.BILINEAR)
    base = np.asarray(crop, dtype=np.float32) / 255.0
    overlay = show_cam_on_image(
        base, np.asarray(heat, dtype=np.float32) / 255.0, use_rgb=True, image_weight=0.55
    )
    return name, maps, Image.fromarray(overlay)
