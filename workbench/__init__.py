"""Helpers shared by the Streamlit pages (``app.py`` and ``pages/``).

This is the UI layer: it may import streamlit and the core; the core (``posterlab``) never imports it.
It holds no module-level mutable state: per-user settings live in ``st.session_state`` and
process-wide resources (the training manager, loaded datasets, models) in ``st.cache_resource``.
"""

import streamlit as st


def through_app() -> None:
    """Make sure the current page runs through ``app.py`` (its page config, sidebar and navigation).

    Works around one Streamlit behaviour (1.4x to 1.67 at least): until the first ``st.navigation``
    call of a server process, an app with a ``pages/`` folder beside its main script is taken for an
    old-style multipage app (``PagesManager.uses_pages_directory``), so a fresh server's first request
    for ``/train`` (a browser refresh after a restart, a bookmark) runs ``pages/train.py`` alone, without
    the sidebar. ``client.showSidebarNavigation = false`` (``.streamlit/config.toml``, the supported
    setting) hides that mode's menu, but nothing supported routes the request through ``app.py``: so
    app.py and every page call this first. It records what the first ``st.navigation`` call would (the
    class flag) and reruns, so the request comes back through ``app.py``. A no-op once the app has run;
    pinned by tests/test_app.py (AppTest resets the flag before every run, so there it acts every run).
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
