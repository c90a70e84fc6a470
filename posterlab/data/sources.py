"""Reading poster datasets in the three shapes seen in the field.

1. a folder with ``labels.csv`` and ``images/`` (``imdb_id`` or ``image`` column, ``genres`` and/or ``label``);
2. Kaggle's ``MovieGenre.csv`` whose ``Poster`` column holds URLs (posters are downloaded and cached);
3. a folder per class (``Action/x.jpg``, ``Comedy/y.jpg``).

A zip of any of these is extracted safely first. The result is a ``PosterDataset``: one row per movie
with an absolute image path, plus the rows set aside while reading and why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from posterlab import settings
from posterlab.errors import DataError, one_line

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
KAGGLE_COLUMNS = {"imdbId", "Genre", "Poster"}
ZIP_MAX_BYTES = 4 * 2**30
ZIP_MAX_FILES = 200_000
ZIP_MAX_RATIO = 200  # uncompressed / compressed, per member: beyond this it is a zip bomb
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.\- ]+$")


@dataclass
class PosterDataset:
    """Posters with their labels. ``frame`` has ``id``, ``image`` (absolute path), ``genres`` (tuple),
    ``label`` (str or None) and any extra columns (``title``, ``year``, ``imdb_score`` ...)."""

    name: str
    root: Path
    kind: str
    frame: pd.DataFrame
    issues: pd.DataFrame  # id, image, reason: rows set aside while reading

    def __len__(self) -> int:
        return len(self.frame)


def load_dataset(
    path: str | Path | None = None, progress: Callable[[int, int], None] | None = None
) -> PosterDataset:
    """Read a dataset from a folder, CSV or zip (``None`` or ``'sample'``: the embedded posters)."""
    key = str(path) if path is not None else "sample"
    if key in settings.SAMPLES:
        return _read_labels_folder(settings.SAMPLES[key], name=key)
    source = Path(key).expanduser()
    if not source.exists():
        raise DataError(
            f"{source}: no such file or folder; give a dataset folder, a labels CSV, MovieGenre.csv or a zip"
        )
    if source.is_file() and source.suffix.lower() == ".zip":
        return load_dataset(_dataset_root(extract_zip(source)), progress)
    if source.is_file() and source.suffix.lower() == ".csv":
        columns = _csv_columns(source)
        if columns >= KAGGLE_COLUMNS:
            return _read_movie_genre_csv(source, progress)
        return _read_labels_folder(source.parent, csv_path=source)
    if source.is_dir():
        if (source / "labels.csv").is_file():
            return _read_labels_folder(source)
        if (source / "MovieGenre.csv").is_file():
            return _read_movie_genre_csv(source / "MovieGenre.csv", progress)
        if _class_folders(source):
            return _read_class_folders(source)
    raise DataError(
        f"{source}: not a poster dataset; expected a folder with labels.csv and images/, "
        "Kaggle's MovieGenre.csv, one folder of images per class, or a zip of one of these"
    )


def _csv_columns(path: Path) -> set[str]:
    return set(_read_csv(path, nrows=0).columns)


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """Read a CSV as strings; Kaggle's files are not always UTF-8, so fall back to Latin-1."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", **kwargs)
    except UnicodeDecodeError:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="latin-1", **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(
            f"{path}: not a readable CSV ({one_line(error, typed=False)}); save it as comma-separated UTF-8"
        ) from None


def split_genres(value: str) -> tuple[str, ...]:
    """``'Action|Comedy'`` → ``('Action', 'Comedy')`` (order kept, blanks and repeats dropped)."""
    out: list[str] = []
    for part in str(value or "").split("|"):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    return tuple(out)


