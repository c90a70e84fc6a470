"""The Demo page's first visit on a fresh workbench server, as a user meets it in chromium.

A fresh ``streamlit run app.py`` (its own process), Debian's chromium through Playwright: open Home and
wait for its cards, stay there ``--dwell`` seconds (reading it, as a user does), click Demo, and time
until the demo's frame is on the page. With ``--root DIR`` the app in another checkout runs instead (an
earlier revision in a worktree), so that two revisions can be compared on the same machine.

    python benchmarks/demo_first_visit.py [--dwell 10] [--root DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from posterlab.launch import free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dwell", type=float, default=10.0, help="seconds on Home before Demo is clicked")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose app.py runs")
    args = parser.parse_args()

    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(args.root)}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(args.root / "app.py"),
        "--server.port",
        str(port),
    ]
    command += ["--server.headless", "true", "--server.address", "127.0.0.1"]
    server = subprocess.Popen(
        command, cwd=args.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2),
            ):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("streamlit did not start")
            time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--headless"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            started = time.monotonic()
            page.goto(f"http://127.0.0.1:{port}")
            expect(page.get_by_text("What can a movie poster tell us")).to_be_visible(timeout=120_000)
            expect(page.get_by_text("torch ", exact=False).first).to_be_visible(timeout=120_000)
            home = time.monotonic() - started
            page.wait_for_timeout(args.dwell * 1000)
            clicked = time.monotonic()
            page.get_by_test_id("stTopNavLink").filter(has_text="Demo").first.click()
            expect(page.locator("iframe").first).to_be_attached(timeout=180_000)
            demo = time.monotonic() - clicked
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"Home with its cards: {home:.1f} s; the demo's frame {demo:.1f} s after the click (dwell {args.dwell} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
