"""Frozen-part extraction on a CPU: through an ONNX engine (each installed one: OpenVINO, ONNX Runtime)
when it matches torch, through torch otherwise, with the same numbers either way and every view in the
order asked; decoding in loader processes overlapping the engine gives the same numbers too."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from posterlab.data.images import load_image
from posterlab.data.transforms import Preprocess
from posterlab.events import Control, Message, StopRequested
from posterlab.models import onnx
from posterlab.models.factory import create_model
from posterlab.training import features
from posterlab.training.features import Extraction, FeatureStore, Runtime, compute_features, views_for


class Unexportable(nn.Module):
    """Leaves the graph through numpy: torch runs it; the tracer freezes it into a constant."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.inner(x).numpy().copy())


def _preprocess() -> Preprocess:
    return Preprocess.for_model(create_model("posterlab_small_cnn", 2, pretrained=False).backbone)


def extract(
    frozen: nn.Module,
    paths,
    tmp_path,
    name: str,
    fits=("crop", "pad"),
    workers: int = 0,
    flips: bool = True,
    on_event=lambda event: None,
    should_stop=lambda: False,
) -> dict[str, np.ndarray]:
    views = views_for(_preprocess(), fits, flips=flips)
    job = Extraction(lambda: frozen, views, [f"key-{view.name}" for view in views], about="embeddings")
    tables = compute_features(
        job,
        [str(p) for p in paths],
        [f"{name}-{i}" for i in range(len(paths))],
        Runtime(torch.device("cpu"), workers=workers, control=Control(on_event, should_stop)),
        store=FeatureStore(tmp_path / name),
    )
    return {view: table.to_array() for view, table in tables.items()}


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    torch.manual_seed(0)
    return create_model("posterlab_small_cnn", 2, pretrained=False).backbone.eval()


@pytest.mark.parametrize("engine", onnx.installed())
def test_each_engine_and_torch_agree(engine, backbone, poster_paths, tmp_path, monkeypatch, caplog):
    paths = poster_paths[:10]
    monkeypatch.setenv("POSTERLAB_ENGINE", engine)
    with caplog.at_level(logging.INFO, logger="posterlab.training.features"):
        fast = extract(backbone, paths, tmp_path, engine)
    assert f"({onnx.NAMES[engine]})" in caplog.text
    monkeypatch.setattr(features, "frozen_engine", lambda *args, **kwargs: None)
    plain = extract(backbone, paths, tmp_path, "torch")
    assert list(fast) == ["crop", "pad", "crop-flip", "pad-flip"] == list(plain)
    for view in fast:
        assert fast[view].shape == (10, *plain[view].shape[1:])
        np.testing.assert_allclose(fast[view], plain[view], atol=1e-4, rtol=1e-4)
    assert not np.allclose(fast["crop"], fast["crop-flip"]), "a flipped view is a different input"
    # the loader sends pixels and the engine normalises them: the part's outputs on posters normalised
    # the way a single prediction does it (Preprocess's float transform)
    for view in views_for(_preprocess(), ("crop", "pad"), flips=False):
        transform = view.preprocess.eval_transform()
        inputs = [transform(load_image(str(p), draft=view.preprocess.draft).image) for p in paths]
        with torch.inference_mode():
            reference = backbone(torch.stack(inputs)).numpy()
        close = 1e-3 * np.abs(reference).max()  # this small part's outputs are ~1e-4: relative to them
        np.testing.assert_allclose(fast[view.name], reference, atol=close, rtol=1e-3)
        np.testing.assert_allclose(plain[view.name], reference, atol=close, rtol=1e-3)


def test_decoding_in_a_worker_beside_the_engine_gives_the_same_numbers(
    backbone, poster_paths, tmp_path, monkeypatch
):
    """The overlapped path: a loader process decodes while the engine (with OpenVINO: a request per core
    in flight) runs the batch before; 19 posters end in a partial batch."""
    paths = poster_paths[:19]
    monkeypatch.delenv("POSTERLAB_ENGINE", raising=False)
    overlapped = extract(backbone, paths, tmp_path, "overlap", fits=("crop",), workers=1)
    monkeypatch.setattr(features, "frozen_engine", lambda *args, **kwargs: None)
    plain = extract(backbone, paths, tmp_path, "plain", fits=("crop",))
    for view in plain:
        np.testing.assert_allclose(overlapped[view], plain[view], atol=1e-4, rtol=1e-4)


