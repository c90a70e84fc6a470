"""The Gradio demo: upload a poster, see each label's probability against its threshold, and where the
model looked (Grad-CAM on the crop it saw). The only module in posterlab that imports gradio.

- ``build_demo`` returns the Blocks app: a model picker over completed runs, the poster view, the
  "fresh or rotten" view over the embedded sample, and an about tab.
- ``launch`` serves it and blocks (``posterlab demo``); ``serve_in_background`` starts it once per process
  without blocking and returns its URL (the workbench's Demo page embeds that URL).
- ``launch_options`` is what every launcher passes (upload limit, theme), an exported Space included.

Models are loaded lazily, once per demo, into a cache that belongs to the ``build_demo`` call: the
workbench shares modules across its sessions, so nothing per-user lives at module level.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from posterlab import settings
from posterlab.errors import ImageError, PosterlabError, RunError
from posterlab.evaluation.interpret import ranked_by_label
from posterlab.explain import Explainer
from posterlab.export import example_posters
from posterlab.inference import Predictor
from posterlab.models.registry import BACKBONES
from posterlab.runs import list_runs, read_json

log = logging.getLogger(__name__)

DEMO_RUNS = ("demo-genres", "demo-fresh-rotten")  # the committed ready-made runs, offered first
# ScoreCAM is left out: it runs one forward pass per channel, tens of seconds per map on a CPU Space.
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam")
MAX_FILE_SIZE = "10mb"  # posters are well under 1 MB; the core's own limit (40 MB) is for datasets
# A free CPU Space has 2 vCPUs and torch already spreads one request over both: two requests at a time
# keep image decoding overlapped with compute; more only adds latency. The queue holds ~10 s of work.
CONCURRENCY = 2
QUEUE_SIZE = 32
MODEL_CACHE = 4  # models kept in memory per demo (least recently used goes first)
GALLERY_TOP = 4  # posters per side in the fresh-or-rotten view
METRIC_NAMES = {
    "map": "mAP",
    "micro_f1": "micro-F1",
    "macro_f1": "macro-F1",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
}
CSS = """
.verdict h3 { margin: 0.2em 0; }
footer { display: none !important; }
"""


# ------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class DemoRun:
    """A run the demo can serve: its folder and what the picker and the cards show about it."""

    path: Path
    task: str
    labels: tuple[str, ...]
    backbone: str
    mode: str
    metrics: dict | None
    data: dict | None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def title(self) -> str:
        spec = BACKBONES.get(self.backbone)
        kind = f"{len(self.labels)} genres" if self.task == "multilabel" else " / ".join(self.labels)
        return f"{self.name} · {spec.title if spec else self.backbone} · {kind}"

    @property
    def key(self) -> tuple[str, int]:
        """Identity for caches: the folder and its weights' mtime (a retrained run reloads)."""
        weights = self.path / "model.safetensors"
        return str(self.path), weights.stat().st_mtime_ns if weights.exists() else 0


def read_demo_run(path: str | Path) -> DemoRun:
    """What the demo needs from a run (or exported bundle) folder; ``RunError`` when it has no model."""
    path = Path(path).resolve()
    if not (path / "model.json").is_file():
        raise RunError(
            f"{path}: has no trained model (model.json); pick a completed run or train one with posterlab train"
        )
    info = read_json(path / "model.json")
    config = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    metrics = read_json(path / "metrics.json") if (path / "metrics.json").is_file() else None
    data = read_json(path / "data.json") if (path / "data.json").is_file() else None
    return DemoRun(
        path=path,
        task=info["rule"]["task"],
        labels=tuple(info["rule"]["labels"]),
        backbone=info["backbone"],
        mode=config.get("run", {}).get("train", {}).get("mode", ""),
        metrics=metrics,
        data=data,
    )


