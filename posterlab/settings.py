"""Where posterlab looks for things: environment variables and the embedded sample."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_DIR = PACKAGE_DIR / "sample"
# The embedded default datasets: real posters copied from the development set.
SAMPLES = {
    "sample": SAMPLE_DIR / "posters",
    "sample-rt": SAMPLE_DIR / "posters_rt",
}
# Sample posters that make good examples in the demo and its bundle (all held out from the committed
# demo runs' training).
EXAMPLE_IDS = (
    "tt0087469",  # Indiana Jones and the Temple of Doom
    "tt0088847",  # The Breakfast Club
    "tt0178868",  # Ringu
    "tt0105690",  # Under Siege
    "tt0160916",  # The Story of Us
    "tt0416315",  # Wolf Creek
    "tt0405094",  # The Lives of Others
    "tt0098678",  # Worth Winning
)


def example_posters() -> list[Path]:
    """The demo's example posters from the embedded sample (those present: a bundle has its own)."""
    folder = SAMPLES["sample"] / "images"
    return [folder / f"{i}.jpg" for i in EXAMPLE_IDS if (folder / f"{i}.jpg").is_file()]


def weights_dir() -> Path | None:
    """Folder of ``<timm_name>.safetensors`` files, from ``POSTERLAB_WEIGHTS_DIR`` (None when unset)."""
    value = os.environ.get("POSTERLAB_WEIGHTS_DIR", "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Root of posterlab's caches (features, image scans, downloads); ``POSTERLAB_CACHE_DIR`` overrides."""
    value = os.environ.get("POSTERLAB_CACHE_DIR", "").strip()
    path = Path(value).expanduser() if value else Path(user_cache_dir("posterlab"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoints_dir() -> Path:
    """Folder of run folders: ``POSTERLAB_CHECKPOINTS`` or ``./checkpoints``."""
    value = os.environ.get("POSTERLAB_CHECKPOINTS", "").strip()
    return Path(value).expanduser() if value else Path("checkpoints")
