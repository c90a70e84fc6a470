"""Run folders load without unpickling anything; broken folders give one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from posterlab.errors import RunError
from posterlab.inference import Predictor
from posterlab.runs import delete_run, list_runs, load_run, runs_table


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_weights_never_unpickled(tmp_path, genre_run):
    hostile = tmp_path / "hostile"
    shutil.copytree(genre_run, hostile)
    marker = tmp_path / "code-ran"
    torch.save({"weights": _Payload(marker)}, hostile / "model.safetensors")
    with pytest.raises(RunError) as info:
        Predictor(hostile)
    assert "pickled PyTorch checkpoint, which can run code" in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_pickle_beside_a_missing_safetensors(tmp_path, genre_run):
    hostile = tmp_path / "pt-only"
    shutil.copytree(genre_run, hostile)
    (hostile / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, hostile / "model.pt")
    with pytest.raises(RunError, match="holds model.pt but no model.safetensors; posterlab never unpickles"):
        load_run(hostile)
    with pytest.raises(RunError, match="model.safetensors is missing"):
        Predictor(hostile)


def test_corrupt_files(tmp_path, genre_run):
    broken = tmp_path / "broken"
    shutil.copytree(genre_run, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="config.json: not valid JSON"):
        load_run(broken)
    with pytest.raises(RunError, match="no such run folder"):
        load_run(tmp_path / "nope")


def test_interrupted_run_reads_as_failed(tmp_path, genre_run):
    ghost = tmp_path / "ghost"
    shutil.copytree(genre_run, ghost)
    status = json.loads((ghost / "status.json").read_text())
    status.update(status="running", pid=2**22 + 7, updated="2020-01-01T00:00:00+00:00")
    (ghost / "status.json").write_text(json.dumps(status))
    run = load_run(ghost)
    assert run.state == "failed" and "interrupted" in run.status["error"]


def test_list_table_and_delete(tmp_path, genre_run, binary_run):
    root = tmp_path / "runs"
    for run in (genre_run, binary_run):
        shutil.copytree(run, root / run.name)
    runs = list_runs(root)
    table = runs_table(runs)
    assert set(table["run"]) == {genre_run.name, binary_run.name}
    assert {"map", "baseline_map", "accuracy", "baseline_accuracy", "backbone", "mode", "seconds"} <= set(
        table.columns
    )
    delete_run(root / genre_run.name)
    assert [r.name for r in list_runs(root)] == [binary_run.name]


def test_moved_posters_are_found_in_the_sample(tmp_path, genre_run):
    moved = tmp_path / "moved"
    shutil.copytree(genre_run, moved)
    table = load_run(moved).predictions()
    table["image"] = ["/somewhere/else/" + Path(p).name for p in table["image"]]
    table.to_csv(moved / "predictions.csv", index=False)
    assert all(Path(p).is_file() for p in load_run(moved).predictions()["image"])