def find_runs(run: str | Path | None = None, checkpoints: Path | None = None) -> list[DemoRun]:
    """``run`` alone, or every completed run under ``checkpoints`` (the committed demo runs first)."""
    if run is not None:
        return [read_demo_run(run)]
    root = Path(checkpoints) if checkpoints is not None else settings.checkpoints_dir()
    found = []
    for entry in list_runs(root):  # newest first
        if entry.state != "completed" or entry.model is None:
            continue
        try:
            found.append(read_demo_run(entry.path))
        except RunError as error:
            log.warning("demo: skipping %s (%s)", entry.path, error)
    order = {name: i for i, name in enumerate(DEMO_RUNS)}
    found.sort(key=lambda r: order.get(r.name, len(order)))  # stable: the rest stay newest first
    if not found:
        raise RunError(
            f"{root}: no completed runs to demo; train one (posterlab train --data sample --out "
            f"{root}/my-run) or pass a run folder (posterlab demo RUN)"
        )
    return found


def _example_titles(paths: list[Path]) -> list[str]:
    """Film titles for example posters, from a ``labels.csv`` beside them or the sample's."""
    titles: dict[str, str] = {}
    tables = {p.parent / "labels.csv" for p in paths} | {settings.SAMPLES["sample"] / "labels.csv"}
    for table in tables:
        if table.is_file():
            frame = pd.read_csv(table, dtype=str).fillna("")
            if {"imdb_id", "title"} <= set(frame.columns):
                titles.update(zip(frame["imdb_id"], frame["title"], strict=True))
    return [titles.get(p.stem) or p.stem for p in paths]


# ---------------------------------------------------------------------------------------- cards


def _test_figures(run: DemoRun) -> tuple[dict, dict, int | None]:
    test = (run.metrics or {}).get("test") or {}
    return test.get("metrics") or {}, test.get("baseline") or {}, test.get("n")


def model_card(run: DemoRun) -> str:
    """Markdown: what the model is and how it did on its held-out test split, beside the baseline."""
    spec = BACKBONES.get(run.backbone)
    lines = [
        f"**{run.name}**: {spec.title if spec else run.backbone}"
        + (f" ({run.mode})" if run.mode else "")
        + f", {run.task}: {', '.join(run.labels)}"
    ]
    metrics, baseline, n = _test_figures(run)
    names = ("map", "micro_f1", "macro_f1") if run.task == "multilabel" else ("accuracy", "balanced_accuracy")
    shown = [
        f"{METRIC_NAMES[name]} {metrics[name]:.2f}"
        + (f" (baseline {baseline[name]:.2f})" if baseline.get(name) is not None else "")
        for name in names
        if metrics.get(name) is not None
    ]
    if shown:
        lines.append(f"Held-out test ({n} posters): " + ", ".join(shown))
    else:
        lines.append("No held-out metrics in this run folder.")
    return "  \n".join(lines)


def small_data_note(run: DemoRun) -> str:
    """The fresh-or-rotten caveat: test accuracy beside the majority rate, with the sizes involved."""
    metrics, baseline, n = _test_figures(run)
    sizes = (run.data or {}).get("sizes", {})
    counts = (run.data or {}).get("counts", {}).get("train", {})
    majority = max(counts, key=counts.get) if counts else None
    parts = ["**Small data.**"]
    if sizes.get("train"):
        parts.append(f"This model learned from {sizes['train']} posters.")
    if metrics.get("accuracy") is not None and baseline.get("accuracy") is not None:
        always = f'always answering "{majority}"' if majority else "the majority class"
        parts.append(
            f"On {n} held-out test posters it is right {metrics['accuracy']:.0%} of the time; "
            f"{always} is right {baseline['accuracy']:.0%}."
        )
    parts.append(
        "Read the maps as hints about what it keys on (titles, faces, crowds), not as critics' verdicts."
    )
    return " ".join(parts)


# ------------------------------------------------------------------------------------- models


