"""CPU speed of probe training and of feature extraction, beside the machine's own bounds, in one run.

On the same posters (default 400 development posters with a top-6 genre):
  bounds       per-core costs, one thread each: decoding a poster (open, draft-decode, resize/crop, to
               uint8 pixels: what a loader process does) and running the frozen tf_efficientnet_lite0 on it through each installed engine
               (OpenVINO, ONNX Runtime; pre-decoded batches); the two-core bound is
               cores / (decode s + model s) per poster with both kept busy; extraction end to end as a
               fraction of the best engine's bound. The same two costs with every core at work at
               once (decoding in a process per core, the model with a request or thread per core) give a
               second bound, 1 / (1 / decode rate + 1 / model rate), for cores that slow each other
  engines      the cold probe from an export-only cache with each engine forced (POSTERLAB_ENGINE), and with
               posterlab's own pick, interleaved --rounds times (the same load for each); the cache holds
               each one's measured choice, as every run after the first finds it
  cold         `posterlab train --mode probe --epochs 10` with an empty cache
  warm         the same command again: embeddings from the cache, the backbone never built
  export-cached  the cold command from a cache holding only the backbone's ONNX export: extraction as
               every run after a backbone's first one sees it (the first also exports, ~4 s for Lite0)
  before       the same cold and warm commands with posterlab at an earlier git revision (--before REV)
  startup      `posterlab --help`, `posterlab predict RUN POSTER`, `posterlab evaluate RUN --data ...`,
               and `posterlab demo RUN` until its page answers and until a poster sent then is answered
  int8         the cold probe with --int8 (opt-in): extraction speed and test mAP beside fp32
  draft        the same posters enlarged 4x (a large-poster dataset): model inputs and probe test mAP
               with JPEG draft decoding against full decoding
  plain        (--plain) a plain seed-style loop: decode, resize and run the frozen backbone every epoch
  chunks       (--chunks 4,8,16) extraction end to end from the same cached export with posterlab's pick,
               only the remembered chunk size changed, interleaved --rounds times

Each end-to-end measurement runs in its own process (wall time, peak RSS of that process).

    python benchmarks/speed.py --data ../shared/datasets/posters --before 9f258dc   # writes benchmarks/results/speed.json
Goals on this 2-core CPU: extraction >= 100 posters/s and >= 0.85 of the two-core bound; warm probe <= 4 s;
cold 10-epoch probe <= 8 s; `posterlab demo` ready <= 8 s.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

EPOCHS = 10
ROOT = Path(__file__).resolve().parents[1]


def make_subset(source: Path, count: int, dest: Path, scale: int = 1) -> Path:
    """The first ``count`` posters (by a fixed shuffle) that carry one of the top-6 genres (``scale``x
    larger JPEGs when asked)."""
    from PIL import Image

    table = pd.read_csv(source / "labels.csv", dtype=str, keep_default_na=False)
    top6 = {"Drama", "Comedy", "Romance", "Action", "Thriller", "Horror"}
    table = table[table["genres"].map(lambda g: bool(set(g.split("|")) & top6))]
    table = table.sample(frac=1.0, random_state=0).head(count)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for movie in table["imdb_id"]:
        target = dest / "images" / f"{movie}.jpg"
        if scale == 1:
            shutil.copy(source / "images" / f"{movie}.jpg", target)
        else:
            image = Image.open(source / "images" / f"{movie}.jpg").convert("RGB")
            image.resize((image.width * scale, image.height * scale), Image.BICUBIC).save(target, quality=92)
    table.to_csv(dest / "labels.csv", index=False)
    return dest


def timed(command: list[str], env: dict, cwd: Path | None = None) -> dict:
    """Run ``command``; its wall time, stdout, and its own peak RSS (from wait4's rusage)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env, text=True, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) not in (0, 1):
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read()[-2000:]}")
        return {
            "seconds": seconds,
            "stdout": out.read().strip(),
            "peak_rss_mib": round(usage.ru_maxrss / 1024),
        }


