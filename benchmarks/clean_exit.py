"""Every workbench page rendered through Streamlit's AppTest (the real demo included), then exit: N times.

The issue this guards: 1 run in 3 ended with 'terminate called without an active exception' (exit 134),
a background thread still inside native code when Python finalized. ``posterlab.background`` now stops and
joins every such thread at exit. Prints each run's exit code and seconds; all must be 0.

    python benchmarks/clean_exit.py --runs 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

SCRIPT = textwrap.dedent(
    """
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file("app.py", default_timeout=300)
    at.run()
    for name in ("home", "dataset", "train", "compare", "explore", "demo"):
        at.switch_page(f"pages/{name}.py").run()
        assert not at.exception, [e.value for e in at.exception]
    print("rendered every page", flush=True)
    """
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="posterlab-exit-") as folder:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "POSTERLAB_CACHE_DIR": str(Path(folder) / "cache")}
        for i in range(args.runs):
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True
            )
            row = {"run": i + 1, "exit": done.returncode, "seconds": round(time.monotonic() - started, 1)}
            if done.returncode:
                row["tail"] = done.stderr.strip().splitlines()[-1:]
            rows.append(row)
            print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "clean_exit.json").write_text(json.dumps(rows, indent=2))
    clean = sum(r["exit"] == 0 for r in rows)
    print(f"{clean} of {len(rows)} runs exited 0")
    return 0 if clean == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
