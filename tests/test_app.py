"""The workbench through Streamlit's AppTest: every page renders on the embedded sample, and the main
interactions work (selection and balancing, a background run from start to Compare, a refused second
start, stop, failure, Explore with Grad-CAM and uploads, delete, the sidebar's dataset choices).

AppTest takes the app for an old-style multipage app on every run (it resets Streamlit's pages flag
and a ``pages/`` folder exists), so each run here also goes through ``workbench.through_app``."""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
import time
import types
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from posterlab import settings
from workbench.state import Trainers, selection_key

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
PAGES = ("home", "dataset", "train", "compare", "explore", "demo")
POSTERS = sorted((settings.SAMPLES["sample"] / "images").glob("*.jpg"))
SAMPLE = selection_key("sample")  # widget-key prefix of the label selection on the embedded sample
SAMPLE_RT = selection_key("sample-rt")
TIMINGS = ROOT / "tests" / "artifacts" / "app_timings.json"


@pytest.fixture
def checkpoints(tmp_path: Path, monkeypatch, genre_run: Path, binary_run: Path) -> Path:
    """A checkpoints folder of its own per test, holding copies of the two finished sample runs."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for run in (genre_run, binary_run):
        shutil.copytree(run, folder / run.name)
    monkeypatch.setenv("POSTERLAB_CHECKPOINTS", str(folder))
    return folder


@pytest.fixture
def fake_demo(monkeypatch) -> types.ModuleType:
    """Stand in for ``posterlab.demo`` (the real one launches a Gradio server: tested with the demo)."""
    module = types.ModuleType("posterlab.demo")
    module.serve_in_background = lambda checkpoints, host=None, port=None: (object(), 7999)
    monkeypatch.setitem(sys.modules, "posterlab.demo", module)
    return module


@pytest.fixture
def app(checkpoints: Path, fake_demo: types.ModuleType) -> AppTest:
    """The app started on its Home page, with the copied runs and the stand-in demo."""
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    """No exception was shown on the page."""
    assert not at.exception, [e.value for e in at.exception]


def texts(elements: Iterable) -> list[str]:
    """The values of some elements, as strings."""
    return [str(e.value) for e in elements]


def page(at: AppTest, name: str) -> AppTest:
    """Switch to ``pages/<name>.py`` and run it cleanly."""
    at.switch_page(f"pages/{name}.py").run()
    assert_clean(at)
    return at


def open_tab(at: AppTest, key: str, label: str) -> AppTest:
    """Open a tab of a stateful ``st.tabs`` (as a click does) and rerun."""
    at.session_state[key] = label
    at.run()
    assert_clean(at)
    return at


def trainers() -> Trainers:
    """The process's training managers (the app's ``st.cache_resource``)."""
    from workbench.state import trainers as cached

    return cached()


def wait_until_idle(at: AppTest, timeout: float = 240.0) -> list[float]:
    """Poll the page like the fragment does until no run trains; the durations of each page run."""
    durations = []
    deadline = time.monotonic() + timeout
    while trainers().active() is not None:
        assert time.monotonic() < deadline, "the run did not finish in time"
        started = time.monotonic()
        at.run()
        durations.append(time.monotonic() - started)
        assert_clean(at)
        time.sleep(0.5)
    at.run()
    assert_clean(at)
    return durations


def small_run(at: AppTest, name: str, epochs: int = 1, patience: int = 6) -> None:
    """Fill the Train form for a tiny run: small CNN from scratch on 60 posters, top-4 genres."""
    at.selectbox(key="train_backbone").set_value("posterlab_small_cnn").run()
    assert at.radio(key="train_mode_False").value == "full"  # no pretrained weights: full by default
    at.number_input(key="train_epochs_full").set_value(epochs)
    at.number_input(key="train_patience").set_value(patience)
    at.number_input(key="train_limit").set_value(60)
    at.number_input(key="train_batch").set_value(16)
    at.radio(key=f"{SAMPLE}_how").set_value("top").run()
    at.number_input(key=f"{SAMPLE}_top").set_value(4)
    at.text_input(key="train_name").input(name)
    at.run()
    assert_clean(at)
    assert not at.button(key="train_start").disabled


def image_captions(at: AppTest) -> list[str]:
    """Captions of every image shown (one per image; empty for an image without one)."""
    return [image.caption for element in at.get("image") for image in element.proto.imgs]


def picker(at: AppTest, key: str):
    """A run picker (``workbench.widgets.run_picker``): its key ends with a digest of the runs' states."""
    pickers = [s for s in at.selectbox if s.key.startswith(f"{key}_")]
    assert len(pickers) == 1, [s.key for s in at.selectbox]
    return pickers[0]


