"""One real-browser pass over the workbench: ``streamlit run app.py`` in a subprocess, Debian's chromium
driven by Playwright. Start a small probe run from Train, use another page while it trains (timed), see
it complete, find it on Compare, upload a poster in Explore and see its Grad-CAM overlay.

Screenshots and timings go to ``tests/artifacts/`` (git-ignored)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from posterlab import settings
from tests.conftest import free_port, lite0_weights

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
RUN = "browser-probe"
POSTER = sorted((settings.SAMPLES["sample"] / "images").glob("*.jpg"))[0]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]


@contextlib.contextmanager
def serving(command: list[str], ready: str, log_path: Path, env: dict | None = None) -> Iterator[None]:
    """Run ``command`` from the repository root until ``ready`` answers 200; stop it afterwards."""
    log = log_path.open("w")
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(ready, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{' '.join(command[1:4])} did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The app served by ``streamlit run`` on a free port, with a checkpoints folder of its own."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port)]
    # every interface (as Streamlit's default), so that 127.0.0.2 stands in for another machine
    command += ["--server.address", "0.0.0.0", "--server.headless", "true"]
    env = {"POSTERLAB_CHECKPOINTS": str(tmp_path / "checkpoints"), "GRADIO_ANALYTICS_ENABLED": "False"}
    url = f"http://127.0.0.1:{port}"
    with serving(command, f"{url}/_stcore/health", tmp_path / "streamlit.log", env):
        yield url


def settle(page: Page, timeout: float = 120_000) -> None:
    """Wait until the app has finished its current script run (the status widget goes away)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout, polling=100
    )


def go(page: Page, name: str) -> None:
    """Open a page from the navigation at the top and wait for it."""
    page.get_by_test_id("stTopNavLink").filter(has_text=name).first.click()
    settle(page)


def shot(page: Page, name: str) -> None:
    """Save a full-page screenshot under tests/artifacts/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)


def timed_visit(page: Page, name: str, text: str, chart: bool = False) -> float:
    """Seconds from a click on a page's link to its content (and first chart) being shown."""
    from playwright.sync_api import expect

    clicked = time.monotonic()
    page.get_by_test_id("stTopNavLink").filter(has_text=name).first.click()
    expect(page.get_by_text(text, exact=True)).to_be_visible(timeout=60_000)
    if chart:
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
    seconds = time.monotonic() - clicked
    settle(page)
    return seconds


def fill(page: Page, label: str, value: str) -> None:
    """Type into a labelled input and commit it (Enter), as a user does."""
    from playwright.sync_api import expect

    field = page.get_by_label(label, exact=True).filter(visible=True)  # not a hidden one of another mode
    expect(field).to_have_count(1, timeout=30_000)
    field.fill(value)
    field.press("Enter")
    settle(page)


def _poster_zip(folder: Path, count: int = 60) -> Path:
    """A dataset zip as a user would upload one: labels.csv + images/ of ``count`` sample posters."""
    import zipfile

    import pandas as pd

    table = pd.read_csv(settings.SAMPLES["sample"] / "labels.csv", dtype=str).head(count)
    path = folder / "first-hour.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("labels.csv", table.to_csv(index=False))
        for movie in table["imdb_id"]:
            archive.write(settings.SAMPLES["sample"] / "images" / f"{movie}.jpg", f"images/{movie}.jpg")
    return path


def _choose(page: Page, box: str, option: str) -> None:
    page.get_by_role("combobox", name=box).click()
    page.get_by_role("option", name=option).click()
    settle(page)


def _train(page: Page, name: str, epochs: str) -> None:
    from playwright.sync_api import expect

    fill(page, "Epochs", epochs)
    fill(page, "Run name (optional)", name)
    expect(page.get_by_label("Run name (optional)", exact=True).filter(visible=True)).to_have_value(name)
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text(name).first).to_be_visible(timeout=30_000)


