"""Which engine extraction's measured choice picks, timed the old way and the way extraction runs it.

Exports the frozen tf_efficientnet_lite0 (ImageNet weights from POSTERLAB_WEIGHTS_DIR or timm's cache),
opens each installed engine as extraction on this machine opens it (OpenVINO with a request in flight per
core; ONNX Runtime on the cores the loader leaves), and times both on a batch of 16 in two ways, --rounds
times, interleaved:
  one request    ``run``: one request at a time (how posterlab timed engines before 2026-12-04)
  as extraction  ``map``: requests in flight where the engine has them (posterlab's ``_speed`` now)
It prints each round's ms per image and how often each way picks each engine. End to end, which engine
is faster is measured by `python benchmarks/speed.py` (its "engines" section: each engine forced).

    python benchmarks/engine_choice.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "engine_choice.json"


def one_request(engine, example: np.ndarray) -> float:
    engine.run(example[: engine.chunk])
    started = time.perf_counter()
    engine.run(example)
    return (time.perf_counter() - started) / len(example)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    if "POSTERLAB_CACHE_DIR" not in os.environ:
        os.environ["POSTERLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="engine-choice-")
    from posterlab.data.transforms import Preprocess
    from posterlab.models import onnx
    from posterlab.models.factory import create_backbone
    from posterlab.training.features import Pixels, default_workers, usable_cores

    def part() -> torch.nn.Module:  # as extraction exports it: uint8 pixels in, normalised in the graph
        backbone = create_backbone("tf_efficientnet_lite0", True).eval()
        return Pixels(backbone, Preprocess.for_model(backbone)).eval()

    torch.manual_seed(0)
    example = torch.randint(0, 256, (16, 3, 224, 224), dtype=torch.uint8)
    path = onnx.cached_export(part, example, "choice|pixels|")
    cores, workers = usable_cores(), default_workers(torch.device("cpu"))
    engines = {
        name: onnx.open_engine(path, name, max(1, cores - workers), streams=cores)
        for name in onnx.installed()
    }
    ways = {"one request": one_request, "as extraction": onnx._speed}
    rows, picks = [], {way: dict.fromkeys(engines, 0) for way in ways}
    for number in range(args.rounds):
        for way, timed in ways.items():
            per_image = {}
            for name, engine in engines.items():
                best = []
                # the chunk sizes frozen_engine times: ASYNC_CHUNK alone with requests in flight
                for chunk in (onnx.ASYNC_CHUNK,) if getattr(engine, "streams", 1) > 1 else onnx.TIMED_CHUNKS:
                    engine.chunk = chunk
                    best.append(timed(engine, example.numpy()))
                per_image[name] = min(best) * 1000
            picks[way][min(per_image, key=per_image.get)] += 1
            rows.append({"round": number, "way": way, **{k: round(v, 1) for k, v in per_image.items()}})
            print(
                f"  round {number} {way:>13}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in per_image.items())
            )
    result = {"cores": cores, "loader_workers": workers, "rounds": rows, "picks": picks}
    print(json.dumps({"picks": picks}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