@dataclass
class _Loaded:
    predictor: Predictor
    explainer: Explainer
    # Grad-CAM hooks the shared model: a concurrent forward pass would leak into another request's map
    lock: threading.Lock


class _Models:
    """Predictor + Explainer per run, built once and kept (LRU) for one demo."""

    def __init__(self, capacity: int = MODEL_CACHE) -> None:
        self.capacity = capacity
        self.items: OrderedDict[tuple[str, int], _Loaded] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, run: DemoRun) -> _Loaded:
        key = run.key
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            predictor = Predictor(run.path)
            loaded = _Loaded(predictor, Explainer(predictor), threading.Lock())
            self.items[key] = loaded
            while len(self.items) > self.capacity:
                self.items.popitem(last=False)
            log.info("demo: loaded %s", run.path)
            return loaded


# ---------------------------------------------------------------------------------- handlers


def _user_errors(fn: Callable) -> Callable:
    """Turn posterlab errors into ``gr.Error`` with their one-line message; never show a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except gr.Error:
            raise
        except PosterlabError as error:
            # gr.Error renders HTML, and the message can carry an uploaded file's name
            raise gr.Error(html.escape(str(error), quote=False), print_exception=False) from None
        except Exception as error:
            log.exception("demo: unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"unexpected {type(error).__name__} while handling this poster; the server log has the details",
                print_exception=False,
            ) from None

    return wrapper


def _poster(payload: Any) -> tuple[str | bytes, str]:
    """(source for ``load_image``, name for messages) from the image input's raw value.

    The input is left unprocessed by Gradio so that the core's safe loader, not Gradio's, opens the file
    and a bad upload gets the core's one-line reason.
    """
    if payload is None:
        raise ImageError("poster", "no image", "upload a poster (JPEG, PNG or WebP) or pick an example")
    if isinstance(payload, (str, Path)):
        return str(payload), Path(payload).name
    if isinstance(payload, dict):
        path, url = payload.get("path"), payload.get("url") or ""
        name = payload.get("orig_name") or (Path(path).name if path else "uploaded image")
        if path:
            return str(path), str(name)
        if url.startswith("data:") and "," in url:
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=True), str(name)
            except ValueError:
                raise ImageError(str(name), "not valid base64 image data", "upload the file itself") from None
    raise ImageError("poster", "unrecognised upload", "upload a poster file (JPEG, PNG or WebP)")


def _caption(predictor: Predictor, label: str, score: float) -> str:
    """Short (gallery thumbnails cut long captions): the label, its score, and its threshold."""
    if predictor.rule.task == "binary":
        return f"why {label} ({score:.2f})"
    if predictor.multilabel:
        threshold = predictor.thresholds[predictor.labels.index(label)]
        return f"{label} {score:.2f} {'≥' if score >= threshold else '<'} {threshold:.2f}"
    return f"{label} {score:.2f}"


def _scores_table(predictor: Predictor, scores: dict[str, float], predicted: list[str]) -> pd.DataFrame:
    rows = []
    for k, label in enumerate(predictor.labels):
        if predictor.multilabel:
            threshold = f"{predictor.thresholds[k]:.3f}"
        else:
            threshold = "top class"
        rows.append(
            {
                "label": label,
                "p": round(scores[label], 3),
                "threshold": threshold,
                "clears": "yes" if label in predicted else "no",
            }
        )
    return pd.DataFrame(rows).sort_values("p", ascending=False, ignore_index=True)


def _verdict(predictor: Predictor, scores: dict[str, float], predicted: list[str], notes: list[str]) -> str:
    if predicted:
        ranked = sorted(predicted, key=lambda label: -scores[label])
        shown = ", ".join(f"**{label}** ({scores[label]:.2f})" for label in ranked)
        head = f"### Predicted: {shown}"
    else:
        top = max(scores, key=scores.get)
        threshold = predictor.thresholds[predictor.labels.index(top)]
        head = f"### No genre clears its threshold (closest: {top}, {scores[top]:.2f} < {threshold:.2f})"
    if notes:
        head += "\n\n" + "; ".join(html.escape(n) for n in notes)
    return head


def _gallery_table(folder: Path) -> pd.DataFrame:
    """Labelled posters for the fresh-or-rotten view: image path, truth, title (from ``labels.csv``)."""
    frame = pd.read_csv(folder / "labels.csv", dtype=str).fillna("")
    if "image" in frame:
        images = [str(folder / p) for p in frame["image"]]
    else:
        images = [str(folder / "images" / f"{i}.jpg") for i in frame["imdb_id"]]
    year = frame["year"].map(lambda y: f" ({y})" if y else "") if "year" in frame else ""
    return pd.DataFrame(
        {
            "id": frame.get("imdb_id", pd.Series(range(len(frame)))).astype(str),
            "image": images,
            "title": (frame["title"] if "title" in frame else pd.Series([""] * len(frame))) + year,
            "truth": frame.get("label", pd.Series([""] * len(frame))),
        }
    )


# ------------------------------------------------------------------------------------------ app


def build_demo(
    run: str | Path | None = None,
    checkpoints: Path | None = None,
    *,
    examples: list[Path] | None = None,
    gallery: Path | None = None,
) -> gr.Blocks:
    """The demo app over ``run``, or over every completed run under ``checkpoints``.

    ``examples`` are the clickable posters (default: a few from the embedded sample); ``gallery`` a folder
    of labelled posters (``labels.csv`` + images) for the fresh-or-rotten view (default: the embedded
    fresh/rotten sample). Raises ``RunError`` when there is no run to serve.
    """
    runs = find_runs(run, checkpoints)
    fixed = run is not None
    examples = example_posters() if examples is None else [Path(p) for p in examples]
    if gallery is None and (settings.SAMPLES["sample-rt"] / "labels.csv").is_file():
        gallery = settings.SAMPLES["sample-rt"]
    models = _Models()
    ranked: dict[tuple[str, int], tuple[str, list, list]] = {}
    ranked_lock = threading.Lock()

    known = {"runs": {str(r.path): r for r in runs}}  # replaced whole, never mutated: safe across threads

    def current_runs() -> list[DemoRun]:
        # the embedded demo lives as long as the workbench: runs trained since then appear on reload
        if not fixed:
            with contextlib.suppress(RunError):  # every run deleted meanwhile: keep serving the known ones
                known["runs"] = {str(r.path): r for r in find_runs(None, checkpoints)}
        return list(known["runs"].values())

    def lookup(path: str | None) -> DemoRun:
        if path and path not in known["runs"]:
            current_runs()  # a run finished since the last look
        if not path or path not in known["runs"]:
            raise RunError(f"{path or 'no model'}: not one of this demo's runs; pick one from the list")
        return known["runs"][path]

    def choices(binary: bool = False) -> list[tuple[str, str]]:
        return [(r.title, str(r.path)) for r in current_runs() if not binary or r.task == "binary"]

    @_user_errors
    def analyse(run_path: str, poster: Any) -> tuple[str, dict | None, pd.DataFrame | None, list]:
        if poster is None:  # the input was cleared
            return "", None, None, []
        chosen = lookup(run_path)
        source, name = _poster(poster)
        loaded = models.get(chosen)
        predictor = loaded.predictor
        with loaded.lock:
            result = loaded.explainer.explain(source, labels=None, top_k=len(predictor.labels), name=name)
        seen = result.crop
        if predictor.preprocess.fit != "crop":
            from posterlab.explain import to_poster_aspect

            seen = to_poster_aspect(seen, result.original_size, predictor.preprocess)
        items: list[tuple[Image.Image, str]] = [(seen, "model input")]
        items += [
            (overlay, _caption(predictor, label, result.scores[label]))
            for label, overlay in result.overlays.items()
        ]
        return (
            _verdict(predictor, result.scores, result.predicted, result.notes),
            {label: float(p) for label, p in result.scores.items()},
            _scores_table(predictor, result.scores, result.predicted),
            items,
        )

    @_user_errors
    def explain_labels(run_path: str, poster: Any, labels: list[str] | None, method: str) -> list:
        chosen = lookup(run_path)
        source, name = _poster(poster)
        if method not in CAM_METHODS:
            raise PosterlabError(f"unknown method {method!r}; choose one of: {', '.join(CAM_METHODS)}")
        loaded = models.get(chosen)
        with loaded.lock:
            result = loaded.explainer.explain(
                source, labels=list(labels) if labels else None, top_k=1, method=method, name=name
            )
        return [
            (overlay, f"{method} · " + _caption(loaded.predictor, label, result.scores[label]))
            for label, overlay in result.overlays.items()
        ]

    @_user_errors
    def fresh_rotten(run_path: str | None) -> tuple[str, list, list]:
        if not run_path:
            return (
                "No fresh/rotten model here. Train one with `posterlab train --data sample-rt --target label "
                "--out checkpoints/demo-fresh-rotten` and reload.",
                [],
                [],
            )
        chosen = lookup(run_path)
        if chosen.task != "binary":
            raise RunError(f"{chosen.name}: is a {chosen.task} model; this view needs a two-class one")
        if gallery is None:
            return "No labelled posters to rank here (the fresh/rotten sample is not bundled).", [], []
        with ranked_lock:
            if chosen.key in ranked:
                return ranked[chosen.key]
        loaded = models.get(chosen)
        table = _gallery_table(gallery)
        with loaded.lock:
            results = loaded.predictor.predict(table["image"].tolist(), names=table["id"].tolist())
            keep = [r.ok for r in results]
            table = table[keep].reset_index(drop=True)
            for label in chosen.labels:
                table[f"p:{label}"] = [r.scores[label] for r in results if r.ok]
            sides = []
            for label in chosen.labels:
                top = ranked_by_label(table, label, k=GALLERY_TOP)
                items = []
                for _, row in top.iterrows():
                    explanation = loaded.explainer.explain(row["image"], labels=[label], name=row["id"])
                    mark = "" if not row["truth"] else ("✓ " if row["truth"] == label else "✗ ")
                    caption = f"{mark}{row[f'p:{label}']:.2f} {row['title']}"
                    items.append((explanation.overlays[label], caption))
                sides.append(items)
        note = (
            small_data_note(chosen)
            + f"\n\nThe {GALLERY_TOP} posters with the highest p({chosen.labels[0]}) and p({chosen.labels[1]}) "
            f"among {len(table)} labelled sample posters; ✓ / ✗: their real label agrees / disagrees."
        )
        if (chosen.data or {}).get("dataset") == "sample-rt" and gallery == settings.SAMPLES["sample-rt"]:
            note += " This run trained on part of them, so the ranking flatters it."
        value = (note, sides[0], sides[1])
        with ranked_lock:
            ranked[chosen.key] = value
        return value

    def on_model(run_path: str) -> tuple[str, Any, Any]:
        try:
            chosen = lookup(run_path)
        except RunError as error:
            return html.escape(str(error)), gr.update(choices=[], value=[]), gr.update()
        return model_card(chosen), gr.update(choices=list(chosen.labels), value=[]), gr.update(value=None)

    def refresh(run_path: str | None, rt_path: str | None) -> tuple[Any, Any]:
        every, binary = choices(), choices(binary=True)
        paths = [value for _, value in every]
        binary_paths = [value for _, value in binary]
        return (
            gr.update(choices=every, value=run_path if run_path in paths else (paths[0] if paths else None)),
            gr.update(
                choices=binary,
                value=rt_path if rt_path in binary_paths else (binary_paths[0] if binary_paths else None),
            ),
        )

    first = runs[0]
    first_binary = next((r for r in runs if r.task == "binary"), None)
    try:  # the first visitor should not wait for the model to load
        models.get(first)
    except PosterlabError as error:
        log.warning("demo: %s", error)

    heavy = {"concurrency_limit": CONCURRENCY, "concurrency_id": "model"}
    with gr.Blocks(title="posterlab demo", analytics_enabled=False, delete_cache=(3600, 7200)) as demo:
        gr.Markdown(
            "# posterlab: what can a poster tell about its film?\n"
            "Upload a movie poster. The model scores every label, says which clear their thresholds, "
            "and Grad-CAM shows where on the poster it found the evidence."
        )
        with gr.Row():
            model = gr.Dropdown(
                choices=[(r.title, str(r.path)) for r in runs],
                value=str(first.path),
                label="Model",
                interactive=not fixed,
                scale=2,
            )
            card = gr.Markdown(model_card(first))
        with gr.Tabs():
            with gr.Tab("Poster"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=260):
                        poster = gr.Image(
                            type="filepath", sources=["upload", "clipboard"], label="Poster", height=420
                        )
                        if examples:
                            gr.Examples(
                                examples=[[str(p)] for p in examples],
                                inputs=[poster],
                                label="Example posters",
                                example_labels=_example_titles(examples),
                                examples_per_page=len(examples),
                                cache_examples=False,
                            )
                    with gr.Column(scale=3):
                        verdict = gr.Markdown(elem_classes=["verdict"])
                        with gr.Row():
                            scores = gr.Label(label="Probabilities", show_label=True)
                            table = gr.Dataframe(
                                headers=["label", "p", "threshold", "clears"],
                                label="Each label against its threshold",
                                interactive=False,
                                wrap=True,
                            )
                        overlays = gr.Gallery(
                            label="Grad-CAM per predicted label, on the crop the model saw",
                            columns=5,
                            height="auto",
                            object_fit="contain",
                        )
                with gr.Accordion("Explain any label", open=False):
                    with gr.Row():
                        pick = gr.Dropdown(
                            choices=list(first.labels), multiselect=True, label="Labels", scale=3
                        )
                        method = gr.Dropdown(choices=list(CAM_METHODS), value="gradcam", label="Method")
                        explain_button = gr.Button("Explain", variant="primary")
                    picked = gr.Gallery(label="Grad-CAM for the chosen labels", columns=4, height="auto")
            # a Space bundled with a genre model has no two-class run to show here
            with gr.Tab("Fresh or rotten", visible=first_binary is not None or not fixed) as rt_tab:
                with gr.Row():
                    rt_model = gr.Dropdown(
                        choices=[(r.title, str(r.path)) for r in runs if r.task == "binary"],
                        value=str(first_binary.path) if first_binary else None,
                        label="Two-class model",
                        scale=2,
                    )
                    rt_button = gr.Button("Rank the sample posters", variant="primary")
                rt_note = gr.Markdown(
                    small_data_note(first_binary)
                    if first_binary
                    else "No fresh/rotten model here: train one with "
                    "`posterlab train --data sample-rt --target label`."
                )
                side_labels = first_binary.labels if first_binary else ("fresh", "rotten")
                most_a = gr.Gallery(label=f"Most {side_labels[0]}", columns=GALLERY_TOP, rows=1, height=360)
                most_b = gr.Gallery(label=f"Most {side_labels[1]}", columns=GALLERY_TOP, rows=1, height=360)
            with gr.Tab("About"):
                gr.Markdown(_ABOUT)

        analysis = [verdict, scores, table, overlays]
        poster.change(analyse, [model, poster], analysis, api_name="analyse", preprocess=False, **heavy)
        model.change(on_model, model, [card, pick, picked], queue=False, api_visibility="private").then(
            analyse, [model, poster], analysis, preprocess=False, api_visibility="private", **heavy
        )
        explain_button.click(
            explain_labels,
            [model, poster, pick, method],
            picked,
            api_name="explain",
            preprocess=False,
            **heavy,
        )
        rt_outputs = [rt_note, most_a, most_b]
        rt_button.click(fresh_rotten, rt_model, rt_outputs, api_name="fresh_rotten", **heavy)
        rt_tab.select(fresh_rotten, rt_model, rt_outputs, api_visibility="private", **heavy)
        rt_model.change(fresh_rotten, rt_model, rt_outputs, api_visibility="private", **heavy)
        demo.load(refresh, [model, rt_model], [model, rt_model], queue=False, api_visibility="private")
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
    return demo


_ABOUT = """
### How it works
- **Model**: an ImageNet backbone from timm with a small head, trained by posterlab on movie posters.
  Genres are multi-label (a sigmoid per genre); fresh/rotten is one of two classes.