def bounds(subset: Path, env_cache: Path) -> dict:
    """The machine's bound from per-core costs, measured in this process on one thread each: decoding a
    poster (open, draft-decode, resize/crop to uint8 pixels: what a loader process does) and running the frozen
    tf_efficientnet_lite0 on it through each installed engine (on pre-decoded batches, chunked as the
    engine chooses). With both kept busy, ``cores`` cores extract at most
    cores / (decode seconds + model seconds) posters per second: the two-core bound on this machine."""
    import torch

    from posterlab.data.sources import load_dataset
    from posterlab.data.transforms import Preprocess
    from posterlab.models import onnx
    from posterlab.models.factory import create_backbone
    from posterlab.training.features import Pixels, _Images, usable_cores

    os.environ["POSTERLAB_CACHE_DIR"] = str(env_cache)
    torch.set_num_threads(1)
    paths = load_dataset(subset).frame["image"].tolist()
    backbone = create_backbone("tf_efficientnet_lite0", True).eval()
    preprocess = Preprocess.for_model(backbone)
    part = Pixels(backbone, preprocess).eval()  # as extraction runs it: pixels in, normalised in the graph
    dataset = _Images(paths, [preprocess])
    dataset[0]
    started = time.perf_counter()
    images = [dataset[i][0] for i in range(len(paths))]
    decode = len(paths) / (time.perf_counter() - started)
    batches = [torch.stack(images[i : i + 16]) for i in range(0, len(images), 16)]
    cores = usable_cores()
    model, chunks = {}, {}
    with torch.inference_mode():
        for name in onnx.installed():
            os.environ["POSTERLAB_ENGINE"] = name
            engine = onnx.frozen_engine(lambda: part, batches[0], "speed-bench|pixels|", threads=1)
            engine.run(batches[0].numpy())
            started = time.perf_counter()
            for batch in batches:
                engine.run(batch.numpy())
            model[name] = len(paths) / (time.perf_counter() - started)
            chunks[name] = engine.chunk
    os.environ.pop("POSTERLAB_ENGINE")
    bound = {name: cores / (1 / decode + 1 / rate) for name, rate in model.items()}
    loaded = _bound_with_every_core_busy(dataset, batches, part, cores)
    return {
        "cores": cores,
        "decode_posters_per_second_per_core": decode,
        "model_posters_per_second_per_core": model,
        "chunk": chunks,
        "two_core_bound_posters_per_second": bound,
        **loaded,
        "best_engine": max(bound, key=bound.get),
    }


def _decode_share(args: tuple) -> int:
    dataset, indices = args
    for i in indices:
        dataset[i]
    return len(indices)


def _bound_with_every_core_busy(dataset, batches: list, part, cores: int) -> dict:
    """The same two costs measured with every core at work, as in an extraction: decoding in ``cores``
    processes at once, and the model with ``cores`` requests in flight (OpenVINO) or ``cores`` threads
    (ONNX Runtime). Cores that share caches, memory bandwidth or a physical core (a VM's vCPUs) run
    slower together than alone, which the per-core bound leaves out; with both stages sharing the cores,
    extraction runs at most at 1 / (1 / decode rate + 1 / model rate)."""
    import multiprocessing

    import torch

    from posterlab.models import onnx

    shares = [(dataset, list(range(i, len(dataset), cores))) for i in range(cores)]
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        pool.map(_decode_share, [(dataset, [0])] * cores)  # the processes are up before the clock starts
        started = time.perf_counter()
        pool.map(_decode_share, shares)
        decode = len(dataset) / (time.perf_counter() - started)
    model = {}
    with torch.inference_mode():
        for name in onnx.installed():
            os.environ["POSTERLAB_ENGINE"] = name
            engine = onnx.frozen_engine(
                lambda: part, batches[0], "speed-bench|pixels|", threads=cores, streams=cores
            )
            list(engine.map((0, batch.numpy()) for batch in batches[:2]))
            started = time.perf_counter()
            list(engine.map((0, batch.numpy()) for batch in batches))
            model[name] = sum(len(b) for b in batches) / (time.perf_counter() - started)
    os.environ.pop("POSTERLAB_ENGINE")
    return {
        "decode_posters_per_second_all_cores": decode,
        "model_posters_per_second_all_cores": model,
        "bound_every_core_busy_posters_per_second": {
            name: 1 / (1 / decode + 1 / rate) for name, rate in model.items()
        },
    }


