"""The Gradio demo: upload a poster, see each label's probability against its threshold, and where the
model looked (Grad-CAM on the crop it saw). The only module in posterlab that imports gradio.

- ``build_demo`` returns the Blocks app: a model picker over completed runs, the poster view, the
  "fresh or rotten" view over the embedded sample, and an about tab.
- ``launch`` serves it and blocks (``posterlab demo``); ``serve_in_background`` starts it once per process
  without blocking and returns its URL (the workbench's Demo page embeds that URL).
- ``launch_options`` is what every launcher passes (upload limit, theme), an exported Space included.

The handlers (``analyse``, ``explain_labels``, ``fresh_rotten``, ...) are plain module-level functions
of a ``DemoState`` (the runs it serves and their loaded models, through the core's ``ModelCache``), as
in Gradio's own demos: they can be called, and tested, without a server. ``build_demo`` only lays out
the Blocks and wires them. Nothing per-user lives at module level: the workbench shares modules across
its sessions.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd
from PIL import Image

from posterlab import background, settings
from posterlab.config import CAM_METHODS, HEADLINE, SLOW_CAM_METHODS
from posterlab.errors import ImageError, PosterlabError, RunError, one_line
from posterlab.models.registry import BACKBONES
from posterlab.runs import Run, list_runs, load_run
from posterlab.serving import ModelCache, run_key

if TYPE_CHECKING:  # torch and timm come in with the first model, after the server is up
    from posterlab.inference import Predictor

log = logging.getLogger(__name__)

DEMO_RUNS = ("demo-genres", "demo-fresh-rotten")  # the committed ready-made runs, offered first
# the slow methods (Score-CAM: a forward pass per channel, minutes a map on a CPU Space) are left out
DEMO_METHODS = tuple(m for m in CAM_METHODS if m not in SLOW_CAM_METHODS)
MAX_FILE_SIZE = "10mb"  # posters are well under 1 MB; the core's own limit (40 MB) is for datasets
# A free CPU Space has 2 vCPUs and torch already spreads one request over both: two requests at a time
# keep image decoding overlapped with compute; more only adds latency. The queue holds ~10 s of work.
CONCURRENCY = 2
QUEUE_SIZE = 32
MODEL_CACHE = 4  # models kept in memory per demo (least recently used goes first)
GALLERY_TOP = 4  # posters per side in the fresh-or-rotten view
TABLE_WIDTH = 400  # px: the threshold table's four columns without a word or number broken
OVERLAY_COLUMNS = 4  # Grad-CAM overlays per row, across the tab's width
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


def title(run: Run) -> str:
    """For the model picker: folder · backbone · what it predicts."""
    spec = BACKBONES.get(run.model["backbone"])
    labels = run.model["rule"]["labels"]
    kind = f"{len(labels)} genres" if run.model["rule"]["task"] == "multilabel" else " / ".join(labels)
    return f"{run.name} · {spec.title if spec else run.model['backbone']} · {kind}"


def read_demo_run(path: str | Path) -> Run:
    """A run (or exported bundle) folder the demo can serve; ``RunError`` when it has no model."""
    run = load_run(Path(path).resolve())
    if run.model is None:
        raise RunError(
            f"{run.path}: has no trained model (model.json); pick a completed run or train one with posterlab train"
        )
    return run


def find_runs(run: str | Path | None = None, checkpoints: Path | None = None) -> list[Run]:
    """``run`` alone, or every completed run under ``checkpoints`` (the committed demo runs first)."""
    if run is not None:
        return [read_demo_run(run)]
    root = (Path(checkpoints) if checkpoints is not None else settings.checkpoints_dir()).resolve()
    found = [r for r in list_runs(root) if r.state == "completed" and r.model is not None]  # newest first
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


class DemoState:
    """What one demo serves: its runs (re-listed on a page load unless it serves a single run), the
    loaded models, the example posters and the labelled gallery, and the galleries already ranked.

    Shared by every visitor of that demo; its parts are safe across threads (the model cache and the
    predictors lock themselves; ``runs`` is replaced whole, never mutated)."""

    def __init__(
        self,
        run: str | Path | None = None,
        checkpoints: Path | None = None,
        examples: list[Path] | None = None,
        gallery: Path | None = None,
    ) -> None:
        self.fixed = run is not None
        self.checkpoints = checkpoints
        self.runs = {str(r.path): r for r in find_runs(run, checkpoints)}
        self.models = ModelCache(MODEL_CACHE)
        self.examples = settings.example_posters() if examples is None else [Path(p) for p in examples]
        if gallery is None and (settings.SAMPLES["sample-rt"] / "labels.csv").is_file():
            gallery = settings.SAMPLES["sample-rt"]
        self.gallery = gallery
        self.ranked: dict[tuple[str, int], tuple[str, list, list]] = {}
        self.ranked_lock = threading.Lock()
        self._warming: threading.Thread | None = None
        self._warm_lock = threading.Lock()

    def warm(self) -> threading.Thread:
        """Load the first run's model and Grad-CAM in a background thread, once (later calls return that
        thread): the page answers at once, and a poster sent before the model is in waits for it."""
        with self._warm_lock:
            if self._warming is None:
                first = next(iter(self.runs.values()))
                self._warming = background.start(self._load, first.path, name="posterlab-demo-warm")
            return self._warming

    def _load(self, path: Path) -> None:
        """The model and its Grad-CAM, with an example poster through both: the imports (torch, timm,
        pytorch-grad-cam) and first passes happen here, not in a visitor's request."""
        try:
            explainer = self.models.get(path).explainer
            if self.examples:
                explainer.explain(self.examples[0], top_k=1)
        except Exception as error:  # noqa: BLE001 (the visitor who picks it gets the one-line reason)
            log.warning("demo: could not load %s ahead of its first request (%s)", path, one_line(error))

    def current(self) -> list[Run]:
        """The runs to offer now (a demo over a checkpoints folder picks up runs finished since)."""
        if not self.fixed:
            with contextlib.suppress(RunError):  # every run deleted meanwhile: keep the known ones
                self.runs = {str(r.path): r for r in find_runs(None, self.checkpoints)}
        return list(self.runs.values())

    def lookup(self, path: str | None) -> Run:
        if path and path not in self.runs:
            self.current()  # a run finished since the last look
        if not path or path not in self.runs:
            raise RunError(f"{path or 'no model'}: not one of this demo's runs; pick one from the list")
        return self.runs[path]

    def choices(self, binary: bool = False) -> list[tuple[str, str]]:
        return [
            (title(r), str(r.path))
            for r in self.current()
            if not binary or r.model["rule"]["task"] == "binary"
        ]


