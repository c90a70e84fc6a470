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

    A pickle (``torch.save``) can run code when loaded; posterlab never loads one.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if head[:2] == b"PK" or head[:1] == b"\x80":
                raise RunError(
                    f"{path}: is a pickled PyTorch checkpoint, which can run code when loaded and is never "
                    "opened by posterlab; convert it with safetensors.torch.save_file(state_dict, ...) on a machine you trust"
                )
            if len(head) < 8:
                raise RunError(
                    f"{path}: is not a safetensors file (too short); re-save the weights with safetensors"
                )
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000 or length > os.path.getsize(path):
                raise RunError(
                    f"{path}: is not a safetensors file (bad header); re-save the weights with safetensors"
                )
            json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        if isinstance(error, FileNotFoundError):
            raise RunError(f"{path}: file not found") from None
        raise RunError(
            f"{path}: is not a safetensors file ({type(error).__name__}); re-save the weights with safetensors"
        ) from None


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
