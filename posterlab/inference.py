"""``Predictor``: scores for posters from nothing but a run folder (or an exported bundle).

Preprocessing, labels and thresholds all come from the folder's ``model.json``; weights from its
``model.safetensors`` (checked to be safetensors first: nothing is ever unpickled). An optional ONNX
backend serves plain predictions from ``model.onnx`` when the folder has one, on the CPU engine that
``posterlab.models.onnx`` picks (OpenVINO when installed, else ONNX Runtime).

A Predictor is safe to share between threads (the workbench's sessions, the demo's workers): every
forward pass through its model holds ``lock``, which Grad-CAM (``posterlab.explain``) takes too while its
hooks are on the model, so one request's activations never land in another's map.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from posterlab.config import from_dict
from posterlab.data.images import load_image
from posterlab.data.labels import LabelRule
from posterlab.data.transforms import Preprocess
from posterlab.errors import ImageError, RunError, one_line
from posterlab.models.factory import PosterModel, create_model
from posterlab.runs import PICKLE_SUFFIXES, load_tensors, read_json

log = logging.getLogger(__name__)

ImageInput = str | Path | bytes | Image.Image


@dataclass
class Prediction:
    """One poster's result. ``crop`` is the image exactly as the model saw it (before normalisation)."""

    image: str
    ok: bool
    error: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    predicted: list[str] = field(default_factory=list)
    crop: Image.Image | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "image": self.image,
            "ok": self.ok,
            "error": self.error,
            "scores": self.scores,
            "predicted": self.predicted,
        }


