"""Writing a module as an ONNX graph with the TorchScript-based exporter (dynamic batch axis)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def torchscript_onnx(model: nn.Module, example: torch.Tensor, path: Path, output: str = "logits") -> None:
    """Trace ``model`` on ``example`` into ``path`` (input ``image``, output ``output``, any batch size).

    The TorchScript exporter handles models that torch.export rejects; its deprecation and tracer
    warnings are not the user's to act on, so they are silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=[output],
            dynamic_axes={"image": {0: "batch"}, output: {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )
