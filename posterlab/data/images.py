"""Reading untrusted poster images.

Every file ends in a named outcome: an RGB image (with notes on what was converted), or an
``ImageError`` with a short reason. Nothing here crashes on a hostile file, and nothing returns a
silently wrong image (16-bit scaled properly, alpha composited on white, EXIF rotation applied).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from posterlab.errors import ImageError, one_line

MAX_FILE_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 50_000_000  # far above any poster; a larger header is a decompression bomb
MIN_SIDE = 16
_EXIF_ORIENTATION = 0x0112


@dataclass
class LoadedImage:
    """An RGB image ready for the model, and what had to be done to get it."""

    image: Image.Image
    notes: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)  # at full resolution (``image`` is smaller after a draft decode)


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes: the key for every per-image cache."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_image(
    source: str | Path | bytes | Image.Image, name: str | None = None, draft: int | None = None
) -> LoadedImage:
    """Open a poster from a path, raw bytes or a PIL image and return it as 8-bit RGB.

    ``draft``: a JPEG larger than needed is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose sides
    stay at least ``draft`` px (Pillow's ``Image.draft``): a 2000 px poster shown to a 224 px model decodes
    several times faster, and the model then resamples a picture that is already close to its size.
    Raises ``ImageError`` (one line: what is wrong with which file) for empty, missing, oversized,
    non-image, truncated, tiny or decompression-bomb inputs.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "uploaded image")
    if isinstance(source, Image.Image):
        return _normalise(source, label, source.size)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(label, "file not found", "check the path")
        size = path.stat().st_size
        if size == 0:
            raise ImageError(label, "empty file (0 bytes)", "replace it with a real image")
        if size > MAX_FILE_BYTES:
            raise ImageError(
                label,
                f"file too large ({size / 1e6:.0f} MB)",
                f"use an image under {MAX_FILE_BYTES // 2**20} MB",
            )
        data = path.read_bytes()
    else:
        data = bytes(source)
        if not data:
            raise ImageError(label, "empty file (0 bytes)", "replace it with a real image")
        if len(data) > MAX_FILE_BYTES:
            raise ImageError(
                label,
                f"file too large ({len(data) / 1e6:.0f} MB)",
                f"use an image under {MAX_FILE_BYTES // 2**20} MB",
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    label,
                    f"decompression bomb ({width}x{height} pixels, limit {MAX_PIXELS:,})",
                    "resize the image below the limit",
                )
            if draft and image.format == "JPEG" and min(width, height) > 2 * draft:
                image.draft(image.mode, (draft, draft))
            return _normalise(image, label, (width, height))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            label, "not an image (or a format Pillow cannot read)", "use a JPEG, PNG or WebP poster"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            label, "decompression bomb (too many pixels)", "resize the image below the limit"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        detail = one_line(error, typed=False)
        raise ImageError(
            label, f"truncated or corrupt image ({detail})", "re-export or re-download it"
        ) from None


def _normalise(image: Image.Image, label: str, size: tuple[int, int]) -> LoadedImage:
    notes: list[str] = []
    if getattr(image, "is_animated", False):
        notes.append(f"animated ({getattr(image, 'n_frames', '?')} frames): first frame used")
        image.seek(0)
    image.load()  # decodes now, so truncation surfaces here and not inside a data loader
    orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if hasattr(image, "getexif") else 1
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
        notes.append(f"rotated per EXIF orientation {orientation}")
        if orientation in (5, 6, 7, 8):  # a quarter turn: the full-resolution sides swap too
            size = (size[1], size[0])
    image, converted = _to_rgb(image)
    if converted:
        notes.append(converted)
    if min(image.size) < MIN_SIDE:
        raise ImageError(
            label,
            f"too small ({image.size[0]}x{image.size[1]})",
            f"posters need at least {MIN_SIDE} px a side",
        )
    return LoadedImage(image, notes, size)


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str]:
    mode = image.mode
    if mode == "RGB":
        return image, ""
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode == "F" or array.max(initial=0) > 65535:
            low, high = float(array.min(initial=0)), float(array.max(initial=0))
            array = (array - low) / (high - low or 1.0) * 255.0
            how = "float image rescaled to 8-bit"
        elif mode == "I" and array.max(initial=0) <= 255:
            how = "32-bit greyscale converted"
        else:
            array = array / 257.0
            how = "16-bit greyscale scaled to 8-bit"
        grey = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB"), how
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert(
            "RGB"
        ), f"{mode} with transparency composited on white"
    if mode == "CMYK":
        return image.convert("RGB"), "CMYK converted to RGB"
    return image.convert("RGB"), f"{mode} converted to RGB"
