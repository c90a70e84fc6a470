"""ONNX in one place: a module exported to an ONNX graph, checked against torch, and run on the CPU by the
fastest engine installed.

Everything that leaves torch for a CPU inference engine goes through here: feature extraction (the
frozen backbone, exported once into the cache), ``posterlab export --format onnx`` (a run's whole model),
and ``Predictor(backend="onnx")`` (``posterlab predict --onnx``, the workbench and the demo on a CPU).

Engines: OpenVINO (``pip install openvino``) and ONNX Runtime (a dependency). Both read the same ONNX
file. Which one runs is ``POSTERLAB_ENGINE`` (``openvino`` or ``onnxruntime``) when set; otherwise the
frozen backbone takes whichever of the installed engines is faster on its first batch, and a served model
takes OpenVINO when it is installed (measured by ``benchmarks/latency.py``). Every engine opened on a
module is first checked against torch on a batch it was not traced on; one that differs is dropped.
Outputs are float32 either way (OpenVINO is asked for f32: its bf16 hint was measured 0.36 off).

OpenVINO is imported without its usage telemetry (``_import_openvino``): posterlab sends nothing anywhere
and writes nothing outside its cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from posterlab import settings
from posterlab.background import one_torch_thread
from posterlab.errors import ModelError, one_line

log = logging.getLogger(__name__)

OPENVINO, ONNXRUNTIME = "openvino", "onnxruntime"
ENGINES = (OPENVINO, ONNXRUNTIME)  # the order of preference when nothing was measured
NAMES = {OPENVINO: "OpenVINO", ONNXRUNTIME: "ONNX Runtime"}
# Posters a request when several are in flight (OpenVINO's streams), not timed: one request at a time, 8
# often measured faster, but end to end, with the loader's processes on the same cores, smaller chunks keep
# every request fed while the loader decodes, and two requests' activations fit the caches better. 400
# posters, 2 cores, 4 interleaved runs each (benchmarks/speed.py --chunks 2,4,1 --rounds 4): chunks of 2
# ran 131-138 posters/s (median 137), of 1 134-136, of 4 131; earlier, 4 against 8 and 16: 103-116
# against 93-102 and 94-105. The model alone with two requests: 198-202 posters/s in chunks of 2, 189-191 in 4.
ASYNC_CHUNK = 2
# Chunk sizes timed for an engine that runs one request at a time (on its first extraction of an export;
# then remembered). One thread, Lite0, this 2-core CPU: OpenVINO 102 / 105-110 / 99-106 / 90-95 images/s
# in chunks of 1 / 2 / 4 / 8, ONNX Runtime 92-95 / 91-94 / 85-87 / 80-82: the best is not one size.
TIMED_CHUNKS = (1, 2, 4, 8)


# ------------------------------------------------------------------------------------------- export


def torchscript_onnx(model: nn.Module, example: torch.Tensor, path: Path, output: str = "logits") -> None:
    """Trace ``model`` on ``example`` into ``path`` (input ``image``, output ``output``, any batch size).

    The TorchScript exporter handles models that torch.export rejects; its deprecation and tracer
    warnings are not the user's to act on, so they are silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=[output],
            dynamic_axes={"image": {0: "batch"}, output: {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )


def export_graph(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """A whole model as ONNX (``image`` → ``logits``, dynamic batch): torch.export first, the TorchScript
    exporter when torch.export rejects the model. Returns which exporter wrote it."""
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        return "dynamo"
    except (
        Exception
    ) as error:  # torch.export rejects some models; the TorchScript exporter still handles them
        log.info(
            "torch.export-based ONNX export failed (%s); using the TorchScript exporter", one_line(error)
        )
    torchscript_onnx(model, example, path)
    return "torchscript"


def _quantize(path: Path, example: torch.Tensor) -> None:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on the example batch, in place."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": x[None].numpy()} for x in example])

        def get_next(self):
            return next(self.batches, None)

    prepared = path.with_suffix(".pre.onnx")
    quant_pre_process(str(path), str(prepared))
    quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    prepared.unlink(missing_ok=True)


