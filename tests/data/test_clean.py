"""Cleaning: unreadable posters and near-duplicates are reported and dropped, conversions noted."""

from __future__ import annotations

import shutil

import pandas as pd
from PIL import Image

from posterlab.data.clean import clean_dataset
from posterlab.data.sources import load_dataset


def test_cleaning_report(tmp_path, sample_dir):
    root = tmp_path / "posters"
    (root / "images").mkdir(parents=True)
    table = pd.read_csv(sample_dir / "labels.csv", dtype=str).head(8).reset_index(drop=True)
    for movie in table["imdb_id"]:
        shutil.copy(sample_dir / "images" / f"{movie}.jpg", root / "images" / f"{movie}.jpg")
    table.to_csv(root / "labels.csv", index=False)
    ids = table["imdb_id"].tolist()
    (root / "images" / f"{ids[0]}.jpg").write_bytes(b"")  # unreadable
    poster = Image.open(sample_dir / "images" / f"{ids[1]}.jpg")
    poster.resize((poster.width - 6, poster.height - 8)).save(
        root / "images" / f"{ids[2]}.jpg", quality=80
    )  # near-duplicate
    Image.open(sample_dir / "images" / f"{ids[3]}.jpg").convert("CMYK").save(
        root / "images" / f"{ids[3]}.jpg"
    )  # kept
    dataset = load_dataset(root)
    cleaned, report = clean_dataset(dataset, near_duplicate_bits=4)
    assert len(cleaned.frame) == 6
    reasons = dict(zip(report.rows["id"], report.rows["reason"], strict=True))
    assert reasons[ids[0]] == "unreadable: empty file (0 bytes)"
    assert reasons[ids[2]].startswith(f"near-duplicate of {ids[1]}")
    assert reasons[ids[3]] == "CMYK converted to RGB"
    assert report.dropped == 2
    assert report.summary().to_dict() == {"unreadable: empty file": 1, "near-duplicate": 1}
    assert {"digest", "width", "height"} <= set(cleaned.frame.columns)
    # scans are cached by content: a second pass gives the same answer
    again, _ = clean_dataset(dataset, near_duplicate_bits=4)
    assert again.frame["id"].tolist() == cleaned.frame["id"].tolist()


def test_sample_is_clean():
    cleaned, report = clean_dataset(load_dataset("sample"))
    assert report.dropped == 0 and len(cleaned.frame) == 300
