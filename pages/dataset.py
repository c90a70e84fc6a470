"""Dataset: what the posters carry, which labels to learn, how they split and balance, what cleaning
set aside, and what training augmentation does to real posters."""

from __future__ import annotations

import numpy as np
import streamlit as st

from posterlab.config import FITS, DataConfig
from posterlab.data import stats
from posterlab.data.balance import balance_table, loss_weights, resample
from posterlab.data.images import load_image
from posterlab.data.labels import OTHER, genre_counts
from posterlab.data.transforms import Preprocess, denormalize
from posterlab.errors import PosterlabError
from posterlab.evaluation import figures
from posterlab.models.registry import BACKBONES, DEFAULT_BACKBONE
from workbench import state, through_app
from workbench.label_health import label_health_view
from workbench.titles import readable_title
from workbench.widgets import augment_controls, balance_control, label_controls, require_dataset, show_error

through_app()  # before anything is drawn: see workbench.through_app

path, dataset = require_dataset()
st.title(":material/photo_library: Dataset")
shown = state.display_name(path)
st.caption(
    f"`{shown}` · {len(dataset)} posters" + ("" if state.is_upload(path) else f" read from `{dataset.root}`")
)

with st.container(border=True):
    st.markdown("##### Labels to learn")
    try:
        labels = label_controls(dataset.frame, state.selection_key(path), shown)
    except PosterlabError as error:
        show_error(error, path)
        st.stop()
    method = balance_control(state.selection_key(path))
if labels is None:  # no genres or labels: the user chooses what to predict first
    st.stop()

try:
    prepared = state.prepared(DataConfig(path=path, labels=labels, balance=method))
except PosterlabError as error:
    show_error(error, path)
    st.stop()

labelled, report, splits = prepared.labelled, prepared.report, prepared.splits
rule = labelled.rule
cleaned = prepared.dataset.frame
has_genres = int(cleaned["genres"].map(len).sum()) > 0

read, kept, used, unlabelled = st.columns(4)
read.metric("Posters read", report.total)
kept.metric("Kept after cleaning", len(cleaned), delta=-report.dropped or None, delta_color="off")
used.metric("With a selected label", len(labelled.frame))
unlabelled.metric("Dropped without a label", len(labelled.dropped))
st.caption(f"Target: {rule.describe()}. The Train page starts from this selection.")

tab_labels, tab_splits, tab_images, tab_cleaning, tab_augment, tab_health = st.tabs(
    [
        "Labels",
        "Splits & balancing",
        "Image sizes",
        "Cleaning report",
        "Augmentation preview",
        "Label health",
    ],
    key="dataset_tab",
    bind="query-params",  # a refresh (or a link) opens the same tab
    on_change="rerun",  # only the open tab is computed
)

if tab_labels.open:
    with tab_labels:
        left, right = st.columns(2)
        if has_genres:
            every = genre_counts(cleaned, labels.merge)
            left.plotly_chart(
                figures.bar(
                    every, f"All {len(every)} genres (posters per genre)", x="genre", horizontal=True
                ).update_layout(height=max(300, 22 * len(every))),
                key="dataset_all_genres",
            )
        else:
            every = cleaned["label"].value_counts().rename("posters")
            left.plotly_chart(figures.bar(every, "Posters per label"), key="dataset_all_labels")
        right.plotly_chart(
            figures.bar(labelled.counts(), "Selected labels (after merges)"), key="dataset_selected"
        )
        if has_genres:
            right.plotly_chart(
                figures.bar(
                    stats.cardinality(cleaned, labels.merge), "Genres per poster", x="genres per poster"
                ),
                key="dataset_cardinality",
            )
        if rule.multilabel:
            names = [label for label in rule.labels if label != OTHER]
            normalise = st.toggle(
                "Show as share of the row's genre",
                key="dataset_cooc_norm",
                persist_state="session",
                bind="query-params",
                help="P(column | row)",
            )
            st.plotly_chart(
                figures.heatmap(
                    stats.cooccurrence(labelled.frame, names, labels.merge),
                    "Co-occurrence (posters carrying both genres)",
                    normalise_rows=normalise,
                ).update_layout(height=max(350, 40 * len(names))),
                key="dataset_cooc",
            )
        if len(labelled.dropped):
            st.caption(
                "Dropped without a label: "
                + ", ".join(
                    f"{reason} ({n})" for reason, n in labelled.dropped["reason"].value_counts().items()
                )
            )

