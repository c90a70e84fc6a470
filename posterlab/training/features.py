"""Frozen-part outputs computed once and cached on disk.

In ``probe`` mode the frozen part is the whole backbone (pooled embeddings); in CPU ``finetune`` it is
the backbone up to the frozen boundary (activation maps). A *view* is one way of showing a poster to
the model: a fit (crop / pad / squash), plain or flipped. Entries are keyed by the backbone, its starting
weights, the boundary, the view's preprocessing and flip, and by each image's content hash, so a second
run on the same posters never runs the frozen part again.

On a CPU the frozen part runs through ONNX Runtime when it exports cleanly and matches torch on a check
batch (about 2.5x torch's eager speed for EfficientNet-Lite0 on 2 cores); otherwise through torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from posterlab import settings
from posterlab.data.images import load_image
from posterlab.data.transforms import Preprocess
from posterlab.events import EventSink, Progress, StopRequested, ignore
from posterlab.models.onnx import torchscript_onnx

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


@dataclass(frozen=True)
class View:
    """One way of showing a poster to the model."""

    preprocess: Preprocess
    flip: bool = False

    @property
    def name(self) -> str:
        return self.preprocess.fit + ("-flip" if self.flip else "")


def views_for(preprocess: Preprocess, fits: tuple[str, ...], flips: bool) -> list[View]:
    """Each fit, plain (and flipped when ``flips``); the first is the primary fit, plain."""
    out = [View(replace(preprocess, fit=fit)) for fit in fits]
    return out + ([View(v.preprocess, flip=True) for v in out] if flips else [])


def feature_key(backbone: str, weights_id: str, boundary: str, view: View) -> str:
    """Everything that changes the frozen part's output for a given image."""
    payload = {
        "version": _CACHE_VERSION,
        "backbone": backbone,
        "weights": weights_id,
        "boundary": boundary,
        "preprocess": view.preprocess.to_dict(),
        "view": "flip" if view.flip else "plain",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class FeatureStore:
    """sqlite table of (key, image digest) → array bytes, with each key's dtype and shape."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or settings.cache_dir() / "features.sqlite"
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, dtype TEXT, shape TEXT, about TEXT)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS features (key TEXT, digest TEXT, data BLOB, PRIMARY KEY (key, digest))"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get(self, key: str, digests: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._connect() as db:
            meta = db.execute("SELECT dtype, shape FROM keys WHERE key = ?", (key,)).fetchone()
            if meta is None:
                return out
            dtype, shape = np.dtype(meta[0]), tuple(json.loads(meta[1]))
            wanted = sorted(set(digests))
            for start in range(0, len(wanted), 900):
                chunk = wanted[start : start + 900]
                marks = ",".join("?" * len(chunk))
                for digest, data in db.execute(
                    f"SELECT digest, data FROM features WHERE key = ? AND digest IN ({marks})", [key, *chunk]
                ):
                    array = np.frombuffer(data, dtype=dtype)
                    if array.size == int(np.prod(shape)):
                        out[digest] = array.reshape(shape)
        return out

    def put(self, key: str, items: dict[str, np.ndarray], about: str = "") -> None:
        if not items:
            return
        first = next(iter(items.values()))
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO keys VALUES (?, ?, ?, ?)",
                (key, first.dtype.str, json.dumps(first.shape), about),
            )
            db.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?, ?)",
                [(key, d, a.tobytes()) for d, a in items.items()],
            )

    def clear(self) -> None:
        with self._lock, self._connect() as db:
            db.execute("DELETE FROM features")
            db.execute("DELETE FROM keys")


class _Images(Dataset):
    """Each poster decoded once and fitted every way asked: (fits, 3, H, W)."""

    def __init__(self, paths: list[str], transforms: list[Callable]) -> None:
        self.paths = paths
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = load_image(self.paths[index]).image
        return torch.stack([transform(image) for transform in self.transforms])


def _loader_workers(device: torch.device, requested: int) -> int:
    if requested >= 0:
        return requested
    import os

    cpus = os.cpu_count() or 1
    # on a small CPU the model needs the cores; one worker overlaps decoding with compute
    return min(8, cpus - 1) if device.type == "cuda" else (1 if cpus >= 2 else 0)


def _onnx_runner(frozen: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``frozen`` as an ONNX Runtime session (CPU), traced on ``example``; None when it cannot be exported
    or does not match torch on a check batch (then the caller keeps torch)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="posterlab-onnx-") as folder:
            path = Path(folder) / "frozen.onnx"
            torchscript_onnx(frozen, example, path, output="features")
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # exporters reject some models; torch still runs them
        log.info("frozen part not exported to ONNX (%s); extracting with torch", _first_line(error))
        return None

    def run(batch: torch.Tensor) -> torch.Tensor:
        [out] = session.run(None, {"image": batch.contiguous().numpy()})
        return torch.from_numpy(out)

    # check on other content and another batch size than the traced example: a value the tracer froze
    # into a constant, or a fixed batch size, shows up here
    check = torch.flip(example, dims=[3])[: max(1, len(example) - 1)]
    expected = frozen(check).float()
    try:
        got = run(check)
    except Exception as error:
        log.info("ONNX Runtime failed on a check batch (%s); extracting with torch", _first_line(error))
        return None
    difference = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
    if not difference <= 1e-3 * (1.0 + float(expected.abs().max())):
        log.info(
            "ONNX Runtime differs from torch by %.2g on a check batch; extracting with torch", difference
        )
        return None
    return run


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


@torch.inference_mode()
def compute_features(
    frozen: nn.Module,
    paths: list[str],
    digests: list[str],
    views: list[View],
    keys: list[str],
    device: torch.device,
    store: FeatureStore | None = None,
    batch_size: int | None = None,
    num_workers: int = -1,
    on_event: EventSink = ignore,
    should_stop: Callable[[], bool] = lambda: False,
    about: str = "",
) -> dict[str, np.ndarray]:
    """Outputs of ``frozen`` for every image and view (``keys[i]`` is ``views[i]``'s cache key).

    Returns view name → array of shape (n, ...) in the order of ``paths``. Cached entries are read back;
    only missing images go through the network, each decoded once for all its views (flips are free).
    Pooled vectors are stored as float32, spatial maps as float16.
    """
    store = store or FeatureStore()
    cached = {key: store.get(key, digests) for key in keys}
    missing = sorted({i for i, d in enumerate(digests) for key in keys if d not in cached[key]})
    # new outputs go into one preallocated array per view: many small long-lived arrays interleaved with
    # the network's large temporary buffers fragment the heap (measured: ~2-4 MB of RSS per poster)
    fresh: dict[str, np.ndarray] = {}
    if missing:
        frozen = frozen.eval().to(device)
        preprocesses = list(dict.fromkeys(v.preprocess for v in views))
        fit_index = [preprocesses.index(v.preprocess) for v in views]
        channels_last = device.type == "cuda" or views[0].preprocess.input_size[1] >= 64
        if channels_last:
            frozen = frozen.to(memory_format=torch.channels_last)
        # a small batch keeps CPU caches warm (measured: 8 images beat 32 and 64 on 2 cores)
        size = batch_size or (128 if device.type == "cuda" else max(1, 8 // len(views)))
        dataset = _Images([paths[i] for i in missing], [p.eval_transform() for p in preprocesses])
        workers = _loader_workers(device, num_workers)
        loader = DataLoader(dataset, batch_size=size, num_workers=workers, pin_memory=device.type == "cuda")
        started, done, saved = time.monotonic(), 0, 0
        runner: Callable[[torch.Tensor], torch.Tensor] | None = None
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        for batch in loader:
            if should_stop():
                raise StopRequested()
            batch = batch.to(device, non_blocking=True)
            inputs = [batch[:, f] for f in fit_index]
            inputs = [torch.flip(x, dims=[3]) if v.flip else x for x, v in zip(inputs, views, strict=True)]
            stacked = torch.cat(inputs)
            if device.type == "cpu" and done == 0:
                runner = _onnx_runner(frozen, stacked)
            if runner is not None:
                output = runner(stacked)
            else:
                if channels_last:
                    stacked = stacked.contiguous(memory_format=torch.channels_last)
                with autocast:
                    output = frozen(stacked).float()
            for key, part in zip(keys, output.split(len(batch)), strict=True):
                if key not in fresh:
                    store_dtype = np.float32 if part.ndim == 2 else np.float16
                    fresh[key] = np.empty((len(missing), *part.shape[1:]), dtype=store_dtype)
                fresh[key][done : done + len(batch)] = part.cpu().numpy()
            done += len(batch)
            on_event(
                Progress(
                    "extracting",
                    done,
                    len(missing),
                    f"{done / max(time.monotonic() - started, 1e-6):.0f} posters/s",
                )
            )
            if done - saved >= 256:  # save in chunks: an interrupted extraction keeps what it computed
                _save(store, keys, fresh, [digests[i] for i in missing[saved:done]], saved, about)
                saved = done
        _save(store, keys, fresh, [digests[i] for i in missing[saved:done]], saved, about)
        rate = len(missing) / max(time.monotonic() - started, 1e-6)
        engine = "ONNX Runtime" if runner is not None else "torch"
        log.info(
            "extracted %d views of %d posters at %.1f posters/s (%s)", len(views), len(missing), rate, engine
        )
    position = {i: j for j, i in enumerate(missing)}
    out = {}
    for view, key in zip(views, keys, strict=True):
        known = cached[key]
        first = known[digests[0]] if digests[0] in known else fresh[key][position[0]]
        array = np.empty((len(digests), *first.shape), dtype=first.dtype)
        for i, digest in enumerate(digests):
            array[i] = known[digest] if digest in known else fresh[key][position[i]]
        out[view.name] = array
    return out


def _save(
    store: FeatureStore,
    keys: list[str],
    fresh: dict[str, np.ndarray],
    digests: list[str],
    start: int,
    about: str,
) -> None:
    for key in keys:
        store.put(key, {d: fresh[key][start + j] for j, d in enumerate(digests)}, about)
