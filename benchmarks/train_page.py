"""Training from the workbench against the same run in a plain process: what the live page costs.

A real ``streamlit run app.py`` and Debian's chromium (Playwright), as a user has them: a zip of sample
posters uploaded, a short probe trained first (imports, backbone export and embeddings warm, as in a
session), then the timed run started from the Train page, timed from the Start click (its epochs and
name typed before it) until the page shows it completed, with the page polling its progress and
redrawing its curves; ``--repeats`` times (the first computes the frozen part's output, the others read
it back). After each page run the same config (read back from its ``config.json``) trains with
``train_run`` in a plain process of the pass (after the same warm-up, with a cache of its own), so that
each pair sees the same machine load (this checkout's posterlab, also beside a ``--before`` app). The figures are medians;
the ratio is the page's median over the plain one's, over every repeat and over those that read the frozen
part back (all but the first). ``run_s`` is the run's own time in the app (its ``status.json``): the rest of
the page's time is the Start click's page run and showing the end.

It also runs the page with Streamlit's default ``runner.postScriptGC = true`` (a full ``gc.collect()``
after every script run, fragments included), which the app's ``.streamlit/config.toml`` turns off.
Prints the figures and writes JSON.

    python benchmarks/train_page.py [--posters 60] [--epochs 6] [--mode finetune] [--repeats 3]
        [--gc off,on] [--before REV]

With ``--before REV`` the app at that git revision runs too (from a worktree), just before this one in
each setting, so that both see the same machine load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd

from posterlab import settings
from posterlab.launch import free_port

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results" / "train_page.json"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (and their waited-for children) so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def chromium_kind(pid: int) -> str:
    """A chromium process's part: browser, renderer, gpu-process, utility, ..."""
    with contextlib.suppress(OSError):
        # chromium's children rewrite their command line as one string, arguments separated by spaces
        for arg in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split():
            if arg.startswith(b"--type="):
                return arg[7:].decode()
        return "browser"
    return "gone"


def cpu_by_kind(pids: list[int]) -> dict[str, float]:
    """CPU seconds so far of chromium's processes, by part."""
    kinds: dict[str, float] = {}
    for pid in pids:
        kind = chromium_kind(pid)
        kinds[kind] = kinds.get(kind, 0.0) + cpu_seconds([pid])
    return kinds


def memory_mib(pid: int) -> dict:
    """The process's resident memory now and at its peak (MiB)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        key: round(int(status[field].split()[0]) / 1024)
        for key, field in (("rss", "VmRSS"), ("peak", "VmHWM"))
    }


def pids(pattern: str) -> list[int]:
    """Processes matching ``pattern`` that this benchmark started (descendants of this process): other
    users' browsers on a shared machine are not counted."""
    found = {
        int(p)
        for p in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    }
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    mine = {os.getpid()}
    for _ in range(16):  # chromium's process tree is a few levels deep under playwright's driver
        mine |= {pid for pid, parent in parents.items() if parent in mine}
    return sorted(found & mine)


def poster_zip(folder: Path, count: int) -> Path:
    """labels.csv + images/ of the embedded sample's first ``count`` posters, as a user uploads one."""
    sample = settings.SAMPLES["sample"]
    table = pd.read_csv(sample / "labels.csv", dtype=str).head(count)
    path = folder / "posters.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("labels.csv", table.to_csv(index=False))
        for movie in table["imdb_id"]:
            archive.write(sample / "images" / f"{movie}.jpg", f"images/{movie}.jpg")
    return path


@contextlib.contextmanager
def streamlit(port: int, folder: Path, gc: bool, root: Path = ROOT) -> Iterator[subprocess.Popen]:
    command = [sys.executable, "-m", "streamlit", "run", str(root / "app.py"), "--server.port", str(port)]
    command += ["--server.headless", "true", "--runner.postScriptGC", str(gc).lower()]
    # a cache of its own: the timed run computes what it caches (a fine-tune, the frozen part's output)
    env = {
        **os.environ,
        "POSTERLAB_CHECKPOINTS": str(folder / "checkpoints"),
        "POSTERLAB_CACHE_DIR": str(folder / "cache"),
        "PYTHONPATH": str(root),  # the app and the posterlab it imports from the same checkout
    }
    log = (folder / "streamlit.log").open("w")
    server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        url = f"http://127.0.0.1:{port}/_stcore/health"
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"streamlit did not start: {(folder / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def settle(page) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", polling=100)


def fill(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True).filter(visible=True)
    field.fill(value)
    field.press("Enter")
    settle(page)


def prepare(page, name: str, epochs: int) -> None:
    """Type the run's epochs and name into the form (before the clock starts: a plain process is not timed
    while its config is written either)."""
    fill(page, "Epochs", str(epochs))
    fill(page, "Run name (optional)", name)


def start(page) -> None:
    page.get_by_role("button", name="Start training").click()