def _finish(name: str, root: Path, kind: str, rows: pd.DataFrame, issues: list[dict]) -> PosterDataset:
    """Common tail: drop missing images and repeated ids, with a reason for each."""
    if rows.empty:  # every row set aside already: say why, in one line
        raise DataError(
            f"{root}: no usable posters ({len(issues)} rows set aside, e.g. {issues[0]['reason'] if issues else 'empty'})"
        )
    missing = ~rows["image"].map(lambda p: Path(p).is_file())
    for _, row in rows[missing].iterrows():
        issues.append({"id": row["id"], "image": row["image"], "reason": "image file missing"})
    rows = rows[~missing]
    repeated = rows["id"].duplicated(keep="first")
    for _, row in rows[repeated].iterrows():
        issues.append({"id": row["id"], "image": row["image"], "reason": "repeated id (first row kept)"})
    rows = rows[~repeated].reset_index(drop=True)
    if rows.empty:
        raise DataError(
            f"{root}: no usable posters ({len(issues)} rows set aside, e.g. {issues[0]['reason'] if issues else 'empty'})"
        )
    frame_issues = pd.DataFrame(issues, columns=["id", "image", "reason"])
    log.info("read %d posters from %s (%d set aside)", len(rows), root, len(frame_issues))
    return PosterDataset(name=name, root=root, kind=kind, frame=rows, issues=frame_issues)


def _read_labels_folder(root: Path, csv_path: Path | None = None, name: str | None = None) -> PosterDataset:
    csv_path = csv_path or root / "labels.csv"
    table = _read_csv(csv_path)
    columns = list(table.columns)
    if "imdb_id" not in table.columns and "image" not in table.columns:
        raise DataError(
            f"{csv_path}: no image column; add 'imdb_id' (image at images/<imdb_id>.jpg) or 'image' "
            f"(a path relative to the folder). Columns found: {', '.join(columns) or 'none'}"
        )
    # lexically, not through links: a folder the user named may hold links into shared storage (how labs
    # lay out subsets); a path that climbs out with '..' or starts at '/' is still refused. (Archives are
    # extracted without links, so an uploaded zip cannot smuggle one in.)
    root = Path(os.path.abspath(root))
    issues: list[dict] = []
    ids, images, keep = [], [], []
    for index, row in table.iterrows():
        raw_id = str(row.get("imdb_id", "") or "").strip()
        if "image" in table.columns and str(row["image"]).strip():
            relative = str(row["image"]).strip()
            rid = raw_id or PurePosixPath(relative).with_suffix("").as_posix()
        elif raw_id:
            relative, rid = f"images/{raw_id}.jpg", raw_id
        else:
            issues.append({"id": f"row {index + 2}", "image": "", "reason": "no imdb_id or image"})
            continue
        candidate = Path(os.path.normpath(root / relative))
        if not candidate.is_relative_to(root) or (raw_id and not _SAFE_ID.match(raw_id)):
            issues.append({"id": rid, "image": relative, "reason": "path outside the dataset folder"})
            continue
        ids.append(rid)
        images.append(str(candidate))
        keep.append(index)
    rows = table.loc[keep].copy()
    rows.insert(0, "id", ids)
    rows["image"] = images
    rows["genres"] = rows["genres"].map(split_genres) if "genres" in rows else [()] * len(rows)
    rows["label"] = rows["label"].map(lambda v: str(v).strip() or None) if "label" in rows else None
    rows = rows.drop(columns=[c for c in ("imdb_id",) if c in rows.columns])
    return _finish(name or root.name, root, "labels_csv", rows.reset_index(drop=True), issues)


def _class_folders(root: Path) -> list[Path]:
    return sorted(
        d
        for d in root.iterdir()
        if d.is_dir()
        and not d.name.startswith(".")
        and any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir())
    )


def _read_class_folders(root: Path) -> PosterDataset:
    root = Path(os.path.abspath(root))
    records = []
    for folder in _class_folders(root):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                records.append(
                    {
                        "id": f"{folder.name}/{file.stem}",
                        "image": str(file),
                        "genres": (folder.name,),
                        "label": folder.name,
                    }
                )
    return _finish(root.name, root, "class_folders", pd.DataFrame(records), [])


