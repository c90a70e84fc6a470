"""Domain errors. Each message is one line that names the problem and the fix.

The command line prints ``str(error)`` and exits non-zero; the app shows it with ``st.error``; the demo
raises it as ``gr.Error``. Nothing below the edges formats tracebacks for users.
"""

from __future__ import annotations


def one_line(error: BaseException, limit: int = 300, typed: bool = True) -> str:
    """The first line of an error's message (its type name when the message is empty).

    posterlab's own errors are one line that names the fix; a library's error is cut to its first line,
    prefixed with its type (unless ``typed`` is False) so that it still says what kind of failure it was.
    """
    text = str(error).strip()
    if out_of_memory(error):
        return OUT_OF_MEMORY
    first = text.splitlines()[0][:limit] if text else ""
    if isinstance(error, PosterlabError) or (first and not typed):
        return first or type(error).__name__
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


OUT_OF_MEMORY = (
    "the GPU ran out of memory: lower the batch size (--batch-size, or Batch size on the Train page), "
    "keep mixed precision on (--amp), or pick a smaller backbone"
)


def out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error (torch.cuda.OutOfMemoryError, or the RuntimeError older paths raise)."""
    return type(error).__name__ == "OutOfMemoryError" or str(error).lstrip().startswith("CUDA out of memory")


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

    @classmethod
    def missing(cls, path: object) -> RunError:
        """The one wording for a run folder that is not there (the CLI says it before importing torch)."""
        return cls(f"{path}: no such run folder; list runs with the app's Compare page or ls checkpoints/")

    @classmethod
    def busy(cls, path: object, holder: dict, doing: str = "train it") -> RunError:
        """The one wording for a run folder another trainer holds (its lease is alive)."""
        import time

        age = time.time() - float(holder.get("heartbeat") or 0)
        return cls(
            f"{path}: is being trained by process {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"(heartbeat {age:.0f} s ago); stop that run before you {doing}"
        )


class BusyError(PosterlabError):
    """A training run is already in progress in this process."""
