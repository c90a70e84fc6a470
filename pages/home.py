"""Home: what posterlab is, the dataset in use, the runs so far, and the machine."""

from __future__ import annotations

import os

import streamlit as st

from posterlab.data.labels import genre_counts
from posterlab.evaluation.metrics import headline
from posterlab.runs import list_runs
from workbench import state, through_app
from workbench.widgets import STATUS_ICONS

through_app()  # before anything is drawn: see workbench.through_app

st.title(":material/movie: posterlab")
st.markdown(
    "What can a movie poster tell us about its film? posterlab learns **genres** (several per poster) "
    "or a single label such as **fresh / rotten** from poster images, by transfer learning from "
    "ImageNet backbones, and shows **why** with Grad-CAM."
)

# the cards' frames and the links first, their contents after: reading the dataset, the runs folder and
# torch takes seconds on a cold server, and the page should not wait blank for them
cards = {}
for column, title in zip(
    st.columns(3),
    (":material/photo_library: Dataset", ":material/leaderboard: Runs", ":material/memory: Device"),
    strict=True,
):
    box = column.container(border=True)
    box.markdown(f"##### {title}")
    cards[title.rsplit(" ", 1)[-1]] = box.empty()
    cards[title.rsplit(" ", 1)[-1]].caption("…")

st.subheader("Where to go")
left, right = st.columns(2)
with left:
    st.page_link("pages/dataset.py", label="Dataset", icon=":material/photo_library:")
    st.caption("Distributions, co-occurrence, splits, cleaning, genre selection, balancing, augmentation.")
    st.page_link("pages/train.py", label="Train", icon=":material/model_training:")
    st.caption("Pick a backbone and mode; training runs in the background with live curves.")
    st.page_link("pages/compare.py", label="Compare", icon=":material/leaderboard:")
    st.caption("Runs side by side against their baselines: curves, per-label tables, ROC/PR, confusion.")
with right:
    st.page_link("pages/explore.py", label="Explore", icon=":material/image_search:")
    st.caption("Predictions vs truth, top losses, top posters per label with Grad-CAM, your own posters.")
    st.page_link("pages/demo.py", label="Demo", icon=":material/rocket_launch:")
    st.caption("The Gradio demo, as it runs standalone or on Hugging Face Spaces.")

with cards["Dataset"].container():
    path = state.dataset_path()
    if path:
        dataset = state.dataset(path)
        st.metric("Posters", len(dataset))
        frame = dataset.frame
        if frame["genres"].map(len).sum() > 0:
            top = genre_counts(frame).head(6)
            st.caption("Most common genres: " + ", ".join(f"{g} ({n})" for g, n in top.items()))
        elif frame["label"].notna().any():
            counts = frame["label"].value_counts()
            st.caption("Labels: " + ", ".join(f"{g} ({n})" for g, n in counts.items()))
        st.caption(f"`{state.display_name(path)}` · {dataset.kind.replace('_', ' ')}")
    else:
        st.info("No dataset: pick one in the sidebar.")

with cards["Runs"].container():
    runs = list_runs(state.checkpoints())
    st.metric("Runs", len(runs))
    if runs:
        states = {}
        for run in runs:
            states[run.state] = states.get(run.state, 0) + 1
        st.caption(" · ".join(f"{STATUS_ICONS.get(s, '')} {n} {s}" for s, n in states.items()))
        latest = next((r for r in runs if r.state == "completed" and r.metrics), None)
        if latest is not None:
            test = latest.metrics.get("test", {})
            shown = ", ".join(
                f"{k} {v:.3f} (baseline {test.get('baseline', {}).get(k, float('nan')):.3f})"
                for k, v in list(headline(latest.metrics.get("task", ""), test.get("metrics", {})).items())[
                    :2
                ]
            )
            st.caption(f"Latest completed: `{latest.name}`: test {shown}")
    else:
        st.caption(f"None yet in `{state.checkpoints()}`: start one on Train.")

with cards["Device"].container():  # last: importing torch takes seconds
    import torch

    if torch.cuda.is_available():
        st.metric("GPU", torch.cuda.get_device_name(0))
        st.caption(f"CUDA {torch.version.cuda} · mixed precision and channels-last when training")
    else:
        st.metric("CPU", f"{os.cpu_count()} cores")
        st.caption("No CUDA GPU visible: probe runs (frozen backbone, cached embeddings) train in seconds.")
    st.caption(f"torch {torch.__version__}")

state.prepare_demo()  # after the cards: the Demo page's first visit then finds gradio imported
