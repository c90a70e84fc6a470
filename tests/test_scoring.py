"""``posterlab predict RUN PATH... --out FILE``: a folder, a labels.csv and single files scored to Parquet
and CSV with the committed genre run (ONNX Runtime on this CPU), unreadable files as rows, a killed job
resumed, and two torchrun processes (gloo on loopback) sharing the work."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from posterlab import cli
from posterlab.errors import ConfigError
from posterlab.inference import Predictor
from posterlab.launch import worker_environment
from posterlab.scoring import poster_paths, score
from tests.conftest import SAMPLE, free_port

pytestmark = pytest.mark.timeout(600)

RUN = Path(__file__).resolve().parents[1] / "checkpoints" / "demo-genres"
LABELS = ("Drama", "Comedy", "Romance", "Action", "Thriller", "Horror")


@pytest.fixture(scope="module")
def posters(tmp_path_factory) -> Path:
    """22 real posters, an empty file and a text file named .jpg, in a folder (with a subfolder)."""
    folder = tmp_path_factory.mktemp("posters")
    images = sorted((SAMPLE / "images").glob("*.jpg"))[:22]
    (folder / "more").mkdir()
    for index, image in enumerate(images):
        shutil.copyfile(image, (folder / "more" if index % 2 else folder) / image.name)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a poster")
    return folder


@pytest.fixture(scope="module")
def reference(posters) -> dict[str, tuple[dict, list]]:
    """What the Predictor (torch) says about every readable poster."""
    paths = poster_paths([str(posters)])
    results = Predictor(RUN).predict([p for p in paths if "empty" not in p and "notes" not in p])
    return {r.image: (r.scores, r.predicted) for r in results}


def _check(table: pd.DataFrame, reference: dict, expected: int) -> None:
    assert len(table) == expected and table["image"].is_unique
    bad = table[~table["ok"]]
    assert sorted(Path(p).name for p in bad["image"]) == ["empty.jpg", "notes.jpg"]
    assert bad["error"].str.contains("empty file|not an image").all()
    assert bad[[f"prob_{label}" for label in LABELS]].isna().all().all()
    good = table[table["ok"]]
    assert len(good) == len(reference)
    for _, row in good.iterrows():
        scores, predicted = reference[row["image"]]
        probs = np.array([row[f"prob_{label}"] for label in LABELS])
        assert np.abs(probs - np.array([scores[label] for label in LABELS])).max() <= 1e-4
        assert [label for label in LABELS if row[f"pred_{label}"]] == predicted
        assert (row["predicted"] or "") == "|".join(predicted)


def test_folder_to_parquet_with_errors_killed_and_resumed(posters, reference, tmp_path):
    out = tmp_path / "scores.parquet"
    first = score(RUN, [str(posters)], out, batch_size=4, chunk=8, stop_after=1, progress=False)
    assert first["scored"] == 8 and not out.exists()  # what a killed job leaves: its finished parts
    assert len(list((tmp_path / "scores.parquet.parts").glob("*.parquet"))) == 1

    second = score(RUN, [str(posters)], out, batch_size=4, chunk=8, progress=False)
    assert second["skipped"] == 8 and second["scored"] == 24 - 8
    assert first["errors"] + second["errors"] == 2
    assert not (tmp_path / "scores.parquet.parts").exists()
    table = pd.read_parquet(out)
    _check(table, reference, 24)
    assert list(table["image"]) == poster_paths([str(posters)])  # in the order they were named

    import pyarrow.parquet as pq

    meta = pq.read_schema(out).metadata
    assert meta[b"posterlab.labels"].decode() == "|".join(LABELS) and b"posterlab.thresholds" in meta

    third = score(RUN, [str(posters)], out, progress=False)  # all done: nothing scored, nothing lost
    assert third["scored"] == 0 and third["skipped"] == 24 and len(pd.read_parquet(out)) == 24


def test_cli_to_csv_from_a_labels_csv_and_files(posters, reference, tmp_path, capsys):
    table = tmp_path / "labels.csv"
    names = sorted(p.name for p in posters.glob("*.jpg"))
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "genres"])
        writer.writerows([[str(posters / name), "Drama"] for name in names])
    out = tmp_path / "scores.csv"
    more = sorted(str(p) for p in (posters / "more").glob("*.jpg"))
    assert cli.main(["predict", str(RUN), str(table), *more, "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    frame = pd.read_csv(out, dtype={"error": str, "predicted": str}, keep_default_na=False, na_values=[""])
    frame["ok"] = frame["ok"].astype(bool)
    _check(frame.assign(predicted=frame["predicted"].fillna("")), reference, 24)
    assert cli.main(["predict", str(RUN), str(table), *more, "--out", str(out), "-q"]) == 0
    assert "0 posters scored" in capsys.readouterr().err and len(pd.read_csv(out)) == 24

    other = tmp_path / "other.csv"
    other.write_text("image,score\nx.jpg,1\n")
    with pytest.raises(ConfigError, match="other columns than this run writes"):
        score(RUN, [str(table)], other, progress=False)
    assert cli.main(["predict", str(RUN), str(table), "--out", str(tmp_path / "x.json")]) == 2
    assert ".csv or .parquet" in capsys.readouterr().err


def test_two_torchrun_processes_share_the_posters(posters, reference, tmp_path):
    out = tmp_path / "scores.parquet"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--local-addr",
        "127.0.0.1",
        "-m",
        "posterlab",
        "-v",
        "predict",
        str(RUN),
        str(posters),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "-q",
    ]
    env = {**worker_environment(True), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "process 0 of 2 scored 12 posters" in done.stderr
    assert "process 1 of 2 scored 12 posters" in done.stderr
    assert done.stdout.strip().endswith(str(out))
    table = pd.read_parquet(out)
    _check(table, reference, 24)
    assert list(table["image"]) == poster_paths([str(posters)])
    assert not os.path.exists(str(out) + ".parts")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_another_models_scores_are_never_taken_for_this_ones(posters, tmp_path, monkeypatch, suffix):
    """A second model scoring into the first one's file found every poster 'already scored', wrote its own
    name on the file and kept the first model's scores; and a path typed another way was scored twice."""
    from safetensors.torch import load_file, save_file

    retrained = tmp_path / "retrained"  # the same labels, thresholds and fits, other weights
    shutil.copytree(RUN, retrained)
    weights = load_file(retrained / "model.safetensors")
    save_file(
        {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()},
        retrained / "model.safetensors",
    )
    some = sorted(str(p) for p in posters.glob("*.jpg"))[:3]
    out = tmp_path / f"scores{suffix}"
    score(RUN, some, out, progress=False)
    with pytest.raises(
        ConfigError, match=r"holds the scores of another model \(.*demo-genres\); pick a new --out"
    ):
        score(retrained, some, out, progress=False)
    moved = tmp_path / "moved"  # the same model in another folder goes on where it was
    shutil.copytree(RUN, moved)
    monkeypatch.chdir(posters)
    again = score(moved, [os.path.relpath(p) for p in some], out, progress=False)  # typed another way
    assert again["scored"] == 0 and again["skipped"] == 3
