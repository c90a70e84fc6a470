"""Downloading posters listed by URL (Kaggle's MovieGenre.csv), with retries, a cache and a report."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from posterlab import settings
from posterlab.data.images import load_image
from posterlab.errors import ImageError, one_line

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 20 * 2**20


def _session(retries: int, backoff: float) -> requests.Session:
    session = requests.Session()
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=("GET",),
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=16)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "posterlab (poster dataset download)"
    return session


def download_posters(
    urls: dict[str, str],
    cache: Path | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 20.0,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Fetch each ``id → url`` into the cache (skipping ones already there); verify each is an image.

    Returns one row per id: ``id, url, ok, path, error``. The report is also written next to the
    cached files as ``download_report.csv`` so failures can be inspected or retried.
    """
    cache = cache or settings.cache_dir() / "downloads"
    cache.mkdir(parents=True, exist_ok=True)
    session = _session(retries, backoff)
    items = list(urls.items())
    done = 0

    def fetch(item: tuple[str, str]) -> dict:
        movie_id, url = item
        row = {"id": movie_id, "url": url, "ok": False, "path": "", "error": ""}
        if not url or not url.lower().startswith(("http://", "https://")):
            row["error"] = "no http(s) URL"
            return row
        target = cache / f"{hashlib.sha1(url.encode()).hexdigest()}{_suffix(url)}"
        if target.is_file() and target.stat().st_size > 0:
            row.update(ok=True, path=str(target))
            return row
        try:
            with session.get(url, timeout=timeout, stream=True) as response:
                if response.status_code != 200:
                    row["error"] = f"HTTP {response.status_code}"
                    return row
                data = bytearray()
                for chunk in response.iter_content(1 << 16):
                    data.extend(chunk)
                    if len(data) > MAX_DOWNLOAD_BYTES:
                        row["error"] = f"larger than {MAX_DOWNLOAD_BYTES // 2**20} MB"
                        return row
            load_image(bytes(data), name=url)  # refuse non-images before they reach the cache
            partial = target.with_suffix(target.suffix + f".{os.getpid()}.part")
            partial.write_bytes(bytes(data))
            os.replace(partial, target)
            row.update(ok=True, path=str(target))
        except ImageError as error:
            row["error"] = error.reason
        except requests.RequestException as error:
            row["error"] = one_line(error, limit=160)
        return row

    rows = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for row in pool.map(fetch, items):
            rows.append(row)
            done += 1
            if progress:
                progress(done, len(items))
    report = pd.DataFrame(rows, columns=["id", "url", "ok", "path", "error"])
    report.to_csv(cache / "download_report.csv", index=False)
    failed = int((~report["ok"]).sum()) if len(report) else 0
    if failed:
        log.warning(
            "%d of %d posters could not be downloaded; see %s",
            failed,
            len(report),
            cache / "download_report.csv",
        )
    return report


def _suffix(url: str) -> str:
    tail = url.split("?")[0].rsplit(".", 1)
    return (
        f".{tail[1].lower()}"
        if len(tail) == 2 and tail[1].lower() in ("jpg", "jpeg", "png", "webp", "gif")
        else ".jpg"
    )
