"""The embedding map: every poster of a dataset placed in 2-D by its backbone embedding, and the posters
nearest any poster (or an uploaded one) by cosine similarity, which also surfaces near-duplicates.

The embeddings are the ones a probe on this backbone and fit trains on: read from posterlab's feature
cache (computed, and cached, only for posters it lacks). The projection is PCA of the L2-normalised
embeddings: deterministic, a second for 7,000 posters on two cores, and faithful to the global layout
(the directions in which posters differ most). t-SNE shows tighter local clusters but takes 20-40 s for
7,000 posters here, so it is offered on demand (``method="tsne"``), never the first thing drawn.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import pandas as pd

from posterlab.config import DataConfig
from posterlab.events import Control
from posterlab.models.weights import weights_id

DUPLICATE_SIMILARITY = 0.97  # cosine similarity above which two posters look like the same artwork


@dataclass
class PosterSpace:
    """Posters (``frame``: id, image, title, labels, digest, thumbnail) and their L2-normalised
    embeddings (``vectors``), row for row; ``backbone`` and ``fit`` say which embeddings."""

    frame: pd.DataFrame
    vectors: np.ndarray
    backbone: str
    fit: str

    def project(self, method: str = "pca", seed: int = 0) -> np.ndarray:
        """(n, 2) coordinates: PCA, or t-SNE (seconds per thousand posters) on the first 50 components."""
        from sklearn.decomposition import PCA

        if len(self.vectors) < 3:
            return np.zeros((len(self.vectors), 2))
        if method == "pca":
            return PCA(2, random_state=seed).fit_transform(self.vectors)
        from sklearn.manifold import TSNE

        reduced = PCA(min(50, *self.vectors.shape), random_state=seed).fit_transform(self.vectors)
        perplexity = min(30.0, max(2.0, (len(reduced) - 1) / 3))
        return TSNE(2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(reduced)

    def neighbours(self, query: np.ndarray, k: int = 12, exclude: int | None = None) -> pd.DataFrame:
        """The ``k`` posters most similar to ``query`` (an embedding, normalised here), most similar first,
        with their cosine ``similarity`` and whether they look like a ``duplicate`` of it."""
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        similarity = self.vectors @ query
        if exclude is not None:
            similarity[exclude] = -np.inf
        order = np.argsort(-similarity)[:k]
        found = self.frame.iloc[order].assign(similarity=similarity[order])
        return found.assign(duplicate=found["similarity"] >= DUPLICATE_SIMILARITY).reset_index(drop=True)


def _normalise(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def poster_space(
    data: DataConfig, backbone: str, fit: str = "crop", control: Control | None = None
) -> PosterSpace:
    """Every readable poster of ``data`` (near-duplicates kept: the map should show them) with its
    embedding from ``backbone`` (pretrained when it has weights) seen through ``fit``."""
    import torch

    from posterlab.data.clean import ScanCache, clean_dataset
    from posterlab.data.sources import load_dataset
    from posterlab.events import Progress
    from posterlab.models.registry import get_backbone
    from posterlab.training.features import (
        Runtime,
        compute_features,
        feature_key,
        pretrained_extraction,
        remembered_backbone,
        views_for,
    )

    control = control or Control()
    get_backbone(backbone)  # an unknown name fails here, listing the known ones
    dataset = load_dataset(data.path)
    progress = lambda done, total: control.emit(Progress("scanning", done, total))  # noqa: E731
    frame = clean_dataset(dataset, near_duplicate_bits=-1, progress=progress)[0].frame.reset_index(drop=True)
    job, start = pretrained_extraction(backbone, "embeddings for the map")
    preprocess = remembered_backbone(backbone, start).preprocess(fit, job.module)
    job.views = views_for(preprocess, (fit,), flips=False)
    job.keys = [feature_key(backbone, start, "", job.views[0], "fp32")]
    tables = compute_features(
        job, frame["image"].tolist(), frame["digest"].tolist(), Runtime(torch.device("cpu"), control=control)
    )
    table = tables[job.views[0].name]
    vectors = _normalise(table.take(np.arange(len(frame))))
    thumbnails = ScanCache().thumbnails(frame["digest"].tolist())
    frame = frame.assign(
        thumbnail=[_data_uri(thumbnails.get(d)) for d in frame["digest"]],
        title=frame["title"] if "title" in frame else frame["id"],
    )
    return PosterSpace(frame, vectors, backbone, fit)


def _data_uri(jpeg: bytes | None) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() if jpeg else ""


def embed(backbone: str, fit: str, image, name: str | None = None) -> np.ndarray:
    """One poster's embedding (a path, bytes or a PIL image), as ``poster_space`` computes them."""
    import torch

    from posterlab.data.images import load_image
    from posterlab.models.factory import create_backbone
    from posterlab.models.registry import get_backbone
    from posterlab.training.features import remembered_backbone

    pretrained = get_backbone(backbone).pretrained
    module = create_backbone(backbone, pretrained).eval()
    remembered = remembered_backbone(backbone, weights_id(backbone, pretrained, 0))
    module.load_state_dict(remembered.weights(lambda: module))  # the very weights the map was made with
    preprocess = remembered.preprocess(fit, lambda: module)
    loaded = load_image(image, name=name, draft=preprocess.draft)
    with torch.inference_mode():
        return module(preprocess.eval_transform()(loaded.image)[None]).float().numpy()[0]


def colour_columns(space: PosterSpace, predictions: pd.DataFrame | None, labels: list[str]) -> pd.DataFrame:
    """What the map can colour by: each label (carried or not), the prediction, right or wrong, the
    loss (posters the run scored: its validation and test splits; the others say so)."""
    frame = space.frame[["id", "image", "title", "thumbnail"]].copy()
    genres = space.frame["genres"] if "genres" in space.frame else pd.Series([()] * len(frame))
    single = space.frame["label"] if "label" in space.frame else pd.Series([None] * len(frame))
    for label in labels:
        frame[f"label: {label}"] = [
            "yes" if label in g or str(s) == label else "no" for g, s in zip(genres, single, strict=True)
        ]
    frame["truth"] = [
        " | ".join(g) if len(g) else (str(s) if s is not None else "")
        for g, s in zip(genres, single, strict=True)
    ]
    if predictions is not None and not predictions.empty:
        scored = predictions.set_index("id")
        frame["split"] = frame["id"].map(scored["split"]).fillna("not scored (training or not in the run)")
        frame["predicted"] = frame["id"].map(scored["predicted"].fillna("").str.replace("|", " | "))
        frame["outcome"] = frame["id"].map(scored["correct"].map({True: "right", False: "wrong"}))
        frame["loss"] = frame["id"].map(scored["loss"])
        for column in ("predicted", "outcome"):
            frame[column] = frame[column].fillna("not scored")
    return frame
