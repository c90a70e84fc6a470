"""Per-session settings (in ``st.session_state``) and process-wide resources (in ``st.cache_resource``).

Streamlit shares imported modules between every browser session, so nothing here is a mutable global:
the one ``Trainers`` object is created by ``st.cache_resource`` (once per process), datasets and models
are cached by their path and modification time, and each user's choices live in their session state.
"""

from __future__ import annotations

import contextlib
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

from posterlab import settings
from posterlab.config import DataConfig, RunConfig, from_dict, to_dict
from posterlab.data.prepare import Prepared, prepare_data
from posterlab.data.sources import PosterDataset, load_dataset
from posterlab.errors import BusyError, DataError
from posterlab.training.manager import TrainingManager

if TYPE_CHECKING:
    from posterlab.serving import Loaded, ModelCache

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

    def start(self, folder: Path, config: RunConfig, processes: int = 1) -> None:
        """Train ``config`` into ``folder`` in the background (``processes`` > 1: a torchrun job);
        ``BusyError`` while any run trains."""
        with self._lock:
            self._refuse_while_training()
            self._get(folder).start(config, processes)

    def resume(self, folder: Path, run_dir: Path, processes: int = 1) -> None:
        """Continue a stopped or interrupted run; ``BusyError`` while any run trains."""
        with self._lock:
            self._refuse_while_training()
            self._get(folder).resume(run_dir, processes)

    def _refuse_while_training(self) -> None:
        """``BusyError`` naming the run that trains now, in any folder (callers hold the lock)."""
        busy = next((m.snapshot() for m in self._managers.values() if m.snapshot().running), None)
        if busy is not None:
            raise BusyError(f"a run is already training ({busy.name}); stop it or wait for it to finish")


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


def is_upload(path: str) -> bool:
    """Whether ``path`` is a dataset uploaded through the sidebar (kept under the cache)."""
    return bool(path) and Path(path).parent.parent == settings.cache_dir() / "uploads"


def display_name(path: str) -> str:
    """What a user calls a dataset: an upload by the name of the file they uploaded (not its cache path),
    the embedded samples by what they are, anything else by its path."""
    if path in settings.SAMPLES:
        return {"sample": "embedded sample (genres)", "sample-rt": "embedded sample (fresh / rotten)"}[path]
    if is_upload(path):
        return Path(path).name  # uploads/<content hash>/<the uploaded file's name>
    return path


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


@dataclass(frozen=True)
class KeptPoster:
    """A poster uploaded in Explore and kept under the cache (named by its content), so that a refresh,
    which empties Streamlit's file uploader, still shows it. Reads like an ``UploadedFile``."""

    name: str
    path: Path

    @property
    def file_id(self) -> str:
        return self.path.parent.name  # the content digest

    def getvalue(self) -> bytes:
        return self.path.read_bytes()