def completed(page, name: str, timeout_s: float = 1800) -> None:
    """Wait until the live panel shows the run completed, checking every 100 ms (Playwright's ``expect``
    backs off to a check a second, which would add up to a second to the page's time)."""
    page.wait_for_function(
        "name => new RegExp(name + '\\\\s*·\\\\s*completed')"
        ".test(document.querySelector('.st-key-train_live')?.innerText ?? '')",
        arg=name,
        polling=100,
        timeout=timeout_s * 1000,
    )


def refreshed(page) -> None:
    """Wait for the page run that follows a run's end (the panel shows the end first, the next poll
    refreshes the page): its notice that a run is training is gone then."""
    page.wait_for_function(
        "!document.body.innerText.includes('A run is training;')", polling=100, timeout=60_000
    )
    settle(page)


def through_page(folder: Path, upload: Path, args: argparse.Namespace, gc: bool, root: Path = ROOT) -> dict:
    """Warm-up probe, then the timed run, from the Train page, each time followed by the same config in a
    plain process (``Plain``); wall times and CPU by process."""
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    with streamlit(port, folder, gc, root) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1400})
        page.goto(f"http://127.0.0.1:{port}")
        expect(page.get_by_text("What can a movie poster tell us")).to_be_visible(timeout=120_000)
        page.get_by_role("combobox", name="Dataset").click()
        page.get_by_role("option", name="Upload a CSV or a zip").click()
        settle(page)
        page.locator("[data-testid='stSidebar'] input[type='file']").set_input_files(str(upload))
        expect(page.get_by_text(f"{args.posters} posters").first).to_be_visible(timeout=120_000)
        settle(page)
        page.get_by_test_id("stTopNavLink").filter(has_text="Train").first.click()
        settle(page)
        prepare(page, "warm-up", 2)
        start(page)
        completed(page, "warm-up")
        refreshed(page)
        page.get_by_role("radiogroup", name="Mode").get_by_text(args.mode, exact=True).click()
        settle(page)
        fill(page, "Early-stop patience", str(args.epochs))
        watched = [server.pid]
        walls, runs, app_cpu, browser_cpu, plain_walls, idle_cpu = [], [], [], [], [], []
        plain_cpu: list[float] = []
        browser_kinds: list[dict[str, float]] = []
        plain = Plain(folder / "plain", folder / "checkpoints" / "warm-up")
        for repeat in range(args.repeats):  # the first computes the frozen part's output, the rest read it
            name = "timed" if repeat == 0 else f"timed-{repeat + 1}"
            prepare(page, name, args.epochs)
            browsers = pids("chrom")
            before = cpu_seconds(watched), cpu_seconds(browsers)
            kinds_before = cpu_by_kind(browsers)
            started = time.monotonic()  # from the Start click to "completed" on the page
            start(page)
            completed(page, name)
            walls.append(round(time.monotonic() - started, 1))
            runs.append(json.loads((folder / "checkpoints" / name / "status.json").read_text())["seconds"])
            app_cpu.append(round(cpu_seconds(watched) - before[0], 1))
            browser_cpu.append(round(cpu_seconds(pids("chrom")) - before[1], 1))
            kinds_after = cpu_by_kind(pids("chrom"))
            browser_kinds.append(
                {k: round(v - kinds_before.get(k, 0.0), 2) for k, v in kinds_after.items() if k != "gone"}
            )
            refreshed(page)
            idle = cpu_seconds(watched) + cpu_seconds(pids("chrom"))
            plain_wall, plain_process_cpu = plain(folder / "checkpoints" / name)
            plain_walls.append(plain_wall)
            plain_cpu.append(plain_process_cpu)
            idle_cpu.append(round(cpu_seconds(watched) + cpu_seconds(pids("chrom")) - idle, 2))
        paired = list(zip(walls, plain_walls, strict=True))
        paired = paired[1:] or paired
        result = {
            "wall_s": round(statistics.median(walls), 2),
            "walls_s": walls,
            # the run's own time in the app (its status.json): the rest of wall_s is the Start click's page
            # runs and showing the end
            "run_s": round(statistics.median(runs), 2),
            "runs_s": runs,
            "plain_wall_s": round(statistics.median(plain_walls), 2),
            "plain_walls_s": plain_walls,
            "times_plain": round(statistics.median(walls) / statistics.median(plain_walls), 2),
            # the repeats that read the frozen part's output back (all but the first): the first, which
            # also computes it, is the longest of each side, so with few repeats it sets the median
            "times_plain_cached": round(
                statistics.median(walls[1:] or walls) / statistics.median(plain_walls[1:] or plain_walls), 2
            ),
            # each page run over the plain run right after it (the same machine load), median over the repeats
            # that read the frozen part back: the steadiest of the three on a machine whose speed drifts
            "times_plain_paired": round(statistics.median(page / plain for page, plain in paired), 2),
            # CPU the app and chromium used while the plain runs trained (idle: the page's run had ended)
            "app_and_browser_cpu_during_plain_s": idle_cpu,
            "app_cpu_s": statistics.median(app_cpu),
            # the same run's CPU in the plain process: the app's CPU beyond it is its polls and page runs
            "plain_cpu_s": statistics.median(plain_cpu),
            "browser_cpu_s": statistics.median(browser_cpu),
            # chromium's CPU per timed run by part (renderer: the page's script, layout and paint; gpu-process:
            # compositing, in software here)
            "browser_cpu_by_part_s": {
                kind: statistics.median(run.get(kind, 0.0) for run in browser_kinds)
                for kind in sorted({kind for run in browser_kinds for kind in run})
            },
            "app_memory_mib": memory_mib(server.pid),  # with or without a gc.collect() after each run
            "run": str(folder / "checkpoints" / "timed"),
        }
        browser.close()
        plain.close()
    return result