# ---------------------------------------------------------------------------------------- cards


def _test_figures(run: Run) -> tuple[dict, dict, int | None]:
    test = (run.metrics or {}).get("test") or {}
    return test.get("metrics") or {}, test.get("baseline") or {}, test.get("n")


def model_card(run: Run) -> str:
    """Markdown: what the model is and how it did on its held-out test split, beside the baseline."""
    backbone, rule = run.model["backbone"], run.model["rule"]
    spec = BACKBONES.get(backbone)
    lines = [
        f"**{run.name}**: {spec.title if spec else backbone} ({run.config.train.mode}), "
        f"{rule['task']}: {', '.join(rule['labels'])}"
    ]
    metrics, baseline, n = _test_figures(run)
    names = HEADLINE[rule["task"]][:3] if rule["task"] == "multilabel" else ("accuracy", "balanced_accuracy")
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


def small_data_note(run: Run) -> str:
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
        threshold = f"{predictor.thresholds[k]:.3f}" if predictor.multilabel else "top class"
        clears = "yes" if label in predicted else "no"
        rows.append({"label": label, "p": round(scores[label], 3), "threshold": threshold, "clears": clears})
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


def analyse(
    state: DemoState, run_path: str, poster: Any
) -> tuple[str, dict | None, pd.DataFrame | None, list]:
    """A poster → the verdict, every label's probability, the table against thresholds, and the crop the
    model saw followed by a Grad-CAM overlay per predicted label (the top one when none clears)."""
    if poster is None:  # the input was cleared
        return "", None, None, []
    from posterlab.explain import to_poster_aspect  # torch: DemoState.warm has usually imported it

    chosen = state.lookup(run_path)
    source, name = _poster(poster)
    loaded = state.models.get(chosen.path)
    predictor = loaded.predictor
    result = loaded.explainer.explain(source, labels=None, top_k=len(predictor.labels), name=name)
    seen = to_poster_aspect(result.crop, result.original_size, predictor.preprocess)
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


