"""Frozen-part outputs computed once and cached on disk, memory-mapped when read back.

In ``probe`` mode the frozen part is the whole backbone (pooled embeddings); in CPU ``finetune`` it is
the backbone up to the frozen boundary (activation maps). A *view* is one way of showing a poster to
the model: a fit (crop / pad / squash), plain or flipped. Entries are keyed by the backbone, its starting
weights, the boundary, the view's preprocessing and flip, the precision, and by each image's content
hash, so a second run on the same posters never runs the frozen part again.

The store is a folder per key of chunk files (``<chunk>.npy`` + ``<chunk>.digests``), each written once
by one process through a temporary file and a rename: several processes (ranks of a distributed run,
on one machine or sharing the cache folder across machines) extract their shares side by side, and a run
killed mid-way keeps every chunk it finished. Reading maps the chunks into memory instead of loading
them: a 100,000-poster table costs address space, not RAM.

On a CPU the frozen part runs through the fastest ONNX engine installed (OpenVINO or ONNX Runtime; see
``posterlab.models.onnx``) when it exports cleanly and matches torch on a check batch; otherwise through
torch. Either way the outputs agree within float32 round-off, so the cache key does not name the engine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from posterlab import faults, settings
from posterlab.data.images import load_image
from posterlab.data.transforms import Preprocess
from posterlab.events import Control, Message, Progress, StopRequested
from posterlab.models.onnx import Engine, frozen_engine
from posterlab.training.distributed import SINGLE, Dist
from posterlab.training.loop import autocast, quiet_worker

log = logging.getLogger(__name__)

_CACHE_VERSION = 3  # 3: JPEGs decoded at their draft scale
CHUNK = 256  # posters per chunk file: what an interrupted extraction can lose at most


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


def feature_key(backbone: str, weights_id: str, boundary: str, view: View, precision: str = "fp32") -> str:
    """Everything that changes the frozen part's output for a given image."""
    payload = {
        "version": _CACHE_VERSION,
        "backbone": backbone,
        "weights": weights_id,
        "boundary": boundary,
        "preprocess": view.preprocess.to_dict(),
        "view": "flip" if view.flip else "plain",
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class FeatureTable:
    """One view's outputs for a list of images, in that order, read from memory-mapped chunks."""

    def __init__(self, maps: list[np.ndarray], chunk: np.ndarray, row: np.ndarray) -> None:
        self.maps, self.chunk, self.row = maps, chunk, row

    def __len__(self) -> int:
        return len(self.chunk)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.maps[self.chunk[index]][self.row[index]]

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` as one float32 array, read chunk by chunk (one fancy index per chunk file)."""
        out = np.empty((len(indices), *self.shape[1:]), dtype=np.float32)
        chunks = self.chunk[indices]
        for chunk in np.unique(chunks):
            where = np.nonzero(chunks == chunk)[0]
            out[where] = self.maps[chunk][self.row[indices[where]]]
        return out

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.maps[0].shape[1:]) if self.maps else (len(self),)

    def to_array(self) -> np.ndarray:
        """The whole table in memory (small tables, tests)."""
        return np.stack([self[i] for i in range(len(self))]) if len(self) else np.zeros(self.shape)


class FeatureStore:
    """Chunk files per key under ``<cache>/features``: (digest → array row) written once, mapped to read."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else settings.cache_dir() / "features"

    def _folder(self, key: str) -> Path:
        return self.root / key

    def index(self, key: str) -> tuple[list[Path], dict[str, tuple[int, int]]]:
        """The finished chunk files of ``key`` and where each digest lies in them: (chunk, row)."""
        folder = self._folder(key)
        chunks: list[Path] = []
        where: dict[str, tuple[int, int]] = {}
        if not folder.is_dir():
            return chunks, where
        for array in sorted(folder.glob("*.npy")):
            listing = array.with_suffix(".digests")
            if not listing.is_file():
                continue
            digests = listing.read_text().split()
            number = len(chunks)
            chunks.append(array)
            for row, digest in enumerate(digests):
                where.setdefault(digest, (number, row))
        return chunks, where

    def table(self, key: str, digests: list[str]) -> tuple[FeatureTable | None, list[int]]:
        """(the rows found, memory-mapped, or None when any is missing; indices of the missing digests)."""
        chunks, where = self.index(key)
        missing = [i for i, digest in enumerate(digests) if digest not in where]
        if missing:
            return None, missing
        maps = [np.load(path, mmap_mode="r") for path in chunks]
        chunk = np.fromiter((where[d][0] for d in digests), dtype=np.int32, count=len(digests))
        row = np.fromiter((where[d][1] for d in digests), dtype=np.int64, count=len(digests))
        return FeatureTable(maps, chunk, row), []

    def write(self, key: str, digests: list[str], array: np.ndarray, about: str = "") -> None:
        """One chunk: the digest list first, then the array; the array's rename makes the chunk visible."""
        if not digests:
            return
        folder = self._folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "about.json"
        if about and not meta.exists():
            _atomic(meta, lambda handle: handle.write(json.dumps({"about": about}).encode()))
        name = f"{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        _atomic(folder / f"{name}.digests", lambda handle: handle.write("\n".join(digests).encode()))
        _atomic(folder / f"{name}.npy", lambda handle: np.save(handle, np.ascontiguousarray(array)))


def _atomic(path: Path, write: Callable) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
    os.replace(temporary, path)


class _Images(Dataset):
    """Each poster fitted every way asked, (fits, 3, H, W) uint8 pixels (``Pixels`` normalises them, inside
    the engine's graph on a CPU), each fit from the poster decoded at the JPEG
    scale its own preprocess asks for: once for fits that ask for the same. Decoded once at the largest
    scale for all, a pad view beside a crop (183 and 160 px on a 700 px poster: 1/2 and 1/4) came out
    different from the same view alone, under the same cache key: what a run read depended on which
    filled the cache first."""

    def __init__(self, paths: list[str], preprocesses: list[Preprocess]) -> None:
        self.paths = paths
        self.transforms = [p.eval_transform(raw=True) for p in preprocesses]
        self.drafts = [p.draft for p in preprocesses]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        decoded = {draft: load_image(self.paths[index], draft=draft).image for draft in set(self.drafts)}
        return torch.stack(
            [fit(decoded[draft]) for fit, draft in zip(self.transforms, self.drafts, strict=True)]
        )


class Pixels(nn.Module):
    """``part`` on uint8 pixels (N, 3, H, W): normalised as ``Preprocess.to_tensor`` does (÷255, − mean,
    ÷ std, the same float operations), then the part. The loader's processes send pixels, a quarter of the
    bytes of normalised floats, and skip the float passes; on a CPU the normalisation runs inside the
    engine's graph (OpenVINO folds it into the first convolution), on a GPU on the GPU. A loader process
    spent 2.75 ms a poster sending floats, 2.07 ms sending pixels (Lite0's 224 px crop, this 2-core CPU)."""

    def __init__(self, part: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.part = part
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.part((pixels.float() / 255.0 - self.mean) / self.std)


def usable_cores() -> int:
    """CPU cores this process may use: those it may run on (its affinity, not the machine's count),
    shared with the other processes of a distributed run on this node (torchrun's LOCAL_WORLD_SIZE)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_workers(device: torch.device) -> int:
    """Data-loader processes: on a GPU every core but one decodes; on a small CPU one worker overlaps
    decoding with the model, which needs the other cores."""
    cores = usable_cores()
    if device.type == "cuda":
        return max(1, min(16, cores - 1))
    return 1 if cores >= 2 else 0


@dataclass
class Extraction:
    """What to run over the posters: the frozen part (built on first use, so a run whose outputs are all
    cached never builds it), the views (each with its cache key), and for the log what they are."""

    build: Callable[[], nn.Module]
    views: list[View]
    keys: list[str]
    about: str = ""
    amp: bool = True  # bf16/fp16 on CUDA (the key says which)
    identity: str = ""  # the frozen part's identity (backbone, weights, boundary): keys its ONNX export
    int8: bool = False  # on a CPU: through an int8-quantised export
    _module: nn.Module | None = field(default=None, repr=False)

    def module(self) -> nn.Module:
        if self._module is None:
            self._module = self.build()
        return self._module

    @property
    def built(self) -> bool:
        return self._module is not None


@dataclass(frozen=True)
class RememberedBackbone:
    """A backbone's weights and preprocessing as built for a probe, kept beside its embeddings (keyed by
    name, starting weights and timm version): what a probe on cached embeddings writes into its run folder
    without building the backbone (or importing timm)."""

    name: str
    start: str

    @property
    def _stem(self) -> Path:
        payload = {"name": self.name, "start": self.start, "timm": importlib.metadata.version("timm")}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
        return settings.cache_dir() / "backbones" / f"{self.name}-{key}"

    def preprocess(self, fit: str, build: Callable[[], nn.Module]) -> Preprocess:
        """The backbone's preprocessing (timm's config), remembered; building the backbone if it is not."""
        path = self._stem.parent / f"{self._stem.name}.json"
        if not path.is_file():
            return Preprocess.for_model(build(), fit)
        values = json.loads(path.read_text())["preprocess"]
        return Preprocess(
            **{
                **values,
                "input_size": tuple(values["input_size"]),
                "mean": tuple(values["mean"]),
                "std": tuple(values["std"]),
                "fit": fit,
            }
        )

    def weights(self, build: Callable[[], nn.Module]) -> dict[str, torch.Tensor]:
        """The backbone's state dict, remembered; building the backbone if it is not."""
        path = self._stem.parent / f"{self._stem.name}.safetensors"
        if path.is_file():
            from posterlab.runs import load_tensors

            return load_tensors(path)
        return build().state_dict()


def remembered_backbone(name: str, start: str) -> RememberedBackbone:
    return RememberedBackbone(name, start)


def remember_backbone(name: str, start: str, backbone: nn.Module, preprocess: Preprocess) -> None:
    """Keep a freshly built backbone's weights and preprocessing (atomically; any process may write)."""
    from posterlab.runs import save_tensors

    stem = RememberedBackbone(name, start)._stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(stem.parent / f"{stem.name}.safetensors", backbone.state_dict())
    _atomic(
        stem.parent / f"{stem.name}.json",
        lambda handle: handle.write(json.dumps({"preprocess": preprocess.to_dict()}).encode()),
    )


def pretrained_extraction(backbone: str, about: str) -> tuple[Extraction, str]:
    """An extraction through the whole of ``backbone`` with the weights a probe of seed 0 starts from
    (built on first use, and remembered beside the embeddings), and those weights' id. Its views and keys
    are the caller's to set."""
    from posterlab.models.factory import create_backbone
    from posterlab.models.registry import get_backbone
    from posterlab.models.weights import weights_id

    pretrained = get_backbone(backbone).pretrained
    start = weights_id(backbone, pretrained, 0)

    def build() -> nn.Module:
        module = create_backbone(backbone, pretrained)
        remember_backbone(backbone, start, module, Preprocess.for_model(module))
        return module

    return Extraction(build, [], [], about=about, identity=f"{backbone}|{start}|"), start


@dataclass
class Runtime:
    """Where and how: device, processes, loader workers (-1: from the machine), batch (None: measured
    default), and the job's control (events and stop requests)."""

    device: torch.device
    dist: Dist = SINGLE
    workers: int = -1
    batch_size: int | None = None
    control: Control = Control()


@torch.inference_mode()
def _extract(
    job: Extraction, paths: list[str], digests: list[str], rows: list[int], rt: Runtime, store: FeatureStore
) -> None:
    """Run the frozen part over ``rows`` (indices into ``paths``) and write their chunks.

    On a CPU the loader's processes decode the next posters while the engine runs the current ones (with
    OpenVINO, one infer request per core in flight), so decoding and the model share both cores."""
    workers = rt.workers if rt.workers >= 0 else default_workers(rt.device)
    started, done, saved = time.monotonic(), 0, 0
    first: tuple[int, float] | None = None  # posters and time at the first batch's end, the engine open
    outputs, engine = _outputs(job, _inputs(job, [paths[i] for i in rows], rt, workers), rt, workers)
    fresh: dict[str, np.ndarray] = {}  # one preallocated array per view (many small ones fragment the heap)
    try:
        for count, output in outputs:
            for key, part in zip(job.keys, output.split(count), strict=True):
                if key not in fresh:
                    store_dtype = np.float32 if part.ndim == 2 else np.float16
                    fresh[key] = np.empty((len(rows), *part.shape[1:]), dtype=store_dtype)
                fresh[key][done : done + count] = part.cpu().numpy()
            if done == 0:
                faults.point("extracting")
            done += count
            now = time.monotonic()
            # the rate since the first batch: opening the engine (an export: seconds) is not it
            if rt.dist.main:
                total = len(rows) * rt.dist.world
                detail = job.about
                if first is not None and now > first[1]:
                    detail += f" · {(done - first[0]) / (now - first[1]) * rt.dist.world:.0f} posters/s"
                rt.control.emit(Progress("extracting", min(done * rt.dist.world, total), total, detail))
            first = first or (done, now)
            if done - saved >= CHUNK:  # a crash loses at most one chunk
                _save(store, job, fresh, [digests[i] for i in rows[saved:done]], saved)
                saved = done
    finally:  # a Stop (or an error) keeps what was computed: Resume picks up from there
        _save(store, job, fresh, [digests[i] for i in rows[saved:done]], saved)
    log.info(
        "extracted %d views of %d posters at %.1f posters/s (%s)",
        len(job.views),
        len(rows),
        len(rows) / max(time.monotonic() - started, 1e-6),
        engine.title if engine is not None else "torch",
    )


def _inputs(
    job: Extraction, paths: list[str], rt: Runtime, workers: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(posters, every view of them stacked) per loader batch, decoded by ``workers`` processes; a stop
    request lands here."""
    preprocesses = list(dict.fromkeys(v.preprocess for v in job.views))
    fit_index = [preprocesses.index(v.preprocess) for v in job.views]
    # posters per loader step; on a CPU the engine splits them into chunks of a measured size
    size = rt.batch_size or (128 if rt.device.type == "cuda" else max(2, 16 // len(job.views)))
    pin = rt.device.type == "cuda"
    images = _Images(paths, preprocesses)
    loader = DataLoader(
        images, batch_size=size, num_workers=workers, worker_init_fn=quiet_worker, pin_memory=pin
    )
    for batch in loader:
        rt.control.check()
        batch = batch.to(rt.device, non_blocking=True)
        views = [batch[:, f] for f in fit_index]
        views = [torch.flip(x, dims=[3]) if v.flip else x for x, v in zip(views, job.views, strict=True)]
        # one view is the batch itself: a copy of it cost the main thread 9 ms a batch on this CPU
        yield len(batch), views[0] if len(views) == 1 else torch.cat(views)


def _outputs(
    job: Extraction, stream: Iterator[tuple[int, torch.Tensor]], rt: Runtime, workers: int
) -> tuple[Iterator[tuple[int, torch.Tensor]], Engine | None]:
    """(posters, the frozen part's outputs) per batch of ``stream``, and the engine that computes them: on
    a CPU the fastest ONNX engine that matches torch (opened on the first batch; the part is built in
    torch only if its export or torch's check outputs are not cached yet), else torch itself."""
    first = next(stream, None)
    preprocess = job.views[0].preprocess  # one backbone: every fit normalises alike
    engine = None
    if first is not None and rt.device.type == "cpu":
        # its export takes pixels: keyed apart from exports that took normalised floats (none if temporary)
        identity = job.identity and f"{job.identity}|pixels {preprocess.mean} {preprocess.std}"
        # one request runs on the cores the loader leaves; an engine with parallel requests (OpenVINO)
        # runs one per core, each on one thread, and shares every core with the loader as each needs
        engine = frozen_engine(
            lambda: Pixels(job.module().eval(), preprocess),
            first[1],
            identity,
            threads=max(1, usable_cores() - workers),
            int8=job.int8,
            streams=usable_cores(),
        )
    stream = itertools.chain([first] if first is not None else [], stream)
    if engine is not None:
        mapped = engine.map((count, x.numpy()) for count, x in stream)
        return ((count, torch.from_numpy(out)) for count, out in mapped), engine

    frozen = Pixels(job.module().eval(), preprocess).to(rt.device)
    channels_last = rt.device.type == "cuda" or job.views[0].preprocess.input_size[1] >= 64
    if channels_last:
        frozen = frozen.to(memory_format=torch.channels_last)

    def through_torch() -> Iterator[tuple[int, torch.Tensor]]:
        for count, stacked in stream:
            if channels_last:
                stacked = stacked.contiguous(memory_format=torch.channels_last)
            with autocast(rt.device, job.amp):
                yield count, frozen(stacked).float()

    return through_torch(), engine


def _save(store: FeatureStore, job: Extraction, fresh: dict, digests: list[str], start: int) -> None:
    for key in job.keys:
        if key in fresh:
            store.write(key, digests, fresh[key][start : start + len(digests)], job.about)


def compute_features(
    job: Extraction, paths: list[str], digests: list[str], rt: Runtime, store: FeatureStore | None = None
) -> dict[str, FeatureTable]:
    """Outputs of ``job.frozen`` for every image and view: view name → table in the order of ``paths``.

    Cached entries are read back; only missing images go through the network, each decoded once for all
    its views (flips are free). With several processes each extracts every ``world``-th missing poster
    into the shared cache; whatever another process could not provide (a cache folder that is not
    shared between machines) is computed here. Pooled vectors are stored as float32, maps as float16.
    """
    store = store or FeatureStore()
    unique = list(dict.fromkeys(digests))
    first = {d: i for i, d in reversed(list(enumerate(digests)))}
    missing = sorted({i for key in job.keys for i in store.table(key, unique)[1]})
    views = ", ".join(view.name for view in job.views)
    # every process takes the same collectives whatever its own cache holds: two machines that do not
    # share a cache folder (one warm, one cold) or a cache another job fills meanwhile give them different
    # ``missing``, and a process that skipped the vote and the barrier paired its next collective with them
    if rt.dist.any(bool(missing)):
        if missing:
            rt.control.emit(
                Message(
                    f"computing {job.about} once for {len(missing)} posters ({views}; cached for later runs)"
                )
            )
        mine = missing[rt.dist.rank :: rt.dist.world]
        stopped = False
        try:
            if mine:
                _extract(job, paths, digests, [first[unique[i]] for i in mine], rt, store)
        except StopRequested:
            stopped = True
        if rt.dist.any(stopped):
            raise StopRequested()
        rt.dist.barrier()
    else:
        rt.control.emit(Message(f"{job.about} of {len(unique)} posters ({views}) read from the cache"))
    # another machine's share, in a cache folder this one cannot see: computed here, and a Stop during it
    # agreed by every process (alone, it left the others training into collectives this one never joins)
    still = sorted({first[digests[i]] for key in job.keys for i in store.table(key, digests)[1]})
    stopped = False
    try:
        if still:
            _extract(job, paths, digests, still, replace(rt, dist=SINGLE), store)
    except StopRequested:
        stopped = True
    if rt.dist.any(stopped):
        raise StopRequested()
    tables = {}
    for view, key in zip(job.views, job.keys, strict=True):
        table, left = store.table(key, digests)
        assert table is not None and not left
        tables[view.name] = table
    return tables
