"""Hugging Face Space entry point, written by ``posterlab export --format space``.

Serves the posterlab demo for the bundled run on 0.0.0.0 and the port in $$PORT (7860 by default).
Nothing is downloaded at run time: the weights are in runs/, the example posters in examples/.
"""

import os
from pathlib import Path

# no usage statistics or version checks: the Space needs no network beyond its install
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from posterlab.demo import DemoState, layout, serve  # noqa: E402

HERE = Path(__file__).resolve().parent

state = DemoState(
    run=HERE / "runs" / "$run_name",
    examples=sorted((HERE / "examples").glob("*.jpg")),
    gallery=HERE / "gallery" if (HERE / "gallery" / "labels.csv").exists() else None,
)
demo = layout(state)

if __name__ == "__main__":
    port = int(os.environ.get("GRADIO_SERVER_PORT") or os.environ.get("PORT") or 7860)
    serve(state, host="0.0.0.0", port=port, demo=demo).block_thread()  # the model loads once the page is up