def run_pick(at: AppTest, newest: str) -> str:
    """The value of the Train page's run picker, keyed by the newest run's name (and the runs' states)."""
    return picker(at, f"train_run_pick_{newest}").value


def table_with(at: AppTest, *columns: str) -> pd.DataFrame:
    """The first dataframe shown that has ``columns`` (AppTest does not expose a dataframe's key)."""
    for frame in at.dataframe:
        value = frame.value
        if set(columns) <= set(value.columns) | set(getattr(value.index, "names", ()) or ()) | {
            value.index.name
        }:
            return value
    raise AssertionError(f"no table with {columns}: {[list(f.value.columns) for f in at.dataframe]}")


def record(name: str, values: dict) -> None:
    """Add timings to ``tests/artifacts/app_timings.json``."""
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[name] = values
    TIMINGS.write_text(json.dumps(data, indent=2))


def test_every_page_renders_on_the_embedded_sample(app) -> None:
    """Home shows the sample, the runs and the device; every page renders without an error."""
    assert "posterlab" in app.title[0].value
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Posters"] == "300"
    assert metrics["Runs"] == "2"
    assert "CPU" in metrics or "GPU" in metrics
    titles = {"home": "posterlab", "dataset": "Dataset", "train": "Train", "compare": "Compare"}
    titles |= {"explore": "Explore", "demo": "Demo"}
    for name in PAGES:
        page(app, name)
        assert titles[name] in app.title[0].value
        assert not app.error, (name, texts(app.error))


def test_the_train_form_starts_from_the_config_defaults(app) -> None:
    """Every field of the form's config, untouched, is the dataclasses' default (the CLI's too)."""
    from posterlab.config import DataConfig, RunConfig, leaves, to_dict

    page(app, "train")
    shown = json.loads(app.json[0].value)  # "The run's config.json"
    expected = json.loads(json.dumps(to_dict(RunConfig(DataConfig(path="sample")))))
    for path, _ in leaves(RunConfig):
        got, want = shown, expected
        for part in path.split("."):
            got, want = got[part], want[part]
        assert got == want, path
    assert app.selectbox(key="train_optimizer").options == ["adamw", "sgd"]  # the config's choices


def test_a_number_out_of_range_is_refused_where_it_is_typed(app) -> None:
    """Patience 150 (at most 100): an error under the field and no Start, never the previous value."""
    page(app, "train")
    app.number_input(key="train_patience").set_value(150).run()
    assert_clean(app)
    assert "Early-stop patience: 150 is out of range; give a value from 0 to 100" in texts(app.error)
    assert app.button(key="train_start").disabled
    app.number_input(key="train_patience").set_value(40).run()
    assert not [t for t in texts(app.error) if "out of range" in t]
    assert not app.button(key="train_start").disabled
    assert json.loads(app.json[0].value)["train"]["patience"] == 40


def test_settings_come_back_from_the_page_url(checkpoints, fake_demo) -> None:
    """A refresh (a new session) of a URL the workbench wrote gives the same form: labels, balancing,
    patience, epochs; and they follow the user to another page and back."""
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.query_params |= {
        f"{SAMPLE}_how": "Top N",
        f"{SAMPLE}_balance": "oversample: repeat posters of rare labels (augmented differently each epoch)",
        "train_patience": "40",
        "train_epochs_probe": "400",
    }
    at.switch_page("pages/train.py").run()
    assert_clean(at)
    assert at.radio(key=f"{SAMPLE}_how").value == "top"
    assert at.number_input(key=f"{SAMPLE}_top").value == 6
    assert at.selectbox(key=f"{SAMPLE}_balance").value == "oversample"
    assert at.number_input(key="train_patience").value == 40
    config = json.loads(at.json[0].value)
    assert (config["train"]["patience"], config["train"]["epochs"]) == (40, 400)
    assert (config["data"]["labels"]["top_n"], config["data"]["balance"]) == (6, "oversample")
    page(at, "dataset")
    assert at.radio(key=f"{SAMPLE}_how").value == "top"
    assert at.selectbox(key=f"{SAMPLE}_balance").value == "oversample"


