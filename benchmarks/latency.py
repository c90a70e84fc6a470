"""Latency of one poster, file to scores, on this machine: torch, ONNX Runtime, and with Grad-CAM.

    python benchmarks/latency.py [--run checkpoints/demo-genres]   # writes benchmarks/results/latency.json

Measured per poster over real sample posters after a warm-up, single-threaded caller:
  predict_torch        Predictor.predict_one (decode, crop, normalise, forward, thresholds)
  predict_onnx         the same through the CPU engine posterlab serves an export with (the run exported to
                       a temporary copy; OpenVINO when installed, else ONNX Runtime)
  predict_<engine>     the same with each installed engine forced (POSTERLAB_ENGINE), interleaved poster by
                       poster with predict_onnx and predict_torch so that all see the same machine load
  predict_gradcam_top3 Explainer.explain with the three best-scored labels (one forward + backward batch)
Targets: predict (ONNX) p50 <= 40 ms; predict + Grad-CAM top-3 p50 <= 400 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from posterlab import settings
from posterlab.explain import Explainer
from posterlab.export import export_onnx
from posterlab.inference import Predictor
from posterlab.models import onnx


def percentiles(samples: list[float]) -> dict:
    values = np.asarray(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p95_ms": round(float(np.percentile(values, 95)), 1),
        "mean_ms": round(statistics.fmean(values), 1),
        "n": len(values),
    }


def measure(fn, posters: list[Path], warmup: int = 5) -> dict:
    for poster in posters[:warmup]:
        fn(poster)
    samples = []
    for poster in posters:
        started = time.perf_counter()
        fn(poster)
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def interleaved(functions: dict, posters: list[Path], warmup: int = 5) -> dict:
    """``measure`` for several functions, taking turns on each poster (the same load for each). The order
    rotates from poster to poster: whichever runs right after torch meets its thread pool still spinning."""
    for poster in posters[:warmup]:
        for fn in functions.values():
            fn(poster)
    samples: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    for turn, poster in enumerate(posters):
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            fn = functions[name]
            started = time.perf_counter()
            fn(poster)
            samples[name].append(time.perf_counter() - started)
    return {name: percentiles(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="checkpoints/demo-genres")
    parser.add_argument("--posters", type=int, default=60)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    posters = sorted((settings.SAMPLES["sample"] / "images").glob("*.jpg"))[: args.posters]
    work = Path(tempfile.mkdtemp(prefix="posterlab-latency-"))
    run = work / Path(args.run).name
    shutil.copytree(args.run, run)
    parity = export_onnx(run, run / "model.onnx")

    torch_predictor = Predictor(run)
    onnx_predictor = Predictor(run, backend="onnx")
    forced = {}
    for name in onnx.installed():
        os.environ["POSTERLAB_ENGINE"] = name
        forced[f"predict_{name}"] = Predictor(run, backend="onnx")
    os.environ.pop("POSTERLAB_ENGINE", None)
    explainer = Explainer(torch_predictor)

    def gradcam_top3(poster: Path) -> None:
        scores = torch_predictor.predict_one(poster).scores
        top3 = sorted(scores, key=lambda k: -scores[k])[:3]
        explainer.explain(poster, labels=top3)

    result = {
        "run": args.run,
        "backbone": torch_predictor.info["backbone"],
        "views": list(torch_predictor.fits),
        "torch_threads": torch.get_num_threads(),
        "onnx_max_abs_diff": parity["max_abs_diff"],
        "load_average": os.getloadavg(),
        "onnx_engine": onnx_predictor._onnx.name,
        **interleaved(
            {
                "predict_torch": torch_predictor.predict_one,
                "predict_onnx": onnx_predictor.predict_one,
                **{key: predictor.predict_one for key, predictor in forced.items()},
            },
            posters,
        ),
        "predict_gradcam_top3": measure(gradcam_top3, posters),
    }
    result["targets"] = {
        "predict onnx p50 <= 40 ms": result["predict_onnx"]["p50_ms"] <= 40,
        "predict + Grad-CAM top-3 p50 <= 400 ms": result["predict_gradcam_top3"]["p50_ms"] <= 400,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