def extraction_by_engine(python: list[str], subset: Path, work: Path, env: dict, rounds: int) -> dict:
    """End-to-end extraction (a cold probe from a cache holding only the backbone's ONNX export, as every
    run after a backbone's first sees it) with each installed engine forced, interleaved ``rounds``
    times so that each sees the same machine load; then with the engine posterlab picks itself."""
    from posterlab.models import onnx

    posters = len(pd.read_csv(subset / "labels.csv"))
    seed = work / "cache-engines-seed"
    _train(python, subset, work / "runs" / "engines-seed", {**env, "POSTERLAB_CACHE_DIR": str(seed)})
    for name in onnx.installed():  # each forced engine's own measured choice, as a second run would find it
        forced = {**env, "POSTERLAB_CACHE_DIR": str(seed / name), "POSTERLAB_ENGINE": name}
        shutil.copytree(seed / "onnx", seed / name / "onnx")
        _train(python, subset, work / "runs" / f"engines-seed-{name}", forced)
        shutil.copytree(seed / name / "onnx", seed / "onnx", dirs_exist_ok=True)
    rates: dict[str, list[float]] = {}
    for number in range(rounds):
        for name in [*onnx.installed(), "auto"]:
            cache = work / f"cache-engines-{name}-{number}"
            shutil.copytree(seed / "onnx", cache / "onnx")
            run_env = {**env, "POSTERLAB_CACHE_DIR": str(cache)}
            if name != "auto":
                run_env["POSTERLAB_ENGINE"] = name
            run = _train(python, subset, work / "runs" / f"engines-{name}-{number}", run_env)
            rates.setdefault(name, []).append(round(posters / max(run["features_seconds"], 1e-6), 1))
            print(f"  {name}: {rates[name][-1]} posters/s (load {os.getloadavg()[0]:.1f})", flush=True)
    return {name: {"runs": values, "best": max(values)} for name, values in rates.items()}


def extraction_by_chunk(
    python: list[str], subset: Path, work: Path, env: dict, rounds: int, chunks: list[int]
) -> dict:
    """End-to-end extraction from one cached export with posterlab's pick, the chunk size its remembered
    choice holds set to each of ``chunks`` in turn, interleaved ``rounds`` times (posters/s)."""
    posters = len(pd.read_csv(subset / "labels.csv"))
    seed = work / "cache-chunks-seed"
    _train(python, subset, work / "runs" / "chunks-seed", {**env, "POSTERLAB_CACHE_DIR": str(seed)})
    (choice,) = (seed / "onnx").rglob("*.choice.json")
    rates: dict[int, list[float]] = {}
    for number in range(rounds):
        for chunk in chunks:
            choice.write_text(json.dumps({**json.loads(choice.read_text()), "chunk": chunk}))
            cache = work / f"cache-chunks-{chunk}-{number}"
            shutil.copytree(seed / "onnx", cache / "onnx")
            run_env = {**env, "POSTERLAB_CACHE_DIR": str(cache)}
            run = _train(python, subset, work / "runs" / f"chunks-{chunk}-{number}", run_env)
            rates.setdefault(chunk, []).append(round(posters / max(run["features_seconds"], 1e-6), 1))
            print(f"  chunks of {chunk}: {rates[chunk][-1]} posters/s", flush=True)
    return {
        str(chunk): {"runs": values, "median": statistics.median(values)} for chunk, values in rates.items()
    }


