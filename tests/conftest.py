"""Test session: offline, CPU, isolated caches, small real posters."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub / timm: the tests never reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="posterlab-test-cache-"))
os.environ["POSTERLAB_CACHE_DIR"] = str(_SESSION_CACHE)

import pytest  # noqa: E402

from posterlab import settings  # noqa: E402

SAMPLE = settings.SAMPLES["sample"]
SAMPLE_RT = settings.SAMPLES["sample-rt"]
LITE0 = "tf_efficientnet_lite0"
# the metrics DESIGN.md promises in `evaluate --json` and metrics.json
MULTILABEL_METRICS = {
    "micro_f1",
    "macro_f1",
    "samples_f1",
    "map",
    "roc_auc",
    "hamming",
    "subset_accuracy",
    "hit_at_1",
}
SINGLE_METRICS = {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc"}


def pytest_configure(config: pytest.Config) -> None:
    """CPU only, like CI, unless the GPU tests are asked for (`pytest -m gpu` on a machine with one)."""
    expression = config.getoption("markexpr") or ""
    if not re.search(r"(?<!not )\bgpu\b", expression):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


if sys.platform == "linux":  # looked up here: the child, forked from a process with threads, makes one call
    import ctypes

    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
    _PRCTL.argtypes = [ctypes.c_int, ctypes.c_ulong]


def ended_with_the_session() -> None:
    """``preexec_fn`` for servers a test starts: SIGTERM when the thread that started them ends (the
    fixtures start them on pytest's main thread: when the test process ends, however it ends). A crashed
    session left six streamlit servers training and serving, slowing everything after it."""
    if sys.platform == "linux":
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (on loopback: tests never use another address)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def lite0_weights() -> Path | None:
    folder = settings.weights_dir()
    path = folder / f"{LITE0}.safetensors" if folder else None
    return path if path and path.is_file() else None


needs_weights = pytest.mark.skipif(
    lite0_weights() is None,
    reason="needs POSTERLAB_WEIGHTS_DIR with tf_efficientnet_lite0.safetensors (CI sets it to ../shared/weights)",
)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def sample_rt_dir() -> Path:
    return SAMPLE_RT


@pytest.fixture(scope="session")
def poster_paths() -> list[Path]:
    return sorted((SAMPLE / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def genre_run(runs_root) -> Path:
    """A small finished multi-label run on the sample: small CNN from scratch, images through the loop."""
    from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig
    from posterlab.training.trainer import train_run

    config = RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=4)),
        TrainConfig(
            backbone="posterlab_small_cnn",
            pretrained=False,
            mode="full",
            epochs=2,
            batch_size=32,
            lr=3e-3,
            flip_views=False,
        ),
        name="genres-small",
    )
    return train_run(config, runs_root)


@pytest.fixture(scope="session")
def binary_run(runs_root) -> Path:
    """A small finished fresh/rotten run (probe on a randomly initialised Lite0: real architecture, no download)."""
    from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig
    from posterlab.training.trainer import train_run

    config = RunConfig(
        DataConfig(path="sample-rt", labels=LabelConfig(target="label")),
        TrainConfig(backbone=LITE0, pretrained=False, mode="probe", epochs=3, flip_views=True),
        name="fresh-rotten",
    )
    return train_run(config, runs_root)