def explain_labels(
    state: DemoState, run_path: str, poster: Any, labels: list[str] | None, method: str
) -> list:
    """Grad-CAM of the chosen labels (the top one when none is chosen) with the chosen method."""
    chosen = state.lookup(run_path)
    source, name = _poster(poster)
    if method not in DEMO_METHODS:
        raise PosterlabError(f"unknown method {method!r}; choose one of: {', '.join(DEMO_METHODS)}")
    loaded = state.models.get(chosen.path)
    result = loaded.explainer.explain(
        source, labels=list(labels) if labels else None, top_k=1, method=method, name=name
    )
    return [
        (overlay, f"{method} · " + _caption(loaded.predictor, label, result.scores[label]))
        for label, overlay in result.overlays.items()
    ]


def _ranked_side(loaded, table: pd.DataFrame, label: str) -> list[tuple[Image.Image, str]]:
    from posterlab.evaluation.interpret import ranked_by_label

    items = []
    for _, row in ranked_by_label(table, label, k=GALLERY_TOP).iterrows():
        explanation = loaded.explainer.explain(row["image"], labels=[label], name=row["id"])
        mark = "" if not row["truth"] else ("✓ " if row["truth"] == label else "✗ ")
        items.append((explanation.overlays[label], f"{mark}{row[f'p:{label}']:.2f} {row['title']}"))
    return items


def fresh_rotten(state: DemoState, run_path: str | None) -> tuple[str, list, list]:
    """The labelled gallery's posters a two-class model is surest about, each way, with Grad-CAM."""
    if not run_path:
        folder = Path(state.checkpoints or settings.checkpoints_dir())
        then = (
            f"start the demo over that folder (`posterlab demo --checkpoints {folder}`)"
            if state.fixed
            else "reload"
        )
        return (
            "No fresh/rotten model here. Train one with `posterlab train --data sample-rt --target label "
            f"--out {folder / 'demo-fresh-rotten'}` and {then}.",
            [],
            [],
        )
    chosen = state.lookup(run_path)
    labels = tuple(chosen.model["rule"]["labels"])
    if chosen.model["rule"]["task"] != "binary":
        raise RunError(
            f"{chosen.name}: is a {chosen.model['rule']['task']} model; this view needs a two-class one"
        )
    if state.gallery is None:
        return "No labelled posters to rank here (the fresh/rotten sample is not bundled).", [], []
    key = run_key(chosen.path)
    with state.ranked_lock:
        if key in state.ranked:
            return state.ranked[key]
    loaded = state.models.get(chosen.path)
    table = _gallery_table(state.gallery)
    probs, errors = loaded.predictor.score_paths(table["image"].tolist())
    keep = [error is None for error in errors]
    table = table[keep].reset_index(drop=True)
    for k, label in enumerate(labels):
        table[f"p:{label}"] = probs[keep][:, k]
    sides = [_ranked_side(loaded, table, label) for label in labels]
    note = (
        small_data_note(chosen)
        + f"\n\nThe {GALLERY_TOP} posters with the highest p({labels[0]}) and p({labels[1]}) "
        f"among {len(table)} labelled sample posters; ✓ / ✗: their real label agrees / disagrees."
    )
    if (chosen.data or {}).get("dataset") == "sample-rt" and state.gallery == settings.SAMPLES["sample-rt"]:
        note += " This run trained on part of them, so the ranking flatters it."
    value = (note, sides[0], sides[1])
    with state.ranked_lock:
        state.ranked[key] = value
    return value


def on_model(state: DemoState, run_path: str) -> tuple[str, Any, Any]:
    """The picked model's card, and its labels for the "explain any label" picker."""
    try:
        chosen = state.lookup(run_path)
    except RunError as error:
        return html.escape(str(error)), gr.update(choices=[], value=[]), gr.update()
    return (
        model_card(chosen),
        gr.update(choices=list(chosen.model["rule"]["labels"]), value=[]),
        gr.update(value=None),
    )


def refresh(state: DemoState, run_path: str | None, rt_path: str | None) -> tuple[Any, Any]:
    """On a page load: the runs finished since, keeping each picker's choice when it is still there."""
    state.warm()  # a no-op once started (the launchers start it as soon as they serve)
    every, binary = state.choices(), state.choices(binary=True)
    paths = [value for _, value in every]
    binary_paths = [value for _, value in binary]
    return (
        gr.update(choices=every, value=run_path if run_path in paths else (paths[0] if paths else None)),
        gr.update(
            choices=binary,
            value=rt_path if rt_path in binary_paths else (binary_paths[0] if binary_paths else None),
        ),
    )


# ------------------------------------------------------------------------------------------ app


