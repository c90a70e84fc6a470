"""Untrusted images end in a named outcome: loaded correctly (with a note) or a one-line ImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from posterlab.data.images import MAX_PIXELS, load_image
from posterlab.errors import ImageError


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def _error(source) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_real_poster_loads_as_rgb(poster_paths):
    loaded = load_image(poster_paths[0])
    assert loaded.image.mode == "RGB"
    assert loaded.notes == []


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert _error(path) == f"{path}: empty file (0 bytes); replace it with a real image"


def test_missing_file(tmp_path):
    assert "file not found" in _error(tmp_path / "nope.jpg")


def test_non_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a poster")
    assert (
        _error(path)
        == f"{path}: not an image (or a format Pillow cannot read); use a JPEG, PNG or WebP poster"
    )


def test_truncated_jpeg(tmp_path, poster_paths):
    data = poster_paths[0].read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt image" in _error(path)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    side = int(MAX_PIXELS**0.5) + 1000
    path = _save(Image.new("1", (side, side)), tmp_path / "bomb.png")
    assert path.stat().st_size < 2_000_000  # tiny file, huge image
    message = _error(path)
    assert "decompression bomb" in message and f"{side}x{side}" in message


def test_cmyk_converted_with_note(tmp_path):
    path = _save(Image.new("CMYK", (60, 90), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")  # pure red in CMYK
    loaded = load_image(path)
    assert loaded.image.mode == "RGB"
    red, green, blue = loaded.image.getpixel((30, 45))
    assert red > 200 and green < 60 and blue < 60
    assert loaded.notes == ["CMYK converted to RGB"]


def test_16_bit_greyscale_scaled_not_clipped(tmp_path):
    array = np.zeros((64, 64), dtype=np.uint16)
    array[:, :32] = 32768
    array[:, 32:] = 65535
    path = _save(Image.fromarray(array), tmp_path / "deep.png")
    loaded = load_image(path)
    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((10, 10))[0] == 128
    assert loaded.image.getpixel((50, 10))[0] == 255
    assert "16-bit" in loaded.notes[0]


def test_palette_with_transparency_composited_on_white(tmp_path):
    image = Image.new("P", (40, 60), 0)
    image.putpalette([0, 0, 0] + [200, 0, 0] * 255)
    image.paste(1, (0, 0, 20, 60))
    image.info["transparency"] = 0
    path = _save(image, tmp_path / "palette.png", transparency=0)
    loaded = load_image(path)
    assert loaded.image.getpixel((30, 30)) == (255, 255, 255)  # transparent → white, not black
    assert loaded.image.getpixel((5, 30)) == (200, 0, 0)
    assert "transparency" in loaded.notes[0]


def test_rgba_composited(tmp_path):
    image = Image.new("RGBA", (40, 40), (0, 0, 255, 0))
    loaded = load_image(_save(image, tmp_path / "clear.png"))
    assert loaded.image.getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_applied(tmp_path):
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 20, 40))  # red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif.tobytes())
    loaded = load_image(path)
    assert loaded.image.size == (40, 80)
    assert loaded.image.getpixel((20, 5))[0] > 200  # the left band is now on top
    assert "EXIF orientation 6" in loaded.notes[0]


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 48), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    loaded = load_image(path)
    assert loaded.image.getpixel((5, 5))[0] > 200
    assert loaded.notes[0].startswith("animated (2 frames)")


def test_tiny_image(tmp_path):
    assert "too small (8x8)" in _error(_save(Image.new("RGB", (8, 8)), tmp_path / "tiny.png"))


def test_bytes_and_pil_inputs(poster_paths):
    data = poster_paths[0].read_bytes()
    assert load_image(data).image.size == load_image(Image.open(io.BytesIO(data))).image.size
    with pytest.raises(ImageError, match="uploaded image: not an image"):
        load_image(b"<html>nope</html>")
