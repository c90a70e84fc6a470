"""The one home of ONNX: which engine runs (requested, installed, fastest), parity with torch before any
engine is used, and the pipelined ``map`` giving the same outputs, in order, as one call at a time."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from posterlab.errors import ModelError
from posterlab.models import onnx
from posterlab.models.factory import create_model
from posterlab.models.onnx import ONNXRUNTIME, OPENVINO, frozen_engine, open_engine

openvino_only = pytest.mark.skipif(OPENVINO not in onnx.installed(), reason="openvino is not installed")


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("posterlab_small_cnn", 2, pretrained=False).backbone.eval()


@pytest.fixture
def example() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(16, 3, 64, 64)


@pytest.fixture
def exported(backbone, example, tmp_path):
    path = tmp_path / "frozen.onnx"
    onnx.torchscript_onnx(backbone, example, path, output="features")
    return path


def test_the_requested_engine_is_the_only_candidate(monkeypatch):
    monkeypatch.setenv("POSTERLAB_ENGINE", "onnxruntime")
    assert onnx.candidates() == [ONNXRUNTIME]
    monkeypatch.setenv("POSTERLAB_ENGINE", "auto")
    assert onnx.candidates() == onnx.installed()
    monkeypatch.setenv("POSTERLAB_ENGINE", "tensorrt")
    with pytest.raises(ModelError, match="POSTERLAB_ENGINE='tensorrt': use one of openvino, onnxruntime"):
        onnx.candidates()


def test_without_openvino_extraction_takes_onnx_runtime(backbone, example, monkeypatch):
    monkeypatch.delenv("POSTERLAB_ENGINE", raising=False)
    monkeypatch.setattr(onnx, "installed", lambda: [ONNXRUNTIME])  # as on a machine without the wheel
    engine = frozen_engine(lambda: backbone, example)
    assert engine is not None and engine.name == ONNXRUNTIME


@pytest.mark.parametrize("name", onnx.installed())
def test_every_installed_engine_matches_torch(name, backbone, example, exported):
    engine = open_engine(exported, name, threads=1)
    assert onnx.difference(engine, backbone, example[:3]) <= onnx.tolerance_for(backbone(example[:3]))


@pytest.mark.parametrize("name", onnx.installed())
def test_map_keeps_the_order_with_requests_in_flight(name, exported):
    engine = open_engine(exported, name, threads=2, chunk=3, streams=2)
    batches = [
        np.random.default_rng(i).standard_normal((n, 3, 64, 64), dtype=np.float32)
        for i, n in enumerate((5, 1, 7, 4))
    ]
    mapped = list(engine.map((i, batch) for i, batch in enumerate(batches)))
    assert [tag for tag, _ in mapped] == [0, 1, 2, 3]
    for (_, out), batch in zip(mapped, batches, strict=True):
        np.testing.assert_allclose(out, engine.run(batch), atol=1e-5)


@pytest.mark.parametrize("name", onnx.installed())
def test_a_stop_inside_map_leaves_nothing_running(name, exported):
    engine = open_engine(exported, name, threads=2, chunk=2, streams=2)

    def batches():
        yield 0, np.zeros((4, 3, 64, 64), dtype=np.float32)
        raise KeyboardInterrupt  # what a stop request does to the stream: an exception from the producer

    with pytest.raises(KeyboardInterrupt):
        list(engine.map(batches()))
    assert engine.run(np.zeros((1, 3, 64, 64), dtype=np.float32)).shape[0] == 1  # still usable


@openvino_only
def test_an_engine_that_disagrees_is_dropped_for_the_other(backbone, example, monkeypatch, caplog):
    monkeypatch.delenv("POSTERLAB_ENGINE", raising=False)
    monkeypatch.setattr(
        onnx.OpenVinoEngine, "_infer", lambda self, part: np.full((len(part), 8), 5.0, np.float32)
    )
    with caplog.at_level(logging.INFO, logger="posterlab.models.onnx"):
        engine = frozen_engine(lambda: backbone, example)
    assert engine is not None and engine.name == ONNXRUNTIME
    assert "OpenVINO differs from torch" in caplog.text


@openvino_only
@pytest.mark.parametrize("slow", [OPENVINO, ONNXRUNTIME])
def test_the_faster_engine_is_chosen(slow, backbone, example, monkeypatch):
    monkeypatch.delenv("POSTERLAB_ENGINE", raising=False)
    # the measurement, not wall-clock time on a shared machine, decides: the slow engine measures 10x
    monkeypatch.setattr(onnx, "_speed", lambda engine, batch: 0.1 if engine.name == slow else 0.01)
    engine = frozen_engine(lambda: backbone, example)
    assert engine is not None and engine.name != slow


@openvino_only
def test_the_choice_is_measured_once_per_export(backbone, example, monkeypatch, caplog):
    monkeypatch.delenv("POSTERLAB_ENGINE", raising=False)
    first = frozen_engine(lambda: backbone, example, identity="choice-test|")
    with caplog.at_level(logging.INFO, logger="posterlab.models.onnx"):
        again = frozen_engine(lambda: backbone, example, identity="choice-test|")
    assert (again.name, again.chunk) == (first.name, first.chunk)
    assert "as measured before" in caplog.text
    monkeypatch.setenv("POSTERLAB_ENGINE", "onnxruntime")  # another set of engines measures afresh
    assert frozen_engine(lambda: backbone, example, identity="choice-test|").name == ONNXRUNTIME
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="posterlab.models.onnx"):  # one engine's chunks: remembered
        assert frozen_engine(lambda: backbone, example, identity="choice-test|").name == ONNXRUNTIME
    assert "as measured before" in caplog.text


def test_engines_are_timed_as_extraction_runs_them():
    """An engine is timed through ``map``, with its requests in flight, each request warmed and given two
    chunks: timed one request at a time, OpenVINO's two requests counted as one against ONNX Runtime on one
    thread, and ONNX Runtime, 1.5x slower end to end, was kept about one time in eight."""
    seen: list[int] = []

    class Overlapping(onnx.Engine):  # four requests in flight
        name, streams = ONNXRUNTIME, 4

        def _infer(self, part):
            raise AssertionError("timed one request at a time")

        def map(self, batches):
            for tag, batch in batches:
                seen.append(len(batch))
                yield tag, batch

    assert onnx._speed(Overlapping(threads=1, chunk=4), np.zeros((16, 1), np.float32)) >= 0
    assert seen[:4] == [4, 4, 4, 4]  # a warm-up chunk on each request
    assert sum(seen[4:]) >= 2 * 4 * 4  # then two chunks for each


def test_one_engine_on_a_small_batch_is_not_timed(backbone, example, monkeypatch):
    monkeypatch.setenv("POSTERLAB_ENGINE", "onnxruntime")

    def timed(engine, batch):
        raise AssertionError("one engine and chunks of 4 only: nothing to choose, nothing to time")

    monkeypatch.setattr(onnx, "_speed", timed)
    engine = frozen_engine(lambda: backbone, example[:8], identity="one-choice-test|")
    assert engine is not None and (engine.name, engine.chunk) == (ONNXRUNTIME, 4)


@openvino_only
def test_openvino_keeps_the_compiled_network_for_the_next_opening(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERLAB_CACHE_DIR", str(tmp_path / "cache"))
    compiled = tmp_path / "cache" / "onnx" / "openvino"
    open_engine(exported, OPENVINO, threads=1)
    kept = sorted(compiled.iterdir())
    assert kept, "OpenVINO kept no compiled network"
    moved = tmp_path / "elsewhere" / "copy.onnx"  # a copied cache: the key is the graph, not its path
    moved.parent.mkdir()
    moved.write_bytes(exported.read_bytes())
    engine = open_engine(moved, OPENVINO, threads=1)
    assert sorted(compiled.iterdir()) == kept
    assert engine.run(np.zeros((2, 3, 64, 64), dtype=np.float32)).shape[0] == 2


@openvino_only
def test_a_compiled_network_that_does_not_load_is_compiled_again(exported, backbone, tmp_path, monkeypatch):
    """A half-written or stale blob (OpenVINO's own cache mapped one another process was writing, and
    died of SIGBUS) is compiled again and replaced whole; nothing half-written is left beside it."""
    monkeypatch.setenv("POSTERLAB_CACHE_DIR", str(tmp_path / "cache"))
    compiled = tmp_path / "cache" / "onnx" / "openvino"
    open_engine(exported, OPENVINO, threads=1)
    (blob,) = compiled.iterdir()
    whole = blob.read_bytes()
    blob.write_bytes(whole[: len(whole) // 2])
    engine = open_engine(exported, OPENVINO, threads=1)
    x = torch.randn(2, 3, 64, 64)
    assert onnx.difference(engine, backbone, x) <= onnx.tolerance_for(backbone(x))
    assert [path.name for path in compiled.iterdir()] == [blob.name]
    ov = onnx._import_openvino()
    onnx._core(ov).import_model(blob.read_bytes(), "CPU")  # whole again: it loads


def test_the_torch_check_runs_on_one_thread_and_leaves_torch_as_it_was(backbone, example):
    """The check runs beside the engine's compiling: on torch's usual threads it slowed 4x. Afterwards
    torch has its threads back (a leaked 1 would slow every later forward pass in the process)."""
    seen: list[int] = []
    hook = backbone.register_forward_hook(
        lambda *_: None if torch.jit.is_tracing() else seen.append(torch.get_num_threads())
    )
    threads = torch.get_num_threads()
    try:
        assert frozen_engine(lambda: backbone, example) is not None
    finally:
        hook.remove()
    assert seen == [1]
    assert torch.get_num_threads() == threads


def test_a_cached_export_is_checked_against_kept_torch_outputs_without_building_the_part(
    backbone, example, monkeypatch, caplog
):
    builds = []

    def build() -> torch.nn.Module:
        builds.append(1)
        return backbone

    first = frozen_engine(build, example, identity="kept-check-test|")
    assert first is not None and len(builds) >= 1
    builds.clear()
    again = frozen_engine(build, example, identity="kept-check-test|")
    assert again is not None and builds == []  # no torch: timm's import and the build took 1.2-1.5 s
    assert onnx.difference(again, backbone, example[:2]) <= onnx.tolerance_for(backbone(example[:2]))

    for kind in onnx.KINDS.values():  # an engine that went wrong is still caught, by the kept outputs
        monkeypatch.setattr(kind, "_infer", lambda self, part: np.zeros((len(part), 8), np.float32) + 5.0)
    with caplog.at_level(logging.INFO, logger="posterlab.models.onnx"):
        assert frozen_engine(build, example, identity="kept-check-test|") is None
    # then against torch itself, in case the kept outputs were the wrong ones: still no engine
    assert "no engine matches the kept check outputs" in caplog.text and builds
    assert "no ONNX engine matches the frozen part" in caplog.text


@pytest.mark.parametrize("damage", ["cut short", "outputs of another part"])
def test_a_damaged_or_stale_check_file_is_computed_again_with_torch(
    damage, backbone, example, tmp_path, monkeypatch
):
    monkeypatch.setenv("POSTERLAB_CACHE_DIR", str(tmp_path / "cache"))
    builds = []

    def build() -> torch.nn.Module:
        builds.append(1)
        return backbone

    assert frozen_engine(build, example, identity="damaged-check-test|") is not None
    (kept,) = (tmp_path / "cache" / "onnx").glob("*.check.npz")
    with np.load(kept) as good:
        inputs, outputs = good["inputs"], good["outputs"]
    if damage == "cut short":
        kept.write_bytes(kept.read_bytes()[:100])
    else:
        np.savez(kept, inputs=inputs, outputs=outputs + 5.0)
    builds.clear()
    engine = frozen_engine(build, example, identity="damaged-check-test|")
    assert engine is not None and builds  # checked against torch itself, not dropped for torch
    with np.load(kept) as again:  # and kept right for the next extraction
        np.testing.assert_allclose(again["outputs"], outputs, atol=1e-6)


def test_no_engine_that_matches_means_torch(backbone, example, monkeypatch):
    for kind in onnx.KINDS.values():
        monkeypatch.setattr(kind, "_infer", lambda self, part: np.zeros((len(part), 8), np.float32) + 5.0)
    assert frozen_engine(lambda: backbone, example) is None


@pytest.mark.skipif(OPENVINO not in onnx.installed(), reason="OpenVINO is not installed")
def test_openvino_is_imported_without_its_telemetry(tmp_path):
    """Importing openvino plainly writes a client id and usage counts under ~/intel (and sends an event);
    posterlab's import writes nothing into the home folder and leaves openvino_telemetry importable."""
    import os
    import subprocess
    import sys

    code = (
        "from posterlab.models.onnx import _import_openvino\n"
        "ov = _import_openvino()\n"
        "import openvino.tools.ovc.telemetry_utils as t\n"
        "assert t.tm.__name__.endswith('telemetry_stub'), t.tm\n"
        "import openvino_telemetry\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "CI": "", "TF_BUILD": "", "JENKINS_URL": ""}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert list(tmp_path.iterdir()) == []


@openvino_only
def test_processes_opening_one_engine_at_once_all_run_it(exported, tmp_path):
    """Ranks of a CPU torchrun, search workers, the app beside the CLI: processes that compile the same
    graph at once share one cache. With OpenVINO's own CACHE_DIR, 3 of 36 processes opening Lite0 six
    at a time died of SIGBUS (one mapped the 13.5 MB blob another was writing); posterlab's blob is
    written whole and renamed. The small CNN's blob is written too fast for this to catch that race often:
    it checks that concurrent openings work, the half-written blob test checks the reading side."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from posterlab.models import onnx\n"
        "engine = onnx.open_engine(Path(sys.argv[1]), 'openvino', 2, streams=2)\n"
        "assert engine.run(np.ones((2, 3, 64, 64), np.float32)).shape[0] == 2\n"
    )
    env = {**os.environ, "POSTERLAB_CACHE_DIR": str(tmp_path / "cache")}
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(exported)], env=env, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    failures = [p.stderr.read().decode()[-300:] for p in processes if p.wait(timeout=120) != 0]
    assert failures == []


@openvino_only
def test_engines_released_in_any_order_leave_signals_working(exported, tmp_path):
    """OpenVINO's CPU plugin maps an alternate signal stack for its thread and, released, puts back the one
    it found and unmaps its own: with a Core per engine, two engines released in the order they were
    opened left the thread on an unmapped stack, and the next signal Python handled there (Ctrl-C,
    torchrun's SIGTERM) ended the process with SIGSEGV and no traceback. In a process of its own, so a
    crash fails this test and not the whole session."""
    import os
    import signal
    import subprocess
    import sys

    code = (
        "import gc, signal, sys\n"
        "from pathlib import Path\n"
        "from posterlab.models.onnx import OpenVinoEngine\n"
        "first = OpenVinoEngine(Path(sys.argv[1]), 2, streams=2)\n"
        "second = OpenVinoEngine(Path(sys.argv[1]), 1)\n"
        "del first; gc.collect()\n"
        "del second; gc.collect()\n"
        "signal.signal(signal.SIGUSR1, lambda *_: print('handled'))\n"
        "signal.raise_signal(signal.SIGUSR1)\n"
    )
    env = {**os.environ, "POSTERLAB_CACHE_DIR": str(tmp_path / "cache")}
    for faulthandler in ([], ["-X", "faulthandler"]):  # pytest's own processes have faulthandler's stack
        done = subprocess.run(
            [sys.executable, *faulthandler, "-c", code, str(exported)],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode != -signal.SIGSEGV, "the signal was delivered on an unmapped stack"
        assert (done.returncode, done.stdout.decode().strip()) == (0, "handled"), done.stderr.decode()[-300:]


def test_overlapping_one_thread_blocks_give_every_thread_its_threads_back():
    """torch's thread count is each thread's own and the count new threads start from. A training's check
    batch and a label audit overlap their one-thread blocks in two threads: each thread gets its count
    back, and threads started later start from the usual count (with a get/set/restore per block, the
    thread started inside the other's block began at 1 and restored 1, for itself and later threads)."""
    import threading

    from posterlab.background import one_torch_thread

    threads = torch.get_num_threads()
    if threads == 1:
        pytest.skip("torch runs one thread here: nothing to give back")
    seen: dict[str, int] = {}
    second_in, first_out = threading.Event(), threading.Event()

    def second() -> None:  # started inside the first block
        with one_torch_thread():
            second_in.set()
            first_out.wait(10)
            seen["second, inside, after the first left"] = torch.get_num_threads()
        seen["second, after"] = torch.get_num_threads()

    def first() -> None:
        with one_torch_thread():
            other = threading.Thread(target=second)
            other.start()
            second_in.wait(10)
        seen["first, after"] = torch.get_num_threads()
        first_out.set()
        other.join(20)

    worker = threading.Thread(target=first)
    worker.start()
    worker.join(30)
    later = threading.Thread(
        target=lambda: seen.setdefault("a thread started later", torch.get_num_threads())
    )
    later.start()
    later.join(10)
    assert seen == {
        "first, after": threads,
        "second, inside, after the first left": 1,
        "second, after": threads,
        "a thread started later": threads,
    }
    assert torch.get_num_threads() == threads


@openvino_only
def test_requests_in_flight_take_small_chunks_untimed(backbone, example, monkeypatch):
    # timed one request at a time, 8 measured faster; end to end, with requests in flight beside the
    # loader, 4 ran faster (issue 21): an engine with streams is not timed on chunk sizes
    monkeypatch.setenv("POSTERLAB_ENGINE", "openvino")
    monkeypatch.setattr(onnx, "_speed", lambda engine, batch: 0.01 if engine.chunk == 8 else 0.1)
    streamed = frozen_engine(lambda: backbone, example, identity="async-chunk-test|", streams=2)
    assert streamed is not None and (streamed.streams, streamed.chunk) == (2, onnx.ASYNC_CHUNK)
    alone = frozen_engine(lambda: backbone, example, identity="async-chunk-test|", streams=1)
    assert alone is not None and alone.chunk == 8  # one request at a time: the timing decides
