"""The Gradio demo, launched for real on a free local port and driven with gradio_client (CPU, offline).

Runs come from the session fixtures in conftest: a small CNN genre run and a Lite0 (random init)
fresh/rotten run, both trained by posterlab on the embedded sample.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from posterlab import settings
from posterlab.inference import Predictor
from tests.conftest import free_port

# gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

POSTER = settings.SAMPLES["sample"] / "images" / "tt0087469.jpg"  # Indiana Jones and the Temple of Doom


@pytest.fixture(scope="module")
def server(genre_run: Path, binary_run: Path):
    """The demo over the session's runs folder, served in this process; yields its URL."""
    from posterlab.demo import build_demo, launch_options

    demo = build_demo(checkpoints=genre_run.parent)
    _, url, _ = demo.launch(**launch_options(port=free_port()), prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server: str) -> Client:
    return Client(server, verbose=False)


def analyse(client: Client, run: Path, poster: Path):
    return client.predict(str(run.resolve()), handle_file(str(poster)), api_name="/analyse")


def test_genre_scores_come_back_for_a_real_poster(client, genre_run):
    verdict, label, table, gallery = analyse(client, genre_run, POSTER)
    expected = Predictor(genre_run).predict_one(POSTER)
    got = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(got) == set(expected.scores)
    for name, p in expected.scores.items():
        assert got[name] == pytest.approx(p, abs=1e-4)
    assert table["headers"] == ["label", "p", "threshold", "clears"]
    rows = {row[0]: row for row in table["data"]}
    assert set(rows) == set(expected.scores)
    for name, (_, probability, threshold, clears) in rows.items():
        # each label's probability against its own threshold, and the verdict says the same
        assert (clears == "yes") == (name in expected.predicted)
        if abs(probability - float(threshold)) > 1e-3:  # both are shown rounded to 3 decimals
            assert (clears == "yes") == (probability > float(threshold))
    if expected.predicted:
        assert all(f"**{name}**" in verdict for name in expected.predicted)
    else:
        assert "No genre clears its threshold" in verdict


def test_overlays_come_back_on_the_crop_the_model_saw(client, genre_run):
    _, _, _, gallery = analyse(client, genre_run, POSTER)
    assert gallery[0]["caption"] == "model input"
    overlays = gallery[1:]
    assert overlays, "at least one Grad-CAM overlay (the predicted labels, else the top one)"
    crop = Image.open(gallery[0]["image"])
    for item in overlays:
        image = Image.open(item["image"])
        assert image.size == crop.size  # drawn on the crop, at its size
        label, score, sign, threshold = item["caption"].split()
        assert sign == ("≥" if float(score) >= float(threshold) else "<")


def test_any_label_can_be_explained(client, genre_run):
    labels = list(Predictor(genre_run).labels)
    gallery = client.predict(
        str(genre_run.resolve()), handle_file(str(POSTER)), labels[-1:], "gradcam++", api_name="/explain"
    )
    assert [item["caption"].split(" · ")[1].split()[0] for item in gallery] == labels[-1:]
    assert Image.open(gallery[0]["image"]).size[0] > 0


def test_a_binary_run_explains_why_its_class(client, binary_run):
    verdict, label, table, gallery = analyse(client, binary_run, POSTER)
    assert {c["label"] for c in label["confidences"]} == {"fresh", "rotten"}
    assert [row[2] for row in table["data"]] == ["top class", "top class"]
    assert gallery[1]["caption"].startswith("why ")


def test_fresh_or_rotten_view_ranks_the_sample(client, binary_run):
    from posterlab.demo import GALLERY_TOP

    note, most_fresh, most_rotten = client.predict(str(binary_run.resolve()), api_name="/fresh_rotten")
    assert note.startswith("**Small data.**")
    assert "held-out test posters" in note and "is right" in note  # accuracy beside the majority rate
    assert len(most_fresh) == len(most_rotten) == GALLERY_TOP
    fresh = [float(item["caption"].lstrip("✓✗ ").split()[0]) for item in most_fresh]
    rotten = [float(item["caption"].lstrip("✓✗ ").split()[0]) for item in most_rotten]
    assert fresh == sorted(fresh, reverse=True)
    assert rotten == sorted(rotten, reverse=True)
    assert min(fresh) >= 1 - min(rotten) - 0.011  # the two ends of one ranking (captions round to 0.01)