class Plain:
    """The page's timed config trained in a plain process right after each page run, so that each pair sees
    the same machine load. One process per pass, as the app is one: it trains the same warm-up probe first
    (imports and caches warm), then each timed config as the page finishes it, in the same order (the
    first computes the frozen part's output, as the page's first does), with a cache of its own. The
    browser and the app are idle meanwhile (the page's run has ended)."""

    def __init__(self, folder: Path, warm_up: Path) -> None:
        """Start the process and wait until it has trained the warm-up (before the page's timed runs, which
        its start would otherwise slow)."""
        env = {**os.environ, "POSTERLAB_CACHE_DIR": str(folder / "cache"), "PYTHONPATH": str(ROOT)}
        command = [sys.executable, __file__, "--plain-runs", str(folder), str(warm_up)]
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._reply()

    def __call__(self, run: Path) -> tuple[float, float]:
        """Train ``run``'s config: the wall seconds it took and the process's CPU seconds meanwhile."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{run}\n")
        wall, cpu = self._reply().split()
        return float(wall), float(cpu)

    def _reply(self) -> str:
        assert self.process.stdout is not None
        reply = self.process.stdout.readline().strip()
        if not reply:
            raise SystemExit(f"the plain process ended (exit code {self.process.wait()})")
        return reply

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def plain_runs(folder: Path, warm_up: Path) -> None:
    """``--plain-runs``: train the ``warm_up`` run's config and say so, then for each run folder read from
    stdin train its config in this process and print the wall and CPU seconds it took."""
    from posterlab.config import RunConfig, from_dict
    from posterlab.runs import read_json
    from posterlab.training.trainer import train_run

    train_run(from_dict(RunConfig, read_json(warm_up / "config.json")["run"]), folder)
    print("ready", flush=True)
    for line in sys.stdin:
        run = Path(line.strip())
        timed = from_dict(RunConfig, read_json(run / "config.json")["run"])
        started, cpu = time.monotonic(), time.process_time()
        train_run(replace(timed, name=f"{timed.name}-plain"), folder)
        print(round(time.monotonic() - started, 1), round(time.process_time() - cpu, 2), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--posters", type=int, default=60, help="how many sample posters the zip holds")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--mode", default="finetune", choices=["probe", "finetune", "full"])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per pass and in the plain process (medians)"
    )
    parser.add_argument("--gc", default="off,on", help="postScriptGC settings to run the page with")
    parser.add_argument(
        "--before", help="git revision whose app to run too, interleaved with this one (e.g. main)"
    )
    parser.add_argument("--plain-runs", nargs=2, metavar=("FOLDER", "WARM_UP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_runs:  # the plain process beside a page pass (see Plain)
        plain_runs(Path(args.plain_runs[0]), Path(args.plain_runs[1]))
        return 0
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    work = Path(tempfile.mkdtemp(prefix="posterlab-train-page-"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    upload = poster_zip(work, args.posters)
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "posters": args.posters,
        "epochs": args.epochs,
        "mode": args.mode,
        "page": {},
    }
    roots = {"": ROOT}
    if args.before:  # the earlier app from a worktree of its own, run before this one in each setting
        before = work / "before"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(before), args.before],
            check=True,
            capture_output=True,
        )
        roots = {f"before {args.before}, ": before, **roots}
        result["before"] = args.before
    result["load_average_start"] = os.getloadavg()
    try:
        for setting in args.gc.split(","):
            for label, root in roots.items():
                name = f"{label}postScriptGC={setting}"
                folder = work / name.replace(" ", "_").replace(",", "")
                folder.mkdir()
                result["page"][name] = through_page(folder, upload, args, gc=setting == "on", root=root)
                print(f"page, {name}: {result['page'][name]}", flush=True)
    finally:  # a failed pass leaves no worktree behind
        if args.before:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], capture_output=True
            )
    for name, page in result["page"].items():
        print(
            f"{name}: {page['wall_s']} s through the page, {page['times_plain']}x the plain process "
            f"({page['times_plain_cached']}x over the runs that read the frozen part back; each of those over its "
            f"plain run, median {page['times_plain_paired']}x); chromium {page['browser_cpu_s']} s of CPU a run"
        )
    result["load_average_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