def _bind(handler: Callable, state: DemoState) -> Callable:
    """``handler`` with the demo's state bound first, errors shown as one line (Gradio reads the rest of
    the signature for its API)."""
    bound = functools.partial(handler, state)
    bound.__name__, bound.__doc__ = (
        handler.__name__,
        handler.__doc__,
    )  # not __wrapped__: Gradio reads the signature
    return _user_errors(bound)


def _poster_tab(state: DemoState, first: Run) -> dict:
    with gr.Row():
        with gr.Column(scale=2, min_width=260):
            poster = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Poster", height=420)
            if state.examples:
                gr.Examples(
                    examples=[[str(p)] for p in state.examples],
                    inputs=[poster],
                    label="Example posters",
                    example_labels=_example_titles(state.examples),
                    examples_per_page=len(state.examples),
                    cache_examples=False,
                )
        with gr.Column(scale=3, min_width=TABLE_WIDTH):
            verdict = gr.Markdown(elem_classes=["verdict"])
            # min widths, not fixed ones: side by side where there is room (a tab of its own), one under
            # the other in a narrow frame (embedded in the workbench, beside its sidebar) instead of
            # squeezing the table until its words and numbers break ("thre shol d", "0. 553")
            with gr.Row():
                scores = gr.Label(label="Probabilities", show_label=True, scale=1, min_width=220)
                table = gr.Dataframe(
                    headers=["label", "p", "threshold", "clears"],
                    label="Each label against its threshold",
                    interactive=False,
                    wrap=False,
                    scale=1,
                    min_width=TABLE_WIDTH,
                    column_widths=["34%", "18%", "26%", "22%"],
                )
    # the overlays get the tab's whole width: in the results column they were cut to strips
    overlays = gr.Gallery(
        label="Grad-CAM per predicted label, on the crop the model saw",
        columns=OVERLAY_COLUMNS,
        height="auto",
        object_fit="contain",
        elem_classes=["overlays"],
    )
    with gr.Accordion("Explain any label", open=False):
        with gr.Row():
            pick = gr.Dropdown(
                choices=list(first.model["rule"]["labels"]), multiselect=True, label="Labels", scale=3
            )
            method = gr.Dropdown(choices=list(DEMO_METHODS), value=DEMO_METHODS[0], label="Method")
            explain_button = gr.Button("Explain", variant="primary")
        picked = gr.Gallery(
            label="Grad-CAM for the chosen labels", columns=4, height=320, object_fit="contain"
        )
    return {
        "poster": poster,
        "analysis": [verdict, scores, table, overlays],
        "pick": pick,
        "method": method,
        "explain": explain_button,
        "picked": picked,
    }


def _fresh_rotten_tab(state: DemoState) -> dict:
    binaries = [r for r in state.runs.values() if r.model["rule"]["task"] == "binary"]
    first_binary = binaries[0] if binaries else None
    with gr.Tab("Fresh or rotten", visible=first_binary is not None or not state.fixed) as tab:
        with gr.Row():
            model = gr.Dropdown(
                choices=[(title(r), str(r.path)) for r in binaries],
                value=str(first_binary.path) if first_binary else None,
                label="Two-class model",
                scale=2,
            )
            button = gr.Button("Rank the sample posters", variant="primary")
        note = gr.Markdown(
            small_data_note(first_binary)
            if first_binary
            else "No fresh/rotten model here: train one with `posterlab train --data sample-rt --target label`."
        )
        sides = tuple(first_binary.model["rule"]["labels"]) if first_binary else ("fresh", "rotten")
        most_a = gr.Gallery(label=f"Most {sides[0]}", columns=GALLERY_TOP, rows=1, height=360)
        most_b = gr.Gallery(label=f"Most {sides[1]}", columns=GALLERY_TOP, rows=1, height=360)
    return {"tab": tab, "model": model, "button": button, "outputs": [note, most_a, most_b]}


def build_demo(
    run: str | Path | None = None,
    checkpoints: Path | None = None,
    *,
    examples: list[Path] | None = None,
    gallery: Path | None = None,
) -> gr.Blocks:
    """The demo app over ``run``, or over every completed run under ``checkpoints``: layout and wiring
    only (the handlers above do the work). ``examples`` are the clickable posters (default: a few from
    the embedded sample); ``gallery`` a folder of labelled posters for the fresh-or-rotten view (default:
    the embedded fresh/rotten sample). Raises ``RunError`` when there is no run to serve.

    No model is loaded here (torch, timm and pytorch-grad-cam take seconds to import): the launchers
    below start ``DemoState.warm`` once the page is served, and a first page load does it otherwise."""
    return layout(DemoState(run, checkpoints, examples, gallery))