def test_a_non_image_upload_gets_a_clear_error(client, genre_run, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a poster\n")
    with pytest.raises(AppError) as caught:
        analyse(client, genre_run, notes)
    message = str(caught.value)
    assert "notes.txt: not an image" in message
    assert "use a JPEG, PNG or WebP poster" in message
    assert "Traceback" not in message


def test_a_truncated_poster_gets_a_clear_error(client, genre_run, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(POSTER.read_bytes()[:2000])
    with pytest.raises(AppError, match=r"broken\.jpg: truncated or corrupt image"):
        analyse(client, genre_run, broken)


def test_a_hostile_file_name_is_not_rendered_as_html(client, genre_run, tmp_path):
    hostile = tmp_path / "<img src=x onerror=alert(1)>.png"
    hostile.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(AppError) as caught:
        analyse(client, genre_run, hostile)
    message = str(caught.value)
    assert "not an image" in message
    assert "<" not in message and ">" not in message  # the error modal renders HTML


def test_uploads_over_the_size_limit_are_refused(client, genre_run, tmp_path):
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(b"\xff" * (11 * 1024 * 1024))
    with pytest.raises(ValueError, match="maximum file size"):
        analyse(client, genre_run, huge)


def test_only_the_demo_runs_can_be_used(client, genre_run):
    with pytest.raises(AppError, match="not one of this demo's runs"):
        client.predict("/etc", handle_file(str(POSTER)), api_name="/analyse")


def test_no_runs_is_a_one_line_error(tmp_path):
    from posterlab.demo import build_demo
    from posterlab.errors import RunError

    with pytest.raises(RunError, match="no completed runs to demo; train one"):
        build_demo(checkpoints=tmp_path)


def test_serve_in_background(genre_run):
    from posterlab.demo import serve_in_background

    demo, port = serve_in_background(genre_run.parent, host="127.0.0.1", port=free_port())
    try:
        result = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            str(genre_run.resolve()), handle_file(str(POSTER)), api_name="/analyse"
        )
        assert result[1]["confidences"]
    finally:
        demo.close()


# ----------------------------------------------------------------- handlers, called without a server


@pytest.fixture(scope="module")
def state(genre_run: Path, binary_run: Path):
    from posterlab.demo import DemoState

    return DemoState(checkpoints=genre_run.parent)


def test_analyse_is_a_plain_function(state, genre_run):
    from posterlab.demo import analyse

    verdict, scores, table, items = analyse(state, str(genre_run.resolve()), str(POSTER))
    expected = Predictor(genre_run).predict_one(POSTER)
    assert scores == pytest.approx(expected.scores, abs=1e-5)
    assert list(table.columns) == ["label", "p", "threshold", "clears"] and len(table) == len(expected.scores)
    assert items[0][1] == "model input" and len(items) >= 2
    assert analyse(state, str(genre_run.resolve()), None) == ("", None, None, [])  # a cleared input


def test_warm_loads_the_first_model_once_in_the_background(genre_run, binary_run):
    from posterlab.demo import DemoState

    state = DemoState(checkpoints=genre_run.parent)
    first = next(iter(state.runs.values())).path
    assert first not in state.models  # building the state loads nothing
    thread = state.warm()
    assert state.warm() is thread  # once per demo
    thread.join(timeout=120)
    assert not thread.is_alive() and first in state.models


def test_a_model_that_cannot_load_is_reported_to_the_visitor_not_the_warm_up(genre_run, tmp_path, caplog):
    import logging
    import shutil

    from posterlab.demo import DemoState, analyse
    from posterlab.errors import PosterlabError

    broken = tmp_path / "broken"
    shutil.copytree(genre_run, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    state = DemoState(run=broken, examples=[])
    with caplog.at_level(logging.WARNING, logger="posterlab.demo"):
        state.warm().join(timeout=120)
    assert "could not load" in caplog.text and str(broken) in caplog.text
    with pytest.raises(PosterlabError):
        analyse(state, str(broken), str(POSTER))


def test_explain_labels_and_its_errors(state, genre_run):
    from posterlab.demo import explain_labels
    from posterlab.errors import PosterlabError, RunError

    labels = list(Predictor(genre_run).labels)
    [(image, caption)] = explain_labels(state, str(genre_run.resolve()), str(POSTER), labels[:1], "hirescam")
    assert caption.startswith(f"hirescam · {labels[0]} ") and image.size[0] > 0
    with pytest.raises(PosterlabError, match="unknown method 'scorecam'"):  # too slow for a demo
        explain_labels(state, str(genre_run.resolve()), str(POSTER), labels[:1], "scorecam")
    with pytest.raises(RunError, match="not one of this demo's runs"):
        explain_labels(state, "/etc", str(POSTER), labels[:1], "gradcam")


def test_fresh_rotten_and_the_pickers(state, binary_run, genre_run):
    from posterlab.demo import GALLERY_TOP, DemoState, fresh_rotten, on_model, refresh

    note, fresh, rotten = fresh_rotten(state, str(binary_run.resolve()))
    assert note.startswith("**Small data.**") and len(fresh) == len(rotten) == GALLERY_TOP
    assert fresh_rotten(state, str(binary_run.resolve()))[1] is fresh  # ranked once, then remembered
    # without one, the hint trains it where this demo reads runs (POSTERLAB_CHECKPOINTS or its folder)
    assert f"--out {state.checkpoints / 'demo-fresh-rotten'}`" in fresh_rotten(state, None)[0]
    # a demo of one run never lists that folder again: it has to start over it
    one = DemoState(run=genre_run, examples=[])
    assert "and start the demo over that folder (`posterlab demo --checkpoints" in fresh_rotten(one, None)[0]
    card, pick, _ = on_model(state, str(genre_run.resolve()))
    assert genre_run.name in card and pick["choices"]
    every, binary = refresh(state, None, None)
    assert {value for _, value in every["choices"]} >= {str(genre_run.resolve()), str(binary_run.resolve())}
    assert binary["value"] == str(binary_run.resolve())
