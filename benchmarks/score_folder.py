"""Scoring a folder of posters to Parquet at scale: posters/s, peak RSS flat in the number of posters, and
a killed job resumed.

A temporary folder holds --posters hard links to the development posters (cycled, so each link is its
own file, read and decoded as a real one would be). Each measurement is a fresh process that calls
``posterlab.scoring.score`` (what ``posterlab predict RUN FOLDER --out FILE.parquet`` runs), and its peak
resident memory comes from the kernel (``wait4``):

  small    the first --small posters, start to finish
  killed   all --posters, SIGKILLed once --kill-after posters are in finished part files
  resumed  the same command again: it skips what the killed job finished and merges everything

While each process runs, its resident memory is sampled against the posters it has written out, so
that the table shows whether memory stays flat as the posters go by, not only the peak.

    python benchmarks/score_folder.py --data ../shared/datasets/posters     # 1,000 and 10,000 posters
    python benchmarks/score_folder.py --data ../shared/datasets/posters --posters 2000 --small 500

Writes benchmarks/results/score_folder.json. The rate is posters scored over the seconds spent scoring
(model load and the one-time ONNX export excluded); the wall time of each process is given beside it.
The machine's load average is recorded at start and end: other jobs share these cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from posterlab.scoring import CHUNK  # posters per part file

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CHILD = textwrap.dedent(
    """
    import json, sys
    from posterlab.scoring import score
    run, folder, out, report, batch = sys.argv[1:6]
    result = score(run, [folder], out, batch_size=int(batch), progress=False)
    open(report, "w").write(json.dumps(result))
    """
)


def link_posters(source: Path, target: Path, count: int) -> None:
    """``count`` hard links to the development posters, cycled (each a file of its own name)."""
    images = sorted((source / "images").glob("*.jpg"))
    if not images:
        raise SystemExit(f"{source}: no images/*.jpg")
    target.mkdir(parents=True)
    for index in range(count):
        image = images[index % len(images)]
        os.link(image, target / f"{index:06d}-{image.name}")


def _run(args, folder: Path, out: Path, report: Path, kill_after: int | None = None) -> dict:
    """One scoring process: wall seconds, peak RSS (MB), its report (None when killed)."""
    command = [
        sys.executable,
        "-c",
        CHILD,
        args.run,
        str(folder),
        str(out),
        str(report),
        str(args.batch_size),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    killed_at = None
    parts = out.with_name(out.name + ".parts")
    trace: dict[int, float] = {}  # posters in finished parts (this process's) -> its resident MB then
    first = None
    ended = None  # wait4, not poll: poll would reap the child and lose its resource usage
    while ended is None:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            ended = (status, usage)
            break
        done = len(list(parts.glob("*.parquet"))) * CHUNK if parts.is_dir() else 0
        first = done if first is None else first  # parts a killed job left
        rss = _rss_mb(process.pid)
        if rss is not None and done > first:
            trace[done - first] = max(trace.get(done - first, 0.0), rss)
        if kill_after is not None and done >= kill_after:
            process.send_signal(signal.SIGKILL)
            killed_at = done
            break
        time.sleep(0.5)
    status, usage = ended if ended is not None else os.wait4(process.pid, 0)[1:]  # after the kill
    wall = time.monotonic() - started
    figures = {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    if trace:  # resident memory as the posters go by: flat or growing
        marks = sorted(trace)
        figures["rss_mb_by_posters"] = {m: trace[m] for m in marks[:: max(1, len(marks) // 8)] + marks[-1:]}
    if killed_at is not None:
        figures["killed_after_posters"] = killed_at
        return figures
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"scoring failed (exit {os.waitstatus_to_exitcode(status)})")
    return {**figures, **json.loads(report.read_text())}


def _rss_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((row for row in text.splitlines() if row.startswith("VmRSS:")), None)
    return round(int(line.split()[1]) / 1024, 1) if line else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder with images/*.jpg (the development posters)")
    parser.add_argument("--run", default=str(ROOT / "checkpoints" / "demo-fresh-rotten"))
    parser.add_argument("--posters", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--kill-after", type=int, default=3_000, help="posters scored before the kill")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    results: dict = {
        "run": args.run,
        "posters": args.posters,
        "small": args.small,
        "load_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="score-folder-") as scratch:
        work = Path(scratch)
        link_posters(Path(args.data), work / "small", args.small)
        link_posters(Path(args.data), work / "large", args.posters)
        print(f"{args.small} and {args.posters} hard links in {work}", file=sys.stderr)

        results["small_run"] = _run(args, work / "small", work / "small.parquet", work / "small.json")
        print("small", results["small_run"], file=sys.stderr)
        out = work / "large.parquet"
        results["killed_run"] = _run(
            args, work / "large", out, work / "killed.json", kill_after=args.kill_after
        )
        print("killed", results["killed_run"], file=sys.stderr)
        results["resumed_run"] = _run(args, work / "large", out, work / "resumed.json")
        print("resumed", results["resumed_run"], file=sys.stderr)

        import pyarrow.parquet as pq

        table = pq.read_table(out, columns=["image", "ok"])
        images = table.column("image").to_pylist()
        results["final_rows"] = len(images)
        results["final_unique"] = len(set(images))
        results["final_errors"] = table.num_rows - sum(table.column("ok").to_pylist())
        results["final_mb"] = round(out.stat().st_size / 1e6, 2)
    results["load_end"] = os.getloadavg()

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "score_folder.json").write_text(json.dumps(results, indent=2))
    report(results)


def report(results: dict) -> None:
    """The table (also from a saved results file: ``report(json.load(...))``)."""
    small, killed, resumed = results["small_run"], results["killed_run"], results["resumed_run"]
    print(
        f"\nscoring {Path(results['run']).name} to Parquet (load average {results['load_start'][0]:.1f} at start, "
        f"{results['load_end'][0]:.1f} at end)"
    )
    print(f"{'process':<34}{'posters scored':>15}{'posters/s':>11}{'wall s':>9}{'peak RSS MB':>13}")
    print(
        f"{format(results['small'], ',') + ' posters':<34}{small['scored']:>15,}{small['posters_per_s']:>11}"
        f"{small['wall_s']:>9}{small['peak_rss_mb']:>13}"
    )
    print(
        f"{format(results['posters'], ',') + ' posters, killed':<34}{'≥' + format(killed['killed_after_posters'], ','):>15}"
        f"{'':>11}{killed['wall_s']:>9}{killed['peak_rss_mb']:>13}"
    )
    print(
        f"{format(results['posters'], ',') + ' posters, resumed':<34}{resumed['scored']:>15,}{resumed['posters_per_s']:>11}"
        f"{resumed['wall_s']:>9}{resumed['peak_rss_mb']:>13}"
    )
    print(
        f"resumed run skipped {resumed['skipped']:,} already scored; final file {results['final_rows']:,} rows, "
        f"{results['final_unique']:,} distinct posters, {results['final_errors']} errors, {results['final_mb']} MB"
    )
    for name in ("small_run", "killed_run", "resumed_run"):
        marks = results[name].get("rss_mb_by_posters", {})
        shown = ", ".join(f"{int(n):,}: {mb:.0f}" for n, mb in marks.items())
        print(f"{name}: resident MB after n posters of its own: {shown}")


if __name__ == "__main__":
    main()
