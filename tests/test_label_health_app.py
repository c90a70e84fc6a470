"""The Dataset page's Label health view and the Train page's corrections choice: AppTest on a corrections
file as an audit records it, and one real-browser pass that audits the sample, accepts a suggestion,
reloads, and downloads the corrected labels.csv."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from posterlab import settings
from posterlab.data.corrections import ACCEPT, Corrections, corrections_path
from tests.conftest import lite0_weights
from tests.test_app import APP, assert_clean, fake_demo, open_tab, page, texts  # noqa: F401 — fixture

LABELS = pd.read_csv(settings.SAMPLES["sample"] / "labels.csv", dtype=str)
FIRST, SECOND = LABELS["imdb_id"].iloc[0], LABELS["imdb_id"].iloc[1]


@pytest.fixture
def no_corrections():
    corrections_path("sample").unlink(missing_ok=True)
    yield
    corrections_path("sample").unlink(missing_ok=True)


@pytest.fixture
def health_app(tmp_path: Path, monkeypatch, fake_demo, no_corrections) -> AppTest:  # noqa: F811
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setenv("POSTERLAB_CHECKPOINTS", str(tmp_path / "checkpoints"))
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    assert_clean(at)
    return at


def _flag_two() -> None:
    """What an audit of the sample's genres records: one genre to remove, one to add."""
    first_genre = LABELS["genres"].iloc[0].split("|")[0]
    corrections = Corrections.load("sample")
    corrections.set_flagged(
        "genres",
        {
            FIRST: {"add": [], "remove": [first_genre], "quality": 0.01},
            SECOND: {"add": ["Horror"], "remove": [], "quality": 0.02},
        },
    )
    corrections.summaries["genres"] = "300 posters, 2 flagged; estimated noisy share 1.0%"
    corrections.save()


def test_label_health_gallery_decisions_and_filters(health_app: AppTest) -> None:
    at = page(health_app, "dataset")
    open_tab(at, "dataset_tab", "Label health")
    assert any("No audit of these labels yet" in t for t in texts(at.info))

    _flag_two()
    at.run()
    assert_clean(at)
    assert any("2 flagged · 0 accepted" in t for t in texts(at.caption))
    assert any("Last audit: 300 posters, 2 flagged" in t for t in texts(at.caption))
    at.button(key=f"health_accept_{FIRST}").click().run()
    assert_clean(at)
    assert Corrections.load("sample").decision("genres", FIRST) == ACCEPT  # saved in the file at once
    assert any("2 flagged · 1 accepted" in t for t in texts(at.caption))
    assert not [b for b in at.button if b.key == f"health_accept_{FIRST}"]  # undecided only, by default

    at.selectbox(key="dataset_health_status").set_value("all").run()
    assert [b for b in at.button if b.key == f"health_accept_{FIRST}"]
    at.selectbox(key="dataset_health_kind").set_value("missing but likely").run()
    shown = {b.key for b in at.button if b.key and b.key.startswith("health_keep_")}
    assert shown == {f"health_keep_{SECOND}"}
    at.selectbox(key="dataset_health_kind").set_value("all").run()
    at.selectbox(key="dataset_health_genre").set_value("Horror").run()
    assert {b.key for b in at.button if b.key and b.key.startswith("health_keep_")} == {
        f"health_keep_{SECOND}"
    }

    # a fresh session (a refresh) reads the decisions back from the file, and the filters from the URL
    fresh = AppTest.from_file(str(APP), default_timeout=180)
    fresh.query_params |= {
        "dataset_tab": "Label health",
        "dataset_health_genre": "Horror",
        "dataset_health_status": "all",
        "dataset_health_kind": "a kind this audit does not have",  # left at its default, no error
    }
    fresh.switch_page("pages/dataset.py").run()
    assert_clean(fresh)
    assert any("2 flagged · 1 accepted" in t for t in texts(fresh.caption))
    assert fresh.selectbox(key="dataset_health_genre").value == "Horror"
    assert fresh.selectbox(key="dataset_health_status").value == "all"
    assert fresh.selectbox(key="dataset_health_kind").value == "all"
    assert {b.key for b in fresh.button if b.key and b.key.startswith("health_keep_")} == {
        f"health_keep_{SECOND}"
    }


