"""The run's loss, once: what training minimises, what validation reports, what top losses rank.

torchvision's references evaluate with the training criterion; fastai's ``Interpretation`` ranks items by
the learner's own loss. Here a ``Criterion`` is one object with three faces:

- ``criterion(logits, y)``: the batch loss training minimises;
- ``criterion.per_item(logits, y)``: each poster's share of it (validation loss, top losses);
- ``criterion.from_probabilities(probs, y)``: the same per-poster loss from stored probabilities (a run's
  ``predictions.csv``, test-time averages over views), through the logits those probabilities stand for.

The batch loss is the weighted mean of the per-poster losses, so a validation loss computed here and the
training loss are the same quantity on different posters. A run saves ``to_dict()`` in ``model.json``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posterlab.errors import ConfigError

KINDS = ("bce", "asl", "ce")
_NAMES = {"bce": "binary cross-entropy", "asl": "asymmetric loss", "ce": "cross-entropy"}
_EPS = 1e-7


class Criterion(nn.Module):
    """``bce`` (with optional ``pos_weight``), ``asl`` (timm's asymmetric loss; per poster, summed over
    labels as its 'batchmean' does) or ``ce`` (optional class weights and label smoothing)."""

    def __init__(self, kind: str, weights: np.ndarray | list | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"loss must be one of {', '.join(KINDS)} (got {kind!r})")
        self.kind = kind
        self.label_smoothing = float(label_smoothing)
        weight = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float32))
        self.register_buffer("weights", weight)
        self._asl = None
        if kind == "asl":
            from timm.loss import AsymmetricLossMultiLabel

            self._asl = AsymmetricLossMultiLabel(
                gamma_neg=4, gamma_pos=0, clip=0.05, reduction="none", pos_weight=weight
            )

    @classmethod
    def for_target(
        cls, multilabel: bool, loss: str, weights: np.ndarray | None, label_smoothing: float
    ) -> Criterion:
        """The criterion a config asks for (``auto``: bce for multi-label, ce for one label per poster)."""
        kind = loss if loss != "auto" else ("bce" if multilabel else "ce")
        if multilabel and kind == "ce":
            raise ConfigError("loss 'ce' is for single-label targets; use bce or asl for genres")
        if not multilabel and kind != "ce":
            raise ConfigError(f"loss {kind!r} is for multi-label targets; use ce for a single label")
        return cls(kind, weights, label_smoothing if kind == "ce" else 0.0)

    @classmethod
    def from_dict(cls, values: dict) -> Criterion:
        return cls(values["kind"], values.get("weights"), values.get("label_smoothing", 0.0))

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "weights": None if self.weights is None else [round(float(w), 6) for w in self.weights],
            "label_smoothing": self.label_smoothing,
            "name": self.describe(),
        }

    def describe(self) -> str:
        """For people, e.g. 'binary cross-entropy with pos_weight'."""
        extras = []
        if self.weights is not None:
            extras.append("pos_weight" if self.kind in ("bce", "asl") else "class weights")
        if self.label_smoothing:
            extras.append(f"label smoothing {self.label_smoothing:g}")
        return _NAMES[self.kind] + (" with " + " and ".join(extras) if extras else "")

    # ------------------------------------------------------------------------------------ losses

    def per_item(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(n,) each poster's loss (class-weighted for ``ce``: its class weight times its loss)."""
        logits = logits.float()
        if self.kind == "ce":
            return F.cross_entropy(
                logits, y.long(), weight=self.weights, label_smoothing=self.label_smoothing, reduction="none"
            )
        if self.kind == "asl":
            return self._asl(logits, y.float()).sum(dim=1)
        per_label = F.binary_cross_entropy_with_logits(
            logits, y.float(), pos_weight=self.weights, reduction="none"
        )
        return per_label.mean(dim=1)

    def item_weights(self, y: torch.Tensor) -> torch.Tensor:
        """(n,) what each poster counts for in the mean: its class weight for weighted ``ce``, else 1."""
        if self.kind == "ce" and self.weights is not None:
            return self.weights[y.long()]
        return torch.ones(len(y), device=y.device)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch loss: the weighted mean of ``per_item`` (PyTorch's own reductions, written out)."""
        return self.per_item(logits, y).sum() / self.item_weights(y).sum()

    def mean(self, per_item: np.ndarray, y: np.ndarray) -> float:
        """The loss of a whole split from its per-poster losses, reduced as training reduces a batch."""
        if len(per_item) == 0:
            return float("nan")
        device = self.weights.device if self.weights is not None else torch.device("cpu")
        weights = self.item_weights(torch.as_tensor(np.asarray(y), device=device)).cpu().numpy()
        return float(per_item.sum() / weights.sum())

    @torch.no_grad()
    def from_probabilities(self, probs: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n,) per-poster losses from probabilities: sigmoid outputs go back through the logit, softmax
        outputs through the log (a softmax of log-probabilities gives them back). For one view this is
        exactly the loss of the logits; for several, the loss of the averaged prediction."""
        p = torch.as_tensor(np.array(probs, dtype=np.float64)).clamp(_EPS, 1 - _EPS)
        logits = torch.log(p) if self.kind == "ce" else torch.log(p) - torch.log1p(-p)
        device = self.weights.device if self.weights is not None else torch.device("cpu")
        target = torch.as_tensor(np.asarray(y), device=device)
        return self.per_item(logits.float().to(device), target).double().cpu().numpy()

    def label_losses(self, probs: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        """(n, k) each label's term of the loss, from probabilities and a 0/1 truth matrix: the binary
        cross-entropy of each label (with ``pos_weight`` on positives when the criterion has one; the
        asymmetric loss's own terms for ``asl``). For ``ce`` each class is read one-vs-rest."""
        p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
        y = np.asarray(onehot, dtype=np.float64)
        if self.kind == "asl":
            device = self.weights.device if self.weights is not None else torch.device("cpu")
            logits = torch.as_tensor(np.log(p) - np.log1p(-p), device=device).float()
            with torch.no_grad():
                terms = self._asl(logits, torch.as_tensor(y, device=device).float())
            return terms.double().cpu().numpy()
        weight = 1.0
        if self.kind == "bce" and self.weights is not None:
            weight = self.weights.detach().cpu().numpy()[None, :]
        return -(weight * y * np.log(p) + (1 - y) * np.log(1 - p))
