"""Full fine-tune throughput: mixed precision + channels_last against fp32, and posterlab's real loop.

For each backbone (default tf_efficientnet_lite0 and resnet50 at their 224 px input):
  fp32          synthetic batches already on the device, float32, contiguous layout
  amp+cl        the same with autocast (bf16 where supported) and channels_last
  loop          posterlab's own train_one_epoch over real posters (decode + augment in DataLoader
                workers, pinned memory) with amp+cl: if it matches `amp+cl`, loading is not the bottleneck
GPU utilisation is sampled with nvidia-smi while `loop` runs.

    python benchmarks/gpu_throughput.py --data ../shared/datasets/posters        # on a GPU machine
    python benchmarks/gpu_throughput.py --device cpu --batch 4 --steps 2 --backbones posterlab_small_cnn  # the path, on CPU
Writes benchmarks/results/gpu_throughput.json. Goal on an H100: >= 2,500 img/s for ResNet-50.
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
from torch.utils.data import DataLoader

from posterlab.config import AugmentConfig, TrainConfig
from posterlab.data.labels import LabelRule
from posterlab.data.transforms import Preprocess
from posterlab.models.factory import boundary_for, create_model, set_trainable
from posterlab.training.loop import ImageInputs, make_loss, make_optimizer, train_one_epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic(
    name: str, device: torch.device, batch: int, steps: int, warmup: int, amp: bool, channels_last: bool
) -> float:
    """Images per second of forward + backward + AdamW step on batches already on the device."""
    model = create_model(name, 6, pretrained=False).to(device)
    set_trainable(model, boundary_for(model.backbone, "full", 1))
    size = Preprocess.for_model(model.backbone).input_size
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, *size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 6, device=device) > 0.7).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=amp and device.type == "cuda"):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - started)


class _Utilisation:
    """Samples GPU utilisation (nvidia-smi) in the background."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.samples.append(float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            time.sleep(0.5)

    def __enter__(self) -> _Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)


def real_loop(name: str, device: torch.device, data: Path, batch: int, steps: int, workers: int) -> dict:
    """posterlab's train_one_epoch on real posters (amp + channels_last on CUDA)."""
    from posterlab.data.sources import load_dataset

    frame = load_dataset(data).frame
    paths = frame["image"].tolist()
    rows = np.resize(np.arange(len(paths)), batch * steps)  # repeat posters to fill the steps
    y = np.zeros((len(paths), 6), dtype=np.float32)
    model = create_model(name, 6, pretrained=False).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    set_trainable(model, boundary_for(model.backbone, "full", 1))
    preprocess = Preprocess.for_model(model.backbone)
    config = TrainConfig(backbone=name, mode="full", batch_size=batch, lr=1e-4)
    dataset = ImageInputs(paths, y, rows, [preprocess], True, AugmentConfig())
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )
    rule = LabelRule("genres", "multilabel", tuple("abcdef"))
    loss_fn = make_loss(rule, config, None, device)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], model.head, config)
    train_one_epoch(
        model, loader, loss_fn, optimizer, device, True, None, lambda: False, lambda e: None, 0
    )  # warm-up epoch
    _sync(device)
    with _Utilisation() as gpu:
        started = time.perf_counter()
        train_one_epoch(
            model, loader, loss_fn, optimizer, device, True, None, lambda: False, lambda e: None, 1
        )
        _sync(device)
        seconds = time.perf_counter() - started
    return {
        "images_per_second": len(rows) // batch * batch / seconds,
        "gpu_utilisation_mean": float(np.mean(gpu.samples)) if gpu.samples else None,
        "workers": workers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbones", default="tf_efficientnet_lite0,resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--data",
        default="../shared/datasets/posters",
        help="posters for the real-loop measurement ('' skips it)",
    )
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores)",
        "batch": args.batch,
        "backbones": {},
    }
    for name in args.backbones.split(","):
        row = {
            "fp32": synthetic(
                name, device, args.batch, args.steps, args.warmup, amp=False, channels_last=False
            ),
            "amp_channels_last": synthetic(
                name, device, args.batch, args.steps, args.warmup, amp=True, channels_last=True
            ),
        }
        if args.data:
            row["loop"] = real_loop(name, device, Path(args.data), args.batch, args.steps, args.workers)
        result["backbones"][name] = row
        loop = (
            f", real loop {row['loop']['images_per_second']:.0f} img/s (GPU util {row['loop']['gpu_utilisation_mean']})"
            if "loop" in row
            else ""
        )
        print(
            f"{name}: fp32 {row['fp32']:.0f} img/s, amp+channels_last {row['amp_channels_last']:.0f} img/s{loop}",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_throughput.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
