"""What the workbench keeps across a refresh: every setting a user makes lives in the page's URL.

Why query parameters rather than a per-user settings file: Streamlit has no user identity to key a file
by (a file per server would be everyone's settings), while the URL belongs to the browser tab, survives a
reload and a restart of the server, and makes a link that opens the same view. Widgets are bound with
``bind="query-params"`` (Streamlit's own binding: the value is written to the URL when it differs from
the default, and read back on load); uploads are kept under the cache and named in the URL by their
content digest (``state.kept_posters``).

One gap is filled here: Streamlit drops the query on a move to another page, and a value that a widget
read from the URL (after a reload) is not carried to the next page the way a value the user set is
(Streamlit 1.67). So the settings in the URL are noted in the session on every run, and put back into the
URL when another page opens; the page then starts again, since widgets read the URL as a run starts (put
back during the run, the URL held the Train page's settings after a refresh on the Dataset page, while
Train's widgets showed their defaults and a run trained on all labels).
"""

from __future__ import annotations

import streamlit as st

KEPT = "workbench_kept_settings"  # {query parameter: its values}, this session's settings
PAGE = "workbench_kept_page"  # the page the previous run drew
PREFIXES = ("labels_", "train_", "dataset_", "explore_", "compare_")  # the bound widgets' keys


def is_setting(name: str) -> bool:
    """Whether a query parameter holds one of the workbench's remembered settings."""
    return name.startswith(PREFIXES)


def carry_settings(page: str) -> None:
    """Call before the page runs: on arriving at ``page`` from another one, put this session's settings
    back into the URL and start the run again; then note the URL's settings as this session's (a value
    set back to its default leaves the URL, and so the session)."""
    kept: dict[str, list[str]] = st.session_state.setdefault(KEPT, {})
    arrived = st.session_state.get(PAGE) not in (None, page)
    st.session_state[PAGE] = page
    missing = {name: values for name, values in kept.items() if name not in st.query_params}
    if arrived and missing:
        for name, values in missing.items():
            st.query_params[name] = values
        st.rerun()  # widgets read the URL when a run starts: this run's start had not seen these
    st.session_state[KEPT] = {
        name: st.query_params.get_all(name) for name in st.query_params if is_setting(name)
    }