- **Thresholds**: each genre has its own threshold, tuned on the run's validation split for F1; a genre
  is predicted when its probability clears it.
- **Grad-CAM** weighs the last convolutional stage's activations by the gradient of one label's logit
  (for two classes: the difference of the two logits, "why fresh" / "why rotten"), and is drawn on the
  exact crop the model saw.
- **Limits**: posters only (JPEG, PNG, WebP; up to 10 MB). A poster is weak evidence of a genre; read
  the scores as what the artwork suggests, not what the film is.

Run it yourself: `posterlab demo [RUN]`; share it: `posterlab export RUN --format space --out DIR`.
"""


def launch_options(host: str | None = None, port: int | None = None, share: bool = False) -> dict:
    """Keyword arguments for ``Blocks.launch``: address, upload limit, theme and styling."""
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        "max_file_size": MAX_FILE_SIZE,
        "theme": gr.themes.Soft(primary_hue="orange", neutral_hue="slate"),
        "css": CSS,
        "ssr_mode": False,
        "enable_monitoring": False,
        "run_history": False,
        "footer_links": ["api"],
    }


def launch(
    run: str | Path | None = None,
    port: int = 7860,
    share: bool = False,
    checkpoints: Path | None = None,
    *,
    host: str | None = None,
) -> None:
    """Serve the demo until interrupted (``posterlab demo``)."""
    demo = build_demo(run, checkpoints)
    try:
        demo.launch(**launch_options(host=host, port=port, share=share))
    except OSError as error:
        raise PosterlabError(f"cannot serve the demo on port {port} ({error}); pass another --port") from None


class _Background:
    """Demo servers started by ``serve_in_background``: one per checkpoints folder, for the process.

    Deliberately process-wide: every workbench session embeds the same server, and nothing in it is
    specific to a user (each browser gets its own Gradio session).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.urls: dict[str, str] = {}
        self.demos: dict[str, gr.Blocks] = {}


_BACKGROUND = _Background()


def serve_in_background(checkpoints: Path, port: int | None = None) -> str:
    """Start the demo over ``checkpoints`` without blocking (once per process) and return its local URL.

    A later call with the same folder returns the same URL. ``port`` None lets Gradio pick a free one
    from 7860 up (or ``GRADIO_SERVER_PORT``).
    """
    key = str(Path(checkpoints).resolve())
    with _BACKGROUND.lock:
        if key in _BACKGROUND.urls:
            return _BACKGROUND.urls[key]
        demo = build_demo(checkpoints=Path(checkpoints))
        try:
            _, url, _ = demo.launch(**launch_options(port=port), prevent_thread_lock=True, quiet=True)
        except OSError as error:
            raise PosterlabError(
                f"cannot start the demo{f' on port {port}' if port else ''} ({error}); free the port or pick another"
            ) from None
        _BACKGROUND.urls[key] = url
        _BACKGROUND.demos[key] = demo
        log.info("demo: serving %s at %s", key, url)
        return url
