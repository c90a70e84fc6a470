"""Label corrections: what a label audit flagged and what the user decided, kept beside the dataset's
cache and applied when labels are built. The user's labels.csv is never written.

One JSON file per dataset under ``<cache>/corrections/`` (keyed by the dataset's resolved location), with

- ``flagged``: the last audit's suspicious posters, per target (``genres``, ``label`` or a rule such as
  ``imdb_score>=7``): id → the suggested change;
- ``decisions``: per target, id → ``accept`` (the suggestion replaces the label) or ``keep``.

A change is ``{"add": [...], "remove": [...]}`` for genres (so it composes with any genre selection) and
``{"label": NAME}`` for one label per poster (a label column, a single genre, or a binary rule's side).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from posterlab import settings
from posterlab.errors import DataError

log = logging.getLogger(__name__)

ACCEPT, KEEP = "accept", "keep"
_VERSION = 1


def dataset_key(path: str | Path) -> str:
    """A dataset's identity for its corrections: the embedded samples by name, others by resolved path."""
    text = str(path)
    if text not in settings.SAMPLES:
        text = str(Path(text).expanduser().resolve())
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def corrections_path(path: str | Path) -> Path:
    """Where a dataset's corrections live (beside posterlab's caches, never in the dataset)."""
    return settings.cache_dir() / "corrections" / f"{dataset_key(path)}.json"


@dataclass
class Corrections:
    """A dataset's flagged posters and the user's decisions, per target."""

    dataset: str
    flagged: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    decisions: dict[str, dict[str, str]] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)  # per target: the last audit's one line

    # ------------------------------------------------------------------------------------- file

    @classmethod
    def load(cls, path: str | Path) -> Corrections:
        """The corrections of dataset ``path`` (empty when none were saved)."""
        file = corrections_path(path)
        if not file.is_file():
            return cls(str(path))
        try:
            values = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(
                f"{file}: unreadable corrections file ({error}); delete it to start the review again"
            ) from None
        return cls(
            str(path), values.get("flagged", {}), values.get("decisions", {}), values.get("summaries", {})
        )

    def save(self) -> Path:
        """Write atomically (a temporary file, then a rename): a reader never sees half a file."""
        file = corrections_path(self.dataset)
        file.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": _VERSION,
            "dataset": self.dataset,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "flagged": self.flagged,
            "decisions": self.decisions,
            "summaries": self.summaries,
        }
        temporary = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}.tmp")
        temporary.write_text(json.dumps(payload, indent=1, sort_keys=True))
        os.replace(temporary, file)
        return file

    # ---------------------------------------------------------------------------------- editing

    def set_flagged(self, target: str, changes: dict[str, dict[str, Any]]) -> None:
        """Replace the flagged posters of ``target`` with a new audit's. A decision stays only where the new
        audit suggests the very change it was made on: kept whatever the audit said, an 'accept' of
        '+Drama -Romance' applied a later audit's '-Romance' that nobody reviewed."""

        def same(a: Any, b: Any) -> bool:  # as stored: a loaded file's lists are an audit's tuples
            return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

        before, decided = self.flagged.get(target, {}), self.decisions.get(target, {})
        for poster in [p for p in decided if p not in changes or not same(changes[p], before.get(p))]:
            del decided[poster]
        self.flagged[target] = dict(changes)

    def decide(self, target: str, poster: str, decision: str | None) -> None:
        """``accept`` or ``keep`` a flagged poster's suggestion (None: undecided again)."""
        if decision not in (ACCEPT, KEEP, None):
            raise DataError(f"a decision is {ACCEPT!r} or {KEEP!r} (got {decision!r})")
        chosen = self.decisions.setdefault(target, {})
        if decision is None:
            chosen.pop(poster, None)
        else:
            chosen[poster] = decision

    def decision(self, target: str, poster: str) -> str | None:
        return self.decisions.get(target, {}).get(poster)

    def accepted(self, target: str) -> dict[str, dict[str, Any]]:
        """id → change of every accepted suggestion of ``target``."""
        flagged = self.flagged.get(target, {})
        return {
            poster: flagged[poster]
            for poster, decision in self.decisions.get(target, {}).items()
            if decision == ACCEPT and poster in flagged
        }

    def left_out(self, target: str) -> set[str]:
        """Flagged posters the user neither accepted nor kept: what "without flagged posters" drops."""
        decided = self.decisions.get(target, {})
        return {poster for poster in self.flagged.get(target, {}) if poster not in decided}


def target_key(target: str) -> str:
    """Corrections are per target kind: every genre selection shares ``genres``."""
    return target.replace(" ", "")


def correct_frame(frame: pd.DataFrame, changes: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, int]:
    """``frame`` with accepted changes to its ``genres`` / ``label`` columns (a copy), and how many posters
    changed. Rule targets (``imdb_score>=7``) are corrected on the targets instead: ``correct_targets``."""
    if not changes:
        return frame, 0
    frame = frame.copy()
    changed = 0
    ids = frame["id"].astype(str)
    for position in np.nonzero(ids.isin(changes).to_numpy())[0]:
        change = changes[ids.iloc[position]]
        if "add" in change or "remove" in change:
            genres = [
                g for g in frame.at[frame.index[position], "genres"] if g not in change.get("remove", ())
            ]
            genres += [g for g in change.get("add", ()) if g not in genres]
            frame.at[frame.index[position], "genres"] = tuple(genres)
            changed += 1
        elif "label" in change and "label" in frame.columns:
            frame.at[frame.index[position], "label"] = change["label"]
            changed += 1
    return frame, changed


