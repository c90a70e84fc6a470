"""ONNX export (parity with torch on real posters) and the Hugging Face Space bundle.

The slow test installs a bundle into a fresh venv from the package registry and serves a prediction
from it: run it with ``-m slow`` (it downloads torch and gradio, a few GB, and takes minutes).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from posterlab import settings
from posterlab.errors import ModelError, PosterlabError
from posterlab.export import PICKLE_SUFFIXES, export_onnx, export_space, push_space, sample_posters
from posterlab.inference import Predictor
from posterlab.models import onnx
from posterlab.serving import served_backend
from tests.conftest import ended_with_the_session, free_port

POSTERS = sorted((settings.SAMPLES["sample"] / "images").glob("*.jpg"))[-6:]


def front_matter(readme: Path) -> dict:
    """The YAML block between the first two ``---`` lines of a Space README, parsed as the Hub does."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "---"
    return yaml.safe_load("\n".join(lines[1 : lines.index("---", 1)]))


@pytest.fixture
def run_copy(genre_run: Path, tmp_path: Path) -> Path:
    """The genre run copied, so that writing model.onnx into it leaves the session's run alone."""
    return Path(shutil.copytree(genre_run, tmp_path / genre_run.name))


@pytest.mark.parametrize("which", ["genre_run", "binary_run"])  # small CNN; Lite0 (random init)
def test_onnx_matches_torch_on_real_posters(which, request, tmp_path):
    run = request.getfixturevalue(which)
    report = export_onnx(run, tmp_path / "model.onnx")
    assert report["max_abs_diff"] <= 1e-4
    assert set(report["engines"]) == set(onnx.installed())  # every engine that may serve it was checked
    assert report["posters"] == len(sample_posters())
    assert Path(report["path"]) == tmp_path / "model.onnx"
    assert (tmp_path / "model.onnx").stat().st_size > 0
    # the file says what its logits mean (a bare graph could not be read on its own)
    import json

    import onnx as onnx_format

    props = {
        p.key: json.loads(p.value) for p in onnx_format.load(str(tmp_path / "model.onnx")).metadata_props
    }
    info = json.loads((run / "model.json").read_text())
    assert (
        props["posterlab.labels"] == info["rule"]["labels"]
        and props["posterlab.task"] == info["rule"]["task"]
    )
    assert props["posterlab.preprocess"] == info["preprocess"] and "posterlab.thresholds" in props


@pytest.mark.parametrize("engine", onnx.installed())
def test_the_onnx_backend_serves_the_exported_model(engine, run_copy, monkeypatch):
    export_onnx(run_copy, run_copy)  # a folder: written as RUN/model.onnx, where the Predictor looks
    monkeypatch.setenv("POSTERLAB_ENGINE", engine)
    torch_scores = Predictor(run_copy).predict(POSTERS)
    served = Predictor(run_copy, backend="onnx")
    assert served._onnx.name == engine
    onnx_scores = served.predict(POSTERS)  # batch of 6, flipped views too
    for a, b in zip(torch_scores, onnx_scores, strict=True):
        assert a.predicted == b.predicted
        assert np.allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-4)
    # the workbench and the demo serve an exported run through the same engine, a stale export not at all
    assert served_backend(run_copy) == "onnx"
    os.utime(run_copy / "model.safetensors")
    assert served_backend(run_copy) == "torch"


