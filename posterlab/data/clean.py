"""Cleaning: every image is opened once (cached by content), bad ones are set aside with a reason,
and near-identical posters under different ids are reported and dropped (they would leak across splits)."""

from __future__ import annotations

import io
import logging
import os
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

_SCAN_VERSION = 3  # 2: perceptual hashes of JPEGs from a draft (1/2 to 1/8 scale) decode; 3: thumbnails
SCAN_DRAFT = 64  # px a side: enough for the 32x32 perceptual hash, and the whole file is still read
THUMBNAIL = (40, 60)  # the embedding map's hover images: a JPEG of about 1 KB each


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
            db.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime INTEGER, digest TEXT)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS thumbnails (digest TEXT PRIMARY KEY, jpeg BLOB)")

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

    def digests(self, paths: list[str]) -> list[str]:
        """Each file's SHA-1, remembered by path, size and modification time: a large dataset scanned
        again reads no file twice ("" for a file that cannot be read)."""
        unique = list(dict.fromkeys(paths))
        stats: dict[str, tuple[int, int] | None] = {}
        for path in unique:
            try:
                info = os.stat(path)
                stats[path] = (info.st_size, info.st_mtime_ns)
            except OSError:
                stats[path] = None
        known: dict[str, tuple] = {}
        with self._connect() as db:
            for start in range(0, len(unique), 900):
                chunk = unique[start : start + 900]
                marks = ",".join("?" * len(chunk))
                for row in db.execute(
                    f"SELECT path, size, mtime, digest FROM files WHERE path IN ({marks})", chunk
                ):
                    known[row[0]] = row[1:]
        out, fresh = {}, []
        for path in unique:
            stat = stats[path]
            if stat is None:
                out[path] = ""
            elif path in known and tuple(known[path][:2]) == stat:
                out[path] = known[path][2]
            else:
                try:
                    out[path] = file_digest(path)
                except OSError:
                    out[path] = ""
                    continue
                fresh.append((path, *stat, out[path]))
        if fresh:
            with self._lock, self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", fresh)
        return [out[path] for path in paths]

    def put(self, rows: list[tuple]) -> None:
        """Scan results ``(digest, ok, reason, notes, width, height, phash, thumbnail)``."""
        with self._lock, self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO scan VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r[0], _SCAN_VERSION, *r[1:7]) for r in rows],
            )
            db.executemany(
                "INSERT OR REPLACE INTO thumbnails VALUES (?, ?)", [(r[0], r[7]) for r in rows if r[7]]
            )

    def thumbnails(self, digests: list[str]) -> dict[str, bytes]:
        """The small JPEG each scanned poster left behind (digest → bytes)."""
        out: dict[str, bytes] = {}
        wanted = sorted(set(digests))
        with self._connect() as db:
            for start in range(0, len(wanted), 900):
                chunk = wanted[start : start + 900]
                marks = ",".join("?" * len(chunk))
                out.update(
                    db.execute(f"SELECT digest, jpeg FROM thumbnails WHERE digest IN ({marks})", chunk)
                )
        return out


def _scan_one(path: str, digest: str) -> tuple:
    """Open one image (a JPEG at its draft scale: decoded in full, but small) and hash it perceptually."""
    import imagehash

    try:
        loaded = load_image(path, draft=SCAN_DRAFT)
    except ImageError as error:
        return (digest, 0, error.reason, "", 0, 0, "", b"")
    width, height = loaded.size
    thumbnail = loaded.image.copy()
    thumbnail.thumbnail(THUMBNAIL)
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=60)
    phash = str(imagehash.phash(loaded.image))
    return (digest, 1, "", "; ".join(loaded.notes), width, height, phash, buffer.getvalue())


def scan_images(
    paths: list[str], cache: ScanCache | None = None, progress: Callable[[int, int], None] | None = None
) -> pd.DataFrame:
    """Open every distinct image once (results cached by content, digests by file); one row per path:
    ``image, digest, ok, reason, notes, width, height, phash``. Nothing decoded is kept."""
    cache = cache or ScanCache()
    digests = cache.digests(paths)
    known = cache.get(sorted({d for d in digests if d}))
    todo: dict[str, str] = {}  # one path per content not scanned yet; unreadable files by path
    for path, digest in zip(paths, digests, strict=True):
        if not digest:
            todo.setdefault(f"path:{path}", path)
        elif digest not in known:
            todo.setdefault(digest, path)
    fresh: dict[str, tuple] = {}
    if todo:
        with ThreadPoolExecutor(max_workers=4) as pool:
            jobs = [(path, "" if key.startswith("path:") else key) for key, path in todo.items()]
            for done, ((key, _), row) in enumerate(
                zip(todo.items(), pool.map(_scan_one_safe, jobs), strict=True), start=1
            ):
                fresh[key] = row
                if progress:
                    progress(done, len(todo))
        cache.put([row for row in fresh.values() if row[0]])
    records = []
    for path, digest in zip(paths, digests, strict=True):
        row = fresh.get(digest or f"path:{path}")
        records.append((path, *(row[:7] if row else (digest, *known[digest]))))
    columns = ["image", "digest", "ok", "reason", "notes", "width", "height", "phash"]
    frame = pd.DataFrame(records, columns=columns)
    frame["ok"] = frame["ok"].astype(bool)
    return frame


def _scan_one_safe(job: tuple[str, str]) -> tuple:
    path, digest = job
    try:
        return _scan_one(path, digest)
    except OSError as error:
        return (digest, 0, f"cannot read file ({error.strerror or error})", "", 0, 0, "", b"")


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
    """Pairs (i, j, distance), i < j, of posters whose perceptual hashes differ in at most ``max_bits``
    bits: every later copy of a hash with its first occurrence, and the first occurrences of distinct but
    near hashes with each other.

    Near hashes are found by multi-index hashing rather than all pairs: two 64-bit hashes that differ in
    at most ``max_bits`` bits agree exactly on one of ``max_bits + 1`` bands of their bits, so only hashes
    that share a band are compared (100,000 posters take seconds, not the hours of all pairs)."""
    values = _phash_ints(hashes)
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    pairs = [(int(first[u]), i, 0) for i, u in enumerate(inverse.ravel()) if first[u] != i]
    if max_bits > 0 and len(unique) > 1:
        bands = max_bits + 1
        width = -(-64 // bands)
        seen: set[tuple[int, int]] = set()
        for band in range(bands):
            keys = (unique >> np.uint64(band * width)) & np.uint64((1 << width) - 1)
            order = np.argsort(keys, kind="stable")
            boundaries = np.flatnonzero(np.diff(keys[order])) + 1
            for group in np.split(order, boundaries):
                for a_index, a in enumerate(group[:-1]):
                    others = group[a_index + 1 :]
                    distance = np.bitwise_count(unique[others] ^ unique[a])
                    for b in others[distance <= max_bits]:
                        i, j = sorted((int(first[a]), int(first[b])))
                        if (i, j) not in seen:
                            seen.add((i, j))
                            pairs.append((i, j, int(np.bitwise_count(unique[a] ^ unique[b]))))
    return sorted(pairs)


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
