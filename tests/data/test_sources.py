"""The three dataset shapes, safe zip extraction, and poster downloads against a local HTTP server."""

from __future__ import annotations

import http.server
import os
import shutil
import stat
import threading
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from posterlab.data.sources import load_dataset
from posterlab.errors import DataError


def _labels_folder(tmp_path: Path, sample_dir: Path, rows: int = 12) -> Path:
    root = tmp_path / "posters"
    (root / "images").mkdir(parents=True)
    table = pd.read_csv(sample_dir / "labels.csv", dtype=str).head(rows)
    for movie in table["imdb_id"]:
        shutil.copy(sample_dir / "images" / f"{movie}.jpg", root / "images" / f"{movie}.jpg")
    table.to_csv(root / "labels.csv", index=False)
    return root


def test_embedded_samples():
    genres = load_dataset("sample")
    assert len(genres) == 300 and genres.kind == "labels_csv"
    assert {"id", "image", "genres", "label", "title", "year", "imdb_score"} <= set(genres.frame.columns)
    assert all(Path(p).is_file() for p in genres.frame["image"])
    assert isinstance(genres.frame["genres"].iloc[0], tuple)
    rt = load_dataset("sample-rt")
    assert set(rt.frame["label"]) == {"fresh", "rotten"}


def test_labels_folder_with_missing_image_and_repeated_id(tmp_path, sample_dir):
    root = _labels_folder(tmp_path, sample_dir)
    table = pd.read_csv(root / "labels.csv", dtype=str)
    os.remove(root / "images" / f"{table['imdb_id'][0]}.jpg")
    pd.concat([table, table.iloc[[1]]]).to_csv(root / "labels.csv", index=False)
    dataset = load_dataset(root)
    assert len(dataset) == 11
    assert sorted(dataset.issues["reason"]) == ["image file missing", "repeated id (first row kept)"]


def test_image_column_cannot_escape_the_folder(tmp_path, sample_dir):
    root = _labels_folder(tmp_path, sample_dir, rows=3)
    table = pd.read_csv(root / "labels.csv", dtype=str)
    table["image"] = [f"images/{m}.jpg" for m in table["imdb_id"]]
    table.loc[0, "image"] = "../../../../etc/passwd"
    table = table.drop(columns=["imdb_id"])
    table.to_csv(root / "labels.csv", index=False)
    dataset = load_dataset(root)
    assert len(dataset) == 2
    assert dataset.issues["reason"].tolist() == ["path outside the dataset folder"]


def test_wrong_columns_one_line_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "labels.csv").write_text("name,kind\na,b\n")
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert str(info.value) == (
        f"{root / 'labels.csv'}: no image column; add 'imdb_id' (image at images/<imdb_id>.jpg) or 'image' "
        "(a path relative to the folder). Columns found: name, kind"
    )


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="not a poster dataset"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "missing")


def test_class_folders(tmp_path, poster_paths):
    for name, files in (("Action", poster_paths[:3]), ("Comedy", poster_paths[3:5])):
        (tmp_path / name).mkdir()
        for f in files:
            shutil.copy(f, tmp_path / name / f.name)
    dataset = load_dataset(tmp_path)
    assert dataset.kind == "class_folders"
    assert dataset.frame["label"].value_counts().to_dict() == {"Action": 3, "Comedy": 2}


# ------------------------------------------------------------------------------------------- zips


