"""Frozen-part outputs computed once and cached on disk.

In ``probe`` mode the frozen part is the whole backbone (pooled embeddings); in CPU ``finetune`` it is
the backbone up to the frozen boundary (activation maps). Entries are keyed by the backbone, its
starting weights, the boundary, the preprocessing and the view (plain / flipped), and by each image's
content hash, so a second run on the same posters never runs the frozen part again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from posterlab import settings
from posterlab.data.images import load_image
from posterlab.data.transforms import Preprocess
from posterlab.events import EventSink, Progress, StopRequested, ignore

log = logging.getLogger(__name__)

VIEWS = ("plain", "flip")
_CACHE_VERSION = 1


def feature_key(backbone: str, weights_id: str, boundary: str, preprocess: Preprocess, view: str) -> str:
    """Everything that changes the frozen part's output for a given image."""
    payload = {
        "version": _CACHE_VERSION,
        "backbone": backbone,
        "weights": weights_id,
        "boundary": boundary,
        "preprocess": preprocess.to_dict(),
        "view": view,
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
    def __init__(self, paths: list[str], transform: Callable) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[index]).image)


def _loader_workers(device: torch.device, requested: int) -> int:
    if requested >= 0:
        return requested
    import os

    cpus = os.cpu_count() or 1
    # on a small CPU the model needs the cores; one worker overlaps decoding with compute
    return min(8, cpus - 1) if device.type == "cuda" else (1 if cpus >= 2 else 0)


@torch.inference_mode()
def compute_features(
    frozen: nn.Module,
    paths: list[str],
    digests: list[str],
    preprocess: Preprocess,
    keys: dict[str, str],
    device: torch.device,
    store: FeatureStore | None = None,
    batch_size: int | None = None,
    num_workers: int = -1,
    on_event: EventSink = ignore,
    should_stop: Callable[[], bool] = lambda: False,
    about: str = "",
) -> dict[str, np.ndarray]:
    """Outputs of ``frozen`` for every image and view in ``keys`` (view → cache key).

    Returns view → array of shape (n, ...) in the order of ``paths``. Cached entries are read back;
    only missing images go through the network (both views in one batch: the flip is free to decode).
    Pooled vectors are stored as float32, spatial maps as float16.
    """
    store = store or FeatureStore()
    cached = {view: store.get(key, digests) for view, key in keys.items()}
    missing = sorted({i for i, d in enumerate(digests) for view in keys if d not in cached[view]})
    if missing:
        frozen = frozen.eval().to(device)
        channels_last = device.type == "cuda" or preprocess.input_size[1] >= 64
        if channels_last:
            frozen = frozen.to(memory_format=torch.channels_last)
        size = batch_size or (128 if device.type == "cuda" else 8)
        dataset = _Images([paths[i] for i in missing], preprocess.eval_transform())
        workers = _loader_workers(device, num_workers)
        loader = DataLoader(
            dataset,
            batch_size=size,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        started, done = time.monotonic(), 0
        fresh: dict[str, dict[str, np.ndarray]] = {view: {} for view in keys}
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        for batch in loader:
            if should_stop():
                raise StopRequested()
            batch = batch.to(device, non_blocking=True)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            views = [batch, torch.flip(batch, dims=[3])] if "flip" in keys else [batch]
            with autocast:
                output = frozen(torch.cat(views)).float()
            for view, part in zip(keys, output.split(len(batch)), strict=True):
                store_dtype = np.float32 if part.ndim == 2 else np.float16
                for row, array in zip(
                    missing[done : done + len(batch)], part.cpu().numpy().astype(store_dtype), strict=True
                ):
                    fresh[view][digests[row]] = array
            done += len(batch)
            on_event(
                Progress(
                    "extracting",
                    done,
                    len(missing),
                    f"{done / max(time.monotonic() - started, 1e-6):.0f} posters/s",
                )
            )
            # write in chunks so that an interrupted extraction keeps what it computed
            if sum(len(v) for v in fresh.values()) >= 512:
                for view, key in keys.items():
                    store.put(key, fresh[view], about)
                    cached[view].update(fresh[view])
                    fresh[view] = {}
        for view, key in keys.items():
            store.put(key, fresh[view], about)
            cached[view].update(fresh[view])
        rate = len(missing) / max(time.monotonic() - started, 1e-6)
        log.info("extracted features for %d posters at %.1f posters/s", len(missing), rate)
    return {view: np.stack([cached[view][d] for d in digests]) for view in keys}