def test_dataset_selection_and_balancing(app) -> None:
    """Top-N, pick, Other and merges change the labels; undersampling shows before/after; Train shares it."""
    page(app, "dataset")
    assert app.radio(key=f"{SAMPLE}_target").value == "genres"
    assert app.radio(key=f"{SAMPLE}_how").value == "all"  # LabelConfig's default: every genre
    assert app.get("plotly_chart"), "genre counts, cardinality and co-occurrence charts"
    app.radio(key=f"{SAMPLE}_how").set_value("top").run()
    assert "multi-label over 6 labels: Drama, Comedy" in " ".join(texts(app.caption))  # Top N offers 6

    app.number_input(key=f"{SAMPLE}_top").set_value(3).run()
    assert "multi-label over 3 labels: Drama, Comedy, Action" in " ".join(texts(app.caption))

    app.radio(key=f"{SAMPLE}_how").set_value("pick").run()
    app.multiselect(key=f"{SAMPLE}_pick").set_value(["Horror", "Romance"]).run()
    app.checkbox(key=f"{SAMPLE}_other").check().run()
    assert "multi-label over 3 labels: Horror, Romance, Other" in " ".join(texts(app.caption))

    app.text_input(key=f"{SAMPLE}_merge").input("Musical").run()
    assert "write FROM=INTO" in texts(app.error)[0]
    app.text_input(key=f"{SAMPLE}_merge").input("Musical=Music").run()
    assert not app.error

    app.selectbox(key=f"{SAMPLE}_balance").set_value("undersample").run()
    open_tab(app, "dataset_tab", "Splits & balancing")
    table = table_with(app, "label", "before", "after")
    assert list(table["label"]) == ["Horror", "Romance", "Other"]
    assert (table["after"] <= table["before"]).all() and (table["after"] < table["before"]).any()
    assert any("after undersample" in c for c in texts(app.caption))

    open_tab(app, "dataset_tab", "Image sizes")
    assert table_with(app, "min", "median").loc["width", "min"] > 0
    open_tab(app, "dataset_tab", "Cleaning report")
    open_tab(app, "dataset_tab", "Augmentation preview")
    assert len(app.get("image")) == app.slider(key="dataset_aug_posters").value  # one row of views each

    # the selection carries over to the Train page (the widgets are shared and persist for the session;
    # AppTest applies a persisted value one run late, a browser at once: see test_browser)
    page(app, "train").run()
    assert app.radio(key=f"{SAMPLE}_how").value == "pick"
    assert app.multiselect(key=f"{SAMPLE}_pick").value == ["Horror", "Romance"]
    assert app.selectbox(key=f"{SAMPLE}_balance").value == "undersample"


def test_fresh_rotten_sample_and_threshold_target(app) -> None:
    """The fresh/rotten sample defaults to its label column; a threshold target on a numeric column works."""
    app.selectbox(key="sidebar_source").set_value("sample-rt").run()
    assert_clean(app)
    page(app, "dataset")
    assert app.radio(key=f"{SAMPLE_RT}_target").value == "label"
    assert app.radio(key=f"{SAMPLE_RT}_how").value == "all"
    assert "binary over 2 labels: fresh, rotten" in " ".join(texts(app.caption))
    app.radio(key=f"{SAMPLE_RT}_target").set_value("threshold").run()
    assert_clean(app)
    app.selectbox(key=f"{SAMPLE_RT}_column").set_value("tomatometer").run()
    app.number_input(key=f"{SAMPLE_RT}_value_tomatometer").set_value(60.0).run()
    assert "binary: tomatometer>=60 vs tomatometer<60" in " ".join(texts(app.caption))
    page(app, "train")  # a single-label target: the validation metric to watch is one of its own
    watched = app.selectbox(key="train_monitor_balanced_accuracy")
    assert watched.value == "auto" and "balanced_accuracy" in watched.options and "map" not in watched.options