def _zip(path: Path, entries: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def test_zip_of_a_labels_folder(tmp_path, sample_dir):
    root = _labels_folder(tmp_path, sample_dir, rows=5)
    entries = {f"posters/{p.relative_to(root)}": p.read_bytes() for p in root.rglob("*") if p.is_file()}
    dataset = load_dataset(_zip(tmp_path / "data.zip", entries))
    assert len(dataset) == 5


@pytest.mark.parametrize(
    ("entries", "links", "message"),
    [
        ({"../evil.txt": b"x"}, None, "points outside the archive folder"),
        ({"ok/../../evil.txt": b"x"}, None, "points outside the archive folder"),
        ({"/etc/evil.txt": b"x"}, None, "points outside the archive folder"),
        ({"labels.csv": b"imdb_id\n"}, {"images/link.jpg": "/etc/passwd"}, "is a symbolic link"),
    ],
)
def test_hostile_zips_rejected_and_nothing_written(tmp_path, entries, links, message):
    archive = _zip(tmp_path / "evil.zip", entries, links)
    before = set(tmp_path.parent.rglob("evil.txt"))
    with pytest.raises(DataError, match=message):
        load_dataset(archive)
    assert set(tmp_path.parent.rglob("evil.txt")) == before


def test_zip_bomb_rejected(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("labels.csv", b"0" * (64 * 2**20))
    with pytest.raises(DataError, match="zip bomb"):
        load_dataset(archive)


def test_not_a_zip(tmp_path):
    path = tmp_path / "fake.zip"
    path.write_text("no")
    with pytest.raises(DataError, match="not a readable zip"):
        load_dataset(path)


# --------------------------------------------------------------------------- MovieGenre.csv + HTTP


class _Server:
    """A local poster host: good files, a 404, a flaky URL (500 twice, then 200), a non-image."""

    def __init__(self, root: Path) -> None:
        self.hits: dict[str, int] = {}
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802 (http.server's naming)
                hits[self.path] = hits.get(self.path, 0) + 1
                if self.path.startswith("/flaky") and hits[self.path] <= 2:
                    self.send_error(500)
                    return
                if self.path.startswith("/flaky"):
                    self.path = self.path.replace("/flaky", "")
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_movie_genre_csv_downloads_with_retries_cache_and_report(tmp_path, poster_paths, monkeypatch):
    monkeypatch.setenv("POSTERLAB_CACHE_DIR", str(tmp_path / "cache"))
    host = tmp_path / "host"
    host.mkdir()
    for p in poster_paths[:3]:
        shutil.copy(p, host / p.name)
    (host / "page.jpg").write_text("<html>not a poster</html>")
    server = _Server(host)
    try:
        names = [p.name for p in poster_paths[:3]]
        rows = [
            ("114709", "Toy Story (1995)", "8.3", "Animation|Adventure|Comedy", f"{server.url}/{names[0]}"),
            ("113497", "Jumanji (1995)", "6.9", "Action|Adventure|Family", f"{server.url}/{names[1]}"),
            ("113228", "Grumpier Old Men (1995)", "6.6", "Comedy|Romance", f"{server.url}/flaky/{names[2]}"),
            (
                "114885",
                "Waiting to Exhale (1995)",
                "5.7",
                "Comedy|Drama|Romance",
                f"{server.url}/missing.jpg",
            ),
            (
                "113041",
                "Father of the Bride Part II (1995)",
                "5.9",
                "Comedy|Family",
                f"{server.url}/page.jpg",
            ),
        ]
        frame = pd.DataFrame(rows, columns=["imdbId", "Title", "IMDB Score", "Genre", "Poster"])
        frame.insert(1, "Imdb Link", "http://www.imdb.com/title/tt0114709")
        csv = tmp_path / "MovieGenre.csv"
        frame.to_csv(csv, index=False, encoding="latin-1")
        dataset = load_dataset(csv)
        assert sorted(dataset.frame["id"]) == ["tt0113228", "tt0113497", "tt0114709"]
        assert dataset.frame.set_index("id").loc["tt0114709", "genres"] == (
            "Animation",
            "Adventure",
            "Comedy",
        )
        reasons = dict(zip(dataset.issues["id"], dataset.issues["reason"], strict=True))
        assert reasons["tt0114885"] == "download failed: HTTP 404"
        assert reasons["tt0113041"].startswith("download failed: not an image")
        assert server.hits[f"/flaky/{names[2]}"] == 3  # two 500s, retried, then served
        report = pd.read_csv(tmp_path / "cache" / "downloads" / "download_report.csv")
        assert report["ok"].sum() == 3
        # a second read serves the posters from the cache
        before = dict(server.hits)
        load_dataset(csv)
        assert server.hits[f"/{names[0]}"] == before[f"/{names[0]}"]
    finally:
        server.close()


def test_movie_genre_csv_missing_columns(tmp_path):
    csv = tmp_path / "MovieGenre.csv"
    csv.write_text("imdbId,Genre\n1,Drama\n")
    with pytest.raises(DataError, match="not a poster dataset|needs columns|no image column"):
        load_dataset(csv)