def correct_targets(ids: pd.Series, y: np.ndarray, labels: tuple[str, ...], changes: dict) -> np.ndarray:
    """Class-index targets with accepted ``{"label": NAME}`` changes applied (binary rules)."""
    if not changes:
        return y
    y = y.copy()
    index = {label: i for i, label in enumerate(labels)}
    for position, poster in enumerate(ids.astype(str)):
        label = changes.get(poster, {}).get("label")
        if label in index:
            y[position] = index[label]
    return y


def rule_key(rule) -> str:
    """The corrections key of a ``LabelRule``: ``genres``, ``label`` (a label column or one genre per
    poster) or the binary rule itself (``imdb_score>=7``)."""
    if rule.target == "threshold":
        value = int(rule.value) if float(rule.value).is_integer() else rule.value
        return f"{rule.column}{rule.op}{value}"
    return "label" if rule.target in ("label", "single") else "genres"


def apply_corrections(frame: pd.DataFrame, rule, config, on_event=None):
    """The frame to label under ``config.corrections`` (``apply``: accepted suggestions; ``drop``: also
    without the flagged posters nobody reviewed), the rule, and a function that corrects the targets
    of binary rules (whose labels come from a numeric column the corrections cannot edit)."""
    from posterlab.events import Message

    corrections = Corrections.load(config.path)
    key = rule_key(rule)
    accepted = corrections.accepted(key)
    if rule.target == "threshold":  # the rule's column stays as given; the targets are corrected below
        changed = len(accepted)
    else:
        frame, changed = correct_frame(frame, accepted)
    dropped = 0
    if config.corrections == "drop":
        out = corrections.left_out(key)
        keep = ~frame["id"].astype(str).isin(out)
        dropped = int((~keep).sum())
        frame = frame[keep].reset_index(drop=True)
    if on_event is not None:
        text = f"label corrections ({key}): {changed} posters corrected"
        on_event(
            Message(text + (f", {dropped} flagged posters left out" if config.corrections == "drop" else ""))
        )
    log.info("corrections %s: %d changed, %d left out", key, changed, dropped)
    if rule.target != "threshold":
        return frame, rule, lambda ids, y: y
    return frame, rule, lambda ids, y: correct_targets(ids, y, rule.labels, accepted)


def corrected_labels_csv(path: str, target: str = "genres") -> bytes:
    """The dataset's labels with the accepted corrections of ``target`` applied, as CSV bytes to download
    (never written over the dataset's own labels.csv). A labels.csv keeps its columns and rows, only the
    corrected cells change; other sources are written as ``id, genres, label``."""
    from posterlab.data.sources import load_dataset

    dataset = load_dataset(path)
    changes = Corrections.load(path).accepted(target)
    source = dataset.root / "labels.csv"
    table = pd.read_csv(source, dtype=str, keep_default_na=False) if source.is_file() else None
    if table is not None and "imdb_id" in table.columns:
        for position, poster in enumerate(table["imdb_id"].str.strip()):
            change = changes.get(poster)
            if not change:
                continue
            if "genres" in table.columns and ("add" in change or "remove" in change):
                genres = [g for g in table.at[position, "genres"].split("|") if g]
                genres = [g for g in genres if g not in change.get("remove", ())]
                genres += [g for g in change.get("add", ()) if g not in genres]
                table.at[position, "genres"] = "|".join(genres)
            elif "label" in change and "label" in table.columns:
                table.at[position, "label"] = change["label"]
        return table.to_csv(index=False).encode()
    frame, _ = correct_frame(dataset.frame, changes)
    out = pd.DataFrame(
        {
            "id": frame["id"],
            "genres": ["|".join(g) for g in frame["genres"]],
            "label": frame["label"].fillna("") if "label" in frame else "",
        }
    )
    return out.to_csv(index=False).encode()


def scores_path(path: str | Path, target: str) -> Path:
    """Where the last audit of ``target`` keeps every poster's label quality (for the Explore map)."""
    safe = hashlib.sha256(target.encode()).hexdigest()[:8]
    return corrections_path(path).with_name(f"{dataset_key(path)}-{safe}.quality.csv")


def save_scores(path: str | Path, target: str, scores: pd.DataFrame) -> None:
    """``scores``: id, quality of every audited poster (atomically)."""
    file = scores_path(path, target)
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}.tmp")
    scores[["id", "quality"]].to_csv(temporary, index=False)
    os.replace(temporary, file)


def load_scores(path: str | Path, target: str) -> pd.Series | None:
    """id → label quality from the last audit of ``target`` (None when there was none)."""
    file = scores_path(path, target)
    if not file.is_file():
        return None
    table = pd.read_csv(file, dtype={"id": str})
    return table.set_index("id")["quality"]