def test_train_in_the_background_then_compare(app, checkpoints) -> None:
    """A tiny run started from the form trains in the background, completes, and shows on Compare."""
    page(app, "train")
    small_run(app, "apptest-run")
    app.selectbox(key="train_monitor_map").set_value("macro_f1").run()
    app.button(key="train_start").click().run()
    assert_clean(app)
    assert trainers().active() is not None or (checkpoints / "apptest-run").exists()
    durations = wait_until_idle(app)
    assert any("apptest-run" in m and "completed" in m for m in texts(app.markdown)), texts(app.markdown)
    assert not app.error
    assert json.loads((checkpoints / "apptest-run" / "status.json").read_text())["status"] == "completed"
    assert json.loads((checkpoints / "apptest-run" / "metrics.json").read_text())["monitor"] == "macro_f1"
    # the run list below the form reads it back from disk
    assert run_pick(app, "apptest-run") == "apptest-run"

    page(app, "compare")
    table = table_with(app, "run", "status")
    assert "apptest-run" in set(table["run"])
    assert {"map", "baseline_map"} <= set(table.columns)
    assert "apptest-run" in app.multiselect(key="compare_runs").options
    app.multiselect(key="compare_runs").set_value(["apptest-run", "genres-small"]).run()
    assert_clean(app)
    assert app.get("plotly_chart")  # curves of both runs
    for label in ("Test metrics", "Per label", "ROC / PR", "Confusion"):
        open_tab(app, "compare_tab", label)
    assert table_with(app, "label", "tp", "fp", "fn", "tn")["label"].tolist()  # multi-label: per-label 2x2
    app.multiselect(key="compare_runs").set_value(["fresh-rotten"]).run()
    open_tab(app, "compare_tab", "Confusion")
    assert app.get("plotly_chart"), "single-label confusion heatmap"
    assert table_with(app, "truth", "predicted", "posters") is not None
    record("train_to_compare", {"page_runs_while_training_s": [round(d, 3) for d in durations]})


def test_second_start_refused_stop_and_responsiveness(app, checkpoints) -> None:
    """A second Start is refused while a run trains; pages stay fast; Stop, Resume and Stop again work."""
    page(app, "train")
    started = time.monotonic()
    app.run()
    idle_train = time.monotonic() - started
    small_run(app, "apptest-long", epochs=200, patience=0)
    app.button(key="train_start").click().run()
    assert_clean(app)
    assert trainers().active() is not None
    assert app.button(key="train_stop")

    app.text_input(key="train_name_1").input("apptest-second").run()  # a fresh field after a start
    app.button(key="train_start").click().run()
    assert any("a run is already training (apptest-long)" in e for e in texts(app.error)), texts(app.error)
    assert not (checkpoints / "apptest-second").exists()

    # other pages while it trains: time full page runs (the browser test times a click round-trip)
    busy = {}
    for name in ("dataset", "compare", "explore", "home", "train"):
        started = time.monotonic()
        page(app, name)
        busy[name] = round(time.monotonic() - started, 3)
    assert trainers().active() is not None, "the run should still be training"
    assert max(busy.values()) < 10, busy

    deadline = time.monotonic() + 120
    while not trainers().active().snapshot().history:  # stop after an epoch, so there is one to resume
        assert time.monotonic() < deadline
        time.sleep(0.5)
    app.button(key="train_stop").click().run()
    assert_clean(app)
    wait_until_idle(app)
    status = json.loads((checkpoints / "apptest-long" / "status.json").read_text())
    assert status["status"] == "stopped"
    assert any("apptest-long" in m and "stopped" in m for m in texts(app.markdown))

    # resume it from the run list (the same manager, one run at a time), then stop it again
    epochs = len(json.loads((checkpoints / "apptest-long" / "history.json").read_text()))
    app.button(key="train_resume").click().run()
    assert_clean(app)
    deadline = time.monotonic() + 120
    while trainers().active() is not None and len(trainers().active().snapshot().history) <= epochs:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    app.run()
    if trainers().active() is not None:
        app.button(key="train_stop").click().run()
    wait_until_idle(app)
    assert len(json.loads((checkpoints / "apptest-long" / "history.json").read_text())) > epochs
    assert json.loads((checkpoints / "apptest-long" / "status.json").read_text())["status"] == "stopped"

    idle = {}
    for name in ("dataset", "compare", "explore", "home", "train"):
        started = time.monotonic()
        page(app, name)
        idle[name] = round(time.monotonic() - started, 3)
    record(
        "page_run_seconds", {"while_training": busy, "idle": idle, "train_idle_first": round(idle_train, 3)}
    )


