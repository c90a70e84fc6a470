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
    command += ["--server.address", "127.0.0.1", "--server.headless", "true"]
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
    """Open a page from the sidebar navigation and wait for it."""
    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name=name, exact=True).click()
    settle(page)


def shot(page: Page, name: str) -> None:
    """Save a full-page screenshot under tests/artifacts/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"), full_page=True)


def timed_visit(page: Page, name: str, text: str, chart: bool = False) -> float:
    """Seconds from a click on a page's link to its content (and first chart) being shown."""
    from playwright.sync_api import expect

    clicked = time.monotonic()
    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_text(text, exact=True)).to_be_visible(timeout=60_000)
    if chart:
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
    seconds = time.monotonic() - clicked
    settle(page)
    return seconds


def fill(page: Page, label: str, value: str) -> None:
    """Type into a labelled input and commit it (Enter), as a user does."""
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Enter")
    settle(page)


def test_probe_run_from_train_to_compare_and_explore(server: str) -> None:
    """Train a small probe run from the browser, use another page meanwhile, then Compare and Explore."""
    from playwright.sync_api import expect, sync_playwright

    timings: dict[str, float | str] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1600})
            # the fresh server's first request is a page's own URL (a refresh after a restart): it must
            # still come through app.py, with the sidebar settings (workbench.through_app)
            started = time.monotonic()
            page.goto(f"{server}/train")
            expect(page.get_by_role("button", name="Start training")).to_be_visible(timeout=120_000)
            expect(page.get_by_label("Checkpoints folder", exact=True)).to_be_visible()
            settle(page)
            timings["first_load_s"] = round(time.monotonic() - started, 2)
            go(page, "Home")
            expect(page.get_by_text("What can a movie poster tell us")).to_be_visible()
            shot(page, "1-home")

            # the Dataset page once before training (its first visit reads and checks every poster)
            timings["dataset_first_visit_s"] = round(
                timed_visit(page, "Dataset", "Labels to learn", chart=True), 2
            )

            go(page, "Train")
            expect(page.get_by_role("button", name="Start training")).to_be_visible()
            if lite0_weights() is None:  # no local ImageNet weights: a small CNN from scratch instead
                page.get_by_role("combobox", name="Backbone").click()
                page.get_by_role("option", name="Small CNN (from scratch)").click()
                settle(page)
                timings["model"] = "posterlab_small_cnn full"
            else:
                timings["model"] = "tf_efficientnet_lite0 probe"
            fill(page, "Epochs", "4")
            fill(page, "Poster limit (0: all)", "80")
            fill(page, "Run name (optional)", RUN)
            page.get_by_role("button", name="Start training").click()
            expect(page.get_by_text(f"{RUN}").first).to_be_visible(timeout=30_000)
            shot(page, "2-train-running")

            # while it trains: another page, timed from the click to its charts being drawn
            clicked = time.monotonic()
            seconds = timed_visit(page, "Dataset", "Labels to learn", chart=True)
            timings["dataset_click_while_training_s"] = round(seconds, 2)
            timings["sidebar_showed_training"] = page.get_by_text("Follow it on Train").count() > 0
            shot(page, "3-dataset-while-training")
            timings["home_click_while_training_s"] = round(timed_visit(page, "Home", "Where to go"), 2)
            timings["still_training_after_home"] = page.get_by_text("Follow it on Train").count() > 0

            go(page, "Train")
            expect(page.get_by_label("Epochs", exact=True)).to_have_value("4")  # the form kept its values
            done = page.get_by_text(re.compile(rf"{RUN}\s*·\s*(completed|stopped|failed)")).first
            expect(done).to_be_visible(timeout=240_000)
            settle(page)
            timings["start_to_completed_s"] = round(time.monotonic() - clicked, 2)
            expect(page.get_by_text(re.compile(rf"{RUN}\s*·\s*completed")).first).to_be_visible()
            shot(page, "4-train-completed")

            timings["dataset_click_idle_s"] = round(
                timed_visit(page, "Dataset", "Labels to learn", chart=True), 2
            )
            timings["home_click_idle_s"] = round(timed_visit(page, "Home", "Where to go"), 2)

            clicked = time.monotonic()
            go(page, "Compare")
            expect(page.get_by_test_id("stMultiSelect").get_by_text(RUN)).to_be_visible(timeout=60_000)
            expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=60_000)
            timings["compare_click_to_table_s"] = round(time.monotonic() - clicked, 2)
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
            shot(page, "5-compare")

            go(page, "Explore")
            expect(page.get_by_role("tab", name="Your posters")).to_be_visible(timeout=60_000)
            page.get_by_role("tab", name="Your posters").click()
            settle(page)
            page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(POSTER))
            expect(page.get_by_text("what the model saw")).to_be_visible(timeout=120_000)
            settle(page)
            images = page.locator("[data-testid='stImage']")
            assert images.count() >= 2, "the crop the model saw and at least one Grad-CAM overlay"
            expect(page.get_by_text(f"{POSTER.name} →")).to_be_visible()
            shot(page, "6-explore-upload")
        finally:
            browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(timings, indent=2))


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
