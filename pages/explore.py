"""Explore: a run's predictions vs truth, its worst mistakes, the posters it is surest about for any
label (with Grad-CAM), the embedding map of the dataset's posters, activation maps, and your own posters."""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd
import streamlit as st

from posterlab.config import CAM_METHODS, SLOW_CAM_METHODS
from posterlab.errors import PosterlabError
from posterlab.evaluation import figures, interpret
from posterlab.models.stages import feature_levels
from posterlab.runs import Run, list_runs
from workbench import state, through_app
from workbench.label_health import quality_column
from workbench.titles import readable_title
from workbench.widgets import forget_invalid, map_chart, run_picker, show_error

through_app()  # before anything is drawn: see workbench.through_app

COLUMNS = 6
FAST_METHODS = [m for m in CAM_METHODS if m not in SLOW_CAM_METHODS]  # galleries: one pass per poster
MARKS = {"right": "✓", "partly": "≈", "wrong": "✗"}
POSTERS_PARAM = "posters"  # the URL's list of your posters (content digests; files under the cache)
UPLOAD_GENERATION = "explore_upload_generation"
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"]


def outcome(row: pd.Series) -> str:
    """right (the predicted labels are the true ones), partly (some in common) or wrong."""
    truth = set(str(row["truth"] or "").split("|")) - {""}
    predicted = set(str(row["predicted"] or "").split("|")) - {""}
    return "right" if truth == predicted else "partly" if truth & predicted else "wrong"


def caption(row: pd.Series, extra: str = "") -> str:
    """A poster's caption: ✓/≈/✗ and title, an optional extra (a score, a loss), truth and prediction."""
    mark = MARKS[row["outcome"]]
    title = row.get("title") if isinstance(row.get("title"), str) and row.get("title") else row["id"]
    parts = [f"{mark} {title}"] + ([extra] if extra else [])
    parts += [f"truth: {row['truth'] or '–'}", f"predicted: {row.get('predicted') or '–'}"]
    return " · ".join(parts).replace("|", ", ")


def grid(
    rows: pd.DataFrame,
    captions: list[str],
    cam_label: str | tuple[str, str] | Callable[[pd.Series], str | tuple[str, str]] | None = None,
    run: Run | None = None,
    method: str = "",
) -> None:
    """Posters in rows of ``COLUMNS``. With ``cam_label`` (a label, or a function of the row giving one),
    each poster's Grad-CAM is drawn under it once the row's posters are on screen; a function may also
    say why it chose that label (``(label, why)``), shown in the caption."""
    items = list(rows.iterrows())
    slot = st.empty()  # a new choice replaces the previous posters at once, not as their overlays come
    with slot.container():
        _rows(items, captions, cam_label, run, method)


def _rows(items: list, captions: list[str], cam_label, run: Run | None, method: str) -> None:
    for start in range(0, len(items), COLUMNS):
        columns = st.columns(COLUMNS)
        shown = []
        for column, (index, (_, row)) in zip(
            columns, enumerate(items[start : start + COLUMNS], start), strict=False
        ):
            with column:
                if not interpret.exists(row["image"]):
                    st.caption(f"(image missing) {captions[index]}")
                    continue
                st.image(row["image"], caption=captions[index], width="stretch")
                shown.append((column, row))
        if cam_label is None or run is None:
            continue
        for column, row in shown:  # the slow part, after the posters, so the page fills in progressively
            label = cam_label(row) if callable(cam_label) else cam_label
            label, why = label if isinstance(label, tuple) else (label, "")
            with column, st.spinner("Grad-CAM…"):
                image, _ = state.overlay(run.path, row["image"], label, method)
            column.image(image, caption=f"Grad-CAM: {label}" + (f" ({why})" if why else ""), width="stretch")


