"""posterlab's workbench: ``streamlit run app.py``.

The entry point only sets up navigation and the sidebar settings (dataset, checkpoints folder, the
training indicator); each screen is a file under ``pages/``. The chosen dataset is kept in the page's
URL (``?data=``), so a browser reload, or a link, comes back to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from PIL import Image, ImageDraw

from posterlab import settings
from posterlab.errors import PosterlabError
from workbench import through_app
from workbench.keep import carry_settings

SOURCES = {
    "sample": "Embedded posters: genres",
    "sample-rt": "Embedded posters: fresh / rotten",
    "path": "A folder or file on this machine",
    "upload": "Upload a CSV or a zip",
}


def _remembered() -> str:
    """The dataset named in the URL (a reload keeps it) or chosen earlier in this session (moving to
    another page drops the URL's query): it seeds the sidebar once per session."""
    remembered = st.query_params.get("data", "") or st.session_state.get("sidebar_remembered", "")
    if remembered and "sidebar_source" not in st.session_state:
        if remembered in settings.SAMPLES:
            st.session_state["sidebar_source"] = remembered
        elif state.is_upload(remembered):
            st.session_state["sidebar_source"] = "upload"
        else:
            st.session_state["sidebar_source"] = "path"
            st.session_state["sidebar_path"] = remembered
    return remembered


def _upload(remembered: str) -> str:
    """An uploaded dataset, kept under the cache; the last one stays chosen across a reload."""
    upload = st.file_uploader(
        "CSV or zip",
        type=["csv", "zip"],
        key="sidebar_upload",
        help="A dataset zip (labels.csv + images/, or a folder per class) is extracted safely; "
        "Kaggle's MovieGenre.csv downloads its posters.",
    )
    if upload is not None:
        try:
            return str(state.save_upload(upload.name, upload.getvalue()))
        except PosterlabError as error:
            show_error(error)
            return ""
    if state.is_upload(remembered) and Path(remembered).is_file():
        st.caption(f"Using `{state.display_name(remembered)}`, uploaded earlier.")
        return remembered
    return ""


def dataset_settings() -> None:
    """Pick the dataset; its path goes to session state (and the URL) when it can be read."""
    remembered = _remembered()
    choice = st.selectbox("Dataset", list(SOURCES), format_func=SOURCES.get, key="sidebar_source")
    path = choice
    if choice == "path":
        path = st.text_input(
            "Path",
            key="sidebar_path",
            placeholder="folder with labels.csv + images/, MovieGenre.csv, or a .zip",
        ).strip()
    elif choice == "upload":
        path = _upload(remembered)
    st.session_state[state.DATASET_KEY] = ""
    if not path:
        st.caption("Give a dataset to browse and train on.")
        return
    try:
        dataset = state.dataset(path)
    except PosterlabError as error:
        show_error(error, path)
        return
    st.session_state[state.DATASET_KEY] = path
    st.session_state["sidebar_remembered"] = path
    if st.query_params.get("data", "sample") != path:
        st.query_params["data"] = path
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


@st.cache_resource(show_spinner=False)
def tab_icon() -> Image.Image:
    """The browser tab's icon, drawn here: a Material icon or an emoji as ``page_icon`` is fetched from a
    font CDN by the browser, which fails offline (a broken icon and a failed request on every load)."""
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.rounded_rectangle((2, 2, 62, 62), radius=12, fill=(234, 88, 12))  # the demo's orange
    draw.rectangle((18, 12, 46, 52), fill=(255, 255, 255))  # a poster
    draw.rectangle((22, 16, 42, 36), fill=(251, 146, 60))
    return icon


through_app()  # a page's own URL on a fresh server must come through this file too (see its docstring)
st.set_page_config(page_title="posterlab", page_icon=tab_icon(), layout="wide")
page = st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/leaderboard:"),
        st.Page("pages/explore.py", title="Explore", icon=":material/image_search:"),
        st.Page("pages/demo.py", title="Demo", icon=":material/rocket_launch:"),
    ],
    position="top",  # the sidebar is for settings; .streamlit/config.toml hides the pages/ folder's own menu
)
# a cold server's first page would stay blank while pandas, plotly and the core load (5-10 s on 2 cores):
# the navigation above is drawn, and this says what is happening, until they are in
starting = st.empty()
if "workbench.widgets" not in sys.modules:
    starting.info(
        "Starting the workbench: loading its libraries (once per server, a few seconds)…",
        icon=":material/hourglass_top:",
    )
from workbench import state  # noqa: E402  (see above)
from workbench.widgets import show_error, training_sidebar  # noqa: E402

starting.empty()
with st.sidebar:
    dataset_settings()
    checkpoint_settings()
    training_sidebar(state.trainers().active() is not None)
carry_settings(page.url_path)  # the settings in the URL follow the user from page to page
page.run()
