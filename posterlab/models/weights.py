"""Where a backbone's starting weights come from, without importing timm: the local weights file, its
identity for cache keys, and the safetensors check that runs before any library parses a file."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
from pathlib import Path

from posterlab import settings
from posterlab.errors import RunError


def weights_file(name: str) -> Path | None:
    """``$POSTERLAB_WEIGHTS_DIR/<name>.safetensors`` when it exists."""
    folder = settings.weights_dir()
    if folder is None:
        return None
    path = folder / f"{name}.safetensors"
    return path if path.is_file() else None


def check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file, before any library parses it.

    A safetensors file is an 8-byte header length, then that many bytes of JSON. Anything else is refused;
    a pickle (``torch.save``, a zip or a raw pickle stream), which can run code when loaded, is named as
    such. (The shape is checked first: a header length can itself start with the pickle marker byte.)
    """
    pickled = RunError(
        f"{path}: is a pickled PyTorch checkpoint, which can run code when loaded and is never opened by "
        "posterlab; convert it with safetensors.torch.save_file(state_dict, ...) on a machine you trust"
    )
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if 2 <= length <= min(100_000_000, size - 8) and handle.read(1) == b"{":
                handle.seek(8)
                json.loads(handle.read(length))
                return
    except FileNotFoundError:
        raise RunError(f"{path}: file not found") from None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise RunError(
            f"{path}: is not a safetensors file ({type(error).__name__}); re-save the weights with safetensors"
        ) from None
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise pickled
    if len(head) < 8:
        raise RunError(f"{path}: is not a safetensors file (too short); re-save the weights with safetensors")
    raise RunError(f"{path}: is not a safetensors file (bad header); re-save the weights with safetensors")


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_id(name: str, pretrained: bool, seed: int) -> str:
    """Identifies the starting weights, for cache keys: a file hash, a hub name, or a random seed."""
    if not pretrained:
        return f"random:{seed}"
    local = weights_file(name)
    if local is not None:
        stat = local.stat()
        return "sha256:" + _file_sha256(str(local), stat.st_size, stat.st_mtime_ns)
    return f"hub:{name}"