def test_the_first_hour_of_a_new_user(server: str, tmp_path: Path) -> None:
    """A freshly started server, opened at once; a zip of posters uploaded (and kept across a reload);
    its distributions; a probe trained; a fine-tune stopped and resumed; Compare; Explore with Grad-CAM
    and the embedding map; the embedded demo opened from "another machine" (127.0.0.2)."""
    from playwright.sync_api import expect, sync_playwright

    timings: dict[str, float | str] = {}
    phases: dict[str, float] = {}
    upload = _poster_zip(tmp_path)
    began = time.monotonic()

    def phase(name: str) -> None:  # seconds since the previous phase, for first_hour_timings.json
        phases[name] = round(time.monotonic() - began - sum(phases.values()), 2)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1400})
            started = time.monotonic()
            page.goto(server)  # the server answered its health check a moment ago: its very first page
            expect(page.get_by_text("What can a movie poster tell us")).to_be_visible(timeout=60_000)
            timings["first_page_s"] = round(time.monotonic() - started, 2)
            nav = page.get_by_test_id("stTopNavLink")
            assert [nav.nth(i).inner_text().split("\n")[-1] for i in range(nav.count())] == [
                "Home",
                "Dataset",
                "Train",
                "Compare",
                "Explore",
                "Demo",
            ]
            assert page.get_by_test_id("stSidebarNav").count() == 0  # no old lowercase file menu
            shot(page, "hour-1-first-page")

            _choose(page, "Dataset", "Upload a CSV or a zip")
            page.locator("[data-testid='stSidebar'] input[type='file']").set_input_files(str(upload))
            expect(page.get_by_text("60 posters").first).to_be_visible(timeout=60_000)
            settle(page)
            page.reload()  # a reload keeps the uploaded dataset, named by its file
            expect(page.get_by_text("Using first-hour.zip, uploaded earlier.")).to_be_visible(timeout=60_000)
            settle(page)
            timings["dataset_first_visit_s"] = round(
                timed_visit(page, "Dataset", "Labels to learn", chart=True), 2
            )
            expect(page.get_by_text("first-hour.zip").first).to_be_visible()
            assert page.get_by_text("uploads/").count() == 0  # no cache path where the user reads
            shot(page, "hour-2-dataset")
            phase("upload_and_dataset_s")

            go(page, "Train")
            if lite0_weights() is None:
                _choose(page, "Backbone", "Small CNN (from scratch)")
            _train(page, "hour-probe", "5")
            expect(page.get_by_text(re.compile(r"hour-probe\s*·\s*completed")).first).to_be_visible(
                timeout=240_000
            )
            settle(page)
            shot(page, "hour-3-probe")
            phase("probe_s")

            page.get_by_role("radiogroup", name="Mode").get_by_text("finetune", exact=True).click()
            settle(page)
            fill(page, "Early-stop patience", "6")  # 60 posters: it would stop early on its own
            _train(page, "hour-finetune", "6")
            # the live progress reaches the second epoch (the first one's curve is drawn): then Stop
            expect(page.get_by_text(re.compile(r"^epoch [2-6]/6")).first).to_be_visible(timeout=240_000)
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
            page.get_by_role("button", name="Stop", exact=True).click()
            stopped = page.get_by_text(re.compile(r"stopped after epoch \d/6 \(stop requested\)")).first
            expect(stopped).to_be_visible(timeout=120_000)
            settle(page)
            shot(page, "hour-4-finetune-stopped")
            page.get_by_role("button", name="Resume", exact=True).click()
            expect(page.get_by_text(re.compile(r"hour-finetune\s*·\s*completed")).first).to_be_visible(
                timeout=300_000
            )
            settle(page)
            shot(page, "hour-5-finetune-resumed")
            phase("finetune_stop_resume_s")

            go(page, "Compare")
            picked = page.get_by_test_id("stMultiSelect")
            expect(picked.get_by_text("hour-finetune")).to_be_visible(timeout=60_000)
            expect(picked.get_by_text("hour-probe")).to_be_visible()
            expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
            shot(page, "hour-6-compare")
            phase("compare_s")

            go(page, "Explore")
            page.get_by_role("tab", name="Top by label").click()
            settle(page)
            expect(page.get_by_text(re.compile("^Grad-CAM: ")).first).to_be_visible(timeout=120_000)
            shot(page, "hour-7-explore-gradcam")
            phase("explore_gradcam_s")
            started = time.monotonic()
            page.get_by_role("tab", name="Map", exact=True).click()
            settle(page)
            expect(
                page.locator(
                    "[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg"
                ).first
            ).to_be_visible(timeout=120_000)
            timings["map_first_draw_s"] = round(time.monotonic() - started, 2)
            page.get_by_role("combobox", name="Posters like this one").click()
            page.get_by_role("option").first.click()
            settle(page)
            expect(page.get_by_text(re.compile(r"^(≈ )?\d\.\d\d · ")).first).to_be_visible(timeout=60_000)
            neighbour = page.get_by_test_id("stImage").locator("img").first  # the posters, not only captions
            expect(neighbour).to_be_visible(timeout=60_000)
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=neighbour.element_handle()
            )
            shot(page, "hour-8-explore-map")
            phase("explore_map_s")

            # another machine: the workbench reached as 127.0.0.2, the demo through the same host
            port = server.rsplit(":", 1)[1]
            page.goto(f"http://127.0.0.2:{port}/demo")
            frame = page.locator("iframe").first
            expect(frame).to_be_visible(timeout=120_000)
            assert frame.get_attribute("src").startswith("http://127.0.0.2:")
            expect(
                page.frame_locator("iframe").first.get_by_text("what can a poster tell about its film?")
            ).to_be_visible(timeout=120_000)
            shot(page, "hour-9-demo-from-another-host")
            phase("demo_s")
        except Exception:
            shot(page, "hour-failed-here")  # what the page showed when a step failed
            raise
        finally:
            browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "first_hour_timings.json").write_text(json.dumps({**timings, "phases": phases}, indent=2))


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[str]:
    """``posterlab demo`` over the committed ready-made runs, as a user starts it, on a free port."""
    port = free_port()
    command = [sys.executable, "-m", "posterlab.cli", "demo", "--port", str(port)]
    command += ["--checkpoints", str(ROOT / "checkpoints")]
    url = f"http://127.0.0.1:{port}"
    with serving(command, url, tmp_path / "demo.log", {"GRADIO_ANALYTICS_ENABLED": "False"}):
        yield url