def gallery(run: Run, table: pd.DataFrame, labels: list[str], multilabel: bool) -> None:
    """Predictions vs truth, filtered."""
    c1, c2, c3, c4 = st.columns([1, 2, 2, 1])
    choices = ["all", "right", "partly", "wrong"] if multilabel else ["all", "right", "wrong"]
    shown = c1.selectbox(
        "Show",
        choices,
        key="explore_outcome",
        persist_state="session",
        bind="query-params",
        help="partly: some of the predicted genres are right",
    )
    truth = c2.multiselect(
        "Truth includes", labels, key="explore_truth", persist_state="session", bind="query-params"
    )
    predicted = c3.multiselect(
        "Prediction includes", labels, key="explore_predicted", persist_state="session", bind="query-params"
    )
    count = c4.number_input(
        "Posters", 6, 120, 24, step=6, key="explore_count", persist_state="session", bind="query-params"
    )
    rows = table
    if shown != "all":
        rows = rows[rows["outcome"] == shown]
    for column, wanted in (("truth", truth), ("predicted", predicted)):
        if wanted:
            sets = rows[column].fillna("").map(lambda s: set(str(s).split("|")))
            rows = rows[sets.map(lambda s, w=set(wanted): w <= s)]
    shares = table["outcome"].value_counts(normalize=True)
    st.caption(
        f"{len(rows)} of {len(table)} posters match. Overall: "
        + ", ".join(f"{MARKS[k]} {k} {shares.get(k, 0):.0%}" for k in choices[1:])
    )
    rows = rows.head(int(count))
    grid(rows, [caption(row) for _, row in rows.iterrows()])


def losses(run: Run, table: pd.DataFrame, labels: list[str], method: str) -> None:
    """The posters the model got most wrong, overall or on one label, optionally with Grad-CAM."""
    c1, c2, c3 = st.columns([2, 1, 1])
    forget_invalid("explore_loss_label", ["(every label)"] + labels)
    label = c1.selectbox(
        "Loss on",
        ["(every label)"] + labels,
        key="explore_loss_label",
        persist_state="session",
        bind="query-params",
    )
    k = c2.slider("How many", 1, 24, 6, key="explore_loss_k", persist_state="session", bind="query-params")
    show_cam = c3.toggle(
        "Grad-CAM",
        key="explore_loss_cam",
        persist_state="session",
        bind="query-params",
        help="Where the model looked for the label",
    )
    chosen = None if label == "(every label)" else label
    rows = interpret.top_losses(table, k, chosen, interpret.criterion_of(run.model))
    extra_column = "label_loss" if chosen else "loss"
    captions = [caption(row, f"loss {row[extra_column]:.2f}") for _, row in rows.iterrows()]
    if show_cam:
        target = (chosen, "the chosen label") if chosen else (lambda row: _cam_target(row, labels))
        grid(rows, captions, target, run, method)
    else:
        grid(rows, captions)


def _cam_target(row: pd.Series, labels: list[str]) -> tuple[str, str]:
    """Which label's evidence to draw for a poster, and why: its surest predicted label, or, when no label
    cleared its threshold, the one it scored highest (said, so that it does not read as a prediction)."""
    predicted = [label for label in str(row.get("predicted") or "").split("|") if label in labels]
    if predicted:
        return max(predicted, key=lambda label: row[f"p:{label}"]), "predicted"
    label = max(labels, key=lambda label: row[f"p:{label}"])
    return label, f"not predicted: its highest score, {row[f'p:{label}']:.2f}"


def ranked(run: Run, table: pd.DataFrame, labels: list[str], method: str) -> None:
    """Top-k posters by any label's probability (e.g. most fresh / most rotten), with Grad-CAM."""
    c1, c2, c3 = st.columns([2, 1, 1])
    forget_invalid("explore_rank_label", labels)
    label = c1.selectbox(
        "Label", labels, key="explore_rank_label", persist_state="session", bind="query-params"
    )
    k = c2.slider("How many", 1, 18, 6, key="explore_rank_k", persist_state="session", bind="query-params")
    lowest = c3.toggle("Lowest instead", key="explore_rank_low", persist_state="session", bind="query-params")
    rows = interpret.ranked_by_label(table, label, k, lowest=lowest)
    st.caption(
        f"{'Lowest' if lowest else 'Highest'} p({label}); under each poster, Grad-CAM ({method}) of the "
        f"evidence for {label}."
    )
    captions = [caption(row, f"p({label}) {row[f'p:{label}']:.2f}") for _, row in rows.iterrows()]
    grid(rows, captions, label, run, method)


