"""Load on the Gradio demo: concurrent gradio_client clients against a launched ``posterlab demo``.

Three measurements in one run, on the same posters and model:

1. baseline: the demo's work done in-process, one poster after another (``Explainer.explain`` with the
   predicted labels, as the demo's ``analyse`` does), in a worker thread as Gradio runs it, no server;
2. one client: the same calls through the server, sequentially (adds HTTP, queue, image files);
3. N clients at once (default 20), each sending a few posters: errors, p50/p95/max latency, throughput.

The server runs in its own process (``posterlab demo RUN --port P``), as users would start it, so the
clients' threads do not compete with it for the GIL. Prints the figures and writes JSON.

    python benchmarks/demo_load.py [--run checkpoints/demo-genres] [--clients 20] [--requests 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from posterlab import settings
from posterlab.runs import list_runs

RESULTS = Path(__file__).resolve().parent / "results" / "demo_load.json"


def default_run() -> Path:
    root = settings.checkpoints_dir()
    if (root / "demo-genres" / "model.json").is_file():
        return root / "demo-genres"
    completed = [r.path for r in list_runs(root) if r.state == "completed" and r.model]
    if not completed:
        sys.exit(f"no completed run under {root}; pass --run RUN_DIR (e.g. one made with posterlab train)")
    return completed[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def summary(latencies: list[float]) -> dict:
    if not latencies:
        return {"n": 0}
    values = np.asarray(latencies) * 1000
    return {
        "n": len(latencies),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p95_ms": round(float(np.percentile(values, 95)), 1),
        "max_ms": round(float(values.max()), 1),
        "mean_ms": round(float(values.mean()), 1),
    }


def baseline(run: Path, posters: list[Path]) -> dict:
    """The demo's analysis without a server: scores and Grad-CAM for the predicted labels."""
    from posterlab.explain import Explainer
    from posterlab.inference import Predictor

    predictor = Predictor(run)
    explainer = Explainer(predictor)
    latencies: list[float] = []

    def work() -> None:
        explainer.explain(posters[0], top_k=len(predictor.labels))  # warm-up
        for poster in posters:
            start = time.perf_counter()
            explainer.explain(poster, top_k=len(predictor.labels))
            latencies.append(time.perf_counter() - start)

    # Gradio calls handlers from worker threads; measure the same way (on a loaded 2-core machine the
    # main thread's torch calls were 3-10x slower than a worker thread's, which would flatter the server)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return summary(latencies)


def start_server(run: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "posterlab.cli", "demo", str(run), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            sys.exit(f"the demo did not start: {server.stderr.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline:
                server.terminate()
                sys.exit("the demo did not listen within 3 minutes")
            time.sleep(0.5)


def one_client(url: str, posters: list[Path]) -> dict:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    client.predict(poster=handle_file(str(posters[0])), api_name="/analyse")  # warm-up (model load)
    latencies = []
    for poster in posters:
        start = time.perf_counter()
        client.predict(poster=handle_file(str(poster)), api_name="/analyse")
        latencies.append(time.perf_counter() - start)
    return summary(latencies)


def concurrent(url: str, posters: list[Path], clients: int, requests: int) -> dict:
    """``clients`` threads, each with its own gradio_client, released together, ``requests`` calls each."""
    from gradio_client import Client, handle_file

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def worker(index: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as error:  # a client that cannot connect counts as errors, the others go on
            with lock:
                errors.extend([f"connect: {type(error).__name__}: {error}"] * requests)
            ready.wait()
            return
        ready.wait()
        for k in range(requests):
            poster = posters[(index * requests + k) % len(posters)]
            start = time.perf_counter()
            try:
                result = client.predict(poster=handle_file(str(poster)), api_name="/analyse")
                assert result[1]["confidences"], "no scores"
                with lock:
                    latencies.append(time.perf_counter() - start)
            except Exception as error:
                with lock:
                    errors.append(f"{type(error).__name__}: {str(error)[:200]}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join(timeout=600)
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests_per_client": requests,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "wall_s": round(wall, 2),
        "throughput_per_s": round(len(latencies) / wall, 2) if wall else None,
        **summary(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run folder (default: checkpoints/demo-genres)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=3, help="posters per client")
    parser.add_argument("--posters", type=int, default=20, help="distinct sample posters to cycle through")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    run = (args.run or default_run()).resolve()
    posters = sorted((settings.SAMPLES["sample"] / "images").glob("*.jpg"))[: args.posters]
    print(f"run {run}; {len(posters)} sample posters; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")

    direct = baseline(run, posters)
    print(f"baseline (in-process, sequential): p50 {direct['p50_ms']} ms, p95 {direct['p95_ms']} ms")

    port = free_port()
    server = start_server(run, port)
    url = f"http://127.0.0.1:{port}/"
    try:
        single = one_client(url, posters)
        print(f"one client (sequential): p50 {single['p50_ms']} ms, p95 {single['p95_ms']} ms")
        load = concurrent(url, posters, args.clients, args.requests)
        print(
            f"{load['clients']} clients x {load['requests_per_client']}: errors {load['errors']}, "
            f"p50 {load.get('p50_ms')} ms, p95 {load.get('p95_ms')} ms, max {load.get('max_ms')} ms, "
            f"{load['throughput_per_s']} req/s over {load['wall_s']} s"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)

    import gradio
    import torch

    from posterlab.demo import CONCURRENCY, QUEUE_SIZE
    from posterlab.inference import Predictor

    report = {
        "run": str(run),
        "backbone": Predictor(run).info["backbone"],
        "machine": {
            "cpus": os.cpu_count(),
            # the machine is shared: a high load average means the figures include others' work
            "load_average_1m_5m_15m": [round(v, 2) for v in os.getloadavg()],
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gradio": gradio.__version__,
        },
        "demo": {"concurrency_limit": CONCURRENCY, "queue_size": QUEUE_SIZE},
        "baseline_in_process": direct,
        "one_client": single,
        "concurrent": load,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