def test_demo_upload_shows_genres_and_overlays(demo_server: str) -> None:
    """Upload a held-out poster to the demo: a verdict, the probabilities and one overlay per predicted
    genre come back; then the fresh-or-rotten tab ranks the sample with overlays. Screenshots of both."""
    from playwright.sync_api import expect, sync_playwright

    poster = settings.SAMPLES["sample"] / "images" / "tt2043757.jpg"  # 2-Headed Shark Attack (held out)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(demo_server)
            expect(page.get_by_text("what can a poster tell about its film?")).to_be_visible(timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(str(poster))
            expect(page.get_by_text("Predicted:")).to_be_visible(timeout=120_000)
            # each overlay's caption: a predicted genre, its probability, the threshold it clears
            caption = re.compile(r"^(Drama|Comedy|Romance|Action|Thriller|Horror) \d\.\d\d ≥ \d\.\d\d$")
            expect(page.get_by_text(caption).first).to_be_visible(timeout=60_000)
            shot(page, "demo-1-poster")

            page.get_by_role("tab", name="Fresh or rotten").click()
            expect(page.get_by_text("Small data.").first).to_be_visible(timeout=60_000)
            # gallery captions: ✓ / ✗ (the real label agrees or not), the probability, the title
            ranked = page.get_by_text(re.compile(r"^[✓✗] \d\.\d\d \S"))
            expect(ranked.first).to_be_visible(timeout=120_000)
            assert ranked.count() >= 2, "posters on both sides: most fresh and most rotten"
            shot(page, "demo-2-fresh-or-rotten")
        finally:
            browser.close()
