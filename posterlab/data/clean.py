"""Cleaning: every image is opened once (cached by content), bad ones are set aside with a reason,
and near-identical posters under different ids are reported and dropped (they would leak across splits)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from posterlab import settings
from posterlab.data.images import file_digest, load_image
from posterlab.data.sources import PosterDataset
from posterlab.errors import ImageError

log = logging.getLogger(__name__)

_SCAN_VERSION = 1


class ScanCache:
    """Per-content results of opening an image (sqlite, one row per SHA-1)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or settings.cache_dir() / "scan.sqlite"
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS scan (digest TEXT PRIMARY KEY, version INTEGER, ok INTEGER, "
                "reason TEXT, notes TEXT, width INTEGER, height INTEGER, phash TEXT)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get(self, digests: list[str]) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        with self._connect() as db:
            for start in range(0, len(digests), 900):
                chunk = digests[start : start + 900]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT digest, ok, reason, notes, width, height, phash FROM scan WHERE version = ? AND digest IN ({marks})"
                for row in db.execute(query, [_SCAN_VERSION, *chunk]):
                    out[row[0]] = row[1:]
        return out

    def put(self, rows: list[tuple]) -> None:
        with self._lock, self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO scan VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r[0], _SCAN_VERSION, *r[1:]) for r in rows],
            )


def _scan_one(path: str) -> tuple:
    import imagehash

    digest = file_digest(path)
    try:
        loaded = load_image(path)
    except ImageError as error:
        return (digest, 0, error.reason, "", 0, 0, "")
    width, height = loaded.image.size
    return (digest, 1, "", "; ".join(loaded.notes), width, height, str(imagehash.phash(loaded.image)))


def scan_images(
    paths: list[str], cache: ScanCache | None = None, progress: Callable[[int, int], None] | None = None
) -> pd.DataFrame:
    """Open every image once (results cached by content); one row per path:
    ``image, digest, ok, reason, notes, width, height, phash``."""
    cache = cache or ScanCache()
    digests = []
    for path in paths:
        try:
            digests.append(file_digest(path))
        except OSError:
            digests.append("")
    known = cache.get([d for d in digests if d])
    todo = [p for p, d in zip(paths, digests, strict=True) if not d or d not in known]
    fresh: dict[str, tuple] = {}
    if todo:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for done, row in enumerate(pool.map(_scan_one_safe, todo), start=1):
                fresh[row[-1]] = row[:-1]
                if progress:
                    progress(done, len(todo))
        cache.put([row for row in fresh.values() if row[0]])
    records = []
    for path, digest in zip(paths, digests, strict=True):
        row = fresh.get(path)
        if row is None:
            row = (digest, *known[digest])
        records.append((path, *row))
    columns = ["image", "digest", "ok", "reason", "notes", "width", "height", "phash"]
    frame = pd.DataFrame(records, columns=columns)
    frame["ok"] = frame["ok"].astype(bool)
    return frame


def _scan_one_safe(path: str) -> tuple:
    try:
        return (*_scan_one(path), path)
    except OSError as error:
        return ("", 0, f"cannot read file ({error.strerror or error})", "", 0, 0, "", path)


@dataclass
class CleaningReport:
    """One row per poster that was set aside or converted: ``id, image, reason, action``."""

    rows: pd.DataFrame
    total: int  # posters read

    def summary(self) -> pd.Series:
        dropped = self.rows[self.rows["action"] == "dropped"]
        return (
            dropped["reason"]
            .str.replace(r" \(.*", "", regex=True)
            .str.replace(r" of .*", "", regex=True)
            .value_counts()
        )

    @property
    def dropped(self) -> int:
        return int((self.rows["action"] == "dropped").sum())


def _phash_ints(hashes: pd.Series) -> np.ndarray:
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def near_duplicates(hashes: pd.Series, max_bits: int) -> list[tuple[int, int, int]]:
    """Pairs (i, j, distance) with i < j whose perceptual hashes differ in at most ``max_bits`` bits."""
    values = _phash_ints(hashes)
    pairs = []
    for start in range(0, len(values), 512):
        block = values[start : start + 512]
        distance = np.bitwise_count(block[:, None] ^ values[None, :])
        for a, b in zip(*np.nonzero(distance <= max_bits), strict=True):
            i = start + int(a)
            if int(b) > i:
                pairs.append((i, int(b), int(distance[a, b])))
    return pairs


def clean_dataset(
    dataset: PosterDataset,
    near_duplicate_bits: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[PosterDataset, CleaningReport]:
    """Drop unreadable images and near-duplicate posters; add ``digest``, ``width``, ``height``.

    Rows set aside while reading (missing files, repeated ids) are part of the report too.
    """
    frame = dataset.frame
    scan = scan_images(frame["image"].tolist(), progress=progress)
    report = [
        dict(id=r.id, image=r.image, reason=r.reason, action="dropped") for r in dataset.issues.itertuples()
    ]
    frame = frame.assign(
        digest=scan["digest"].values, width=scan["width"].values, height=scan["height"].values
    )
    bad = ~scan["ok"].values
    for row, reason in zip(frame[bad].itertuples(), scan["reason"][bad], strict=True):
        report.append(dict(id=row.id, image=row.image, reason=f"unreadable: {reason}", action="dropped"))
    for row, notes in zip(frame[~bad].itertuples(), scan["notes"][~bad], strict=True):
        if notes:
            report.append(dict(id=row.id, image=row.image, reason=notes, action="converted"))
    good = frame[~bad].reset_index(drop=True)
    hashes = scan["phash"][~bad].reset_index(drop=True)
    if near_duplicate_bits >= 0 and len(good) > 1:
        drop = set()
        for i, j, distance in near_duplicates(hashes, near_duplicate_bits):
            if i in drop or j in drop:
                continue
            drop.add(j)
            what = "identical image to" if distance == 0 else "near-duplicate of"
            report.append(
                dict(
                    id=good.at[j, "id"],
                    image=good.at[j, "image"],
                    reason=f"{what} {good.at[i, 'id']} ({distance} bits)",
                    action="dropped",
                )
            )
        good = good.drop(index=sorted(drop)).reset_index(drop=True)
    cleaned = PosterDataset(dataset.name, dataset.root, dataset.kind, good, dataset.issues)
    rows = pd.DataFrame(report, columns=["id", "image", "reason", "action"])
    log.info(
        "cleaning %s: %d posters kept, %d dropped",
        dataset.name,
        len(good),
        int((rows["action"] == "dropped").sum()),
    )
    return cleaned, CleaningReport(rows, total=len(dataset.frame) + len(dataset.issues))
