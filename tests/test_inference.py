"""Predictor: scores from a run folder alone; hostile inputs get ok=False and a one-line error."""

from __future__ import annotations

import numpy as np
from PIL import Image

from posterlab.inference import Predictor


def test_predict_real_posters(genre_run, poster_paths):
    predictor = Predictor(genre_run)
    results = predictor.predict(poster_paths[:5], keep_crops=True)
    assert [r.ok for r in results] == [True] * 5
    first = results[0]
    assert set(first.scores) == set(predictor.labels)
    assert all(0 <= p <= 1 for p in first.scores.values())
    thresholds = dict(zip(predictor.labels, predictor.thresholds, strict=True))
    assert first.predicted == [k for k in predictor.labels if first.scores[k] >= thresholds[k]]
    assert first.crop.size == (160, 160)  # the crop the small CNN saw
    one = predictor.predict_one(poster_paths[0])
    assert one.scores == first.scores  # batching does not change the numbers


def test_batch_matches_single(binary_run, poster_paths):
    predictor = Predictor(binary_run)
    batch = predictor.predict(poster_paths[:9], batch_size=4)
    singles = [predictor.predict_one(p) for p in poster_paths[:9]]
    for a, b in zip(batch, singles, strict=True):
        assert np.allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-4)
        assert len(a.predicted) == 1 and sum(a.scores.values()) == np.float64(sum(a.scores.values()))


def test_hostile_inputs_do_not_stop_the_batch(genre_run, poster_paths, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("hello")
    side = 8000
    bomb = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(bomb)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(poster_paths[0].read_bytes()[:3000])
    results = Predictor(genre_run).predict([poster_paths[0], empty, text, bomb, cut, poster_paths[1]])
    assert [r.ok for r in results] == [True, False, False, False, False, True]
    errors = [r.error for r in results if not r.ok]
    assert all("\n" not in e for e in errors)
    assert (
        "empty file" in errors[0]
        and "not an image" in errors[1]
        and "decompression bomb" in errors[2]
        and "truncated" in errors[3]
    )
