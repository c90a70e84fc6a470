"""Label health: which labels of a poster set are probably wrong.

Every poster gets out-of-fold probabilities from a k-fold linear probe on its cached backbone embeddings
(each view a probe would train on: the fits and flips the cache holds; the probe trains on every view and
averages them at test time), so no poster is scored by a model that saw its label. Confident learning
(Northcutt, Jiang & Chuang, JAIR 2021) then finds the label issues: a class's threshold is the mean
out-of-fold probability of the class among the posters labelled with it; a poster is confidently of a
class when its probability reaches that class's threshold; the counts of (given label, confident label)
pairs, calibrated to the given label counts, estimate the noise rates. Multi-label targets are audited
per label as one-vs-rest binary tasks (as ``cleanlab.multilabel_classification`` does), which gives the
two kinds of issue: *tagged but unlikely* (given, confidently absent) and *missing but likely* (not
given, confidently present). A label on fewer than ``MIN_PER_LABEL`` posters (or absent from fewer) is not
judged: a threshold from a handful of probabilities flags nearly every poster.

The label-quality score of a label is its self-confidence, the out-of-fold probability of the side given
(cleanlab's default score too); a poster's is the lowest of its labels' (multi-label) or its label's (one
label per poster). Low means suspicious. Measured on injected noise (``benchmarks/label_noise.py``), this
ranked the corrupted posters better than the self-confidence divided by the class thresholds, the sum
of the labels' odds of being wrong, or their product.

Besides the image, each poster's other tags are evidence: the genres outside the selection and, for a
multi-label target, the other selected labels (never the label being judged). Each fold counts how often
the training posters with exactly those tags carry the label, and that is combined with the image probe
as independent evidence (``out_of_fold``). On the development set with injected errors, AUROC went from
0.78 (image only) to 0.81-0.84 with the tags as linear features, and to 0.86-0.88 with their exact
combinations counted (see the README). cleanlab is AGPL-3.0 and is not a dependency: the method is
implemented here and compared against cleanlab in ``benchmarks/label_noise.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from posterlab.background import one_torch_thread
from posterlab.config import DataConfig
from posterlab.data.labels import LabelRule, one_hot
from posterlab.data.prepare import Prepared
from posterlab.errors import DataError
from posterlab.events import Control, Message, Progress

log = logging.getLogger(__name__)

TAGGED_UNLIKELY = "tagged but unlikely"
MISSING_LIKELY = "missing but likely"
WRONG_LABEL = "wrong label"  # one label per poster: another class is confidently more likely
KINDS = (TAGGED_UNLIKELY, MISSING_LIKELY, WRONG_LABEL)
PRIOR = 52.0  # the probe's L2 penalty times its training posters (see out_of_fold)
MIN_POSTERS = 20  # fewer and a 5-fold probe has too few posters per fold to say anything
# a label (or its absence) on fewer posters is not judged: its threshold, the mean out-of-fold probability
# of a handful of posters, says nothing (a genre on 1 of the 7,218 development posters was suggested for
# 1,604, and filled the top of the list)
MIN_PER_LABEL = 10
# a label whose out-of-fold scores tell its posters from the others no better than this ROC AUC is not
# judged either: on fresh / rotten (AUC 0.48, chance) the audit flagged 119 of 238 posters, some at p 0.99
MIN_AUC = 0.6
PSEUDO = 1.0  # tag_frequencies' pseudo-count at the prior: 0.3-1 ranked injected errors alike, 3-30 worse
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before they are combined


# ----------------------------------------------------------------------------------- the probe


def out_of_fold(
    views: list[np.ndarray],
    y: np.ndarray,
    multilabel: bool,
    folds: int = 5,
    seed: int = 0,
    l2: float | None = None,
    context: np.ndarray | None = None,
    on_fold: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(n, k) probabilities of every poster from models that never saw it.

    ``views``: one (n, d) array per view of the same posters; ``y``: (n, k) 0/1 targets (one-hot for one
    label per poster). Each fold's image probe is a full-batch L-BFGS fit of a linear layer (sigmoid or
    softmax) with L2 penalty ``l2`` on standardised features, trained on every view and averaged over them.
    The default penalty is ``PRIOR / n_train``: the same prior whatever the number of posters (the loss is
    a mean), 0.01 on the 5,200 training posters of a fold of the development set (where 0.01 and 0.03
    ranked injected errors alike and 0.001 worse) and about 0.2 on the 300-poster sample (where 0.2-1
    ranked planted errors better than 0.01 and saturated fewer probabilities).

    ``context``: (n, c) 0/1 tags known besides the image (the poster's other genres); for a multi-label
    target its last k columns are the given labels themselves, each left out of its own label's tags.
    With it, each fold also counts how often the training posters with exactly the same tags carry each
    label (``tag_frequencies``), and the two are combined as independent evidence: p(label | image, tags)
    is proportional to p(label | image) p(label | tags) / p(label). A comedy tagged Horror stands out by
    its tags as much as by its poster."""
    import torch

    n, k = y.shape
    if n < max(MIN_POSTERS, folds):
        raise DataError(f"a label audit needs at least {max(MIN_POSTERS, folds)} labelled posters (got {n})")
    fold_of = _folds(y, folds, seed, multilabel)
    torch.manual_seed(seed)
    # one thread: these fits are small matrix products, which several threads slow down on a busy CPU
    # (measured 0.6 s vs 48 s for a 100-poster audit on two shared cores)
    with one_torch_thread():
        return _out_of_fold(views, y, multilabel, folds, l2, context, on_fold, fold_of)


