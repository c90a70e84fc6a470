"""The CUDA path on a real GPU: `pytest -m gpu` on a machine with one (CI has none: these skip there).

The rest of the suite hides GPUs (CUDA_VISIBLE_DEVICES="", as CI runs); `-m gpu` keeps them visible (see
conftest.py). The CPU tests cover the same logic (uint8 inputs normalised on the device, the bf16/fp16
choice, optimizer moments in the parameters' layout, gloo for NCCL); these check it on the device itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig
from posterlab.runs import load_run
from posterlab.training.trainer import resume_run, train_run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU visible: run `pytest -m gpu` on one"
    ),
]


def _config(name: str, backbone: str = "tf_efficientnet_lite0", epochs: int = 2) -> RunConfig:
    return RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=4), limit=120),
        TrainConfig(
            backbone=backbone,
            pretrained=False,
            mode="full",
            epochs=epochs,
            batch_size=16,
            patience=0,
            device="cuda",
            flip_views=False,
        ),
        name=name,
    )


class _StopAfterOneEpoch:
    def __init__(self) -> None:
        self.epochs = 0

    def __call__(self, event) -> None:
        self.epochs += type(event).__name__ == "EpochEnd"

    def should_stop(self) -> bool:
        return self.epochs >= 1


def test_full_fine_tune_with_mixed_precision_stops_and_resumes(tmp_path):
    stopper = _StopAfterOneEpoch()
    folder = train_run(
        _config("gpu-full", epochs=3), tmp_path, on_event=stopper, should_stop=stopper.should_stop
    )
    assert load_run(folder).status["status"] == "stopped"
    resume_run(folder)
    run = load_run(folder)
    assert run.status["status"] == "completed" and len(run.history) == 3
    environment = run.environment
    assert environment["device"].startswith("cuda") and environment["world_size"] == 1
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in run.history)


def test_predict_explain_and_activation_maps_on_the_gpu(genre_run, poster_paths):
    from posterlab.explain import Explainer, activation_maps
    from posterlab.inference import Predictor

    predictor = Predictor(genre_run, device="cuda")
    scores = predictor.predict_one(poster_paths[0]).scores
    on_cpu = Predictor(genre_run).predict_one(poster_paths[0]).scores
    assert max(abs(scores[k] - on_cpu[k]) for k in scores) < 1e-3
    explanation = Explainer(predictor).explain(poster_paths[0], labels=[predictor.labels[0]])
    assert explanation.heatmaps[predictor.labels[0]].max() > 0
    name, maps, mean = activation_maps(predictor, poster_paths[0])
    assert maps.shape[0] > 0 and mean.max() > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_on_nccl(tmp_path):
    out = tmp_path / "nccl"
    command = [
        sys.executable,
        "-m",
        "posterlab",
        "train",
        "--data",
        "sample",
        "--genres",
        "4",
        "--limit",
        "120",
        "--backbone",
        "tf_efficientnet_lite0",
        "--no-pretrained",
        "--mode",
        "full",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--device",
        "cuda",
        "--out",
        str(out),
        "--nproc-per-node",
        "2",
        "-q",
    ]
    subprocess.run(command, check=True, timeout=900)
    config = json.loads((out / "config.json").read_text())["environment"]
    assert (
        config["world_size"] == 2
        and config["backend"] == "cpu:gloo,cuda:nccl"
        and config["per_process_batch"] == 16
    )
    assert load_run(out).status["status"] == "completed"