def _read_movie_genre_csv(csv_path: Path, progress: Callable[[int, int], None] | None) -> PosterDataset:
    from posterlab.data.download import download_posters

    table = _read_csv(csv_path)
    missing = KAGGLE_COLUMNS - set(table.columns)
    if missing:
        raise DataError(
            f"{csv_path}: MovieGenre.csv needs columns imdbId, Genre, Poster; missing {', '.join(sorted(missing))}"
        )
    issues: list[dict] = []
    table = table[table["imdbId"].str.strip() != ""]
    ids = table["imdbId"].str.strip().map(lambda v: f"tt{int(v):07d}" if v.isdigit() else v)
    urls = dict(zip(ids, table["Poster"].str.strip(), strict=True))
    report = download_posters(urls, progress=progress)
    for _, row in report[~report["ok"]].iterrows():
        issues.append({"id": row["id"], "image": row["url"], "reason": f"download failed: {row['error']}"})
    paths = dict(zip(report["id"], report["path"], strict=True))
    rows = pd.DataFrame(
        {
            "id": ids.values,
            "image": [paths.get(i) or "" for i in ids],
            "genres": table["Genre"].map(split_genres).values,
            "label": None,
            "title": table.get("Title", pd.Series([""] * len(table))).values,
            "imdb_score": table.get("IMDB Score", pd.Series([""] * len(table))).values,
        }
    )
    failed = rows["image"] == ""
    rows = rows[~failed]
    # a failed download is already reported above; _finish reports only files that vanished since
    return _finish(
        csv_path.stem, csv_path.parent.resolve(), "movie_genre_csv", rows.reset_index(drop=True), issues
    )


def extract_zip(path: Path, dest: Path | None = None) -> Path:
    """Extract a dataset zip into the cache (or ``dest``), refusing anything that could escape it.

    Rejected: absolute paths, ``..`` components, symbolic links, more than ``ZIP_MAX_FILES`` entries,
    more than ``ZIP_MAX_BYTES`` uncompressed, or a member compressed more than ``ZIP_MAX_RATIO`` times.
    Nothing is written unless the whole archive passes.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(
            f"{path}: not a readable zip ({error}); re-create it with a standard zip tool"
        ) from None
    with archive:
        members = archive.infolist()
        if len(members) > ZIP_MAX_FILES:
            raise DataError(
                f"{path}: {len(members)} entries is over the limit of {ZIP_MAX_FILES}; split the dataset"
            )
        total = 0
        for info in members:
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                raise DataError(
                    f"{path}: entry {name!r} points outside the archive folder; remove it and zip again"
                )
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DataError(f"{path}: entry {name!r} is a symbolic link; zip the files themselves")
            total += info.file_size
            if (
                info.compress_size
                and info.file_size / info.compress_size > ZIP_MAX_RATIO
                and info.file_size > 10 * 2**20
            ):
                raise DataError(
                    f"{path}: entry {name!r} expands {info.file_size // info.compress_size}x (a zip bomb?); refusing it"
                )
        if total > ZIP_MAX_BYTES:
            raise DataError(
                f"{path}: {total / 2**30:.1f} GiB uncompressed is over the {ZIP_MAX_BYTES / 2**30:.0f} GiB limit"
            )
        digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]
        dest = dest or settings.cache_dir() / "datasets" / digest
        if not (dest / ".complete").exists():
            dest.mkdir(parents=True, exist_ok=True)
            for info in members:
                target = (dest / info.filename).resolve()
                if not target.is_relative_to(dest.resolve()):  # belt and braces after the checks above
                    raise DataError(f"{path}: entry {info.filename!r} escapes the destination")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    out.write(src.read(info.file_size + 1))
            (dest / ".complete").write_text("ok")
    return dest


def _dataset_root(folder: Path) -> Path:
    """The folder inside an extracted zip that holds the dataset (the top, or its single sub-folder)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and not _class_folders(folder):
        return entries[0]
    return folder
