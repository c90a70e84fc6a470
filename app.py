"""posterlab's workbench: ``streamlit run app.py``.

The entry point only sets up navigation and the sidebar settings (dataset, checkpoints folder, the
training indicator); each screen is a file under ``pages/``.
"""

from __future__ import annotations

import streamlit as st

from posterlab import settings
from posterlab.errors import PosterlabError
from workbench import state, through_app
from workbench.widgets import show_error, training_sidebar

SOURCES = {
    "sample": "Embedded posters: genres",
    "sample-rt": "Embedded posters: fresh / rotten",
    "path": "A folder or file on this machine",
    "upload": "Upload a CSV or a zip",
}


def dataset_settings() -> None:
    """Pick the dataset; its path goes to session state when it can be read, else an error shows."""
    choice = st.selectbox("Dataset", list(SOURCES), format_func=SOURCES.get, key="sidebar_source")
    path = choice
    if choice == "path":
        path = st.text_input(
            "Path",
            key="sidebar_path",
            placeholder="folder with labels.csv + images/, MovieGenre.csv, or a .zip",
        ).strip()
    elif choice == "upload":
        upload = st.file_uploader(
            "CSV or zip",
            type=["csv", "zip"],
            key="sidebar_upload",
            help="A dataset zip (labels.csv + images/, or a folder per class) is extracted safely; "
            "Kaggle's MovieGenre.csv downloads its posters.",
        )
        path = ""
        if upload is not None:
            try:
                path = str(state.save_upload(upload.name, upload.getvalue()))
            except PosterlabError as error:
                show_error(error)
    st.session_state[state.DATASET_KEY] = ""
    if not path:
        st.caption("Give a dataset to browse and train on.")
        return
    try:
        dataset = state.dataset(path)
    except PosterlabError as error:
        show_error(error)
        return
    st.session_state[state.DATASET_KEY] = path
    st.caption(f"{len(dataset)} posters · {dataset.kind.replace('_', ' ')}")


def checkpoint_settings() -> None:
    """Pick the folder of run folders."""
    folder = st.text_input(
        "Checkpoints folder",
        value=str(settings.checkpoints_dir()),
        key="sidebar_checkpoints",
        help="Run folders live here; everything the app shows about runs is read back from it.",
    ).strip()
    st.session_state[state.CHECKPOINTS_KEY] = folder or str(settings.checkpoints_dir())
    root = state.checkpoints()
    count = sum((p / "config.json").is_file() for p in root.iterdir()) if root.is_dir() else 0
    st.caption(
        f"{count} run{'s' if count != 1 else ''}"
        if root.is_dir()
        else "not created yet: the first run creates it"
    )


through_app()  # a first request on a fresh server must not run as an old-style pages/ app
st.set_page_config(page_title="posterlab", page_icon=":material/movie:", layout="wide")
page = st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/leaderboard:"),
        st.Page("pages/explore.py", title="Explore", icon=":material/image_search:"),
        st.Page("pages/demo.py", title="Demo", icon=":material/rocket_launch:"),
    ]
)
with st.sidebar:
    dataset_settings()
    checkpoint_settings()
    training_sidebar(state.trainers().active() is not None)
page.run()
