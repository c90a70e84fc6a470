"""The one loop through every mode: run folders, cached features, stop/resume, failure, search."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig
from posterlab.errors import DataError, RunError
from posterlab.events import EpochEnd, Finished, Message, Progress, Started
from posterlab.runs import list_runs, load_run
from posterlab.training.trainer import resume_run, train_run
from tests.conftest import LITE0, MULTILABEL_METRICS, SINGLE_METRICS


def _probe(name: str, **train) -> RunConfig:
    values = {
        "backbone": LITE0,
        "pretrained": False,
        "mode": "probe",
        "epochs": 4,
        "flip_views": False,
        **train,
    }
    return RunConfig(DataConfig(path="sample", labels=LabelConfig(top_n=6)), TrainConfig(**values), name=name)


class Recorder:
    def __init__(self, stop_after_epochs: int | None = None, stop_at_once: bool = False) -> None:
        self.events: list = []
        self.stop_after_epochs = stop_after_epochs
        self.stop_at_once = stop_at_once

    def __call__(self, event) -> None:
        self.events.append(event)

    def should_stop(self) -> bool:
        if self.stop_at_once:
            return True
        epochs = sum(isinstance(e, EpochEnd) for e in self.events)
        return self.stop_after_epochs is not None and epochs >= self.stop_after_epochs

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def test_image_mode_run_folder_describes_itself(genre_run: Path):
    files = {p.name for p in genre_run.iterdir()}
    assert {
        "config.json",
        "status.json",
        "model.json",
        "model.safetensors",
        "history.json",
        "metrics.json",
        "predictions.csv",
        "split.json",
        "data.json",
    } <= files
    assert not {"resume.safetensors"} & files  # completed runs keep no optimizer state
    assert not [p for p in files if p.startswith(".")]  # no temporary files left behind
    run = load_run(genre_run)
    assert run.state == "completed"
    assert run.config.train.backbone == "posterlab_small_cnn"
    assert run.environment["torch"] and run.environment["timm"]
    assert len(run.history) == 2 and {"train_loss", "val_loss", "val_map"} <= set(run.history[0])
    test = run.metrics["test"]
    assert set(test["metrics"]) >= MULTILABEL_METRICS and set(test["baseline"]) >= MULTILABEL_METRICS
    assert set(test["per_label"]) == set(run.metrics["labels"])
    assert {"support", "precision", "recall", "f1", "ap", "threshold"} <= set(
        next(iter(test["per_label"].values()))
    )
    assert test["baseline"]["roc_auc"] == 0.5
    split = json.loads((genre_run / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"])
    predictions = run.predictions()
    assert set(predictions["split"]) == {"val", "test"}
    assert len(predictions) == len(split["val"]) + len(split["test"])
    model = run.model
    assert len(model["thresholds"]) == len(model["rule"]["labels"]) == 4
    assert model["preprocess"]["input_size"] == [3, 160, 160]


def test_binary_probe_run(binary_run: Path):
    run = load_run(binary_run)
    assert run.state == "completed" and run.model["rule"]["task"] == "binary"
    assert set(run.metrics["test"]["metrics"]) >= SINGLE_METRICS
    assert run.metrics["test"]["baseline"]["balanced_accuracy"] == 0.5
    assert len(run.metrics["test"]["confusion"]) == 2
    assert run.metrics["cached_inputs"] is True


def test_probe_caches_embeddings_and_is_reproducible(runs_root):
    first, second = Recorder(), Recorder()
    a = train_run(_probe("cache-a"), runs_root, on_event=first)
    b = train_run(_probe("cache-b"), runs_root, on_event=second)
    assert first.of(Progress) and any(p.stage == "extracting" for p in first.of(Progress))
    assert not any(p.stage == "extracting" for p in second.of(Progress))  # the backbone never ran again
    for x, y in zip(load_run(a).history, load_run(b).history, strict=True):  # same seed, same numbers
        assert x["train_loss"] == pytest.approx(y["train_loss"]) and x["val_map"] == pytest.approx(
            y["val_map"]
        )
    assert isinstance(first.events[0], Started) and first.of(Finished)[0].status == "completed"


def test_stop_keeps_best_weights_and_resume_finishes(runs_root):
    recorder = Recorder(stop_after_epochs=2)
    path = train_run(
        _probe("stop-resume", epochs=6, patience=0),
        runs_root,
        on_event=recorder,
        should_stop=recorder.should_stop,
    )
    run = load_run(path)
    assert run.state == "stopped"
    assert len(run.history) == 2
    honoured = [m.text for m in recorder.of(Message) if m.text.startswith("stop honoured")]
    landed = re.fullmatch(
        r"stop honoured in epoch 3, batch (\d+) of \d+ \(noticed here at batch (\d+)\)", honoured[0]
    )
    assert landed and landed[1] == landed[2], honoured  # one process: at the very batch it was noticed
    assert run.metrics["test"]["metrics"]  # a stopped run is still evaluated
    assert (path / "resume.safetensors").exists()
    again = Recorder()
    resume_run(path, on_event=again)
    run = load_run(path)
    assert run.state == "completed"
    assert [row["epoch"] for row in run.history] == [1, 2, 3, 4, 5, 6]
    assert again.of(Started)[0].resumed
    with pytest.raises(RunError, match="already completed"):
        resume_run(path)


def test_stop_before_the_first_epoch(runs_root):
    recorder = Recorder(stop_at_once=True)
    path = train_run(_probe("stop-early"), runs_root, on_event=recorder, should_stop=recorder.should_stop)
    status = json.loads((path / "status.json").read_text())
    assert status["status"] == "stopped" and "Resume starts it over" in status["note"]
    assert not (path / "model.safetensors").exists()
    # stopped again after an epoch, it no longer says that Resume would start it over
    again = Recorder(stop_after_epochs=1)
    resume_run(path, on_event=again, should_stop=again.should_stop)
    status = json.loads((path / "status.json").read_text())
    assert status["status"] == "stopped" and status["note"] is None and (path / "resume.safetensors").exists()
    # Resume goes on, and the time it took counts every session (the page said "took 8 s" after 10 s
    # stopped and 8 s resumed)
    status["seconds"] = 10.0  # the first session, made long enough to tell apart from the second
    (path / "status.json").write_text(json.dumps(status))
    started = time.monotonic()
    resume_run(path)
    this_session = time.monotonic() - started
    status = json.loads((path / "status.json").read_text())
    assert status["status"] == "completed" and status["seconds_before"] == 10.0
    assert 10.0 < status["seconds"] <= 10.0 + this_session + 0.1, status["seconds"]


def test_failure_is_recorded_with_the_error(runs_root):
    config = RunConfig(
        DataConfig(path="sample", labels=LabelConfig(genres=("Drama", "Space Opera"))),
        TrainConfig(pretrained=False),
        name="fails",
    )
    recorder = Recorder()
    with pytest.raises(DataError):
        train_run(config, runs_root, on_event=recorder)
    status = load_run(runs_root / "fails").status
    assert status["status"] == "failed"
    assert status["error"].startswith("unknown genre(s) Space Opera; this dataset has:")
    assert recorder.of(Finished)[0].status == "failed"
    assert "fails" in [r.name for r in list_runs(runs_root)]
    # it never trained: the corrected command may take its name (it was refused: 'a run with this name
    # exists'); a run that trained keeps its name
    fixed = RunConfig(
        DataConfig(path="sample", labels=LabelConfig(genres=("Drama", "Comedy")), limit=60),
        TrainConfig(backbone=LITE0, pretrained=False, mode="probe", epochs=1),
        name="fails",
    )
    assert load_run(train_run(fixed, runs_root)).state == "completed"
    with pytest.raises(RunError, match="a run with this name exists"):
        train_run(fixed, runs_root)


def test_finetune_on_cpu_caches_the_frozen_part(runs_root):
    config = RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=3), limit=120),
        TrainConfig(
            backbone=LITE0,
            pretrained=False,
            mode="finetune",
            unfreeze=1,
            gradual_every=1,
            epochs=2,
            flip_views=True,
        ),
        name="finetune",
    )
    recorder = Recorder()
    path = train_run(config, runs_root, on_event=recorder)
    run = load_run(path)
    assert run.state == "completed" and run.metrics["cached_inputs"] is True
    assert any("activations after blocks.4" in m.text for m in recorder.events if hasattr(m, "text"))


def test_search_with_folds_and_balancing(runs_root):
    config = RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=4), balance="weights"),
        TrainConfig(
            backbone=LITE0,
            pretrained=False,
            mode="probe",
            epochs=3,
            search_trials=3,
            search_folds=2,
            flip_views=False,
            loss="asl",
            monitor="loss",
        ),
        name="search",
    )
    path = train_run(config, runs_root)
    table = json.loads((path / "search.json").read_text())
    assert [row["trial"] for row in table] == [0, 1, 2] and all(row["folds"] == 2 for row in table)
    lowest = min(table, key=lambda row: row["loss"])  # the loss is watched downwards
    assert load_run(path).model["hyper"]["lr"] == lowest["lr"]


def test_single_label_from_genres_with_oversampling(runs_root):
    config = RunConfig(
        DataConfig(
            path="sample",
            labels=LabelConfig(target="label", genres=("Action", "Comedy", "Horror", "Romance")),
            balance="oversample",
        ),
        TrainConfig(
            backbone=LITE0, pretrained=False, mode="probe", epochs=2, flip_views=False, label_smoothing=0.1
        ),
        name="four-genres",
    )
    run = load_run(train_run(config, runs_root))
    assert run.model["rule"]["target"] == "single" and run.model["rule"]["task"] == "multiclass"
    assert len(run.metrics["test"]["confusion"]) == 4


def test_existing_run_name_refused(runs_root, genre_run):
    with pytest.raises(RunError, match="a run with this name exists"):
        train_run(RunConfig(name=genre_run.name), runs_root)


def test_several_fits_train_as_views_and_average_at_test_time(runs_root, poster_paths):
    import numpy as np
    import torch

    from posterlab.inference import Predictor

    config = RunConfig(
        DataConfig(
            path="sample", labels=LabelConfig(top_n=3), fit="crop", extra_fits=("pad", "squash"), limit=100
        ),
        TrainConfig(backbone=LITE0, pretrained=False, mode="probe", epochs=2, flip_views=True),
        name="views",
    )
    recorder = Recorder()
    run = load_run(train_run(config, runs_root, on_event=recorder))
    assert any(
        "crop, pad, squash, crop-flip, pad-flip, squash-flip" in getattr(e, "text", "")
        for e in recorder.events
    )
    assert run.model["fits"] == ["crop", "pad", "squash"] and run.model["preprocess"]["fit"] == "crop"
    predictor = Predictor(run.path)
    crop, views, _ = predictor.prepare(poster_paths[0])
    assert views.shape == (3, 3, 224, 224) and crop.size == (224, 224)
    each = np.stack([predictor.probabilities(views[i : i + 1][None])[0] for i in range(3)])
    assert np.allclose(predictor.probabilities(views[None])[0], each.mean(axis=0), atol=1e-6)
    assert not torch.equal(views[0], views[1])  # the fits really differ


def test_several_fits_in_image_mode(runs_root):
    config = RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=3), fit="pad", extra_fits=("squash",), limit=60),
        TrainConfig(backbone="posterlab_small_cnn", pretrained=False, mode="full", epochs=1, num_workers=0),
        name="views-images",
    )
    run = load_run(train_run(config, runs_root))
    assert run.model["fits"] == ["pad", "squash"] and run.metrics["cached_inputs"] is False


def test_the_loss_watched_is_the_loss_trained(runs_root):
    """With pos_weight (balance=weights) the validation loss is the training criterion on the validation
    posters, not the unweighted BCE that used to be reported beside a weighted training loss."""
    import numpy as np

    from posterlab.data.balance import loss_weights
    from posterlab.data.prepare import prepare_data
    from posterlab.evaluation.interpret import load_predictions, truth_matrix

    config = RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=4), balance="weights"),
        TrainConfig(backbone=LITE0, pretrained=False, mode="probe", epochs=1, flip_views=False),
        name="weighted-loss",
    )
    run = load_run(train_run(config, runs_root))
    prepared = prepare_data(config.data)
    train_y = prepared.labelled.y[prepared.splits["train"]]
    pos_weight = loss_weights(train_y, 4)  # what the training criterion weighs positives by
    val = load_predictions(run, "val")
    p = np.clip(val[[f"p:{label}" for label in run.metrics["labels"]]].to_numpy(), 1e-7, 1 - 1e-7)
    y = truth_matrix(val)
    weighted = float(np.mean(-(pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p))))
    unweighted = float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    reported = run.history[0]["val_loss"]  # one epoch: the stored predictions are this epoch's
    assert reported == pytest.approx(weighted, abs=1e-3)
    assert abs(reported - unweighted) > 0.05
    # the per-poster losses stored with the predictions are the same criterion's, and the run says which
    assert run.metrics["loss"] == run.model["loss"]["name"] == "binary cross-entropy with pos_weight"
    per_poster = np.mean(-(pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p)), axis=1)
    np.testing.assert_allclose(val["loss"], per_poster, atol=1e-3)


def test_the_criterion_reduces_as_pytorch_does():
    import numpy as np
    import torch

    from posterlab.training.criterion import Criterion

    torch.manual_seed(0)
    logits, classes = torch.randn(9, 4), torch.randint(0, 4, (9,))
    weights = np.array([0.5, 2.0, 1.0, 3.0], dtype=np.float32)
    expected = torch.nn.CrossEntropyLoss(weight=torch.as_tensor(weights), label_smoothing=0.1)(
        logits, classes
    )
    assert float(Criterion("ce", weights, 0.1)(logits, classes)) == pytest.approx(float(expected), rel=1e-5)
    targets = (torch.rand(9, 4) > 0.5).float()
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=torch.as_tensor(weights))(logits, targets)
    assert float(Criterion("bce", weights)(logits, targets)) == pytest.approx(float(expected), rel=1e-5)
    # stored probabilities give back the losses of the logits they came from
    bce = Criterion("bce", weights)
    np.testing.assert_allclose(
        bce.from_probabilities(torch.sigmoid(logits).numpy(), targets.numpy()),
        bce.per_item(logits, targets).numpy(),
        rtol=1e-4,
    )


def test_a_checkpoint_that_cannot_be_written_fails_the_run_and_leaves_no_partial_file(runs_root, monkeypatch):
    """A full disk while the epoch's checkpoint is written (in a background thread): the error was dropped
    and the run trained on, its resumable point stuck where the disk filled, and the partial file stayed,
    hidden, keeping the disk full. Now the run fails at once, saying what to do, and nothing is left."""
    import errno

    import safetensors.torch

    real = safetensors.torch.save_file

    def disk_full(tensors, filename, metadata=None):
        if Path(filename).name.startswith(".resume.safetensors"):
            Path(filename).write_bytes(b"\0" * 1024)  # part of it made it to the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    recorder = Recorder()
    with pytest.raises(RunError, match="writing the epoch's checkpoint failed"):
        train_run(_probe("disk-full"), runs_root, on_event=recorder)
    status = load_run(runs_root / "disk-full").status
    assert status["status"] == "failed" and "No space left on device" in status["error"]
    assert "free the space" in status["error"] and "\n" not in status["error"]
    assert len(recorder.of(EpochEnd)) <= 2  # the first epoch's failed write stops the run by the second's end
    assert not list((runs_root / "disk-full").glob(".*.tmp")), "a partial file was left behind"


def test_a_restarted_torchrun_job_finds_its_run_from_any_node():
    """After an elastic restart rank 0 may be on another node, whose torchrun agent has another pid: the
    job's rendezvous id finds its run (by the agent's pid, the restart found none, and every restart failed
    on the run name it then tried to create again); torchrun's default id 'none' names no job, so there
    the agent's pid must match as well."""
    from posterlab.training.trainer import _same_launch

    started = {"pid": 4242, "run_id": "job-17"}
    assert _same_launch(started, {"pid": 999, "run_id": "job-17"})  # rank 0 now on another node
    assert not _same_launch(started, {"pid": 4242, "run_id": "job-18"})
    default = {"pid": 4242, "run_id": "none"}
    assert _same_launch(default, {"pid": 4242, "run_id": "none"})
    assert not _same_launch(default, {"pid": 999, "run_id": "none"})  # another job, also with no id
