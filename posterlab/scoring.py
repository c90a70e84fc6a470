"""Scoring posters at scale: ``posterlab predict RUN PATH... --out FILE.csv|.parquet``.

One row per poster: ``image``, ``ok``, ``error`` (null, or why the file could not be read), then for each
label its probability (``prob_<label>``, the run's views averaged as its Predictor does) and the decision
at its threshold (``pred_<label>``; single-label runs: the most probable class), and ``predicted`` (the
labels, ``|``-separated). Parquet files carry the run's labels and thresholds in their schema metadata.

Streamed: posters are decoded a batch or two ahead on a thread while the model scores the current batch;
every chunk of posters is written at once as its own part file (``FILE.parts/``, temp file + rename), so
memory stays flat however many posters there are, and a killed job loses at most one chunk. At the end the parts are
merged into ``FILE`` (with the rows a previous run left there) by one atomic rename. Running the same
command again skips every poster already in ``FILE`` or its parts: it resumes.

Under ``torchrun`` each rank scores one contiguous share of the posters left to score into its own part
files; rank 0 merges them once all are done. The model runs through ONNX Runtime on a CPU (the run's
``model.onnx``, or one exported once into the cache and checked against torch) and through torch on the
GPU when there is one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from posterlab import settings
from posterlab.data.sources import IMAGE_SUFFIXES
from posterlab.errors import ConfigError, DataError, ImageError, ModelError, RunError, one_line

log = logging.getLogger(__name__)

FORMATS = (".csv", ".parquet")
CHUNK = 256  # posters per part file: at most this much work is lost to a kill
PARTS_SUFFIX = ".parts"


# ------------------------------------------------------------------------------------------ inputs


def _labels_csv_images(table: Path) -> Iterator[str]:
    """Image paths of a ``labels.csv`` (``image`` relative to its folder, or ``images/<imdb_id>.jpg``),
    read row by row."""
    root = table.parent
    with open(table, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not columns & {"image", "imdb_id"}:
            raise ConfigError(
                f"{table}: no image column; add 'imdb_id' (image at images/<imdb_id>.jpg) or 'image'"
            )
        for row in reader:
            image = (row.get("image") or "").strip()
            ident = (row.get("imdb_id") or "").strip()
            if image:
                yield str(root / image)
            elif ident:
                yield str(root / "images" / f"{ident}.jpg")


def _folder_images(folder: Path) -> Iterator[str]:
    """Image files under ``folder`` (recursively, by suffix), in a stable order."""
    for directory, subfolders, files in os.walk(folder):
        subfolders.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.join(directory, name)


def poster_paths(paths: list[str]) -> list[str]:
    """Every poster the command names, once each, in order: an image (kept even when it cannot be read:
    it gets a row with the error), a folder (its ``labels.csv`` when it has one, else every image under
    it) or a ``labels.csv``."""
    seen: dict[str, None] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = (
                _labels_csv_images(path / "labels.csv")
                if (path / "labels.csv").is_file()
                else _folder_images(path)
            )
        elif path.suffix.lower() == ".csv" and path.is_file():
            found = _labels_csv_images(path)
        else:
            found = iter([given])
        for item in found:
            seen.setdefault(item, None)
    return list(seen)


# ------------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Columns:
    """The output's columns for a run's labels."""

    labels: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [
            "image",
            "ok",
            "error",
            *[f"prob_{label}" for label in self.labels],
            *[f"pred_{label}" for label in self.labels],
            "predicted",
        ]

    def schema(self, metadata: dict[str, str]):
        import pyarrow as pa

        fields = [pa.field("image", pa.string()), pa.field("ok", pa.bool_()), pa.field("error", pa.string())]
        fields += [pa.field(f"prob_{label}", pa.float32()) for label in self.labels]
        fields += [pa.field(f"pred_{label}", pa.bool_()) for label in self.labels]
        fields.append(pa.field("predicted", pa.string()))
        return pa.schema(fields, metadata=metadata)


def _rows(columns: Columns, images, probs, errors, decide) -> dict[str, list]:
    """Column-wise rows of one chunk: NaN-free (an unreadable poster has nulls, not numbers)."""
    out: dict[str, list] = {name: [] for name in columns.names}
    for image, row, error in zip(images, probs, errors, strict=True):
        out["image"].append(image)
        out["ok"].append(error is None)
        out["error"].append(error)
        chosen = set(decide(row)) if error is None else set()
        for index, label in enumerate(columns.labels):
            out[f"prob_{label}"].append(None if error is not None else round(float(row[index]), 6))
            out[f"pred_{label}"].append(None if error is not None else label in chosen)
        out["predicted"].append(
            None if error is not None else "|".join(sorted(chosen, key=columns.labels.index))
        )
    return out


# what names the model that scored a file: the same weights, labels, thresholds and fits (the run's path
# may differ: a run folder moved is the same model)
IDENTITY = ("posterlab.model", "posterlab.labels", "posterlab.task", "posterlab.thresholds", "posterlab.fits")


class _Format:
    """Reading keys from, writing parts of and merging one output format. Every file written records the
    model that scored it (a parquet file in its schema, a CSV in a ``.json`` beside it), and a file to go
    on from must name this model: a second model's job found the first's file "already scored", wrote its
    own name over it and kept the other model's scores."""

    def __init__(self, suffix: str, columns: Columns, metadata: dict[str, str]) -> None:
        self.suffix, self.columns, self.metadata = suffix, columns, metadata

    def images(self, path: Path) -> list[str]:
        """The ``image`` column of a finished output or part (checked to be this model's scores)."""
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            recorded = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
            self._check(path, schema.names, recorded)
            return pq.read_table(path, columns=["image"]).column("image").to_pylist()
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            sidecar = _sidecar(path)
            recorded = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
            self._check(path, next(reader, []), recorded)
            return [row[0] for row in reader if row]

    def _check(self, path: Path, names: list[str], recorded: dict[str, str]) -> None:
        if list(names) != self.columns.names:
            raise ConfigError(
                f"{path}: has other columns than this run writes (another model's scores?); pick a new --out "
                "or delete it"
            )
        if any(recorded.get(key) != self.metadata[key] for key in IDENTITY):
            scored_by = recorded.get("posterlab.run") or "a model it does not record"
            raise ConfigError(
                f"{path}: holds the scores of another model ({scored_by}); pick a new --out or delete it"
            )

    def write_part(self, path: Path, rows: dict[str, list]) -> None:
        temporary = path.with_name(f".{path.name}.tmp")
        if self.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table(rows, schema=self.columns.schema(self.metadata)), temporary)
        else:
            _sidecar(path).write_text(json.dumps(self.metadata, indent=1))
            with open(temporary, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(self.columns.names)
                writer.writerows(zip(*(rows[name] for name in self.columns.names), strict=True))
        os.replace(temporary, path)

    def merge(self, out: Path, parts: list[Path]) -> None:
        """``out`` (when it exists) followed by ``parts``, into ``out`` by one rename; one part at a time in
        memory."""
        sources = ([out] if out.exists() else []) + parts
        temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(temporary, self.columns.schema(self.metadata)) as writer:
                for source in sources:
                    reader = pq.ParquetFile(source)
                    for group in range(reader.num_row_groups):
                        writer.write_table(reader.read_row_group(group))
        else:
            _sidecar(out).write_text(json.dumps(self.metadata, indent=1))
            with open(temporary, "w", encoding="utf-8", newline="") as target:
                csv.writer(target).writerow(self.columns.names)
                for source in sources:
                    with open(source, encoding="utf-8", newline="") as handle:
                        handle.readline()  # its header
                        shutil.copyfileobj(handle, target)
        os.replace(temporary, out)


def _sidecar(path: Path) -> Path:
    """Where a CSV output records the model that scored it: ``scores.csv`` → ``scores.csv.json``."""
    return path.with_name(path.name + ".json")


# ---------------------------------------------------------------------------------------- backends


def _content_key(*files: Path) -> str:
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def onnx_folder(run: Path) -> Path | None:
    """A folder with the run's model.json, weights and a checked ``model.onnx``: the run itself when it has
    one, else a copy in the cache exported once (None when ONNX Runtime does not reproduce torch)."""
    if (run / "model.onnx").is_file():
        return run
    from posterlab.export import export_onnx

    folder = settings.cache_dir() / "onnx-runs" / _content_key(run / "model.json", run / "model.safetensors")
    if (folder / "model.onnx").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.json", "model.safetensors"):
        shutil.copyfile(run / name, folder / name)
    try:
        export_onnx(folder, folder / "model.onnx")
    except ModelError as error:
        log.warning("scoring with torch: %s", one_line(error))
        return None
    return folder


def make_predictor(run: Path, device: str, dist):
    """The Predictor a scoring job uses: torch on a GPU; ONNX Runtime on a CPU (torch when the export
    does not match it). Rank 0 exports, the other ranks wait for it."""
    import torch

    from posterlab.inference import Predictor

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        return Predictor(run, device=str(dist.device(torch.device("cuda"))))
    folder = onnx_folder(run) if dist.main else None
    dist.barrier()
    if not dist.main:
        folder = onnx_folder(run)  # already there: rank 0 made it
    if folder is None:
        return Predictor(run)
    return Predictor(folder, backend="onnx")


# ------------------------------------------------------------------------------------------- score


def _load(predictor, path: str):
    """(the views' tensors, None) or (None, why the poster cannot be scored)."""
    try:
        return predictor.prepare(path)[1], None
    except ImageError as error:
        return None, str(error)
    except Exception as error:  # a decoder bug must cost one row, not a 100,000-poster job
        return None, one_line(error)


def _decoded(pool: ThreadPoolExecutor, predictor, items: list[str], ahead: int) -> Iterator[tuple]:
    """``_load`` of each item, in order, decoded on ``pool`` at most ``ahead`` posters in advance (so that
    only a couple of batches of tensors are ever held)."""
    iterator = iter(items)
    queue: deque[Future] = deque(pool.submit(_load, predictor, item) for item in islice(iterator, ahead))
    while queue:
        future = queue.popleft()
        following = next(iterator, None)
        if following is not None:
            queue.append(pool.submit(_load, predictor, following))
        yield future.result()


def _score_chunk(predictor, loaded: Iterator[tuple], size: int, batch_size: int):
    """(probabilities, errors) of the next ``size`` decoded posters, one batch at a time."""
    import torch

    probs = np.full((size, len(predictor.labels)), np.nan)
    errors: list[str | None] = []
    batch: list[tuple[int, object]] = []
    for index in range(size):
        tensor, error = next(loaded)
        errors.append(error)
        if tensor is not None:
            batch.append((index, tensor))
        if batch and (len(batch) == batch_size or index == size - 1):
            probs[[i for i, _ in batch]] = predictor.probabilities(torch.stack([t for _, t in batch]))
            batch.clear()
    return probs, errors


def _score_parts(
    predictor, fmt: _Format, chunks: list[list[str]], prefix: Path, batch_size: int, progress: bool
) -> tuple[int, int]:
    """Score ``chunks`` in order, each into its part file ``<prefix>-<index><suffix>``; (scored, failed)."""
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(len(items) for items in chunks)
        bar = tqdm(total=total, desc="scoring", unit="poster", file=sys.stderr, dynamic_ncols=True)
    scored = failed = 0
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
        # decoding (PIL releases the GIL) overlaps the model; a batch ahead is enough to keep it busy
        loaded = _decoded(pool, predictor, [item for items in chunks for item in items], 2 * batch_size)
        for index, items in enumerate(chunks):
            probs, errors = _score_chunk(predictor, loaded, len(items), batch_size)
            fmt.write_part(
                prefix.with_name(f"{prefix.name}-{index:06d}{fmt.suffix}"),
                _rows(fmt.columns, items, probs, errors, predictor.decide),
            )
            scored += len(items)
            failed += sum(error is not None for error in errors)
            if bar is not None:
                bar.update(len(items))
    if bar is not None:
        bar.close()
    return scored, failed


def _check_output(out: Path) -> None:
    """``ConfigError`` for an output the scorer cannot write (its format, or parquet without pyarrow)."""
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"{out}: --out must end in .csv or .parquet")
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("pyarrow is not installed; pip install pyarrow, or write a .csv") from None