def test_one_view_goes_to_the_engine_as_the_loader_gave_it(backbone, poster_paths, tmp_path, monkeypatch):
    """One view, no flips (the usual run): the loader's batch is the engine's input, not a copy of it."""
    paths = poster_paths[:19]
    monkeypatch.delenv("POSTERLAB_ENGINE", raising=False)
    fast = extract(backbone, paths, tmp_path, "one", fits=("crop",), workers=1, flips=False)
    monkeypatch.setattr(features, "frozen_engine", lambda *args, **kwargs: None)
    plain = extract(backbone, paths, tmp_path, "one-torch", fits=("crop",), flips=False)
    assert list(fast) == ["crop"] == list(plain)
    np.testing.assert_allclose(fast["crop"], plain["crop"], atol=1e-4, rtol=1e-4)


def test_the_log_says_computing_only_when_something_is_computed(backbone, poster_paths, tmp_path):
    said: list[str] = []
    record = lambda event: said.append(event.text) if isinstance(event, Message) else None  # noqa: E731
    first = extract(backbone, poster_paths[:4], tmp_path, "said", fits=("crop",), on_event=record)
    assert said == ["computing embeddings once for 4 posters (crop, crop-flip; cached for later runs)"]
    said.clear()
    again = extract(backbone, poster_paths[:4], tmp_path, "said", fits=("crop",), on_event=record)
    assert said == ["embeddings of 4 posters (crop, crop-flip) read from the cache"]
    np.testing.assert_array_equal(first["crop"], again["crop"])


def test_a_stop_during_extraction_keeps_what_was_computed(backbone, poster_paths, tmp_path):
    """A Stop lands between loader batches (8 posters of two views): the posters computed before it are
    written, however few (a chunk file holds 256), so Resume computes only the rest."""
    checks = iter(range(100))
    with pytest.raises(StopRequested):  # the third batch's check: two batches done
        extract(
            backbone,
            poster_paths[:20],
            tmp_path,
            "stop",
            fits=("crop",),
            should_stop=lambda: next(checks) >= 2,
        )
    # how many batches' outputs were in when the Stop landed depends on the engine's requests in flight
    # (OpenVINO runs one per core): at least the first batch's
    _, left = FeatureStore(tmp_path / "stop").table("key-crop", [f"stop-{i}" for i in range(20)])
    assert 0 < len(left) <= 12, left
    said: list[str] = []
    record = lambda event: said.append(event.text) if isinstance(event, Message) else None  # noqa: E731
    resumed = extract(backbone, poster_paths[:20], tmp_path, "stop", fits=("crop",), on_event=record)
    assert said == [
        f"computing embeddings once for {len(left)} posters (crop, crop-flip; cached for later runs)"
    ]
    whole = extract(backbone, poster_paths[:20], tmp_path, "whole", fits=("crop",))
    np.testing.assert_allclose(resumed["crop"], whole["crop"], atol=1e-5)


def test_a_part_onnx_cannot_export_faithfully_runs_through_torch(backbone, poster_paths, tmp_path, caplog):
    paths = poster_paths[:4]
    with caplog.at_level(logging.INFO):  # the engine's verdict comes from posterlab.models.onnx
        out = extract(Unexportable(backbone), paths, tmp_path, "fallback", fits=("crop",))
    assert "extracting with torch" in caplog.text and "(torch)" in caplog.text
    expected = extract(backbone, paths, tmp_path, "reference", fits=("crop",))
    np.testing.assert_allclose(out["crop"], expected["crop"], atol=1e-4, rtol=1e-4)


def test_a_runner_that_disagrees_with_torch_is_refused(backbone, monkeypatch):
    example = torch.randn(2, 3, 64, 64)

    class Wrong:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def run(self, names, feeds):
            return [np.zeros((2, *backbone(example).shape[1:]), dtype=np.float32) + 5.0]

    import onnxruntime

    monkeypatch.setenv("POSTERLAB_ENGINE", "onnxruntime")  # the fallback when OpenVINO is not installed
    monkeypatch.setattr(onnxruntime, "InferenceSession", Wrong)
    with torch.inference_mode():
        assert features.frozen_engine(lambda: backbone, example) is None


