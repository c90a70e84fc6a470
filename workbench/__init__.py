"""Helpers shared by the Streamlit pages (``app.py`` and ``pages/``).

This is the UI layer: it may import streamlit and the core; the core (``posterlab``) never imports it.
It holds no module-level mutable state: per-user settings live in ``st.session_state`` and
process-wide resources (the training manager, loaded datasets, models) in ``st.cache_resource``.
"""

import streamlit as st


def through_app() -> None:
    """Make sure the current page runs through ``app.py`` (its page config, sidebar and navigation).

    Until the first ``st.navigation`` call of a server process, Streamlit takes an app with a
    ``pages/`` folder for an old-style multipage app: a first request for ``/train`` (a browser
    refresh after a server restart) would run ``pages/train.py`` alone. Pages call this first: it
    records what that first ``st.navigation`` call would (a class flag of Streamlit's PagesManager)
    and reruns, so the page comes back through ``app.py``. A no-op once the app has run. (AppTest
    resets the flag before every run, so there it acts on every run.)
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