def _metadata(run: Path, predictor) -> dict[str, str]:
    """What the output file records about the model that scored it."""
    thresholds = predictor.thresholds if predictor.thresholds is not None else []
    return {
        "posterlab.run": str(run),
        "posterlab.model": _content_key(run / "model.safetensors"),
        "posterlab.labels": "|".join(predictor.labels),
        "posterlab.task": predictor.rule.task,
        "posterlab.thresholds": ",".join(f"{t:.6f}" for t in thresholds),
        "posterlab.fits": ",".join(predictor.fits),
    }


def _already_scored(fmt: _Format, out: Path, parts_dir: Path) -> set[str]:
    """The images a previous job scored (as ``_same_poster`` names them): those in ``out`` and in the parts
    a killed job left."""
    done: set[str] = set(fmt.images(out)) if out.exists() else set()
    parts = sorted(parts_dir.glob(f"*{out.suffix.lower()}")) if parts_dir.is_dir() else []
    for part in parts:
        done.update(fmt.images(part))
    return {_same_poster(image) for image in done}


def _same_poster(image: str) -> str:
    """One name for a poster however its path was typed (``bad/pred/a.jpg`` and ``/tmp/x/bad/pred/a.jpg``
    were scored twice into one file); an address stays as it is."""
    return image if "://" in image else os.path.abspath(image)