def test_new_posters_after_a_cached_export_never_build_the_part(
    backbone, poster_paths, tmp_path, monkeypatch
):
    """A later extraction (new posters, a backbone exported before) checks its engine against the torch
    outputs kept beside the export: the frozen part is never built (for Lite0: importing timm, building it)."""
    monkeypatch.setenv("POSTERLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("POSTERLAB_ENGINE", raising=False)
    views = views_for(Preprocess.for_model(backbone), ("crop",), flips=False)
    first, later = (
        Extraction(lambda: backbone, views, ["key-crop"], about="embeddings", identity="later-test|")
        for _ in range(2)
    )
    runtime, store = Runtime(torch.device("cpu"), workers=0), FeatureStore(tmp_path / "store")
    compute_features(first, [str(p) for p in poster_paths[:6]], [f"a{i}" for i in range(6)], runtime, store)
    assert first.built
    paths = [str(p) for p in poster_paths[6:12]]
    tables = compute_features(later, paths, [f"b{i}" for i in range(6)], runtime, store)
    assert not later.built
    monkeypatch.setattr(features, "frozen_engine", lambda *args, **kwargs: None)
    plain = compute_features(
        first, paths, [f"c{i}" for i in range(6)], runtime, FeatureStore(tmp_path / "torch")
    )
    np.testing.assert_allclose(tables["crop"].to_array(), plain["crop"].to_array(), atol=1e-4, rtol=1e-4)


def _two_machines(rank: int, port: int, root: str, paths: list[str], stop_rank: int, out: str) -> None:
    """One of two processes whose cache folders are not shared: rank 0's already holds every poster."""
    import datetime
    import json
    import os
    from pathlib import Path

    import torch.distributed as torch_dist

    from posterlab.training.distributed import Dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    timeout = datetime.timedelta(seconds=20)  # a collective paired wrongly fails here, not in 30 min
    torch_dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timeout)
    torch.manual_seed(0)
    frozen = create_model("posterlab_small_cnn", 2, pretrained=False).backbone.eval()
    views = views_for(Preprocess.for_model(frozen), ("crop",), flips=False)
    job = Extraction(lambda: frozen, views, ["key-crop"], about="embeddings")
    store, digests = FeatureStore(Path(root) / f"machine-{rank}"), [f"d{i}" for i in range(len(paths))]
    if rank == 0:  # an earlier run on this machine
        compute_features(job, paths, digests, Runtime(torch.device("cpu"), workers=0), store=store)
    dist = Dist(rank=rank, world=2, backend="gloo")
    control = Control(lambda event: None, lambda: rank == stop_rank)
    try:
        tables = compute_features(
            job, paths, digests, Runtime(torch.device("cpu"), dist, 0, control=control), store
        )
        outcome = f"rows {len(tables['crop'].to_array())}"
    except StopRequested:
        outcome = "stopped"
    outcome += f", then {dist.broadcast('the next collective')}"  # the run's next collective, paired right
    Path(out, f"rank-{rank}.json").write_text(json.dumps(outcome))
    torch_dist.destroy_process_group()


@pytest.mark.parametrize("stop_rank", [-1, 1], ids=["extracting", "stopped-on-the-cold-machine"])
def test_two_machines_one_cache_warm_one_cold_take_the_same_collectives(poster_paths, tmp_path, stop_rank):
    """Two machines that do not share a cache folder, one warm, one cold: the warm one skipped the stop
    vote and the barrier that the cold one entered, which then paired with the warm one's next collective
    (a hang until the process group's timeout, 30 minutes in a run); a Stop on the cold one alone reached
    only it. Both processes must come out of extraction together, and stopped together."""
    import json

    import torch.multiprocessing as mp

    from tests.conftest import free_port

    paths = [str(p) for p in poster_paths[:8]]
    mp.spawn(_two_machines, args=(free_port(), str(tmp_path), paths, stop_rank, str(tmp_path)), nprocs=2)
    outcomes = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    expected = "stopped" if stop_rank >= 0 else "rows 8"
    assert outcomes == [f"{expected}, then the next collective"] * 2, outcomes


def test_a_view_reads_the_same_alone_or_beside_another_fit(backbone, tmp_path):
    """The cache key of a view names its own preprocess: its output must not depend on the other fits of
    the job. On a 700 px poster a crop at 160 px with crop_pct 0.875 asks for 183 px (JPEG scale 1/2), a
    pad for 160 (1/4); decoded once at 1/2 for both, the pad view differed from the same view alone."""
    from dataclasses import replace

    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        pixels = rng.integers(0, 255, (1050, 700, 3), dtype=np.uint8)
        path = tmp_path / f"poster-{i}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    preprocess = replace(Preprocess.for_model(backbone), crop_pct=0.875)

    def pad_view(fits: tuple[str, ...], name: str) -> np.ndarray:
        views = views_for(preprocess, fits, flips=False)
        job = Extraction(lambda: backbone, views, [f"{name}-{v.name}" for v in views], about="embeddings")
        store = FeatureStore(tmp_path / name)
        tables = compute_features(
            job, paths, [f"d{i}" for i in range(4)], Runtime(torch.device("cpu"), workers=0), store
        )
        return tables["pad"].to_array()

    np.testing.assert_allclose(pad_view(("pad",), "alone"), pad_view(("crop", "pad"), "beside"), atol=1e-5)
