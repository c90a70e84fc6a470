"""From a ``DataConfig`` to labelled, cleaned, split posters: the one path every caller uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from posterlab.config import DataConfig
from posterlab.data.clean import CleaningReport, clean_dataset, scan_images
from posterlab.data.labels import Labelled, LabelRule, apply_rule, resolve_rule
from posterlab.data.sources import PosterDataset, load_dataset
from posterlab.data.split import split_indices
from posterlab.events import EventSink, Progress, ignore


@dataclass
class Prepared:
    dataset: PosterDataset  # after cleaning
    report: CleaningReport
    labelled: Labelled
    splits: dict[str, np.ndarray] | None  # row indices into labelled.frame

    def split_of(self, name: str) -> np.ndarray:
        assert self.splits is not None
        return self.splits[name]


def prepare_data(
    config: DataConfig, on_event: EventSink = ignore, rule: LabelRule | None = None, split: bool = True
) -> Prepared:
    """Read, clean, (optionally) subsample, label and split. ``rule`` relabels with a run's own rule."""
    dataset = load_dataset(config.path, progress=lambda d, t: on_event(Progress("downloading", d, t)))
    cleaned, report = clean_dataset(
        dataset, config.near_duplicate_bits, progress=lambda d, t: on_event(Progress("scanning", d, t))
    )
    if config.limit is not None and len(cleaned.frame) > config.limit:
        keep = np.sort(
            np.random.default_rng(config.seed).choice(len(cleaned.frame), size=config.limit, replace=False)
        )
        cleaned.frame = cleaned.frame.iloc[keep].reset_index(drop=True)
    rule = rule or resolve_rule(cleaned.frame, config.labels)
    if config.corrections != "none":
        from posterlab.data.corrections import apply_corrections

        cleaned.frame, rule, y_fix = apply_corrections(cleaned.frame, rule, config, on_event)
    labelled = apply_rule(cleaned.frame, rule)
    if config.corrections != "none":
        labelled.y = y_fix(labelled.frame["id"], labelled.y)
    splits = (
        split_indices(labelled.y, config.val_fraction, config.test_fraction, config.seed) if split else None
    )
    return Prepared(cleaned, report, labelled, splits)


def warm_scan(config: DataConfig, rank: int, world: int) -> None:
    """Open this process's share (every ``world``-th poster) into the scan cache, so that the processes
    of a distributed run split the work of ``prepare_data`` instead of each opening every image."""
    dataset = load_dataset(config.path)
    scan_images(dataset.frame["image"].tolist()[rank::world])
