"""The command line: the DESIGN.md contract, JSON outputs, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from posterlab.cli import main
from tests.conftest import MULTILABEL_METRICS


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "posterlab.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_train_evaluate_predict(tmp_path, poster_paths, capsys):
    out = tmp_path / "cli-run"
    code = main(
        [
            "train",
            "--data",
            "sample",
            "--genres",
            "Drama,Comedy,Action",
            "--backbone",
            "tf_efficientnet_lite0",
            "--no-pretrained",
            "--epochs",
            "2",
            "--no-flip-views",
            "--fit",
            "crop",
            "--out",
            str(out),
            "-q",
        ]
    )
    assert code == 0 and (out / "model.safetensors").exists()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", "sample", "--json", "-q"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["labels"] == ["Drama", "Comedy", "Action"]
    # every sample poster was scored, the training ones too: said on stderr, counted in the JSON
    train_ids = set(json.loads((out / "split.json").read_text())["train"])
    assert 0 < result["seen_in_training"] <= len(train_ids) < result["n"]
    assert "were in the run's training split" in captured.err and "--split test" in captured.err
    assert set(result["metrics"]) >= MULTILABEL_METRICS
    assert main(["evaluate", str(out), "--data", "sample", "--split", "test", "--json", "-q"]) == 0
    captured = capsys.readouterr()
    held_out = json.loads(captured.out)
    test_ids = json.loads((out / "split.json").read_text())["test"]
    assert (
        held_out["split"] == "test" and held_out["n"] == len(test_ids) and held_out["seen_in_training"] == 0
    )
    assert captured.err == ""
    assert main(["predict", str(out), str(poster_paths[0]), "--json"]) == 0
    [item] = json.loads(capsys.readouterr().out)
    assert item["ok"] and item["error"] is None and set(item["scores"]) == {"Drama", "Comedy", "Action"}
    assert set(item["predicted"]) <= set(item["scores"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--data", "/nowhere/at/all"], "posterlab: error: /nowhere/at/all: no such file or folder"),
        (
            ["train", "--data", "sample", "--genres", "Drama,Spaghetti Western", "--no-pretrained"],
            "posterlab: error: unknown genre(s) Spaghetti Western",
        ),
        (
            ["train", "--data", "sample", "--mode", "finetune", "--epochs", "0"],
            "posterlab: error: epochs must be at least 1 (got 0)",
        ),
        (
            [
                "train",
                "--data",
                "sample",
                "--monitor",
                "accuracy",
                "--no-pretrained",
                "--backbone",
                "posterlab_small_cnn",
            ],
            "posterlab: error: monitor 'accuracy' is not measured on a multi-label target; use one of: auto, map",
        ),
        (["predict", "/no/such/run", "x.jpg"], "posterlab: error: /no/such/run: no such run folder"),
        (
            ["evaluate", "/no/such/run", "--data", "sample"],
            "posterlab: error: /no/such/run: no such run folder",
        ),
    ],
)
def test_bad_input_is_one_line(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POSTERLAB_CHECKPOINTS", str(tmp_path))
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("posterlab:")]
    assert len(lines) == 1 and lines[0].startswith(expected)


def test_the_installed_command_gives_one_line_without_a_traceback(tmp_path):
    """The real entry point (a new process): one line on stderr, exit 2."""
    result = run_cli("predict", "/no/such/run", "x.jpg")
    assert result.returncode == 2 and result.stderr.strip().startswith(
        "posterlab: error: /no/such/run: no such run folder; "
    )


def test_offline_without_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POSTERLAB_WEIGHTS_DIR", "")
    monkeypatch.setenv("POSTERLAB_CHECKPOINTS", str(tmp_path))
    assert main(["train", "--data", "sample", "--backbone", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "no pretrained weights for resnet18" in err and "--no-pretrained" in err


def test_predict_with_a_pickled_run(tmp_path, genre_run, capsys):
    import shutil

    import torch

    hostile = tmp_path / "hostile"
    shutil.copytree(genre_run, hostile)
    torch.save({"w": torch.zeros(2)}, hostile / "model.safetensors")
    assert main(["predict", str(hostile), "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pickled PyTorch checkpoint" in err


def test_predict_reports_bad_images_in_json(genre_run, tmp_path, poster_paths, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert main(["predict", str(genre_run), str(poster_paths[0]), str(bad), "--json"]) == 1
    items = json.loads(capsys.readouterr().out)
    assert [i["ok"] for i in items] == [True, False]
    assert items[1]["error"].startswith(f"{bad}: ")


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"\xff\xd8\xff\xe0 truncated", "truncated or corrupt"), (b"<script>alert(1)</script>", "not an image")],
)
def test_explain_a_bad_image_is_one_line_and_writes_nothing(genre_run, tmp_path, content, reason, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    out = tmp_path / "why.png"
    assert main(["explain", str(genre_run), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line.startswith(f"posterlab: error: {bad}: ") and reason in line
    assert not out.exists()


def test_more_bad_input_is_one_line(tmp_path, capsys):
    """Each of these ended in 'posterlab: unexpected ...' (a bug's message) rather than saying what to do."""
    from posterlab.data.split import kfold_indices
    from posterlab.errors import DataError

    pickle = tmp_path / "config.pkl"
    pickle.write_bytes(b"\x80\x04\x95" + bytes(range(200)))
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    run = Path(__file__).resolve().parents[1] / "checkpoints" / "demo-genres"
    for args, expected in (
        (["train", "--config", str(pickle)], f"{pickle}: cannot read the config ("),
        (
            ["export", str(run), "--format", "onnx", "--out", str(notes)],
            f"{notes}: a file that is not an .onnx",
        ),
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"posterlab: error: {expected}") and err.count("\n") == 1, err
    assert notes.read_text() == "mine"
    # explain writes a PNG: a .txt got PNG bytes without a word
    assert main(["explain", str(run), str(notes), "--out", str(tmp_path / "why.txt")]) == 2
    assert "explain writes a PNG image; give --out ending in .png" in capsys.readouterr().err
    # a malformed Hub id is refused before the export's seconds of work, not after them
    assert (
        main(["export", str(run), "--format", "hub", "--out", str(tmp_path / "hub"), "--push", "bad name!!"])
        == 2
    )
    assert "not a model id" in capsys.readouterr().err and not (tmp_path / "hub").exists()
    # a folder without --out ('file not found'); an empty folder into a file (an empty CSV and exit 0)
    assert main(["predict", str(run), str(tmp_path)]) == 2
    assert "a folder or a CSV of posters is scored into a file: add --out" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(run), str(tmp_path / "empty"), "--out", str(tmp_path / "e.csv"), "-q"]) == 2
    assert "no posters in" in capsys.readouterr().err and not (tmp_path / "e.csv").exists()
    # data with none of the run's labels: a table of NaN and exit 0 before
    assert main(["evaluate", str(run), "--data", "sample-rt"]) == 2
    assert "none of its 96 posters carries one of the run's labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", str(run), "--port", "70000"])
    assert "70000 is not a port: give one from 1 to 65535" in capsys.readouterr().err
    with pytest.raises(DataError, match="1000 folds need at least 1000 posters of every class"):
        kfold_indices(np.array([0, 1] * 50), 1000, seed=0)