def test_train_page_offers_the_corrections(health_app: AppTest) -> None:
    _flag_two()
    at = page(health_app, "train")
    box = at.selectbox(key="train_corrections")
    assert box.options == ["As labelled", "With corrections (accepted suggestions)",
                           "Without flagged posters (unreviewed ones left out)"]  # fmt: skip
    assert any("2 posters flagged, 0 suggestions accepted" in t for t in texts(at.caption))
    box.set_value("drop").run()
    assert_clean(at)
    assert json.loads(at.json[0].value)["data"]["corrections"] == "drop"  # "The run's config.json"


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
@pytest.mark.skipif(lite0_weights() is None, reason="needs POSTERLAB_WEIGHTS_DIR with Lite0 weights")
def test_label_health_in_a_real_browser(tmp_path: Path, no_corrections) -> None:
    """Flag (run the audit from the page), accept the most suspicious poster, reload, download."""
    from playwright.sync_api import expect, sync_playwright

    from tests.conftest import free_port
    from tests.test_browser import ARGS, go, serving, settle, shot

    port = free_port()
    command = ["python", "-m", "streamlit", "run", str(APP), "--server.port", str(port)]
    command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    import sys

    command[0] = sys.executable
    env = {"POSTERLAB_CHECKPOINTS": str(tmp_path / "checkpoints"), "GRADIO_ANALYTICS_ENABLED": "False"}
    url = f"http://127.0.0.1:{port}"
    with serving(command, f"{url}/_stcore/health", tmp_path / "streamlit.log", env), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            view = browser.new_page(viewport={"width": 1440, "height": 1400})
            view.goto(url)
            settle(view)
            go(view, "Dataset")
            shot(view, "label-health-dataset")
            expect(view.get_by_role("tab", name="Label health")).to_be_visible(timeout=400_000)
            view.get_by_role("tab", name="Label health").click()
            settle(view)
            view.get_by_role("button", name="Find suspicious labels").click()
            expect(view.get_by_text("Last audit:").first).to_be_visible(timeout=600_000)  # flag
            settle(view)
            flagged = Corrections.load("sample").flagged["genres"]
            assert flagged
            view.get_by_role("button", name="Accept").first.click()  # the most suspicious poster
            settle(view)
            expect(view.get_by_text("1 accepted", exact=False).first).to_be_visible(timeout=60_000)
            [accepted] = Corrections.load("sample").accepted("genres")
            shot(view, "label-health")

            view.reload()  # refresh (a new session, on the Dataset page): the decision comes back from the file
            settle(view)
            expect(view.get_by_role("tab", name="Label health")).to_be_visible(timeout=400_000)
            settle(view)
            view.get_by_role("tab", name="Label health").click(no_wait_after=True)
            settle(view)
            expect(view.get_by_text("1 accepted", exact=False).first).to_be_visible(timeout=60_000)

            with view.expect_download() as download:
                view.get_by_role("button", name="Download corrected labels.csv").click()
            table = pd.read_csv(io.StringIO(Path(download.value.path()).read_text()), dtype=str)
            assert list(table.columns) == list(LABELS.columns) and len(table) == len(LABELS)
            change = flagged[accepted]
            row = table.set_index("imdb_id").loc[accepted, "genres"].split("|")
            assert not set(change["remove"]) & set(row) and set(change["add"]) <= set(row)
            original = LABELS.set_index("imdb_id").loc[accepted, "genres"]  # the sample's file unchanged
            assert (
                original
                == pd.read_csv(settings.SAMPLES["sample"] / "labels.csv", dtype=str)
                .set_index("imdb_id")
                .loc[accepted, "genres"]
            )
        finally:
            browser.close()


def test_the_map_can_colour_by_label_quality(no_corrections) -> None:
    from posterlab.data.corrections import save_scores
    from workbench.label_health import quality_column
    from workbench.widgets import map_chart

    points = pd.DataFrame(
        {"id": [FIRST, SECOND, "tt-none"], "x": [0.0, 1, 2], "y": [0.0, 1, 2], "thumbnail": "", "title": "t"}
    ).assign(truth="Drama")
    assert "label quality" not in quality_column(points, "sample")  # never audited
    _flag_two()
    save_scores("sample", "genres", pd.DataFrame({"id": [FIRST, SECOND], "quality": [0.1, 0.9]}))
    shown = quality_column(points, "sample")
    assert shown["label quality"].iloc[:2].tolist() == [0.1, 0.9] and shown["label quality"].isna().iloc[2]
    encoding = map_chart(shown, "label quality", ["Drama"]).to_dict()["encoding"]["color"]
    assert encoding["type"] == "quantitative" and encoding["scale"]["domain"] == [0, 1]