def test_failed_run_shows_its_error_also_after_a_restart(app, checkpoints) -> None:
    """A failing run shows its one-line error live, and again from checkpoints/ after a restart."""
    page(app, "train")
    app.radio(key=f"{SAMPLE}_target").set_value("label").run()
    app.radio(key=f"{SAMPLE}_how").set_value("top").run()
    app.selectbox(key="train_backbone").set_value("posterlab_small_cnn").run()
    app.number_input(key=f"{SAMPLE}_top").set_value(1)
    app.number_input(key="train_epochs_full").set_value(1)
    app.text_input(key="train_name").input("apptest-fails")
    app.run()
    app.button(key="train_start").click().run()
    wait_until_idle(app)
    message = "a single-label target needs at least two classes"
    assert any(message in e for e in texts(app.error)), texts(app.error)

    # a "restart": a fresh manager and a fresh session read the failure back from checkpoints/
    from workbench.state import trainers as cached

    cached.clear()
    fresh = AppTest.from_file(str(APP), default_timeout=180).run()
    page(fresh, "train")
    assert run_pick(fresh, "apptest-fails") == "apptest-fails"
    assert any(message in e for e in texts(fresh.error)), texts(fresh.error)


def test_explore_a_run(app) -> None:
    """Gallery filters, top losses with Grad-CAM, activation maps, top fresh posters with Grad-CAM, uploads."""
    page(app, "explore")
    app.selectbox(key="explore_run").set_value("genres-small").run()
    assert_clean(app)
    gallery = len(app.get("image"))
    assert gallery > 0
    app.selectbox(key="explore_outcome").set_value("wrong").run()
    assert len(app.get("image")) <= gallery

    open_tab(app, "explore_tab", "Top losses")
    app.selectbox(key="explore_loss_label").set_value("Drama")
    app.slider(key="explore_loss_k").set_value(3)
    app.toggle(key="explore_loss_cam").set_value(True).run()
    assert_clean(app)
    captions = image_captions(app)
    assert len(captions) == 6  # three posters, each with its Grad-CAM for Drama under it
    assert sum("loss" in c for c in captions) == 3

    open_tab(app, "explore_tab", "Activation maps")
    app.select_slider(key="explore_act_level").set_value(0).run()
    assert_clean(app)
    assert app.get("plotly_chart")

    open_tab(app, "explore_tab", "Map")  # every sample poster placed by its embedding, coloured by a label
    assert_clean(app)
    assert app.get("vega_lite_chart")
    assert app.selectbox(key="explore_map_colour").value.startswith("label: ")
    # the caption counts the posters with predictions: those of the split picked above (test), not all
    shown = next(c for c in texts(app.caption) if re.search(r"· \d+ test posters", c))
    scored = next(c for c in texts(app.caption) if "this run scored" in c)
    test_count = re.search(r"· (\d+) test posters", shown).group(1)
    assert f"for the {test_count} of them this run scored in its test split" in scored, scored
    app.selectbox(key="explore_map_colour").set_value("outcome").run()
    assert_clean(app)
    like = app.selectbox(key="explore_map_like")
    like.set_value(like.options[0] if isinstance(like.options[0], int) else 0).run()
    assert_clean(app)
    assert any(c.startswith("Nearest to ") for c in texts(app.caption)), texts(app.caption)

    # fresh / rotten: the posters surest to be fresh, each with its Grad-CAM
    app.selectbox(key="explore_run").set_value("fresh-rotten").run()
    open_tab(app, "explore_tab", "Top by label")
    app.selectbox(key="explore_rank_label").set_value("fresh")
    app.slider(key="explore_rank_k").set_value(3).run()
    assert_clean(app)
    assert any("Highest p(fresh)" in c for c in texts(app.caption))
    captions = image_captions(app)
    assert len(captions) == 6 and sum("p(fresh)" in c for c in captions) == 3
    scores = [float(re.search(r"p\(fresh\) ([0-9.]+)", c)[1]) for c in captions if "p(fresh)" in c]
    assert scores == sorted(scores, reverse=True)
    app.toggle(key="explore_rank_low").set_value(True).run()
    assert any("Lowest p(fresh)" in c for c in texts(app.caption))

    open_tab(app, "explore_tab", "Your posters")
    app.file_uploader(key="explore_upload").set_value(
        [("poster.jpg", POSTERS[0].read_bytes(), "image/jpeg"), ("broken.jpg", b"not an image", "image/jpeg")]
    ).run()
    assert_clean(app)
    assert any("poster.jpg" in m and "→" in m for m in texts(app.markdown))
    errors = texts(app.error)
    assert len(errors) == 1 and errors[0].startswith("broken.jpg: not an image") and "\n" not in errors[0]
    assert app.get("plotly_chart"), "the poster's scores against thresholds"