def load_model_folder(folder: Path) -> tuple[dict, PosterModel]:
    """``model.json`` and the model with its weights, from a run or bundle folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError.missing(folder)
    if not (folder / "model.json").exists():
        status = folder / "status.json"
        state = read_json(status).get("status", "?") if status.exists() else "unknown"
        raise RunError(
            f"{folder}: has no trained model (run status: {state}); train it to completion or pick another run"
        )
    info = read_json(folder / "model.json")
    weights = folder / "model.safetensors"
    if not weights.exists():
        stray = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = (
            f" (found {', '.join(stray)}: pickles are never loaded since they can run code)" if stray else ""
        )
        raise RunError(
            f"{folder}: model.safetensors is missing{hint}; re-export the weights with safetensors"
        )
    state = load_tensors(weights)
    model = create_model(
        info["backbone"],
        len(info["rule"]["labels"]),
        pretrained=False,
        head=info["head"],
        dropout=info.get("dropout", 0.0),
    )
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise RunError(
            f"{weights}: weights do not match {info['backbone']} ({one_line(error, typed=False)}); the folder is inconsistent"
        ) from None
    return info, model.eval()


class Predictor:
    """Scores posters with a trained run; safe to share between threads (see the module docstring)."""

    def __init__(self, folder: str | Path, device: str = "cpu", backend: str = "torch") -> None:
        self.folder = Path(folder)
        self.info, self.model = load_model_folder(self.folder)
        self.device = torch.device(device)
        self.lock = threading.RLock()  # held by every forward pass through ``model`` (and Grad-CAM's)
        # channels_last is 1.5-2x faster for these CNNs on CPU and GPU alike (no effect on ViTs)
        self.model.to(self.device, memory_format=torch.channels_last)
        self.rule: LabelRule = from_dict(LabelRule, self.info["rule"])
        self.labels: tuple[str, ...] = self.rule.labels
        self.thresholds = np.asarray(self.info["thresholds"]) if self.info.get("thresholds") else None
        self.preprocess: Preprocess = from_dict(
            Preprocess, self.info["preprocess"]
        )  # the primary fit: Grad-CAM's
        # every fit the run averages at test time (primary first), as (geometry, to-tensor) pairs
        self.fits: tuple[str, ...] = tuple(self.info.get("fits") or [self.preprocess.fit])
        fitted = [replace(self.preprocess, fit=fit) for fit in self.fits]
        self._views = [(p.geometry(), p.to_tensor()) for p in fitted]
        self.draft = max(p.draft for p in fitted)
        self.backend = backend
        self._onnx = None
        if backend == "onnx":
            self._onnx = self._onnx_session()

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def multilabel(self) -> bool:
        return self.rule.multilabel

    def _onnx_session(self):
        path = self.folder / "model.onnx"
        if not path.exists():
            raise RunError(
                f"{self.folder}: no model.onnx; create it with posterlab export {self.folder} --format onnx --out {path}"
            )
        from posterlab.errors import ModelError
        from posterlab.models.onnx import serving_engine

        try:
            engine = serving_engine(path)
        except ModelError as error:
            raise RunError(f"{error} or use the torch backend") from None
        log.info("serving %s on %s", path, engine.title)
        return engine

    def fitted(self, image: Image.Image) -> tuple[Image.Image, torch.Tensor]:
        """(the primary fit's crop, (views, 3, H, W) normalised tensors: one per fit, primary first)."""
        crops = [geometry(image) for geometry, _ in self._views]
        tensors = torch.stack(
            [to_tensor(crop) for crop, (_, to_tensor) in zip(crops, self._views, strict=True)]
        )
        return crops[0], tensors

    def prepare(
        self, source: ImageInput, name: str | None = None
    ) -> tuple[Image.Image, torch.Tensor, list[str]]:
        """Load a poster safely: (the crop Grad-CAM draws on, the tensors of every view, load notes)."""
        loaded = load_image(source, name=name, draft=self.draft)
        crop, tensors = self.fitted(loaded.image)
        return crop, tensors, loaded.notes

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """(n, views, 3, H, W) normalised tensors (or (n, 3, H, W): one view) → (n, labels) probabilities,
        averaged over the views."""
        if batch.ndim == 4:
            batch = batch[:, None]
        count, views = batch.shape[:2]
        flat = batch.flatten(0, 1)
        if self._onnx is not None:
            logits = torch.from_numpy(self._onnx.run(flat.numpy()))
        else:
            with self.lock, torch.inference_mode():
                x = flat.to(self.device).contiguous(memory_format=torch.channels_last)
                logits = self.model(x).float().cpu()
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)
        return probs.view(count, views, -1).mean(dim=1).numpy()

    def decide(self, probs: np.ndarray) -> list[str]:
        """Labels a poster is predicted to carry: over their thresholds, or the top class."""
        if self.multilabel:
            return [label for label, p, t in zip(self.labels, probs, self.thresholds, strict=True) if p >= t]
        return [self.labels[int(np.argmax(probs))]]

    def predict(
        self,
        images: list[ImageInput],
        batch_size: int = 8,
        names: list[str] | None = None,
        keep_crops: bool = False,
    ) -> list[Prediction]:
        """One ``Prediction`` per input, in order; unreadable inputs get ``ok=False`` and a one-line error."""
        names = names or [
            str(i) if isinstance(i, (str, Path)) else f"image {n + 1}" for n, i in enumerate(images)
        ]
        results: list[Prediction | None] = [None] * len(images)
        pending: list[tuple[int, Image.Image, torch.Tensor, list[str]]] = []

        def flush() -> None:
            if not pending:
                return
            probs = self.probabilities(torch.stack([t for _, _, t, _ in pending]))
            for (index, crop, _, notes), row in zip(pending, probs, strict=True):
                results[index] = Prediction(
                    image=names[index],
                    ok=True,
                    scores={label: round(float(p), 5) for label, p in zip(self.labels, row, strict=True)},
                    predicted=self.decide(row),
                    crop=crop if keep_crops else None,
                    notes=notes,
                )
            pending.clear()

        for index, source in enumerate(images):
            try:
                crop, tensor, notes = self.prepare(source, names[index])
            except ImageError as error:
                results[index] = Prediction(image=names[index], ok=False, error=str(error))
                continue
            pending.append((index, crop, tensor, notes))
            if len(pending) >= batch_size:
                flush()
        flush()
        return [r for r in results if r is not None]

    def predict_one(self, image: ImageInput, name: str | None = None) -> Prediction:
        """A single poster; raises ``ImageError`` for unreadable input (the demo turns it into gr.Error)."""
        crop, tensor, notes = self.prepare(image, name)
        row = self.probabilities(tensor[None])[0]
        scores = {label: round(float(p), 5) for label, p in zip(self.labels, row, strict=True)}
        return Prediction(
            image=name or "image", ok=True, scores=scores, predicted=self.decide(row), crop=crop, notes=notes
        )

    def score_paths(
        self, paths: list[str], batch_size: int = 8, progress: Callable[[int, int], None] | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        """Probabilities for poster files, in order (a row of NaN for one that cannot be read), and each
        file's one-line error (None when it was scored): the batch-scoring loop of evaluation, galleries
        and interpretation."""
        probs = np.full((len(paths), len(self.labels)), np.nan, dtype=np.float64)
        errors: list[str | None] = [None] * len(paths)
        for start in range(0, len(paths), batch_size):
            chunk, tensors = [], []
            for index in range(start, min(start + batch_size, len(paths))):
                try:
                    tensors.append(self.prepare(paths[index])[1])
                    chunk.append(index)
                except ImageError as error:
                    errors[index] = str(error)
            if tensors:
                probs[chunk] = self.probabilities(torch.stack(tensors))
            if progress is not None:
                progress(min(start + batch_size, len(paths)), len(paths))
        return probs, errors