def layout(state: DemoState) -> gr.Blocks:
    """The Blocks app over ``state``: layout and wiring."""
    first = next(iter(state.runs.values()))
    heavy = {"concurrency_limit": CONCURRENCY, "concurrency_id": "model"}
    # fill_width: the whole frame, not a centred column ~700 px wide (embedded in the workbench the
    # frame is already narrower than a tab of its own)
    with gr.Blocks(
        title="posterlab demo", analytics_enabled=False, delete_cache=(3600, 7200), fill_width=True
    ) as demo:
        gr.Markdown(
            "# posterlab: what can a poster tell about its film?\n"
            "Upload a movie poster. The model scores every label, says which clear their thresholds, "
            "and Grad-CAM shows where on the poster it found the evidence."
        )
        with gr.Row():
            model = gr.Dropdown(
                choices=state.choices(),
                value=str(first.path),
                label="Model",
                interactive=not state.fixed,
                scale=2,
            )
            card = gr.Markdown(model_card(first))
        with gr.Tabs():
            with gr.Tab("Poster"):
                poster_tab = _poster_tab(state, first)
            rt = _fresh_rotten_tab(state)
            with gr.Tab("About"):
                gr.Markdown(_ABOUT)
        poster, analysis = poster_tab["poster"], poster_tab["analysis"]
        poster.change(
            _bind(analyse, state), [model, poster], analysis, api_name="analyse", preprocess=False, **heavy
        )
        model.change(
            _bind(on_model, state),
            model,
            [card, poster_tab["pick"], poster_tab["picked"]],
            queue=False,
            api_visibility="private",
        ).then(
            _bind(analyse, state),
            [model, poster],
            analysis,
            preprocess=False,
            api_visibility="private",
            **heavy,
        )
        poster_tab["explain"].click(
            _bind(explain_labels, state),
            [model, poster, poster_tab["pick"], poster_tab["method"]],
            poster_tab["picked"],
            api_name="explain",
            preprocess=False,
            **heavy,
        )
        ranking = _bind(fresh_rotten, state)
        rt["button"].click(ranking, rt["model"], rt["outputs"], api_name="fresh_rotten", **heavy)
        rt["tab"].select(ranking, rt["model"], rt["outputs"], api_visibility="private", **heavy)
        rt["model"].change(ranking, rt["model"], rt["outputs"], api_visibility="private", **heavy)
        demo.load(
            _bind(refresh, state),
            [model, rt["model"]],
            [model, rt["model"]],
            queue=False,
            api_visibility="private",
        )
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


def serve(
    state: DemoState,
    host: str | None = None,
    port: int | None = None,
    share: bool = False,
    quiet: bool = False,
    demo: gr.Blocks | None = None,
) -> gr.Blocks:
    """The one launch sequence (``posterlab demo``, the workbench, the Space): lay the page out (unless
    ``demo`` is that page already), serve it without blocking, then load the first model in the background
    (loading it while the page is laid out would slow the start by ~2 s, measured)."""
    demo = demo or layout(state)
    try:
        demo.launch(
            **launch_options(host=host, port=port, share=share), prevent_thread_lock=True, quiet=quiet
        )
    except OSError as error:
        where = f" on port {port}" if port else ""
        raise PosterlabError(
            f"cannot serve the demo{where} ({error}); free the port or pass another"
        ) from None
    state.warm()
    return demo


def launch(
    run: str | Path | None = None,
    port: int = 7860,
    share: bool = False,
    checkpoints: Path | None = None,
    *,
    host: str | None = None,
) -> None:
    """Serve the demo until interrupted (``posterlab demo``); the model loads while the page is up."""
    serve(DemoState(run, checkpoints), host=host, port=port, share=share).block_thread()


def serve_in_background(
    checkpoints: Path, host: str | None = None, port: int | None = None
) -> tuple[gr.Blocks, int]:
    """Start the demo over ``checkpoints`` without blocking; returns it and the port it listens on.

    ``host`` is the interface to bind (None: loopback only; ``0.0.0.0``: every interface, for browsers on
    other machines); ``port`` None lets Gradio pick a free one from 7860 up (or ``GRADIO_SERVER_PORT``).
    The caller keeps the server (the workbench: once per process, through ``st.cache_resource``).
    """
    demo = serve(DemoState(checkpoints=Path(checkpoints)), host=host, port=port, quiet=True)
    log.info("demo: serving %s at %s", checkpoints, demo.local_url)
    return demo, int(demo.server_port)