def cached_export(
    build: Callable[[], nn.Module], example: torch.Tensor, identity: str, int8: bool = False
) -> Path:
    """The exported (and, when asked, int8-quantised) frozen part, from the cache or exported now (the
    part is built, by ``build``, only then).

    Keyed by the part's identity (backbone, weights, boundary), the torch and timm versions and the input
    shape; without an identity the file is a temporary one the caller deletes."""
    payload = {
        "identity": identity,
        "torch": torch.__version__,
        "timm": importlib.metadata.version("timm"),  # a hub name's default weights can change with it
        "input": list(example.shape[1:]),
        "int8": int8,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    folder = settings.cache_dir() / "onnx"
    path = folder / f"{key}.onnx"
    if identity and path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{key}.{uuid.uuid4().hex[:8]}.onnx"
    torchscript_onnx(build(), example, temporary, output="features")
    if int8:
        _quantize(temporary, example)
    if not identity:
        return temporary
    os.replace(temporary, path)
    return path


# ------------------------------------------------------------------------------------------ engines


def installed() -> list[str]:
    """The engines that can be imported here, in the order of preference."""
    return [name for name in ENGINES if importlib.util.find_spec(name) is not None]


def requested() -> str | None:
    """``POSTERLAB_ENGINE`` (``openvino`` or ``onnxruntime``) when set: that engine only."""
    value = os.environ.get("POSTERLAB_ENGINE", "").strip().lower()
    if not value or value == "auto":
        return None
    if value not in ENGINES:
        raise ModelError(f"POSTERLAB_ENGINE={value!r}: use one of {', '.join(ENGINES)} or leave it unset")
    return value


def candidates() -> list[str]:
    """The engines to consider: the requested one (when installed), else every installed one."""
    wanted = requested()
    found = installed()
    if wanted is None:
        return found
    if wanted not in found:
        log.warning("POSTERLAB_ENGINE=%s but %s is not installed; pip install %s", wanted, wanted, wanted)
        return []
    return [wanted]


class Engine:
    """An ONNX graph compiled for the CPU: ``run`` one batch, or ``map`` a stream of batches with the next
    one prepared while the current one runs. Batches are split into chunks of ``chunk`` images (small
    chunks keep a small CPU's caches warm)."""

    name = ""

    def __init__(self, threads: int, chunk: int) -> None:
        self.threads, self.chunk = threads, chunk

    @property
    def title(self) -> str:
        return NAMES[self.name]

    def _infer(self, part: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The graph's first output for ``batch`` (float32, in order)."""
        batch = _contiguous(batch)
        return np.concatenate(
            [self._infer(batch[i : i + self.chunk]) for i in range(0, len(batch), self.chunk)]
        )

    def map(self, batches: Iterable[tuple[object, np.ndarray]]) -> Iterator[tuple[object, np.ndarray]]:
        """(tag, output) for each (tag, batch), in order; the base engine runs them one after another (the
        decoding that feeds it overlaps in the loader's processes)."""
        for tag, batch in batches:
            yield tag, self.run(batch)


def _contiguous(batch: np.ndarray) -> np.ndarray:
    """``batch`` as the graph reads it: contiguous, floats as float32, integer pixels (uint8) as they are."""
    return np.ascontiguousarray(batch, dtype=np.float32 if batch.dtype.kind == "f" else None)


class OnnxRuntimeEngine(Engine):
    name = ONNXRUNTIME

    def __init__(self, path: Path, threads: int, chunk: int = 4, streams: int = 1) -> None:
        import onnxruntime as ort

        super().__init__(threads, chunk)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _infer(self, part: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": part})[0]


def _import_openvino():
    """``openvino`` without its telemetry. Importing openvino imports its model converter, which sends an
    "import" event to Google Analytics and writes ``~/intel/openvino_ga_cid`` and ``~/intel/stats`` unless
    the user has opted out (openvino_telemetry takes a missing consent file for consent). With
    ``openvino_telemetry`` unimportable for that one import, the converter binds its own no-op stub; the
    package is importable again afterwards for whoever else wants it."""
    if "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import raises ImportError
        try:
            import openvino
        finally:
            del sys.modules["openvino_telemetry"]
    import openvino

    return openvino


_CORE_LOCK = threading.Lock()
_CORE: list = []


def _core(ov):
    """The process's one ``ov.Core``, never released. Each Core loads its own CPU plugin, which maps an
    alternate signal stack for the thread it starts on and, when released, puts back the stack it found
    there and unmaps its own. Two Cores released in the order they were made leave that thread on an
    unmapped stack, and the next signal Python handles there (Ctrl-C, torchrun's SIGTERM, pytest's timeout)
    kills the process with SIGSEGV and no traceback: seen with a 2-stream engine and a 1-stream engine
    opened on one export, then a browser test's SIGCHLD."""
    with _CORE_LOCK:
        if not _CORE:
            _CORE.append(ov.Core())
        return _CORE[0]


def _compiled(ov, core, path: Path, config: dict):
    """``path`` compiled for the CPU with ``config``, read back from posterlab's cache when it was compiled
    before (Lite0: 0.035-0.056 s against 0.12-0.15 s to compile), else compiled and kept there.

    The cache sits beside the exports (a copy of that folder keeps both), keyed by the graph's bytes (not
    its path), the config, OpenVINO's version and the CPU. posterlab keeps the file itself rather than setting
    OpenVINO's ``CACHE_DIR``: OpenVINO writes its blob in place and maps it, so a process opening the
    engine while another wrote it died of SIGBUS (3 of 36 processes opened six at a time; a fourth
    failed with an error). Here a blob is written whole and renamed into place, read whole, and one that
    does not load is compiled again."""
    payload = {
        "graph": hashlib.sha256(path.read_bytes()).hexdigest(),
        "config": {name: str(value) for name, value in config.items()},
        "openvino": ov.get_version(),
        "cpu": core.get_property("CPU", "FULL_DEVICE_NAME"),  # a cache folder copied to another machine
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    blob = settings.cache_dir() / "onnx" / "openvino" / f"{key}.blob"
    if blob.is_file():
        try:
            return core.import_model(blob.read_bytes(), "CPU", config)
        except (OSError, RuntimeError) as error:
            log.info("compiled network %s not read back (%s); compiling again", blob.name, one_line(error))
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    try:
        _keep(blob, compiled.export_model().getvalue(), "compiled network")
    except RuntimeError as error:  # a plugin that cannot export: compile every time
        log.info("compiled network not kept (%s)", one_line(error))
    return compiled


class OpenVinoEngine(Engine):
    """OpenVINO on the CPU in f32. With ``streams`` > 1, ``map`` keeps that many infer requests in flight,
    each on one thread of its own: one per core keeps every core on the model while the main thread hands
    it the next batch, and an idle stream sleeps, so decoding processes on the same cores lose little.
    ``run`` sends one request at a time (``threads`` threads with one stream; one thread with several)."""

    name = OPENVINO

    def __init__(self, path: Path, threads: int, chunk: int = 4, streams: int = 1) -> None:
        ov = _import_openvino()

        self.streams = max(1, streams)
        threads = self.streams if self.streams > 1 else threads
        super().__init__(threads, chunk)
        core = _core(ov)
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": self.streams,
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "THROUGHPUT" if self.streams > 1 else "LATENCY",
            # the loader's processes share these cores: threads pinned to a core would wait for it
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = _compiled(ov, core, path, config)
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one request: a Predictor shared between threads takes turns
        self._ov = ov

    def _infer(self, part: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.request.infer({0: part})[0].copy()  # the request reuses its output buffer

    def map(self, batches: Iterable[tuple[object, np.ndarray]]) -> Iterator[tuple[object, np.ndarray]]:
        if self.streams == 1:
            yield from super().map(batches)
            return
        queue = self._ov.AsyncInferQueue(self.compiled, self.streams)
        done: dict[int, np.ndarray] = {}

        def finished(request, number: int) -> None:  # on OpenVINO's thread: only a dict store
            done[number] = request.get_output_tensor(0).data.copy()

        queue.set_callback(finished)
        pending: deque[tuple[object, list[int]]] = deque()
        count, failure = 0, None
        try:
            try:
                for tag, batch in batches:
                    batch = _contiguous(batch)
                    numbers = []
                    for i in range(0, len(batch), self.chunk):
                        queue.start_async({0: batch[i : i + self.chunk]}, count)  # waits for a free request
                        numbers.append(count)
                        count += 1
                    pending.append((tag, numbers))
                    while pending and all(n in done for n in pending[0][1]):
                        tag, numbers = pending.popleft()
                        yield tag, np.concatenate([done.pop(n) for n in numbers])
            except Exception as error:  # the input failed (a Stop): the batches in flight are delivered first
                failure = error
            queue.wait_all()
            while pending:
                tag, numbers = pending.popleft()
                yield tag, np.concatenate([done.pop(n) for n in numbers])
            if failure is not None:
                raise failure
        finally:
            queue.wait_all()  # a consumer that stops early leaves no request writing into freed memory


KINDS: dict[str, type[Engine]] = {OPENVINO: OpenVinoEngine, ONNXRUNTIME: OnnxRuntimeEngine}


def open_engine(path: Path, name: str, threads: int, chunk: int = 4, streams: int = 1) -> Engine:
    """``path`` compiled by engine ``name`` (``openvino`` or ``onnxruntime``)."""
    return KINDS[name](Path(path), threads, chunk, streams)


def serving_engine(path: Path, threads: int | None = None) -> Engine:
    """The engine a served model runs on: the requested one, else the first installed in the order of
    preference (OpenVINO, then ONNX Runtime), all cores on one poster at a time."""
    names = candidates()
    if not names:
        raise ModelError("no ONNX engine is installed; pip install onnxruntime (or openvino)")
    threads = threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    return open_engine(path, names[0], threads, chunk=64)


# ----------------------------------------------------------------------------------- parity with torch


def tolerance_for(expected: torch.Tensor) -> float:
    """How far an engine may be from torch on a check batch: float32 round-off, scaled to the outputs."""
    return 1e-3 * (1.0 + float(expected.abs().max()))


def difference(engine: Engine, module: nn.Module, batch: torch.Tensor) -> float:
    """The largest |engine - torch| on ``batch`` (inf when the shapes differ)."""
    with torch.inference_mode():
        expected = module(batch).float()
    got = torch.from_numpy(engine.run(batch.numpy()))
    return float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")


def _one_thread_outputs(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """torch's outputs computed on one thread. The check runs beside the engine's compiling and the
    loader's decoding: torch's threads, each waiting for the others, slowed it from 0.13 s to 0.57 s when
    the loader had a core busy."""
    with one_torch_thread(), torch.inference_mode():
        return module(batch).float()


def check_batch(example: torch.Tensor) -> torch.Tensor:
    """Other content and another batch size than the traced example: a value the tracer froze into a
    constant, or a fixed batch size, shows up here."""
    return torch.flip(example, dims=[3])[: 1 if len(example) == 2 else 2]


def _speed(engine: Engine, example: np.ndarray) -> float:
    """Seconds per image through ``map``, as extraction runs the engine: ``example`` repeated until every
    request in flight gets two chunks (on 16 cores, one batch of 16 would keep 4 of 16 busy), after a
    warm-up chunk on each request (the first call compiles kernels). Timed one request at a time, OpenVINO
    with two requests and ONNX Runtime on one thread came out alike (14.1 and 13.9 ms an image) and ONNX
    Runtime was kept: end to end on 400 posters it ran 60-69 posters/s against 92 for OpenVINO."""
    streams = getattr(engine, "streams", 1)
    for _ in engine.map([(None, example[: engine.chunk])] * streams):
        pass
    copies = max(1, math.ceil(2 * engine.chunk * streams / len(example)))
    started = time.perf_counter()
    for _ in engine.map([(None, example)] * copies):
        pass
    return (time.perf_counter() - started) / (copies * len(example))


def _fastest_chunk(
    engine: Engine, chunks: tuple[int, ...], example: torch.Tensor, timings: list[str], alone: bool
) -> tuple[float, int]:
    """(seconds per image, chunk) of the chunk size ``engine`` runs ``example`` fastest in, each timing
    added to ``timings``; an engine ``alone`` with one chunk size has nothing to choose: not timed."""
    if alone and len(chunks) == 1:
        timings.append("the only choice")
        return 0.0, chunks[0]
    best: tuple[float, int] | None = None
    for chunk in chunks:
        engine.chunk = chunk
        seconds = _speed(engine, example.numpy())
        timings.append(f"{NAMES[engine.name]} x{chunk}: {seconds * 1000:.1f} ms")
        if best is None or seconds < best[0]:
            best = (seconds, chunk)
    assert best is not None
    return best


def _choice_file(path: Path, names: list[str], threads: int, streams: int) -> Path:
    """Where the measured choice among ``names`` for the export ``path`` is kept: keyed by the engines and
    their versions, the threads and the machine's cores (a new engine or machine measures again)."""
    versions = {name: _version(name) for name in names}
    payload = {"engines": versions, "threads": threads, "streams": streams, "cpus": os.cpu_count()}
    if streams > 1:  # choices made before requests in flight took chunks of ASYNC_CHUNK are measured again
        payload["async_chunk"] = ASYNC_CHUNK
    payload["timed"] = "map"  # and those timed one request at a time
    payload["chunks"] = TIMED_CHUNKS  # and those timed on other chunk sizes
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    return path.with_name(f"{path.stem}.{key}.choice.json")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:  # e.g. onnxruntime installed as onnxruntime-gpu
        return "?"


def _read_choice(memory: Path | None, names: list[str]) -> dict | None:
    if memory is None or not memory.is_file():
        return None
    try:
        chosen = json.loads(memory.read_text())
    except (OSError, ValueError):
        return None
    return chosen if chosen.get("engine") in names and isinstance(chosen.get("chunk"), int) else None


def _keep(target: Path, data: bytes, what: str) -> None:
    """Write ``data`` whole beside ``target``, then rename it into place: a reader in another process sees
    the old file or the new one, never half of one. A cache that cannot be written (read-only, full) only
    means the next extraction does the work again."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(data)
        os.replace(temporary, target)
    except OSError as error:
        log.info("%s not kept (%s)", what, one_line(error))
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def _write_choice(memory: Path, chosen: dict) -> None:
    _keep(memory, json.dumps(chosen).encode(), "engine choice")


def _reference(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The check batch and torch's outputs on it, kept beside a cached export (None if absent)."""
    try:
        with np.load(path.with_suffix(".check.npz"), allow_pickle=False) as kept:
            return torch.from_numpy(kept["inputs"]), torch.from_numpy(kept["outputs"])
    except FileNotFoundError:
        return None
    except Exception as error:  # a damaged file (BadZipFile, EOFError, ...) is computed again
        log.info(
            "check outputs beside %s not read (%s); computing them with torch", path.name, one_line(error)
        )
        return None


def _keep_reference(path: Path, inputs: torch.Tensor, outputs: torch.Tensor) -> None:
    data = io.BytesIO()
    np.savez(data, inputs=inputs.numpy(), outputs=outputs.numpy())
    _keep(path.with_suffix(".check.npz"), data.getvalue(), "check outputs")


def _torch_outputs(
    kept: tuple[torch.Tensor, torch.Tensor] | None,
    pool: ThreadPoolExecutor,
    build: Callable[[], nn.Module],
    check: torch.Tensor,
) -> Future[torch.Tensor]:
    """torch's outputs on ``check``: the kept ones, or computed in ``pool`` while the engine compiles."""
    if kept is None:
        return pool.submit(_one_thread_outputs, build(), check)
    done: Future[torch.Tensor] = Future()
    done.set_result(kept[1])
    return done


def _opened_and_checked(
    path: Path, name: str, threads: int, streams: int, check: torch.Tensor, expected: Future, int8: bool
) -> Engine | None:
    """Engine ``name`` on the export ``path`` if it runs ``check`` and matches torch's outputs on it
    (``expected``, which may still be computing); None, logged, if not. An int8 export only has to run."""
    try:
        engine = open_engine(path, name, threads, streams=streams)
        got = torch.from_numpy(engine.run(check.numpy()))
    except Exception as error:
        log.info("%s failed on the frozen part (%s)", NAMES[name], one_line(error))
        return None
    wanted = expected.result()
    gap = float((got - wanted).abs().max()) if got.shape == wanted.shape else float("inf")
    if not int8 and not gap <= tolerance_for(wanted):  # also catches NaN
        log.info("%s differs from torch by %.2g on a check batch; not used", NAMES[name], gap)
        return None
    return engine


def frozen_engine(
    build: Callable[[], nn.Module],
    example: torch.Tensor,
    identity: str = "",
    threads: int = 1,
    int8: bool = False,
    streams: int = 1,
) -> Engine | None:
    """The frozen part (built by ``build`` only when needed) exported to ONNX (cached by ``identity``), on
    the fastest engine that matches torch; None when it cannot be exported or none matches (then the
    caller keeps torch).

    Each installed engine (or the one ``POSTERLAB_ENGINE`` names) is opened with ``threads`` threads
    (``streams`` requests in flight where it has them), checked against torch on a batch it was not traced
    on, and timed on ``example`` in chunks of each of ``TIMED_CHUNKS`` (4 only on a batch under 16, and
    ``ASYNC_CHUNK`` on an engine with requests in flight; no timing where that leaves one choice). Beside a
    cached export the choice is remembered (from a timing of every chunk size), and so are the check batch and torch's outputs on
    it: later extractions open one engine and check it without building the part (importing timm and
    building Lite0: 1.2-1.5 s). An int8 export runs on ONNX Runtime only and is checked for running, not
    for matching: it is meant to differ.
    """
    names = [n for n in candidates() if not int8 or n == ONNXRUNTIME]
    if not names:
        return None
    try:
        path = cached_export(build, example, identity, int8)
    except Exception as error:  # exporters reject some models; torch still runs them
        log.info("frozen part not exported to ONNX (%s); extracting with torch", one_line(error))
        return None
    kept = _reference(path) if identity else None
    check = kept[0] if kept is not None else check_batch(example)
    best: tuple[float, Engine, int] | None = None
    timings = []
    memory = _choice_file(path, names, threads, streams) if identity else None
    chosen = _read_choice(memory, names)
    if chosen is not None:  # measured by an earlier extraction of this export on this machine
        names = [chosen["engine"]]
    chunks = TIMED_CHUNKS if len(example) >= 16 else (4,)  # a smaller first batch times chunks of 4 only
    pool = ThreadPoolExecutor(1, thread_name_prefix="torch-check")
    try:
        soon = _torch_outputs(kept, pool, build, check)
        for name in names:
            engine = _opened_and_checked(path, name, threads, streams, check, soon, int8)
            if engine is None:
                continue
            if chosen is not None:
                best = (0.0, engine, int(chosen["chunk"]))
                timings.append("as measured before")
                continue
            own = (ASYNC_CHUNK,) if getattr(engine, "streams", 1) > 1 else chunks
            seconds, chunk = _fastest_chunk(engine, own, example, timings, alone=len(names) == 1)
            if best is None or seconds < best[0]:
                best = (seconds, engine, chunk)
    finally:
        pool.shutdown()
        if not identity:
            path.unlink(missing_ok=True)
    if best is None and kept is not None:  # kept outputs that no engine matches: check with torch itself
        log.info("no engine matches the kept check outputs; checking against torch again")
        path.with_suffix(".check.npz").unlink(missing_ok=True)
        return frozen_engine(build, example, identity, threads, int8, streams)
    if best is None:
        log.info("no ONNX engine matches the frozen part; extracting with torch")
        return None
    _, engine, engine.chunk = best
    if identity and kept is None:  # an engine matched, so torch's outputs are there to keep
        _keep_reference(path, check, soon.result())
    if memory is not None and chosen is None and chunks == TIMED_CHUNKS:  # remember a whole measurement
        _write_choice(memory, {"engine": engine.name, "chunk": engine.chunk, "timings": timings})
    log.info(
        "frozen part on %s (%d threads, %d requests in flight, chunks of %d; per image %s)",
        engine.title,
        engine.threads,
        getattr(engine, "streams", 1),
        engine.chunk,
        ", ".join(timings),
    )
    return engine