def activations(run: Run, table: pd.DataFrame) -> None:
    """Feature maps of one poster at any stage of the backbone."""
    predictor = state.model(run.path).predictor
    levels = feature_levels(predictor.model.backbone)
    titles = {
        row.image: (row.title if isinstance(row.title, str) and row.title else row.id)
        for row in table.itertuples()
        if interpret.exists(row.image)
    }
    if not titles:
        st.info("No poster files to show.")
        return
    c1, c2 = st.columns([2, 2])
    forget_invalid("explore_act_poster", list(titles))
    image = c1.selectbox(
        "Poster",
        list(titles),
        format_func=titles.get,
        key="explore_act_poster",
        persist_state="session",
        bind="query-params",
    )
    level = c2.select_slider(
        "Stage (shallow → deep)",
        list(range(len(levels))),
        value=len(levels) - 1,
        format_func=lambda i: f"{i + 1}: {levels[i]}",
        key="explore_act_level",
        persist_state="session",
        bind="query-params",
    )
    name, maps, mean = state.activations(run.path, image, level)
    left, middle, right = st.columns([1, 1, 3])
    left.image(image, caption="poster", width="stretch")
    middle.image(mean, caption=f"mean activation of {name}, on the crop the model saw", width="stretch")
    right.plotly_chart(
        figures.feature_maps(maps, f"The {len(maps)} most active channels of {name}"), key="explore_act_maps"
    )


def _slow_method_cost(run: Run, method: str, files: list) -> bool:
    """For Score-CAM: say what it costs (a forward pass per channel of the CAM layer, timed on this
    machine) and run it only on a click."""
    loaded = state.model(run.path)
    channels = getattr(loaded.explainer.layer, "num_features", None) or getattr(
        loaded.explainer.layer, "out_channels", 0
    )
    started = time.perf_counter()
    loaded.predictor.predict_one(files[0].getvalue(), files[0].name)
    per_pass = time.perf_counter() - started
    seconds = channels * per_pass / len(loaded.predictor.fits)  # Score-CAM runs on the primary fit only
    st.warning(
        f"{method} runs one forward pass per channel of the explained layer ({channels:,} here) for each "
        f"label: about {seconds / 60:.0f} min per label and poster on this machine (the other methods: one "
        "pass back).",
        icon=":material/hourglass:",
    )
    return st.button(f"Run {method}", icon=":material/play_arrow:", key="explore_run_slow")


def _like_this(space, run: Run) -> None:
    """Posters like a chosen or uploaded one: nearest by cosine on the same embeddings (near-duplicates
    show up first, marked)."""
    from posterlab.evaluation.embedding import embed

    frame = space.frame
    left, right = st.columns([2, 1])
    titles = dict(zip(frame.index, frame["title"].astype(str).map(readable_title), strict=True))
    # the uploader first (drawn on the right): while a poster of yours is there, it is the one matched,
    # and the picker says so instead of naming another poster
    upload = right.file_uploader("…or yours", type=UPLOAD_TYPES, key="explore_map_upload")
    if upload is not None:
        st.session_state["explore_map_like"] = None
    chosen = left.selectbox(
        "Posters like this one",
        list(titles),
        format_func=titles.get,
        index=None,
        key="explore_map_like",
        persist_state="session",
        disabled=upload is not None,
        placeholder="your poster (remove it to pick one of the map)"
        if upload
        else "pick a poster of the map…",
    )
    if upload is not None:
        try:
            query = embed(space.backbone, space.fit, upload.getvalue(), upload.name)
        except PosterlabError as error:
            show_error(error)
            return
        found, caption, image = space.neighbours(query, k=COLUMNS * 2), upload.name, upload.getvalue()
    elif chosen is not None:
        found = space.neighbours(space.vectors[chosen], k=COLUMNS * 2, exclude=chosen)
        caption, image = titles[chosen], frame.loc[chosen, "image"]
    else:
        return
    st.caption(f"Nearest to {caption} by cosine similarity of their embeddings; ≈ marks a near-duplicate.")
    query_column, found_column = st.columns([1, 6])
    query_column.image(image, caption=f"matched: {caption}", width=130)  # the poster being matched
    captions = [
        f"{'≈ ' if r.duplicate else ''}{r.similarity:.2f} · {readable_title(str(r.title))}"
        for r in found.itertuples()
    ]
    found_column.image(found["image"].tolist(), caption=captions, width=130)


SPLITS = {"test": "its test split", "val": "its validation split", "all": "its validation and test splits"}


