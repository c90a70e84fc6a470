"""Full fine-tune throughput through posterlab's own ``fit()``, beside its two bounds.

For each backbone (default tf_efficientnet_lite0 and resnet50 at their 224 px input):
  model         forward + backward + optimizer step on batches already on the device (the model's bound),
                fp32 and with AMP (bf16 from compute capability 8.0) + channels_last
  loader        one epoch of the training DataLoader alone: decode, augment and resample in the workers,
                uint8 out, pinned memory (the loader's bound)
  fit           whole epochs through ``posterlab.training.loop.fit`` (the loop users run: the same
                loader, uint8 normalised on the GPU, the same optimizer, AMP + channels_last); the last
                epoch's images/s and the GPU utilisation sampled with nvidia-smi during it
If ``fit`` is close to ``model``, loading is not the bottleneck.

    python benchmarks/gpu_throughput.py --data ../shared/datasets/posters          # on a GPU machine
    python benchmarks/gpu_throughput.py --device cpu --batch 4 --steps 2 --backbones posterlab_small_cnn  # the path, on CPU
Writes benchmarks/results/gpu_throughput.json. Goal on an H100-class GPU: >= 2,500 img/s for ResNet-50.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from posterlab.config import AugmentConfig, TrainConfig
from posterlab.data.labels import LabelRule
from posterlab.data.transforms import Preprocess
from posterlab.models.factory import create_model
from posterlab.models.stages import boundary_for, set_trainable
from posterlab.training.criterion import Criterion
from posterlab.training.features import default_workers
from posterlab.training.loop import Callback, ImageInputs, Learner, _loader, autocast, fit, make_optimizer

RULE = LabelRule("genres", "multilabel", tuple("abcdef"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _learner(name: str, device: torch.device, workers: int, raw: bool) -> tuple[Learner, Preprocess]:
    model = create_model(name, len(RULE.labels), pretrained=False)
    set_trainable(model, boundary_for(model.backbone, "full", 1))
    preprocess = Preprocess.for_model(model.backbone)
    learner = Learner(
        model,
        model.head,
        model.backbone,
        [p for p in model.parameters() if p.requires_grad],
        Criterion("bce").to(device),
        RULE,
        "loss",
        device,
        workers=workers,
        normalize=preprocess if raw else None,
    )
    return learner, preprocess


def model_bound(name: str, device: torch.device, batch: int, steps: int, warmup: int, amp: bool) -> float:
    """Images per second of forward + backward + optimizer step on batches already on the device."""
    learner, preprocess = _learner(name, device, 0, raw=False)
    config = TrainConfig(backbone=name, mode="full", batch_size=batch, lr=1e-4, amp=amp)
    model = learner.module.to(device)
    if amp and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(learner, config)
    x = torch.randn(batch, *preprocess.input_size, device=device)
    if amp and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, len(RULE.labels), device=device) > 0.7).float()
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            started = time.perf_counter()
        with autocast(device, amp):
            loss = learner.criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - started)


class _Utilisation:
    """Samples GPU utilisation with nvidia-smi in a thread (nothing on machines without it)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class _EpochClock(Callback):
    """Times the training part of each epoch (not the validation pass), GPU utilisation in the last."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.seconds, self.gpu = epochs, [], _Utilisation()

    def before_epoch(self, fit) -> None:
        if fit.epoch == self.epochs - 1:
            self.gpu.start()
        _sync(fit.learner.device)
        self.started = time.perf_counter()

    def after_batch(self, fit) -> None:
        if fit.step == fit.steps:
            _sync(fit.learner.device)
            self.seconds.append(time.perf_counter() - self.started)
            if fit.epoch == self.epochs - 1:
                self.gpu.stop()


def through_fit(
    name: str, device: torch.device, data: Path, batch: int, steps: int, epochs: int, workers: int
) -> dict:
    """Whole epochs of ``fit()`` on real posters (repeated to fill ``steps`` batches an epoch)."""
    from posterlab.data.sources import load_dataset

    paths = load_dataset(data).frame["image"].tolist()
    raw = device.type == "cuda"
    learner, preprocess = _learner(name, device, workers, raw)
    y = np.zeros((len(paths), len(RULE.labels)), dtype=np.float32)
    y[:, 0] = 1.0
    rows = np.resize(np.arange(len(paths)), batch * steps)
    train = ImageInputs(paths, y, rows, [preprocess], True, AugmentConfig(), raw)
    val = ImageInputs(paths, y, np.arange(min(len(paths), batch)), [preprocess], False, AugmentConfig(), raw)
    loader = _loader(train, batch, learner, learner.dist.train_sampler(train, 0))
    started, count = time.perf_counter(), 0
    for x, _ in loader:  # the loader's bound: one epoch without the model
        count += len(x)
    loader_rate = count / (time.perf_counter() - started)
    clock = _EpochClock(epochs)
    config = TrainConfig(backbone=name, mode="full", batch_size=batch, lr=1e-4, epochs=epochs, patience=0)
    fit(learner, train, val, config, [clock])
    images = len(rows) // batch * batch
    samples = clock.gpu.samples
    return {
        "images_per_second": images / clock.seconds[-1],
        "epoch_seconds": [round(s, 3) for s in clock.seconds],
        "loader_images_per_second": loader_rate,
        "gpu_utilisation_mean": float(np.mean(samples)) if samples else None,
        "workers": workers,
        "uint8_inputs": raw,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbones", default="tf_efficientnet_lite0,resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="batches per epoch")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="fit() epochs (the last one is reported)")
    parser.add_argument(
        "--data", default="../shared/datasets/posters", help="posters for fit() ('' skips it)"
    )
    parser.add_argument("--workers", type=int, default=-1, help="loader workers (-1: what fit() picks)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    workers = args.workers if args.workers >= 0 else default_workers(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    result = {"device": name, "batch": args.batch, "backbones": {}}
    for backbone in args.backbones.split(","):
        row = {
            "model_fp32": model_bound(backbone, device, args.batch, args.steps, args.warmup, amp=False),
            "model_amp_channels_last": model_bound(
                backbone, device, args.batch, args.steps, args.warmup, amp=True
            ),
        }
        if args.data:
            row["fit"] = through_fit(
                backbone, device, Path(args.data), args.batch, args.steps, args.epochs, workers
            )
        result["backbones"][backbone] = row
        shown = f"{backbone}: model fp32 {row['model_fp32']:.0f} img/s, amp+channels_last {row['model_amp_channels_last']:.0f}"
        if "fit" in row:
            f = row["fit"]
            shown += (
                f"; fit() {f['images_per_second']:.0f} img/s (loader alone {f['loader_images_per_second']:.0f}, "
                f"GPU util {f['gpu_utilisation_mean']})"
            )
        print(shown, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_throughput.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
