"""Demo: the Gradio demo (upload a poster → scores → Grad-CAM per predicted label), embedded."""

from __future__ import annotations

import streamlit as st

from posterlab.errors import one_line
from workbench import state, through_app

through_app()  # before anything is drawn: see workbench.through_app

st.title(":material/rocket_launch: Demo")
st.caption(
    "The Gradio demo over the runs in the checkpoints folder: the same app runs standalone "
    "(`posterlab demo`) and as an exported Hugging Face Space (`posterlab export RUN --format space`)."
)
try:
    import posterlab.demo  # noqa: F401
except ImportError as error:  # the demo module is optional: gradio, or the module itself, may be missing
    st.info(
        f"The Gradio demo is not available in this installation ({one_line(error)}). "
        "Meanwhile, the Explore page scores and explains your own posters.",
        icon=":material/info:",
    )
    st.stop()

try:
    with st.spinner("Starting the demo (once per server)…"):
        url = state.demo_url()
except Exception as error:  # shown to the user in one line; the rest of the app keeps working
    st.error(f"The demo could not start: {one_line(error)}", icon=":material/error:")
    st.stop()

st.link_button("Open the demo in its own tab", url, icon=":material/open_in_new:")
st.iframe(url, height=900)
