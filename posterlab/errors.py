"""Domain errors. Each message is one line that names the problem and the fix.

The command line prints ``str(error)`` and exits non-zero; the app shows it with ``st.error``; the demo
raises it as ``gr.Error``. Nothing below the edges formats tracebacks for users.
"""

from __future__ import annotations


class PosterlabError(Exception):
    """Base class for errors that users can act on."""


class ConfigError(PosterlabError):
    """A configuration value is invalid."""


class DataError(PosterlabError):
    """A dataset cannot be read or labelled as asked."""


class ImageError(DataError):
    """One image cannot be used; ``reason`` is short enough for a report column."""

    def __init__(self, source: str, reason: str, fix: str = "") -> None:
        self.source = source
        self.reason = reason
        self.fix = fix
        message = f"{source}: {reason}"
        super().__init__(f"{message}; {fix}" if fix else message)


class ModelError(PosterlabError):
    """A backbone cannot be built or its weights cannot be found."""


class RunError(PosterlabError):
    """A run folder is missing, incomplete or unsafe to load."""


class BusyError(PosterlabError):
    """A training run is already in progress in this process."""
