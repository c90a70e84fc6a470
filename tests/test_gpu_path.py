"""The GPU code path (mixed precision, channels_last, pinned memory, loader workers) exercised on the CPU.

No GPU is lent to CI; these checks keep the CUDA branches importable and the throughput script working.
"""

from __future__ import annotations

import importlib.util
import json
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
    """The benchmark's own main() (in this process: a fresh interpreter would only add torch's import)."""
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = [
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
    assert script.main(argv) == 0
    result = json.loads((tmp_path / "gpu_throughput.json").read_text())
    row = result["backbones"]["posterlab_small_cnn"]
    assert row["model_fp32"] > 0 and row["model_amp_channels_last"] > 0
    assert row["fit"]["images_per_second"] > 0 and row["fit"]["loader_images_per_second"] > 0
    assert len(row["fit"]["epoch_seconds"]) == 2  # whole epochs through fit() itself


def test_uint8_inputs_normalised_on_the_device_are_the_same_picture(poster_paths):
    """The GPU path's workers send uint8 and the loop normalises: the same tensor as the CPU path's."""
    from PIL import Image

    from posterlab.data.transforms import Preprocess

    preprocess = Preprocess.for_backbone("tf_efficientnet_lite0", "pad")
    image = Image.open(poster_paths[0]).convert("RGB")
    plain = preprocess.eval_transform()(image)
    raw = preprocess.eval_transform(raw=True)(image)
    assert raw.dtype == torch.uint8
    torch.testing.assert_close(preprocess.normalize_on(raw[None])[0], plain, atol=1e-6, rtol=0)


def test_precision_follows_the_compute_capability(monkeypatch):
    """bf16 only where the GPU computes it natively (compute capability 8.0+); fp16 with a loss scaler
    before; full precision on CPUs and with AMP off."""
    from posterlab.training.loop import amp_dtype

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert amp_dtype(cuda, True) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert amp_dtype(cuda, True) == torch.float16
    assert amp_dtype(cuda, False) is None and amp_dtype(torch.device("cpu"), True) is None


def test_cuda_out_of_memory_is_one_line_that_says_lower_the_batch_size():
    from posterlab.errors import one_line

    raw = torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB\nof which..."
    )
    for error in (raw, RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")):
        message = one_line(error)
        assert "\n" not in message and "lower the batch size (--batch-size" in message