def _out_of_fold(views, y, multilabel, folds, l2, context, on_fold, fold_of) -> np.ndarray:
    import torch

    n, k = y.shape
    out = np.zeros((n, k), dtype=np.float64)
    if l2 is None:
        l2 = PRIOR / max(1, int(np.sum(fold_of != 0)))
    keys = None if context is None else _tag_keys(context, k, multilabel)
    for fold in range(folds):
        test, train = fold_of == fold, fold_of != fold
        stacked = np.concatenate([view[train] for view in views]).astype(np.float32)
        mean, std = stacked.mean(0), stacked.std(0) + 1e-6
        x = torch.from_numpy((stacked - mean) / std)
        target = torch.from_numpy(np.tile(y[train], (len(views), 1)).astype(np.float32))
        weight, bias = _fit_linear(x, target, multilabel, l2)
        probabilities = np.zeros((int(test.sum()), k))
        for view in views:
            logits = torch.from_numpy(((view[test] - mean) / std).astype(np.float32)) @ weight + bias
            probabilities += (torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).numpy()
        probabilities /= len(views)
        if keys is not None:
            prior = np.clip(y[train].mean(0), EPS, 1 - EPS)
            tagged = tag_frequencies(keys, y, train, test, prior)
            probabilities = _combine(probabilities, tagged, prior, multilabel)
        out[test] = probabilities
        if on_fold:
            on_fold(fold + 1, folds)
    return out


def _tag_keys(context: np.ndarray, k: int, multilabel: bool) -> np.ndarray:
    """(n, k) integer keys, equal where two posters carry the same tags: for a multi-label target, label
    j's key leaves out the column of label j itself (the last k columns of ``context``); otherwise one key
    per poster, repeated for every class."""
    c = context.shape[1]
    keys = np.zeros((len(context), k), dtype=np.int64)
    for j in range(k):
        tags = np.delete(context, c - k + j, 1) if multilabel else context
        keys[:, j] = np.unique(tags > 0.5, axis=0, return_inverse=True)[1].reshape(-1)
        if not multilabel:
            keys[:, 1:] = keys[:, :1]
            break
    return keys


def tag_frequencies(keys: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, prior: np.ndarray):
    """(test posters, k): the share of training posters with the same tags (``keys``, from ``_tag_keys``)
    that carry each label, with ``PSEUDO`` posters at the training ``prior`` added, so tags no training
    poster has give the prior."""
    out = np.zeros((int(test.sum()), y.shape[1]))
    for j in range(y.shape[1]):
        size = int(keys[:, j].max()) + 1
        posters = np.bincount(keys[train, j], minlength=size)
        carrying = np.bincount(keys[train, j], weights=y[train, j], minlength=size)
        seen = keys[test, j]
        out[:, j] = (carrying[seen] + PSEUDO * prior[j]) / (posters[seen] + PSEUDO)
    return out