def embedding_map(run: Run, table: pd.DataFrame, labels: list[str], split: str) -> None:
    """Every poster of the sidebar's dataset placed by its embedding (this run's backbone and fit),
    coloured by a label, the truth, the run's prediction, right or wrong, or its loss."""
    from posterlab.evaluation.embedding import colour_columns

    path = state.dataset_path()
    if not path:  # the sidebar's dataset cannot be read (its error is shown there)
        st.info("Pick a dataset in the sidebar to place its posters on the map.", icon=":material/info:")
        return
    backbone, fit = run.config.train.backbone, run.model["preprocess"]["fit"]
    c1, c2 = st.columns([3, 1])
    method = c2.radio(
        "Projection",
        ["pca", "tsne"],
        horizontal=True,
        key="explore_map_method",
        persist_state="session",
        bind="query-params",
        format_func={"pca": "PCA", "tsne": "t-SNE"}.get,
        help="PCA: instant, the main directions in which posters differ. t-SNE: tighter "
        "clusters, about 20-40 s for 7,000 posters the first time (then cached).",
    )
    try:
        with st.spinner(
            f"Placing the posters of {state.display_name(path)} (embeddings computed once, then cached)…"
        ):
            space = state.poster_space(path, backbone, fit)
            xy = state.projection(path, backbone, fit, method)
    except PosterlabError as error:
        show_error(error, path)
        return
    points = colour_columns(space, table, labels).assign(x=xy[:, 0], y=xy[:, 1])
    points["title"] = points["title"].map(readable_title)
    if "outcome" in points and "outcome" in table:  # the gallery's right / partly / wrong, not right or wrong
        scored = table.drop_duplicates("id").set_index("id")["outcome"]
        points["outcome"] = points["id"].map(scored).fillna("not scored")
    points = quality_column(points, path)  # from the dataset's last label audit, when there is one
    options = [f"label: {label}" for label in labels] + [
        c for c in ("truth", "split", "predicted", "outcome", "loss", "label quality") if c in points
    ]
    forget_invalid("explore_map_colour", options)
    colour = c1.selectbox(
        "Colour by", options, key="explore_map_colour", persist_state="session", bind="query-params"
    )
    event = st.altair_chart(map_chart(points, colour, labels), on_select="rerun", key="explore_map_chart")
    scored = int(points["id"].isin(set(table["id"])).sum()) if "id" in table else 0
    st.caption(
        f"{len(points):,} posters of `{state.display_name(path)}` · {backbone} embeddings ({fit}) · "
        f"predictions and losses for the {scored:,} of them this run scored in {SPLITS[split]} "
        "(the Posters choice above). Drag a box to see those posters."
    )
    picked = _picked(event, points)
    if picked is not None and len(picked):
        st.markdown(f"**{len(picked)} posters picked**" + (" (the first 24)" if len(picked) > 24 else ""))
        shown = picked.head(24)
        st.image(shown["image"].tolist(), caption=shown["title"].astype(str).tolist(), width=110)
    _like_this(space, run)