def score(
    run: str | Path,
    paths: list[str],
    out: str | Path,
    batch_size: int = 32,
    chunk: int = CHUNK,
    device: str = "auto",
    dist=None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Score every poster ``paths`` names into ``out`` (.csv or .parquet), resuming a previous run.

    Returns ``{'out', 'posters', 'skipped', 'scored', 'errors', 'seconds', 'posters_per_s'}`` (this
    process's share under torchrun; ``seconds`` includes loading the model, the rate does not). ``stop_after`` ends after that many
    chunks without merging (what a killed job leaves; for tests and benchmarks)."""
    from posterlab.training.distributed import SINGLE

    dist = dist or SINGLE
    run, out = Path(run), Path(out)
    _check_output(out)
    if not run.is_dir():
        raise RunError.missing(run)
    started = time.perf_counter()
    predictor = make_predictor(run, device, dist)
    columns = Columns(predictor.labels)
    fmt = _Format(out.suffix.lower(), columns, _metadata(run, predictor))
    parts_dir = out.with_name(out.name + PARTS_SUFFIX)

    everything = poster_paths(paths)
    if not everything:
        raise DataError(
            f"no posters in {', '.join(map(str, paths))}: give image files, folders of them or a labels.csv"
        )
    done = _already_scored(fmt, out, parts_dir)
    pending = [p for p in everything if _same_poster(p) not in done]
    # every rank has read the same files before any of them writes a part
    dist.barrier()
    share = np.array_split(np.arange(len(pending)), dist.world)[dist.rank]
    mine = [pending[i] for i in share]
    # part names sort as the rows should follow: session (the clock in ns: a resumed job never reuses a
    # killed one's names), then rank (contiguous shares), then chunk
    session = dist.broadcast(f"{time.time_ns():020d}")
    if dist.main:
        parts_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    log.info(
        "%d posters: %d already scored, %d to score (%d on this process)",
        len(everything),
        len(everything) - len(pending),
        len(pending),
        len(mine),
    )
    begun = time.perf_counter()  # the rate counts scoring, not the one-time model load or ONNX export
    chunks = [mine[i : i + chunk] for i in range(0, len(mine), chunk)]
    if stop_after is not None:
        chunks = chunks[:stop_after]
    prefix = parts_dir / f"{session}-r{dist.rank:03d}"
    scored, failed = _score_parts(predictor, fmt, chunks, prefix, batch_size, progress and dist.main)
    scoring = time.perf_counter() - begun
    seconds = time.perf_counter() - started
    log.info("process %d of %d scored %d posters in %.1f s", dist.rank, dist.world, scored, scoring)
    if stop_after is None:
        dist.barrier()  # every share written
        if dist.main:
            fmt.merge(out, sorted(parts_dir.glob(f"*{out.suffix.lower()}")))
            shutil.rmtree(parts_dir)
    return {
        "out": str(out),
        "posters": len(everything),
        "skipped": len(everything) - len(pending),
        "scored": scored,
        "errors": failed,
        "seconds": round(seconds, 2),
        "posters_per_s": round(scored / scoring, 2) if scored else None,
    }


def score_command(args) -> int:
    """``posterlab predict RUN PATH... --out FILE``: rank 0 prints the file and a summary line."""
    from posterlab.training import distributed

    dist = distributed.from_environment(args.device)
    report = score(
        args.run,
        list(args.images),
        args.out,
        args.batch_size,
        device=args.device,
        dist=dist,
        progress=not args.quiet,
    )
    distributed.shutdown(dist)
    if dist.main:
        print(
            f"posterlab: {report['scored']} posters scored ({report['errors']} unreadable, written as rows with "
            f"their error), {report['skipped']} already in {args.out}"
            + (f"; {report['posters_per_s']} posters/s" if report["posters_per_s"] else ""),
            file=sys.stderr,
        )
        print(args.out)
    return 0