def _combine(image: np.ndarray, tags: np.ndarray, prior: np.ndarray, multilabel: bool) -> np.ndarray:
    """p(label | image, tags) from p(label | image) and p(label | tags), the two taken as independent
    given the label: the product of the two over the prior, per label (sigmoid) or over classes (softmax).
    Measured on injected noise, the image's weight 0.4-1 ranked alike; 1 needs no tuning."""
    image, tags = np.clip(image, EPS, 1 - EPS), np.clip(tags, EPS, 1 - EPS)
    if multilabel:
        logit = np.log(image / (1 - image)) + np.log(tags / (1 - tags)) - np.log(prior / (1 - prior))
        return 1 / (1 + np.exp(-logit))
    log = np.log(image) + np.log(tags) - np.log(prior)
    log -= log.max(1, keepdims=True)
    return np.exp(log) / np.exp(log).sum(1, keepdims=True)


def _fit_linear(x, target, multilabel: bool, l2: float):
    import torch

    d, k = x.shape[1], target.shape[1]
    weight = torch.zeros(d, k, requires_grad=True)
    prior = target.mean(0).clamp(1e-4, 1 - 1e-4)
    bias = (torch.log(prior / (1 - prior)) if multilabel else torch.log(prior)).clone().requires_grad_(True)
    optimiser = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=100, history_size=20, line_search_fn="strong_wolfe"
    )
    loss_of = (
        torch.nn.functional.binary_cross_entropy_with_logits
        if multilabel
        else (lambda logits, t: torch.nn.functional.cross_entropy(logits, t.argmax(1)))
    )

    def closure():
        optimiser.zero_grad()
        loss = loss_of(x @ weight + bias, target) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return weight.detach(), bias.detach()


def _folds(y: np.ndarray, folds: int, seed: int, multilabel: bool) -> np.ndarray:
    """Each poster's fold: stratified by class for one label per poster, a seeded shuffle otherwise."""
    from sklearn.model_selection import StratifiedKFold

    n = len(y)
    fold_of = np.zeros(n, dtype=np.int64)
    classes = y.argmax(1)
    if not multilabel and np.bincount(classes).min() >= folds:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for fold, (_, test) in enumerate(splitter.split(np.zeros(n), classes)):
            fold_of[test] = fold
        return fold_of
    return np.random.default_rng(seed).permutation(np.arange(n) % folds)


# ---------------------------------------------------------------------------- confident learning


@dataclass
class Issues:
    """Confident learning on out-of-fold probabilities (see the module docstring)."""

    thresholds: np.ndarray  # multi-label: (k, 2) [absent, present] per label; otherwise (k,)
    issues: np.ndarray  # (n, k) bool: this label of this poster is probably wrong
    suggested: np.ndarray  # (n, k) 0/1: the labels confident learning would give
    label_quality: np.ndarray  # (n, k) in [0, 1]
    quality: np.ndarray  # (n,) in [0, 1]
    noise_rate: np.ndarray  # (k,) estimated share of posters whose label for that class is wrong
    joint: np.ndarray  # multi-label: (k, 2, 2); otherwise (k, k): calibrated (given, true) counts


def _binary(p: np.ndarray, y: np.ndarray) -> tuple:
    """One label as a binary task: thresholds, per-poster issue, confident side, quality, joint."""
    given = y > 0.5
    probs = np.stack([1 - p, p], axis=1)  # (n, 2): absent, present
    thresholds = np.array(
        [probs[~given, 0].mean() if (~given).any() else 0.5, probs[given, 1].mean() if given.any() else 0.5]
    )
    confident = _confident_class(probs, thresholds)
    joint = _calibrated_joint(given.astype(int), confident, 2)
    issue = (confident >= 0) & (confident != given.astype(int))
    quality = np.where(given, probs[:, 1], probs[:, 0])  # self-confidence
    return thresholds, issue, confident, quality, joint