def _keep_poster(name: str, data: bytes) -> KeptPoster:
    """Store an uploaded poster under the cache as ``posters/<digest>/<its name>``, the digest of its name
    and content: the same picture uploaded under two names is two posters, each shown by its own name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name).strip("._")[:80] or "poster"
    folder = settings.cache_dir() / "posters" / hashlib.sha1(safe.encode() + b"\0" + data).hexdigest()[:16]
    target = folder / safe
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{safe}.{os.getpid()}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, target)
    return KeptPoster(Path(name).name, target)


def kept_posters(param: str, uploads: list) -> list[KeptPoster]:
    """The posters uploaded under ``param`` so far, the new ``uploads`` added; their digests are kept in
    the page's URL (``?param=``) and the session, so a refresh or another page and back still has them.

    Query parameters, not a settings file: they belong to the browser tab (no user identity to key a
    file by), survive a reload, and make a link that reopens the same view (see README, "What the
    workbench keeps")."""
    root = settings.cache_dir() / "posters"
    digests = st.query_params.get_all(param) or st.session_state.get(param, [])
    kept = {}
    for digest in digests:
        if not re.fullmatch(r"[0-9a-f]{16}", digest):  # a URL is user input: no path tricks
            continue
        found = sorted((root / digest).glob("[!.]*")) if (root / digest).is_dir() else []
        if found:
            kept[digest] = KeptPoster(found[0].name, found[0])
    for upload in uploads:
        poster = _keep_poster(upload.name, upload.getvalue())
        kept.setdefault(poster.file_id, poster)
    remember_posters(param, list(kept))
    return list(kept.values())


def remember_posters(param: str, digests: list[str]) -> None:
    """Keep ``digests`` in the URL and the session (an empty list forgets them)."""
    st.session_state[param] = digests
    if st.query_params.get_all(param) != digests:
        if digests:
            st.query_params[param] = digests
        else:
            del st.query_params[param]


@st.cache_resource(show_spinner=False)
def models() -> ModelCache:
    """The process's loaded runs (the core's cache: a run is loaded once, reloaded when retrained)."""
    from posterlab.serving import ModelCache

    return ModelCache(capacity=4)


def model(run_dir: str | Path) -> Loaded:
    """The trained model of a run folder: its predictor and (on first use) its Grad-CAM explainer."""
    return models().get(run_dir)


@st.cache_data(max_entries=512, show_spinner=False)
def _overlay(key: tuple[str, int], image: str, label: str, method: str) -> tuple[Image.Image, float]:
    """Grad-CAM overlay and score, cached per run (folder and weights), poster, label and method."""
    explanation = models().get(key[0]).explainer.explain(image, labels=[label], method=method)
    return explanation.overlays[label], explanation.scores[label]


def overlay(
    run_dir: str | Path, image: str, label: str, method: str = "gradcam"
) -> tuple[Image.Image, float]:
    """Grad-CAM overlay of ``label`` on a poster file, and the label's probability (cached)."""
    from posterlab.serving import run_key

    return _overlay(run_key(run_dir), image, label, method)


@dataclass
class Explained:
    """What Explore shows for one uploaded poster (picklable, so it can be cached)."""

    crop: Image.Image
    scores: dict[str, float]
    predicted: list[str]
    overlays: dict[str, Image.Image]
    notes: list[str]


@st.cache_data(max_entries=64, show_spinner=False)
def _explain_upload(key: tuple[str, int], data: bytes, name: str, method: str) -> Explained:
    """``Explainer.explain`` of uploaded bytes, cached by content, run and method."""
    result = models().get(key[0]).explainer.explain(data, top_k=3, method=method, name=name)
    return Explained(result.crop, result.scores, result.predicted, result.overlays, result.notes)


def explain_upload(run_dir: str | Path, data: bytes, name: str, method: str = "gradcam") -> Explained:
    """Scores and Grad-CAM overlays (predicted labels, else the top one) for an uploaded poster.

    Raises ``ImageError`` with a one-line reason for a file that is not a usable image."""
    from posterlab.serving import run_key

    return _explain_upload(run_key(run_dir), data, name, method)


def activations(run_dir: str | Path, image: str | bytes, level: int) -> tuple[str, np.ndarray, Image.Image]:
    """Feature level ``level`` of a run's backbone for one poster: (module name, its most active channel
    maps, their mean drawn as a heatmap over the crop the model saw)."""
    from posterlab.explain import activation_maps, blend

    predictor = model(run_dir).predictor
    name, maps, mean = activation_maps(predictor, image, level)
    crop = predictor.prepare(image)[0]
    return name, maps, blend(crop, mean)


@st.cache_resource(max_entries=4, show_spinner=False)
def _poster_space(path: str, stamp: str, backbone: str, fit: str):
    """``poster_space``, cached per dataset (and its modification stamp), backbone and fit."""
    from posterlab.config import DataConfig
    from posterlab.evaluation.embedding import poster_space

    return poster_space(DataConfig(path=path), backbone, fit)


def poster_space(path: str, backbone: str, fit: str):
    """The dataset's posters and their embeddings from ``backbone`` (the map's data; cached)."""
    return _poster_space(path, _stamp(path), backbone, fit)


@st.cache_data(max_entries=16, show_spinner=False)
def _projection(path: str, stamp: str, backbone: str, fit: str, method: str) -> np.ndarray:
    return _poster_space(path, stamp, backbone, fit).project(method)


def projection(path: str, backbone: str, fit: str, method: str) -> np.ndarray:
    """2-D coordinates of the map (PCA, or t-SNE on demand), cached: reopening the map is instant."""
    return _projection(path, _stamp(path), backbone, fit, method)


def _import_demo() -> None:
    with contextlib.suppress(ImportError):  # the optional demo is missing: the Demo page says so
        import posterlab.demo  # noqa: F401  # gradio: about 10 s on a cold 2-core machine


@st.cache_resource(show_spinner=False)
def _demo_imported() -> threading.Thread:
    from posterlab import background

    return background.start(_import_demo, name="posterlab-demo-import")


def prepare_demo() -> None:
    """Import the demo's code in the background, once per server (called once the Home page is drawn), so
    that the Demo page's first visit does not wait for gradio's import: a page that imports it meanwhile
    waits for this import to finish (Python's import lock) instead of starting over."""
    _demo_imported()


@st.cache_resource(show_spinner=False)
def _demo_server(checkpoints: str, host: str | None) -> tuple[object, int]:
    """The embedded Gradio demo over ``checkpoints``, started once per server process: (its app, port)."""
    from posterlab.demo import serve_in_background

    return serve_in_background(Path(checkpoints), host=host)


def demo_url() -> str:
    """Start the demo (once) and return its URL as the browser reaches it.

    Gradio listens on the interface Streamlit listens on (``server.address``; unset means every
    interface), and the URL uses the host the browser used for the workbench (``st.context.url``): a
    browser on another machine reaches the demo the way it reached the workbench."""
    from urllib.parse import urlsplit

    address = st.get_option("server.address") or "0.0.0.0"
    _, port = _demo_server(str(checkpoints().resolve()), address)
    page = urlsplit(st.context.url or "http://localhost/")
    return f"{page.scheme or 'http'}://{page.hostname or 'localhost'}:{port}/"