def _picked(event, points: pd.DataFrame) -> pd.DataFrame | None:
    """The posters inside the box dragged on the map (None when nothing is selected)."""
    box = (getattr(event, "selection", None) or {}).get("picked") or {}
    if not box or "x" not in box or "y" not in box:
        return None
    (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
    inside = points["x"].between(x0, x1) & points["y"].between(y0, y1)
    return points[inside]


def _forget_posters() -> None:
    st.session_state[UPLOAD_GENERATION] = st.session_state.get(UPLOAD_GENERATION, 0) + 1
    state.remember_posters(POSTERS_PARAM, [])


def uploads(run: Run, method: str) -> None:
    """Your own posters: scores against thresholds, and Grad-CAM for the predicted labels."""
    # a new uploader (a new key) after "Forget": Streamlit cannot empty one from Python
    generation = st.session_state.get(UPLOAD_GENERATION, 0)
    uploaded = st.file_uploader(
        "Posters",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key=f"explore_upload_{generation}" if generation else "explore_upload",
    )
    files = state.kept_posters(POSTERS_PARAM, uploaded or [])
    if not files:
        st.caption("Upload one or more posters to score them with this run and see where it looked.")
        return
    left, right = st.columns([3, 1], vertical_alignment="center")
    left.caption(
        f"{len(files)} poster{'s' if len(files) > 1 else ''} of yours, kept across a refresh (in the page's "
        "address) until you forget them."
    )
    right.button(
        "Forget your posters", icon=":material/delete:", on_click=_forget_posters, key="explore_forget"
    )
    method = st.selectbox(
        "Method for your posters",
        CAM_METHODS,
        index=CAM_METHODS.index(method),
        key="explore_upload_method",
        persist_state="session",
        bind="query-params",
    )
    if method in SLOW_CAM_METHODS and not _slow_method_cost(run, method, files):
        return
    predictor = state.model(run.path).predictor
    thresholds = (
        dict(zip(predictor.labels, map(float, predictor.thresholds), strict=True))
        if predictor.thresholds is not None
        else None
    )
    for upload in files:
        with st.container(border=True):
            try:
                with st.spinner(f"Scoring {upload.name}…"):
                    result = state.explain_upload(run.path, upload.getvalue(), upload.name, method)
            except PosterlabError as error:
                show_error(error)
                continue
            st.markdown(
                f"**{upload.name}** → {', '.join(result.predicted) or '(no label over its threshold)'}"
            )
            if result.notes:
                st.caption("; ".join(result.notes))
            columns = st.columns([1] + [1] * len(result.overlays) + [2])
            columns[0].image(result.crop, caption="what the model saw", width="stretch")
            for column, (label, image) in zip(columns[1:], result.overlays.items(), strict=False):
                column.image(image, caption=f"{label} {result.scores[label]:.2f}", width="stretch")
            columns[-1].plotly_chart(
                figures.scores_bar(result.scores, thresholds), key=f"explore_scores_{upload.file_id}"
            )


folder = state.checkpoints()
st.title(":material/image_search: Explore")
runs = [r for r in list_runs(folder) if r.model is not None and (r.path / "model.safetensors").exists()]
if not runs:
    st.info(f"No trained run in `{folder}` yet: train one on the Train page.")
    st.stop()
top_left, top_middle, top_right = st.columns([3, 1, 1])
with top_left:
    run = run_picker(runs, "Run", key="explore_run", in_url=True)
split = top_middle.radio(
    "Posters",
    ["test", "val", "all"],
    horizontal=True,
    key="explore_split",
    persist_state="session",
    bind="query-params",
)
method = top_right.selectbox(
    "Grad-CAM method",
    FAST_METHODS,
    key="explore_method",
    persist_state="session",
    bind="query-params",
    help="Score-CAM (a forward pass per channel: minutes a poster here) is offered for your own posters only.",
)
try:
    table = interpret.load_predictions(run, None if split == "all" else split)
    state.model(run.path)  # fail early, in one line, if the weights cannot be loaded
    elsewhere = 0
    if not table.empty:
        # a run trained on another machine's dataset: show the posters that are here (the embedded
        # sample carries the committed demo runs' test posters)
        here = table["image"].map(interpret.exists)
        elsewhere = int((~here).sum())
        table = table[here].reset_index(drop=True)
        table = table.assign(outcome=table.apply(outcome, axis=1)) if not table.empty else table
        if "title" in table:  # broken encodings from the source data, repaired where they can be
            table["title"] = table["title"].map(readable_title)
except PosterlabError as error:
    show_error(error)
    st.stop()
labels = list(run.model["rule"]["labels"])
st.caption(
    f"{run.config.train.backbone} · {run.config.train.mode} · {len(table)} {split} posters"
    + (f" ({elsewhere} more are not on this machine)" if elsewhere else "")
    + f" · labels: {', '.join(labels)}"
)

tab_gallery, tab_losses, tab_ranked, tab_map, tab_maps, tab_uploads = st.tabs(
    ["Predictions vs truth", "Top losses", "Top by label", "Map", "Activation maps", "Your posters"],
    key="explore_tab",
    bind="query-params",  # a refresh (or a link) opens the same tab
    on_change="rerun",  # only the open tab runs: Grad-CAM is computed for what is on screen
)
if table.empty and not (tab_uploads.open or tab_map.open):
    st.info("This run stored no predictions for these posters.")
elif tab_gallery.open:
    with tab_gallery:
        gallery(run, table, labels, run.model["rule"]["task"] == "multilabel")
elif tab_losses.open:
    with tab_losses:
        losses(run, table, labels, method)
elif tab_ranked.open:
    with tab_ranked:
        ranked(run, table, labels, method)
elif tab_map.open:
    with tab_map:
        embedding_map(run, table, labels, split)
elif tab_maps.open:
    with tab_maps:
        activations(run, table)
elif tab_uploads.open:
    with tab_uploads:
        uploads(run, method)