def test_a_failed_parity_check_writes_nothing(genre_run, tmp_path):
    with pytest.raises(ModelError, match=r"differs from torch by .* nothing was written"):
        export_onnx(genre_run, tmp_path / "model.onnx", tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_onnx(genre_run, tmp_path, capsys):
    from posterlab.cli import main

    assert main(["export", str(genre_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "max |torch - onnx|" in capsys.readouterr().out


def test_space_requirements_come_from_the_package_metadata():
    """posterlab's own dependencies (pyproject.toml), less the workbench's, pinned to what is installed."""
    import importlib.metadata

    from posterlab.export import WORKBENCH_ONLY, space_requirements

    lines = space_requirements()
    names = {line.split("==")[0].lower() for line in lines}
    declared = {
        r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        for r in importlib.metadata.requires("posterlab")
        if "extra ==" not in r
    }
    assert names == declared - set(WORKBENCH_ONLY)
    for line in lines:
        name, version = line.split("==")
        assert version == importlib.metadata.version(name).split("+")[0]


@pytest.fixture(scope="module")
def bundle(genre_run: Path, tmp_path_factory) -> Path:
    return export_space(genre_run, tmp_path_factory.mktemp("space") / "bundle")


def test_bundle_front_matter(bundle):
    import gradio

    meta = front_matter(bundle / "README.md")
    for key in ("title", "emoji", "sdk", "sdk_version", "app_file", "license", "short_description"):
        assert meta.get(key), key
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == gradio.__version__
    assert meta["app_file"] == "app.py" and (bundle / "app.py").is_file()
    assert len(meta["short_description"]) <= 60  # the Hub refuses longer ones


def test_bundle_requirements_are_pinned(bundle):
    lines = (bundle / "requirements.txt").read_text().split()
    names = {line.split("==")[0].lower() for line in lines}
    assert all("==" in line and "+" not in line for line in lines), lines
    assert {"gradio", "torch", "timm", "grad-cam", "safetensors", "pillow"} <= names
    assert "posterlab" not in names  # vendored, not on PyPI
    assert "streamlit" not in names and "pytest" not in names  # not the workbench's, nor the tests'


def test_bundle_holds_the_run_and_examples_and_no_pickles(bundle, genre_run):
    run = bundle / "runs" / genre_run.name
    assert (run / "model.json").is_file() and (run / "model.safetensors").is_file()
    assert not (run / "predictions.csv").exists()  # local paths stay home
    examples = sorted((bundle / "examples").glob("*.jpg"))
    assert examples
    titles = (bundle / "examples" / "labels.csv").read_text()
    assert all(p.stem in titles for p in examples)
    assert (bundle / "posterlab" / "inference.py").is_file()
    assert not (bundle / "posterlab" / "sample").exists()
    assert not [p for p in bundle.rglob("*") if p.suffix in PICKLE_SUFFIXES or p.name == "__pycache__"]
    assert (run / "model.safetensors").read_bytes()[:1] != b"\x80"


def test_bundle_app_builds_from_its_own_copy(bundle, genre_run):
    """Import the bundle's app.py with the bundle first on the path: the vendored posterlab serves it."""
    code = (
        "import app, posterlab, gradio; "
        f"assert posterlab.__file__.startswith({str(bundle)!r}), posterlab.__file__; "
        "assert isinstance(app.demo, gradio.Blocks); print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_a_binary_bundle_carries_a_small_gallery(binary_run, tmp_path):
    folder = export_space(binary_run, tmp_path / "rt")
    labels = (folder / "gallery" / "labels.csv").read_text().splitlines()
    assert 2 <= len(labels) - 1 <= 24
    assert len(list((folder / "gallery" / "images").iterdir())) == len(labels) - 1
    assert front_matter(folder / "README.md")["title"] == "posterlab: fresh or rotten"


def test_export_refuses_a_non_empty_folder(genre_run, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PosterlabError, match="exists and is not empty"):
        export_space(genre_run, tmp_path)


def test_push_without_a_token_says_how_to_get_one(bundle, monkeypatch, tmp_path):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(PosterlabError, match=r"no Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        push_space(bundle, "someone/poster-genres")


def test_push_checks_the_folder_and_the_space_id(bundle, tmp_path):
    with pytest.raises(PosterlabError, match="not a Space bundle"):
        push_space(tmp_path, "someone/poster-genres")
    with pytest.raises(PosterlabError, match="not a Space id"):
        push_space(bundle, "no-slash")


# ------------------------------------------------------------------------------------------ slow


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_bundle_starts_in_a_fresh_venv(bundle, request, tmp_path):
    """pip install -r requirements.txt in a new venv, python app.py, and a prediction through the client."""
    if "slow" not in (request.config.getoption("markexpr") or "") or "not slow" in request.config.getoption(
        "markexpr"
    ):
        pytest.skip("installs the bundle from the package registry (a few GB); run with -m slow")
    from gradio_client import Client, handle_file

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", "requirements.txt"],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTERLAB_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PORT=str(port), HF_HUB_OFFLINE="1")
    log = (tmp_path / "app.log").open("w")
    server = subprocess.Popen(
        [str(python), "app.py"],
        cwd=bundle,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=ended_with_the_session,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "app.py did not start listening within 5 minutes"
                time.sleep(1)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        example = sorted((bundle / "examples").glob("*.jpg"))[0]
        verdict, label, table, gallery = client.predict(poster=handle_file(str(example)), api_name="/analyse")
        assert len(label["confidences"]) == len(table["data"]) >= 2
        assert len(gallery) >= 2
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