def test_delete_a_run_on_compare(app, checkpoints) -> None:
    """Delete needs a confirmation tick, then removes the run folder."""
    page(app, "compare")
    assert app.button(key="compare_delete").disabled  # nothing goes without the confirmation tick
    app.selectbox(key="compare_delete_pick").set_value("genres-small").run()
    app.checkbox(key="compare_delete_sure").check().run()
    app.button(key="compare_delete").click().run()
    assert_clean(app)
    assert "Deleted genres-small" in texts(app.success)
    assert not (checkpoints / "genres-small").exists()
    assert set(table_with(app, "run", "status")["run"]) == {"fresh-rotten"}
    # a metric the single-label run does not have (map) is a dash, not the word "None"
    assert [frame.proto.placeholder for frame in app.dataframe][:1] == ["–"]


def test_home_imports_the_demo_in_the_background(app) -> None:
    """Once Home is drawn, the demo's code (gradio) is imported in a background thread, once per server,
    so that the Demo page's first visit does not wait for it."""
    from posterlab import background
    from workbench import state

    state._demo_imported.clear()
    before = {id(thread) for thread, _ in background._threads}
    app.run()
    started = [t for t, _ in background._threads if t.name == "posterlab-demo-import" and id(t) not in before]
    assert len(started) == 1
    started[0].join(60)
    app.run()  # once per server: a second visit starts nothing
    assert [
        t for t, _ in background._threads if t.name == "posterlab-demo-import" and id(t) not in before
    ] == started


def test_demo_page_embeds_the_demo_or_says_why_not(app, fake_demo, monkeypatch) -> None:
    """The demo is embedded when it starts; a start failure or a missing module is one clear line."""
    page(app, "demo")
    assert app.get("iframe") and not app.error

    def broken(checkpoints: Path, host: str | None = None, port: int | None = None) -> str:
        raise OSError("port 7860 is taken")

    monkeypatch.setattr(fake_demo, "serve_in_background", broken)
    from workbench import state

    state._demo_server.clear()  # started once per server process: forget the first one
    app.run()
    assert texts(app.error) == ["The demo could not start: OSError: port 7860 is taken"]

    monkeypatch.setitem(sys.modules, "posterlab.demo", None)  # not installed: importing it fails
    app.run()
    assert_clean(app)
    assert any("not available" in i for i in texts(app.info))


def _zip(entries: dict[str, bytes]) -> bytes:
    """A zip archive of ``entries`` (name → bytes), in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_sidebar_dataset_folder_and_uploads(app, tmp_path) -> None:
    """A folder path, an uploaded dataset zip, and a hostile zip refused with one line."""
    app.selectbox(key="sidebar_source").set_value("path").run()
    app.text_input(key="sidebar_path").input(str(settings.SAMPLES["sample-rt"])).run()
    assert_clean(app)
    assert "96 posters" in " ".join(texts(app.sidebar.caption))
    app.text_input(key="sidebar_path").input(str(tmp_path / "nowhere")).run()
    assert texts(app.sidebar.error)[0].endswith(
        "give a dataset folder, a labels CSV, MovieGenre.csv or a zip"
    )
    page(app, "dataset")
    assert any("Pick a dataset" in i for i in texts(app.info))
    page(app, "explore")  # the map places no posters (it read the server's working folder as a dataset)
    open_tab(app, "explore_tab", "Map")
    assert any("Pick a dataset in the sidebar to place" in i for i in texts(app.info))
    assert not app.get("vega_lite_chart")
    page(app, "dataset")

    rows = ["imdb_id,genres"] + [f"{p.stem},Drama|Comedy" for p in POSTERS[:12]]
    entries = {"mini/labels.csv": "\n".join(rows).encode()}
    entries |= {f"mini/images/{p.name}": p.read_bytes() for p in POSTERS[:12]}
    app.selectbox(key="sidebar_source").set_value("upload").run()
    app.sidebar.file_uploader(key="sidebar_upload").set_value(
        ("mini.zip", _zip(entries), "application/zip")
    ).run()
    assert_clean(app)
    assert "12 posters" in " ".join(texts(app.sidebar.caption))
    assert any(p.name == "uploads" for p in settings.cache_dir().iterdir())

    hostile = _zip({"../escape.txt": b"x", "labels.csv": b"imdb_id,genres\n"})
    app.sidebar.file_uploader(key="sidebar_upload").set_value(("evil.zip", hostile, "application/zip")).run()
    errors = texts(app.sidebar.error)
    assert len(errors) == 1 and "points outside the archive folder" in errors[0] and "\n" not in errors[0]