def _train(
    python: list[str], subset: Path, out: Path, env: dict, *extra: str, cwd: Path | None = None
) -> dict:
    command = [
        *python,
        "train",
        "--data",
        str(subset),
        "--genres",
        "6",
        "--mode",
        "probe",
        "--epochs",
        str(EPOCHS),
        "--patience",
        "0",
        "-q",
        "--out",
        str(out),
        *extra,
    ]
    result = timed(command, env, cwd)
    metrics = json.loads((out / "metrics.json").read_text())
    result.update(
        features_seconds=metrics["seconds"]["features"],
        fit_seconds=metrics["seconds"]["fit"],
        test_map=metrics["test"]["metrics"]["map"],
    )
    return result


def cold_and_warm(
    python: list[str], subset: Path, work: Path, env: dict, name: str, cwd: Path | None = None, *extra: str
) -> dict:
    env = {**env, "POSTERLAB_CACHE_DIR": str(work / f"cache-{name}")}
    cold = _train(python, subset, work / "runs" / f"{name}-cold", env, *extra, cwd=cwd)
    warm = _train(python, subset, work / "runs" / f"{name}-warm", env, *extra, cwd=cwd)
    posters = len(pd.read_csv(subset / "labels.csv"))
    exported = work / f"cache-{name}" / "onnx"
    again = {}
    if exported.is_dir():  # the embeddings again, from a cache that holds only the backbone's ONNX export
        cached = work / f"cache-{name}-export"
        shutil.copytree(exported, cached / "onnx")
        rerun = {**env, "POSTERLAB_CACHE_DIR": str(cached)}
        run = _train(python, subset, work / "runs" / f"{name}-export-cached", rerun, *extra, cwd=cwd)
        again = {"extraction_export_cached_posters_per_second": posters / max(run["features_seconds"], 1e-6)}
    return {
        "cold_seconds": cold["seconds"],
        "warm_seconds": warm["seconds"],
        "extraction_posters_per_second": posters / max(cold["features_seconds"], 1e-6),
        **again,
        "cold_peak_rss_mib": cold["peak_rss_mib"],
        "warm_peak_rss_mib": warm["peak_rss_mib"],
        "warm_work_seconds": warm["features_seconds"] + warm["fit_seconds"],
        "test_map": cold["test_map"],
    }


def startup(run: Path, poster: Path, subset: Path, env: dict) -> dict:
    python = [sys.executable, "-m", "posterlab"]
    return {
        "help_seconds": timed([*python, "--help"], env)["seconds"],
        "predict_seconds": timed([*python, "predict", str(run), str(poster)], env)["seconds"],
        "evaluate_seconds": timed([*python, "evaluate", str(run), "--data", str(subset), "-q"], env)[
            "seconds"
        ],
        **demo_ready(run, poster, env),
    }


def demo_ready(run: Path, poster: Path, env: dict, timeout: float = 120) -> dict:
    """Seconds from ``posterlab demo RUN`` to its page answering on loopback, and to its first analysed
    poster (sent as soon as the page answers: probabilities and Grad-CAM, the model loaded meanwhile)."""
    import socket
    import urllib.request

    from gradio_client import Client, handle_file

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "posterlab", "demo", str(run), "--port", str(port)]
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"posterlab demo did not answer within {timeout:.0f} s")
        ready = time.monotonic() - started
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(str(run.resolve()), handle_file(str(poster)), api_name="/analyse")
        return {"demo_ready_seconds": ready, "demo_first_poster_seconds": time.monotonic() - started}
    finally:
        process.terminate()
        process.wait(timeout=30)


