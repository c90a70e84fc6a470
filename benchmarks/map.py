"""Time to the embedding map's first draw (Explore → Map) for a whole dataset, on this machine.

    python benchmarks/map.py --data ../shared/datasets/posters   # writes benchmarks/results/map.json

Each part runs in a fresh process, as a freshly started workbench would:
  cold      the embeddings are not cached yet: scan, extract (EfficientNet-Lite0, crop), project (PCA)
  cached    the embeddings are cached (the map's goal: under 10 s to first draw for 7,000 posters; timed
            after importing torch and timm, which the running app has already done):
            scan cache + feature cache read, thumbnails, PCA, the colour columns, the Vega-Lite spec
  tsne      the same with the on-demand t-SNE projection instead of PCA
The cache is its own folder (``--cache``), so the cold part is really cold the first time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

GOAL_S = 10.0

CHILD = """
import json, sys, time
import torch, timm  # already imported in the running app (it has loaded the run's model)
started = time.perf_counter()
from posterlab.config import DataConfig
from posterlab.evaluation.embedding import colour_columns, poster_space
space = poster_space(DataConfig(path=sys.argv[1]), sys.argv[2], "crop")
loaded = time.perf_counter()
xy = space.project(sys.argv[3])
projected = time.perf_counter()
points = colour_columns(space, None, ["Drama", "Comedy"]).assign(x=xy[:, 0], y=xy[:, 1])
import altair as alt
from workbench.widgets import map_chart  # the Explore page's own chart
alt.data_transformers.disable_max_rows()  # as in the app: Streamlit sends the rows itself, no limit
spec = map_chart(points, "label: Drama", ["Drama", "Comedy"]).to_dict()
done = time.perf_counter()
print(json.dumps({"posters": len(points), "embeddings_s": round(loaded - started, 2),
                  "projection_s": round(projected - loaded, 2), "chart_s": round(done - projected, 2),
                  "total_s": round(done - started, 2)}))
"""


def part(data: str, backbone: str, method: str, env: dict) -> dict:
    started = time.perf_counter()
    output = subprocess.run(
        [sys.executable, "-c", CHILD, data, backbone, method], env=env, capture_output=True, text=True
    )
    if output.returncode:
        raise SystemExit(output.stderr[-3000:])
    result = json.loads(output.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - started, 2)  # with Python and the imports
    return result


def main() -> int:
    import os

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="sample")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--cache", default=".bench-cache/map", help="feature and scan cache of its own")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    env = {**os.environ, "POSTERLAB_CACHE_DIR": str(Path(args.cache).resolve())}
    results = {"data": args.data, "backbone": args.backbone, "goal_cached_s": GOAL_S}
    for name, method in (("cold", "pca"), ("cached", "pca"), ("tsne", "tsne")):
        results[name] = part(args.data, args.backbone, method, env)
        print(name, results[name], flush=True)
    results["meets_goal"] = results["cached"]["total_s"] <= GOAL_S
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "map.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