if tab_splits.open:
    with tab_splits:
        sizes = {name: len(rows) for name, rows in splits.items()}
        st.caption(
            "Splits are made per movie with a fixed seed, stratified by label, before any balancing: "
            + ", ".join(f"{name} {n}" for name, n in sizes.items())
        )
        st.plotly_chart(
            figures.split_balance(stats.split_balance(labelled, splits)), key="dataset_split_balance"
        )
        train_y = labelled.y[splits["train"]]
        rows = resample(train_y, len(rule.labels), method, seed=0)
        table = balance_table(train_y, rows, rule.labels)
        st.plotly_chart(figures.balance_before_after(table), key="dataset_balance_chart")
        shown = table.assign(
            before_share=table["before_share"].map("{:.0%}".format),
            after_share=table["after_share"].map("{:.0%}".format),
        )
        if method == "weights":
            shown["loss weight"] = np.round(loss_weights(train_y, len(rule.labels)), 2)
            st.caption("Loss weights leave the posters as they are and weigh each label's errors instead.")
        st.dataframe(shown, hide_index=True, key="dataset_balance_table")
        st.caption(f"Training posters: {len(train_y)} before, {len(rows)} after {method}.")

if tab_images.open:
    with tab_images:
        left, right = st.columns([1, 2])
        left.markdown("**Width and height (px)**")
        left.dataframe(stats.size_summary(cleaned), key="dataset_sizes")
        left.markdown("**Most common sizes**")
        left.dataframe(stats.common_sizes(cleaned), key="dataset_common_sizes")
        right.plotly_chart(figures.sizes(cleaned), key="dataset_sizes_chart")

if tab_cleaning.open:
    with tab_cleaning:
        summary = report.summary()
        if report.rows.empty:
            st.success(
                f"All {report.total} posters opened cleanly; no near-duplicates.", icon=":material/check:"
            )
        else:
            if len(summary):
                st.markdown("**Set aside, by reason**")
                st.dataframe(summary.rename("posters"), key="dataset_clean_summary")
            st.markdown("**Every poster set aside or converted**")
            st.dataframe(report.rows, hide_index=True, key="dataset_clean_rows")

if tab_augment.open:
    with tab_augment:
        st.caption(
            "Training augmentation on real posters, through the chosen backbone's own preprocessing. "
            "The first column is what the model sees without augmentation."
        )
        c1, c2, c3, c4 = st.columns(4)
        backbone = c1.selectbox(
            "Backbone",
            list(BACKBONES),
            index=list(BACKBONES).index(DEFAULT_BACKBONE),
            format_func=lambda name: BACKBONES[name].title,
            key="dataset_aug_backbone",
            persist_state="session",
            bind="query-params",
        )
        fit = c2.selectbox(
            "Fit to the square input",
            FITS,
            key="dataset_aug_fit",
            persist_state="session",
            bind="query-params",
        )
        count = c3.slider(
            "Posters", 1, 8, 4, key="dataset_aug_posters", persist_state="session", bind="query-params"
        )
        views = c4.slider(
            "Views each", 1, 6, 4, key="dataset_aug_views", persist_state="session", bind="query-params"
        )
        augment = augment_controls("dataset_aug")
        st.button("New draw", icon=":material/casino:", key="dataset_aug_redraw")
        preprocess = Preprocess.for_backbone(backbone, fit)
        geometry, train = preprocess.geometry(), preprocess.train_transform(augment)
        frame = labelled.frame
        picks = frame.sample(n=min(count, len(frame)), random_state=0)
        for poster in picks.itertuples():
            image = load_image(poster.image).image
            shown_images = [geometry(image)]
            for _ in range(views):
                array = denormalize(train(image), preprocess).permute(1, 2, 0).numpy()
                shown_images.append((array * 255).astype(np.uint8))
            title = readable_title(getattr(poster, "title", "") or "") or poster.id
            truth = "|".join(poster.genres) if has_genres else str(poster.label)
            st.image(
                shown_images,
                caption=[f"{title} ({truth})"] + [f"augmented view {i + 1}" for i in range(views)],
                width=150,
            )

if tab_health.open:
    with tab_health:
        label_health_view(path, labels, cleaned, rule)