def draft_check(source: Path, work: Path, env: dict, posters: int) -> dict:
    """The posters enlarged 4x: how close the draft-decoded model inputs are to fully decoded ones, and the
    probe's test mAP each way (full decoding: load_image's draft switched off in this process)."""
    big = make_subset(source, posters, work / "posters-4x", scale=4)
    os.environ.update(env)
    import numpy as np

    from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig
    from posterlab.data import images
    from posterlab.data.sources import load_dataset
    from posterlab.data.transforms import Preprocess
    from posterlab.runs import load_run
    from posterlab.training.trainer import train_run

    preprocess = Preprocess.for_backbone("tf_efficientnet_lite0")
    transform = preprocess.eval_transform()
    paths = load_dataset(big).frame["image"].tolist()[:64]
    diffs = [
        (
            transform(images.load_image(p, draft=preprocess.draft).image)
            - transform(images.load_image(p).image)
        ).abs()
        for p in paths
    ]
    config = RunConfig(
        DataConfig(path=str(big), labels=LabelConfig(top_n=6)),
        TrainConfig(mode="probe", epochs=EPOCHS, patience=0),
    )
    results = {}
    full = images.load_image
    for name, loader in (("draft", full), ("full", lambda source, name=None, draft=None: full(source, name))):
        images.load_image = loader  # the extraction's workers fork after this: they decode the same way
        for module in ("posterlab.training.features", "posterlab.training.loop"):
            importlib.import_module(module).load_image = loader
        os.environ["POSTERLAB_CACHE_DIR"] = str(work / f"cache-draft-{name}")
        started = time.monotonic()
        run = load_run(train_run(config, work / "runs" / f"draft-{name}"))
        results[name] = {
            "test_map": run.metrics["test"]["metrics"]["map"],
            "seconds": time.monotonic() - started,
            "features_seconds": run.metrics["seconds"]["features"],
        }
    return {
        "input_mean_abs_diff": float(np.mean([d.mean().item() for d in diffs])),
        "input_max_abs_diff": float(max(d.max().item() for d in diffs)),
        "units": "normalised model input (mean 0.5 / std 0.5: 2.0 spans black to white)",
        **{f"{k}_{name}": v for name, row in results.items() for k, v in row.items()},
        "map_change": results["draft"]["test_map"] - results["full"]["test_map"],
    }


