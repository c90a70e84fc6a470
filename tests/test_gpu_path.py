"""The GPU code path (mixed precision, channels_last, pinned memory, loader workers) exercised on the CPU.

No GPU is lent to CI; these checks keep the CUDA branches importable and the throughput script working.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posterlab.errors import ConfigError
from posterlab.training.trainer import resolve_device

ROOT = Path(__file__).resolve().parents[1]


def test_device_resolution_without_a_gpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is visible; use --device auto or cpu"):
            resolve_device("cuda")


def test_throughput_script_runs_its_path_on_cpu(tmp_path, sample_dir):
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_throughput.py"),
        "--device",
        "cpu",
        "--batch",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--backbones",
        "posterlab_small_cnn",
        "--data",
        str(sample_dir),
        "--workers",
        "1",
        "--out",
        str(tmp_path),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    result = json.loads((tmp_path / "gpu_throughput.json").read_text())
    row = result["backbones"]["posterlab_small_cnn"]
    assert row["fp32"] > 0 and row["amp_channels_last"] > 0 and row["loop"]["images_per_second"] > 0