def _confident_class(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per poster, the most probable class among those at or above their threshold (-1: none)."""
    above = probs >= thresholds[None, :] - 1e-12
    masked = np.where(above, probs, -np.inf)
    best = masked.argmax(1)
    return np.where(above.any(1), best, -1)


def _calibrated_joint(given: np.ndarray, confident: np.ndarray, k: int) -> np.ndarray:
    """The confident joint C[given, true], each row scaled to the number of posters given that class and
    the whole normalised to the posters (Northcutt et al., eq. 2-3)."""
    counted = confident >= 0
    joint = np.zeros((k, k))
    np.add.at(joint, (given[counted], confident[counted]), 1)
    given_counts = np.bincount(given, minlength=k).astype(float)
    rows = joint.sum(1, keepdims=True)
    joint = np.where(rows > 0, joint / np.maximum(rows, 1) * given_counts[:, None], np.diag(given_counts))
    return joint / max(joint.sum(), 1) * len(given)


def judged_labels(y: np.ndarray, multilabel: bool, minimum: int = MIN_PER_LABEL) -> np.ndarray:
    """(k,) bool: the labels carried by at least ``minimum`` posters (multi-label: and absent from as
    many), the ones whose thresholds mean something."""
    counts = y.sum(0)
    return (counts >= minimum) & (len(y) - counts >= minimum) if multilabel else counts >= minimum


def find_issues(
    probabilities: np.ndarray, y: np.ndarray, multilabel: bool, judged: np.ndarray | None = None
) -> Issues:
    """Label issues, label quality and noise rates from out-of-fold ``probabilities`` and one-hot or
    multi-hot targets ``y`` (both (n, k)). A label not ``judged`` (too rare) is never flagged or
    suggested; its quality is 1 and its noise rate NaN; one label per poster: a poster given it is not
    judged either. Multi-label: no suggestion takes away every label of a poster (the most probable of
    its labels stays, unflagged; the noise rates count it as confident learning found it)."""
    n, k = y.shape
    judged = np.ones(k, bool) if judged is None else np.asarray(judged, bool)
    if multilabel:
        thresholds, issues, suggested, quality, joints = (
            np.full((k, 2), np.nan),
            np.zeros((n, k), bool),
            y.copy(),
            np.ones((n, k)),
            np.zeros((k, 2, 2)),
        )
        for j in np.nonzero(judged)[0]:
            thresholds[j], issues[:, j], confident, quality[:, j], joints[j] = _binary(
                probabilities[:, j], y[:, j]
            )
            suggested[issues[:, j], j] = confident[issues[:, j]]
        # a poster keeps at least one label: of the ones it was given, the most probable is not flagged
        emptied = np.nonzero((y > 0.5).any(1) & ~(suggested > 0.5).any(1))[0]
        kept = np.where(y[emptied] > 0.5, probabilities[emptied], -np.inf).argmax(1)
        issues[emptied, kept], suggested[emptied, kept] = False, 1
        noise = np.where(judged, (joints[:, 0, 1] + joints[:, 1, 0]) / max(n, 1), np.nan)
        return Issues(thresholds, issues, suggested, quality, quality.min(1), noise, joints)
    given = y.argmax(1)
    thresholds = np.array([probabilities[given == j, j].mean() if judged[j] else np.inf for j in range(k)])
    confident = _confident_class(probabilities, thresholds)
    flagged = (confident >= 0) & (confident != given) & judged[given]
    issues = np.zeros((n, k), bool)
    issues[flagged, given[flagged]] = True
    suggested = y.copy()
    suggested[flagged] = 0
    suggested[flagged, confident[flagged]] = 1
    joint = _calibrated_joint(given, confident, k)
    poster_quality = np.where(judged[given], probabilities[np.arange(n), given], 1.0)  # self-confidence
    label_quality = np.where(y > 0.5, poster_quality[:, None], 1.0)
    noise = (joint.sum(1) - np.diag(joint)) / max(n, 1)  # posters given j whose true class is another
    noise = np.where(judged, noise, np.nan)
    return Issues(thresholds, issues, suggested, label_quality, poster_quality, noise, joint)


# ------------------------------------------------------------------------------------- the audit


@dataclass
class Audit:
    """A dataset's label audit: posters (``frame``), the rule, given and out-of-fold scores, issues."""

    frame: pd.DataFrame  # id, image, title (when known), digest ... in the order of the arrays
    rule: LabelRule
    y: np.ndarray  # (n, k) given, multi-hot or one-hot
    probabilities: np.ndarray  # (n, k) out-of-fold
    found: Issues
    backbone: str
    views: tuple[str, ...]
    separable: np.ndarray  # (k,) out-of-fold ROC AUC per label (``separation``)

    @property
    def labels(self) -> list[str]:
        return list(self.rule.labels)

    @property
    def rule_target(self) -> str:
        """The corrections file's key for this audit's target."""
        from posterlab.data.corrections import rule_key

        return rule_key(self.rule)

    @property
    def flagged(self) -> np.ndarray:
        return self.found.issues.any(1)

    def noise_rates(self) -> pd.Series:
        """Estimated share of posters whose label for each class is wrong."""
        return pd.Series(self.found.noise_rate, index=self.labels, name="noise rate")

    def table(self) -> pd.DataFrame:
        """One row per poster, most suspicious first: ``id``, ``quality``, ``given``, ``suggested`` (labels
        joined with ``|``), ``flagged``, ``kind``, the labels of each kind, and each label's probability."""
        names = np.array(self.labels)
        y, suggested, issues = self.y > 0.5, self.found.suggested > 0.5, self.found.issues
        multilabel = self.rule.multilabel
        tagged = [
            "|".join(names[row & given]) if multilabel else "" for row, given in zip(issues, y, strict=True)
        ]
        missing = [
            "|".join(names[(sug & ~given)]) if multilabel else ""
            for sug, given in zip(suggested, y, strict=True)
        ]
        kinds = []
        for flagged, t, m in zip(self.flagged, tagged, missing, strict=True):
            if not flagged:
                kinds.append("")
            elif not multilabel:
                kinds.append(WRONG_LABEL)
            else:
                kinds.append(
                    ", ".join(kind for kind, on in ((TAGGED_UNLIKELY, t), (MISSING_LIKELY, m)) if on)
                )
        out = pd.DataFrame(
            {
                "id": self.frame["id"].astype(str).to_numpy(),
                "quality": np.round(self.found.quality, 4),
                "given": ["|".join(names[row]) for row in y],
                "suggested": ["|".join(names[row]) for row in suggested],
                "flagged": self.flagged,
                "kind": kinds,
                TAGGED_UNLIKELY: tagged,
                MISSING_LIKELY: missing,
            }
        )
        if "title" in self.frame:
            out.insert(1, "title", self.frame["title"].fillna("").astype(str).to_numpy())
        for j, name in enumerate(names):
            out[f"p:{name}"] = np.round(self.probabilities[:, j], 4)
        order = np.lexsort((out["id"].to_numpy(), self.found.quality))  # ties: by id, for a stable file
        return out.iloc[order].reset_index(drop=True)

    def summary(self) -> str:
        """One line: posters, flagged, the estimated wrong labels, per-label noise rates."""
        n, rates = len(self.y), self.noise_rates()
        judged = rates.dropna()
        if self.rule.multilabel:  # per label, the share of posters whose decision for it is wrong: summed
            # (not combined into a share of posters, which would need the labels to err independently)
            estimate = (
                f"estimated wrong labels {float(judged.sum()) * 100:.1f} per 100 posters "
                f"({float(judged.mean()):.1%} of the yes/no decisions of {len(judged)} labels)"
            )
        else:  # one label per poster: the posters whose label is wrong
            estimate = f"estimated noisy share {float(judged.sum()):.1%}"
        line = f"{n} posters, {int(self.flagged.sum())} flagged"
        if len(judged):
            line += f"; {estimate}; noise rate per label: " + ", ".join(
                f"{name} {rate:.1%}" for name, rate in judged.items()
            )
        few = ~judged_labels(self.y, self.rule.multilabel)
        rare = [name for name, is_rare in zip(self.labels, few, strict=True) if is_rare]
        guessed = [
            name
            for name, auc, is_rare in zip(self.labels, self.separable, few, strict=True)
            if auc <= MIN_AUC and not is_rare
        ]
        if len(rare):
            counts = self.y.sum(0)
            named = ", ".join(f"{name} ({int(counts[self.labels.index(name)])})" for name in rare)
            line += f"; not judged (under {MIN_PER_LABEL} posters with or without it): {named}"
        if guessed:
            aucs = ", ".join(f"{name} {self.separable[self.labels.index(name)]:.2f}" for name in guessed)
            line += (
                f"; not judged (the probe tells them apart no better than a guess, out-of-fold ROC AUC "
                f"{aucs}): another backbone or more posters may"
            )
        return line

    def changes(self) -> dict[str, dict]:
        """id → the suggested change of every flagged poster, as the corrections file stores it."""
        names = np.array(self.labels)
        out: dict[str, dict] = {}
        rows = np.nonzero(self.flagged)[0]
        ids = self.frame["id"].astype(str).to_numpy()
        y, suggested = self.y > 0.5, self.found.suggested > 0.5
        for row in rows:
            if self.rule.target in ("genres", "single"):
                out[ids[row]] = {
                    "add": names[suggested[row] & ~y[row]].tolist(),
                    "remove": names[y[row] & ~suggested[row]].tolist(),
                }
            else:
                out[ids[row]] = {"label": str(names[suggested[row]][0])}
            out[ids[row]]["quality"] = round(float(self.found.quality[row]), 4)
        return out


def audit_features(
    prepared: Prepared,
    views: dict[str, np.ndarray],
    backbone: str = "",
    folds: int = 5,
    seed: int = 0,
    control: Control | None = None,
    tags: bool = True,
) -> Audit:
    """Audit ``prepared``'s labels with given embeddings (view name → (n, d), rows as the labelled frame);
    ``tags``: the probe also sees each poster's other tags (``context_tags``)."""
    control = control or Control()
    labelled = prepared.labelled
    y = one_hot(labelled.y, labelled.rule)
    if (y.sum(0) == 0).any():
        empty = [label for label, count in zip(labelled.rule.labels, y.sum(0), strict=True) if count == 0]
        raise DataError(f"no poster carries {', '.join(empty)}; leave it out of the selection (--genres)")
    probabilities = out_of_fold(
        list(views.values()),
        y,
        labelled.rule.multilabel,
        folds=folds,
        seed=seed,
        context=context_tags(labelled.frame, labelled.rule, y) if tags else None,
        on_fold=lambda done, total: control.emit(Progress("auditing", done, total, f"fold {done}/{total}")),
    )
    separable = separation(y, probabilities)
    judged = judged_labels(y, labelled.rule.multilabel) & ~(separable <= MIN_AUC)
    found = find_issues(probabilities, y, labelled.rule.multilabel, judged)
    return Audit(labelled.frame, labelled.rule, y, probabilities, found, backbone, tuple(views), separable)


def separation(y: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """(k,) each label's out-of-fold ROC AUC, its posters against the others (NaN where one side is
    empty): how well the probe tells the label apart, 0.5 being a guess."""
    from sklearn.metrics import roc_auc_score

    out = np.full(y.shape[1], np.nan)
    for k in range(y.shape[1]):
        if 0 < y[:, k].sum() < len(y):
            out[k] = roc_auc_score(y[:, k] > 0.5, probabilities[:, k])
    return out


def context_tags(frame: pd.DataFrame, rule: LabelRule, y: np.ndarray) -> np.ndarray | None:
    """(n, c) 0/1: each poster's genres outside the rule's labels (after its merges), then, for a
    multi-label target, the given labels ``y`` (``out_of_fold`` hides each from its own output). None when
    there are no such tags."""
    from posterlab.data.labels import merged_genres

    columns: list[np.ndarray] = []
    if "genres" in frame:
        genres = [merged_genres(tuple(g), rule.merge) for g in frame["genres"]]
        outside = sorted({g for row in genres for g in row} - set(rule.labels))
        index = {g: i for i, g in enumerate(outside)}
        tags = np.zeros((len(frame), len(outside)), dtype=np.float32)
        for row, carried in enumerate(genres):
            tags[row, [index[g] for g in carried if g in index]] = 1.0
        columns.append(tags)
    if rule.multilabel:
        columns.append(y.astype(np.float32))  # always last: out_of_fold masks these by position
    if not columns or sum(c.shape[1] for c in columns) == 0:
        return None
    return np.concatenate(columns, 1)


def embeddings(
    prepared: Prepared,
    backbone: str,
    fits: tuple[str, ...] = ("crop",),
    control: Control | None = None,
    flips: bool = False,
) -> dict[str, np.ndarray]:
    """Pretrained ``backbone`` embeddings of every labelled poster, view name → (n, d): the ``fits`` asked
    for (and their mirror images when ``flips``; computed and cached when missing), plus every other fit
    or flip the cache already holds."""
    import torch

    from posterlab.config import FITS
    from posterlab.training.features import (
        FeatureStore,
        Runtime,
        compute_features,
        feature_key,
        pretrained_extraction,
        remembered_backbone,
        views_for,
    )

    control = control or Control()
    frame = prepared.labelled.frame
    digests = frame["digest"].tolist()
    job, start = pretrained_extraction(backbone, "embeddings")
    preprocess = remembered_backbone(backbone, start).preprocess(fits[0], job.module)
    every = views_for(preprocess, tuple(dict.fromkeys((*fits, *FITS))), flips=True)
    store = FeatureStore()
    wanted = [view for view in every if view.preprocess.fit in fits and (flips or not view.flip)]
    cached = [
        view
        for view in every
        if view not in wanted and store.table(feature_key(backbone, start, "", view), digests)[0] is not None
    ]
    job.views = wanted + cached
    job.keys = [feature_key(backbone, start, "", view) for view in job.views]
    control.emit(Message(f"embeddings: {', '.join(v.name for v in job.views)} ({backbone})"))
    tables = compute_features(
        job, frame["image"].tolist(), digests, Runtime(torch.device("cpu"), control=control), store
    )
    rows = np.arange(len(frame))
    return {name: table.take(rows) for name, table in tables.items()}


def audit_dataset(
    data: DataConfig,
    backbone: str | None = None,
    folds: int = 5,
    control: Control | None = None,
) -> Audit:
    """Audit the labels of ``data`` as its label settings build them (its corrections not applied: the
    audit judges the labels as given) with a ``folds``-fold probe on ``backbone``'s cached embeddings."""
    from dataclasses import replace

    from posterlab.data.prepare import prepare_data
    from posterlab.models.registry import DEFAULT_BACKBONE, get_backbone

    if folds < 2:
        raise DataError(f"a label audit needs at least 2 folds (got {folds})")
    backbone = backbone or DEFAULT_BACKBONE
    get_backbone(backbone)  # an unknown name fails here, listing the known ones
    control = control or Control()
    prepared = prepare_data(replace(data, corrections="none"), control.on_event, split=False)
    views = embeddings(prepared, backbone, data.fits, control)
    return audit_features(prepared, views, backbone, folds, data.seed, control)


def record(audit: Audit, path: str) -> None:
    """Save the audit's flagged posters and suggestions in the dataset's corrections file (the user's
    decisions are kept)."""
    from posterlab.data.corrections import Corrections, save_scores, target_key

    corrections = Corrections.load(path)
    corrections.set_flagged(target_key(audit.rule_target), audit.changes())
    corrections.summaries[target_key(audit.rule_target)] = audit.summary()
    save_scores(path, target_key(audit.rule_target), audit.table())
    corrections.save()


def audit_to_csv(
    data: DataConfig, backbone: str, folds: int, out, on_event=None, accept_all: bool = False
) -> str:
    """``posterlab audit``: audit, write the table to ``out`` (atomically), record the flagged posters in
    the corrections file (every suggestion accepted when ``accept_all``); the one-line summary."""
    import os
    import uuid
    from pathlib import Path

    from posterlab.data.corrections import ACCEPT, Corrections

    audit = audit_dataset(data, backbone, folds, Control(on_event) if on_event else None)
    if on_event is not None and hasattr(on_event, "close"):
        on_event.close()
    out = Path(out)
    temporary = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    audit.table().to_csv(temporary, index=False)
    os.replace(temporary, out)
    record(audit, data.path)
    if accept_all:
        corrections = Corrections.load(data.path)
        for poster in audit.changes():
            corrections.decide(audit.rule_target, poster, ACCEPT)
        corrections.save()
    return audit.summary()