def _before(revision: str, work: Path) -> Path:
    folder = work / f"posterlab-{revision}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(folder), revision],
        check=True,
        capture_output=True,
    )
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/datasets/posters")
    parser.add_argument("--posters", type=int, default=400)
    parser.add_argument(
        "--before", help="git revision to measure the same commands with (e.g. the last release)"
    )
    parser.add_argument("--plain", action="store_true", help="also time the plain seed-style loop (minutes)")
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: engines,int8,draft,startup"
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the engine comparison")
    parser.add_argument(
        "--chunks", help="comma-separated chunk sizes to compare end to end (e.g. 4,8,16): see the docstring"
    )
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--bounds-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bounds_only:
        print(json.dumps(bounds(Path(args.bounds_only), Path(os.environ["POSTERLAB_CACHE_DIR"]))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="posterlab-speed-"))
    source = Path(args.data)
    subset = make_subset(source, args.posters, work / "posters")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    skip = set(filter(None, args.skip.split(",")))
    result: dict = {
        "posters": args.posters,
        "epochs": EPOCHS,
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
    }

    print("bounds ...", flush=True)
    measured = timed(
        [sys.executable, __file__, "--bounds-only", str(subset)],
        {**env, "POSTERLAB_CACHE_DIR": str(work / "cache-bounds")},
    )
    result["bounds"] = json.loads(measured["stdout"].splitlines()[-1])
    print(f"  {result['bounds']}", flush=True)

    print("posterlab probe, cold then warm ...", flush=True)
    result["after"] = cold_and_warm([sys.executable, "-m", "posterlab"], subset, work, env, "after")
    bound = max(result["bounds"]["two_core_bound_posters_per_second"].values())
    result["extraction_fraction_of_bound"] = result["after"]["extraction_posters_per_second"] / bound
    if "extraction_export_cached_posters_per_second" in result["after"]:
        cached = result["after"]["extraction_export_cached_posters_per_second"]
        result["extraction_export_cached_fraction_of_bound"] = cached / bound
        loaded = max(result["bounds"]["bound_every_core_busy_posters_per_second"].values())
        result["extraction_export_cached_fraction_of_bound_every_core_busy"] = cached / loaded
    print(f"  {result['after']}", flush=True)
    if "engines" not in skip:
        print("extraction end to end by engine (export cached), interleaved ...", flush=True)
        engines = extraction_by_engine([sys.executable, "-m", "posterlab"], subset, work, env, args.rounds)
        result["engines"] = engines
        for name, row in engines.items():
            own = result["bounds"]["two_core_bound_posters_per_second"].get(name, bound)
            row["fraction_of_its_bound"] = row["best"] / own
            row["fraction_of_the_bound"] = row["best"] / bound
    if args.before:
        print(f"the same at {args.before} ...", flush=True)
        folder = _before(args.before, work)
        env_before = {**env, "PYTHONPATH": str(folder)}
        result["before"] = cold_and_warm(
            [sys.executable, "-m", "posterlab.cli"], subset, work, env_before, "before", folder
        )
        result["before"]["revision"] = args.before
        print(f"  {result['before']}", flush=True)
    if "startup" not in skip:
        poster = next((subset / "images").glob("*.jpg"))
        result["startup"] = startup(work / "runs" / "after-warm", poster, subset, env)
        print(f"  startup {result['startup']}", flush=True)
    if "int8" not in skip:
        print("int8 (opt-in) ...", flush=True)
        result["int8"] = cold_and_warm(
            [sys.executable, "-m", "posterlab"], subset, work, env, "int8", None, "--int8"
        )
        result["int8"]["map_change"] = result["int8"]["test_map"] - result["after"]["test_map"]
        print(f"  {result['int8']}", flush=True)
    if "draft" not in skip:
        print("large posters: draft against full decoding ...", flush=True)
        result["draft"] = draft_check(source, work, env, args.posters)
        print(f"  {result['draft']}", flush=True)
    if args.chunks:
        print("extraction end to end by remembered chunk size, interleaved ...", flush=True)
        sizes = [int(size) for size in args.chunks.split(",")]
        result["chunks"] = extraction_by_chunk(
            [sys.executable, "-m", "posterlab"], subset, work, env, args.rounds, sizes
        )
    if args.plain:
        print(f"plain loop: {EPOCHS} epochs over {args.posters} posters ...", flush=True)
        plain = timed(
            [sys.executable, str(ROOT / "benchmarks" / "plain_loop.py"), str(subset), str(EPOCHS)], env
        )
        result["plain"] = {
            "seconds": plain["seconds"],
            "peak_rss_mib": plain["peak_rss_mib"],
            # each epoch decodes and runs every poster: its rate is the extraction it would need
            "posters_per_second": args.posters * EPOCHS / plain["seconds"],
        }
    after = result["after"]
    best = max(
        [after.get("extraction_export_cached_posters_per_second", 0)]
        + [row["best"] for name, row in result.get("engines", {}).items() if name == "auto"]
    )
    result["extraction_best_posters_per_second"] = best
    result["load_average_end"] = os.getloadavg()
    result["goals"] = {
        "extraction >= 100 posters/s": best >= 100,
        "extraction >= 0.85 of the two-core bound": best / bound >= 0.85,
        "warm probe <= 4 s": after["warm_seconds"] <= 4,
        "cold probe <= 8 s": after["cold_seconds"] <= 8,
    }
    if "startup" in result:
        result["goals"]["demo ready <= 8 s"] = result["startup"]["demo_ready_seconds"] <= 8
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if args.before:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / f"posterlab-{args.before}")],
            capture_output=True,
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
