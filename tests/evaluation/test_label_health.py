"""Label health: confident learning on out-of-fold probabilities, the audit on the embedded sample,
corrections applied when labels are built, and ``posterlab audit``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from posterlab.cli import main
from posterlab.config import DataConfig, LabelConfig, RunConfig, from_dict, to_dict
from posterlab.data.corrections import ACCEPT, KEEP, Corrections, corrections_path
from posterlab.data.labels import one_hot
from posterlab.data.prepare import prepare_data
from posterlab.evaluation.label_health import (
    MISSING_LIKELY,
    TAGGED_UNLIKELY,
    audit_dataset,
    audit_features,
    find_issues,
    judged_labels,
    out_of_fold,
)
from tests.conftest import needs_weights


def test_multilabel_issues_follow_the_class_thresholds():
    rng = np.random.default_rng(0)
    n = 200
    y = (rng.random((n, 2)) < 0.4).astype(np.float32)
    y[:, 0] = np.r_[np.ones(100), np.zeros(100)]
    p = np.where(y > 0.5, 0.8, 0.2) + rng.normal(0, 0.02, (n, 2))
    p[0, 0] = 0.05  # tagged, confidently absent
    p[150, 0] = 0.95  # not tagged, confidently present
    found = find_issues(p, y, multilabel=True)
    assert found.thresholds[0, 1] == pytest.approx(p[y[:, 0] > 0.5, 0].mean())
    assert found.thresholds[0, 0] == pytest.approx((1 - p[y[:, 0] < 0.5, 0]).mean())
    assert found.issues[0, 0] and found.suggested[0, 0] == 0
    assert found.issues[150, 0] and found.suggested[150, 0] == 1
    assert found.quality[0] == pytest.approx(0.05) and found.quality[150] == pytest.approx(0.05)
    assert ((found.quality >= 0) & (found.quality <= 1)).all()
    assert np.argsort(found.quality)[:2].tolist() in ([0, 150], [150, 0])
    assert 0 < found.noise_rate[0] < 0.05  # two wrong labels of 200, calibrated


def test_no_suggestion_takes_away_every_label_of_a_poster():
    y = np.zeros((100, 2), np.float32)
    y[:50, 0] = 1
    y[50:, 1] = 1
    y[0] = [1, 1]
    p = np.where(y > 0.5, 0.8, 0.2)
    p[50] = [0.2, 0.02]  # its only label confidently absent, and no other confidently present
    p[0] = [0.03, 0.05]  # both its labels confidently absent: the second is the less unlikely
    found = find_issues(p, y, multilabel=True)
    assert found.suggested[50].tolist() == [0, 1] and not found.issues[50].any()
    assert found.suggested[0].tolist() == [0, 1] and found.issues[0].tolist() == [True, False]
    assert found.quality[50] == pytest.approx(0.02) and found.quality[0] == pytest.approx(0.03)  # scores kept
    assert (found.suggested.sum(1) >= 1).all()


def test_single_label_issue_suggests_the_confident_class():
    n, k = 90, 3
    given = np.arange(n) % k
    y = np.eye(k, dtype=np.float32)[given]
    p = np.full((n, k), 0.1)
    p[np.arange(n), given] = 0.8
    p[5] = [0.05, 0.05, 0.9]  # labelled class 2 already: clean
    p[7] = [0.9, 0.05, 0.05]  # labelled class 1, confidently class 0
    found = find_issues(p, y, multilabel=False)
    assert found.issues.any(1).nonzero()[0].tolist() == [7]
    assert found.suggested[7].tolist() == [1, 0, 0]
    assert found.quality[7] == pytest.approx(0.05)


def test_a_label_on_too_few_posters_is_not_judged():
    # a genre on 2 of 200 posters: its threshold, the mean of 2 probabilities, is below most posters'
    rng = np.random.default_rng(0)
    n = 200
    y = np.zeros((n, 2), np.float32)
    y[:100, 0] = 1
    y[:2, 1] = 1
    p = np.c_[np.where(y[:, 0] > 0.5, 0.8, 0.2), rng.uniform(0.0, 0.1, n)]
    p[:2, 1] = 0.01
    every = find_issues(p, y, multilabel=True)
    assert every.issues[:, 1].sum() > 100  # the degenerate threshold: "missing but likely" everywhere
    judged = judged_labels(y, multilabel=True)
    assert judged.tolist() == [True, False]
    found = find_issues(p, y, multilabel=True, judged=judged)
    assert not found.issues[:, 1].any() and (found.suggested[:, 1] == y[:, 1]).all()
    assert (found.label_quality[:, 1] == 1).all() and np.isnan(found.noise_rate[1])
    assert (found.issues[:, 0] == every.issues[:, 0]).all()  # the other label is judged as before

    # one label per poster: a class given to 3 posters is never suggested, and its posters are not judged
    given = np.r_[np.zeros(60, int), np.ones(60, int), np.full(3, 2)]
    y = np.eye(3, dtype=np.float32)[given]
    p = np.full((len(given), 3), 0.05)
    p[np.arange(len(given)), given] = 0.3
    p[:120, 2] = 0.35  # above the rare class's threshold (its own posters' 0.2) and their own class
    p[-3:, 2] = 0.2
    assert find_issues(p, y, multilabel=False).issues.sum() == 120
    found = find_issues(p, y, multilabel=False, judged=judged_labels(y, multilabel=False))
    assert not found.issues.any() and (found.suggested == y).all()
    assert (found.quality[-3:] == 1).all() and np.isnan(found.noise_rate[2])


def test_out_of_fold_probabilities_never_see_their_poster():
    # a poster's own (random) label is unlearnable from the others: out-of-fold scores stay near the prior
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    y = (rng.random((100, 1)) < 0.5).astype(np.float32)
    p = out_of_fold([x], y, multilabel=True, folds=5, l2=1e-4)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[:, 0], p[:, 0]) < 0.7
    # a learnable label is learnt
    y2 = (x[:, :1] > 0).astype(np.float32)
    assert roc_auc_score(y2[:, 0], out_of_fold([x], y2, multilabel=True, l2=1e-3)[:, 0]) > 0.95


@pytest.mark.parametrize("multilabel", [True, False])
def test_other_tags_count_by_their_exact_combination(multilabel):
    # the label is the XOR of two other tags: no linear model of the tags can learn it, counting the
    # training posters with the same tags does; the image features are noise
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n = 400
    tags = (rng.random((n, 2)) < 0.5).astype(np.float32)
    first = np.logical_xor(tags[:, 0], tags[:, 1]).astype(np.float32)
    planted = rng.choice(n, 10, replace=False)
    first[planted] = 1 - first[planted]
    if multilabel:
        y = np.stack([first, (rng.random(n) < 0.5).astype(np.float32)], 1)
        context = np.concatenate([tags, y], 1)  # the given labels last, as context_tags builds it
    else:
        y = np.stack([first, 1 - first], 1)
        context = tags
    x = rng.normal(size=(n, 8)).astype(np.float32)
    p = out_of_fold([x], y, multilabel=multilabel, context=context)
    found = find_issues(p, y, multilabel=multilabel)
    assert roc_auc_score(np.isin(np.arange(n), planted), -found.quality) > 0.95
    assert set(np.argsort(found.quality)[:10]) == set(planted)
    # with the image alone, nothing tells them apart
    alone = find_issues(out_of_fold([x], y, multilabel=multilabel), y, multilabel=multilabel)
    assert roc_auc_score(np.isin(np.arange(n), planted), -alone.quality) < 0.8


@pytest.fixture
def clean_corrections():
    """Corrections of the embedded sample start and end empty (the cache folder is the session's)."""
    corrections_path("sample").unlink(missing_ok=True)
    yield
    corrections_path("sample").unlink(missing_ok=True)


@needs_weights
def test_audit_of_the_sample_ranks_injected_errors_first(clean_corrections):
    data = DataConfig(path="sample", labels=LabelConfig(top_n=4))
    audit = audit_dataset(data, folds=3)
    table = audit.table()
    assert len(table) == len(audit.y) == len(set(table["id"]))
    assert {"id", "quality", "given", "suggested", "kind", TAGGED_UNLIKELY, MISSING_LIKELY} <= set(table)
    assert table["quality"].is_monotonic_increasing and table["quality"].between(0, 1).all()
    flagged = table[table["flagged"]]
    assert set(flagged["kind"]) <= {TAGGED_UNLIKELY, MISSING_LIKELY, f"{TAGGED_UNLIKELY}, {MISSING_LIKELY}"}
    assert (flagged["given"] != flagged["suggested"]).all()
    rates = audit.noise_rates().dropna()
    wrong = rates.sum() * 100  # wrong (poster, label) decisions per 100 posters
    assert audit.summary().startswith(
        f"{len(table)} posters, {len(flagged)} flagged; estimated wrong labels {wrong:.1f} per 100 posters "
        f"({rates.mean():.1%} of the yes/no decisions of {len(rates)} labels);"
    )

    # errors planted in the labels: remove every poster's strongest label where it carries two or more
    prepared = prepare_data(data, split=False)
    from posterlab.evaluation.label_health import embeddings

    views = embeddings(prepared, "tf_efficientnet_lite0")
    y = prepared.labelled.y.copy()
    rng = np.random.default_rng(0)
    rows = rng.choice(np.nonzero(y.sum(1) == 1)[0], size=15, replace=False)
    absent = [rng.choice(np.nonzero(y[r] == 0)[0]) for r in rows]
    y[rows, absent] = 1.0  # a genre the poster does not carry
    prepared.labelled.y = y
    noisy = audit_features(prepared, views, folds=5)
    from sklearn.metrics import roc_auc_score

    corrupted = np.isin(np.arange(len(y)), rows)
    assert roc_auc_score(corrupted, -noisy.found.quality) > 0.7


def test_labels_the_probe_cannot_tell_apart_are_not_judged(clean_corrections):
    """Embeddings that carry nothing (noise): the out-of-fold probe guesses, and a guess that came out
    confident flagged half the posters (fresh / rotten at AUC 0.48: 119 of 238, some at p 0.99). A label
    whose out-of-fold ROC AUC is no better than MIN_AUC is not judged, and the summary says why."""
    from posterlab.evaluation.label_health import MIN_AUC

    prepared = prepare_data(DataConfig(path="sample-rt", labels=LabelConfig(target="label")), split=False)
    noise = np.random.default_rng(0).normal(size=(len(prepared.labelled.y), 64)).astype(np.float32)
    audit = audit_features(prepared, {"crop": noise}, folds=5, tags=False)
    assert (audit.separable <= MIN_AUC).all() and not audit.flagged.any()
    assert "not judged (the probe tells them apart no better than a guess, out-of-fold ROC AUC fresh" in (
        audit.summary()
    )


def test_a_new_audit_keeps_only_the_decisions_on_the_change_it_suggests_again(clean_corrections):
    """An 'accept' of '+Drama -Romance' kept through a later audit that suggested '-Romance' applied that
    new change, which nobody had reviewed (18 of 69 accepted posters after a --genres 6 re-audit)."""
    corrections = Corrections.load("sample")
    corrections.set_flagged(
        "genres",
        {
            "a": {"add": ["Drama"], "remove": ["Romance"]},
            "b": {"add": ["Drama"], "remove": ["Romance"]},
            "c": {"add": [], "remove": ["Comedy"]},
        },
    )
    for poster in ("a", "b", "c"):
        corrections.decide("genres", poster, ACCEPT)
    corrections.save()
    again = Corrections.load("sample")  # a later session, the file read back
    again.set_flagged(
        "genres", {"a": {"add": ["Drama"], "remove": ["Romance"]}, "b": {"add": [], "remove": ["Romance"]}}
    )
    assert again.accepted("genres") == {"a": {"add": ["Drama"], "remove": ["Romance"]}}
    assert again.decision("genres", "b") is None and again.decision("genres", "c") is None


def test_corrections_are_applied_when_labels_are_built(clean_corrections):
    data = DataConfig(path="sample", labels=LabelConfig(genres=("Drama", "Comedy")))
    plain = prepare_data(data, split=False).labelled
    first, second, third = plain.frame["id"].iloc[:3].tolist()
    corrections = Corrections.load("sample")
    corrections.set_flagged(
        "genres",
        {
            first: {"add": ["Comedy"], "remove": ["Drama"]},
            second: {"add": ["Drama", "Comedy"], "remove": []},
            third: {"add": ["Comedy"], "remove": []},
        },
    )
    corrections.decide("genres", first, ACCEPT)
    corrections.decide("genres", second, KEEP)
    corrections.save()
    assert json.loads(corrections_path("sample").read_text())["decisions"]["genres"] == {
        first: ACCEPT,
        second: KEEP,
    }

    applied = prepare_data(replace(data, corrections="apply"), split=False).labelled
    row = applied.frame.index[applied.frame["id"] == first][0]
    assert applied.y[row].tolist() == [0.0, 1.0]  # Drama removed, Comedy added
    assert len(applied.frame) == len(plain.frame)
    unchanged = [i for i in range(len(plain.frame)) if plain.frame["id"].iloc[i] != first]
    assert (applied.y[unchanged] == plain.y[unchanged]).all()

    dropped = prepare_data(replace(data, corrections="drop"), split=False).labelled
    assert third not in set(dropped.frame["id"])  # flagged, never reviewed: left out
    assert {first, second} <= set(dropped.frame["id"])  # reviewed posters stay
    assert len(dropped.frame) == len(plain.frame) - 1

    # the user's labels.csv is never written
    from posterlab import settings

    labels_csv = pd.read_csv(settings.SAMPLES["sample"] / "labels.csv")
    assert "Drama" in labels_csv.set_index("imdb_id").loc[first, "genres"]


def test_the_run_config_records_the_corrections_mode():
    config = RunConfig(data=DataConfig(corrections="drop"))
    assert to_dict(config)["data"]["corrections"] == "drop"
    assert from_dict(RunConfig, to_dict(config)).data.corrections == "drop"
    with pytest.raises(Exception, match="corrections must be one of none, apply, drop"):
        DataConfig(corrections="some")


@needs_weights
def test_cli_audit_writes_the_csv_and_one_line_summary(tmp_path, capsys, clean_corrections):
    out = tmp_path / "audit.csv"
    assert main(["audit", "--data", "sample", "--genres", "3", "--folds", "3", "-q", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "posters" in printed[0] and "noise rate per label: Drama" in printed[0]
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns[:4]) == ["id", "title", "quality", "given"] and "suggested" in table
    assert table["quality"].is_monotonic_increasing and table["id"].str.startswith("tt").all()
    assert all(set(g.split("|")) <= {"Drama", "Comedy", "Action", ""} for g in table["suggested"])
    recorded = Corrections.load("sample").flagged["genres"]
    assert set(recorded) == set(table.loc[table["flagged"].astype(str) == "True", "id"])

    # --accept-all, then a run "with corrections" trains on the corrected labels
    assert main(["audit", "--data", "sample", "--genres", "3", "--folds", "3", "-q", "--accept-all",
                 "--out", str(out)]) == 0  # fmt: skip
    assert set(Corrections.load("sample").accepted("genres")) == set(recorded)


def test_cli_audit_of_every_genre_leaves_the_rare_ones_unjudged(tmp_path, capsys, clean_corrections):
    out = tmp_path / "audit.csv"
    assert main(["audit", "--folds", "3", "-q", "--out", str(out)]) == 0  # the embedded sample, every genre
    summary = capsys.readouterr().out.strip()
    rare = prepare_data(DataConfig(path="sample"), split=False).labelled
    counts = dict(zip(rare.rule.labels, one_hot(rare.y, rare.rule).sum(0), strict=True))
    unjudged = sorted(label for label, count in counts.items() if count < 10)
    assert unjudged and "not judged (under 10 posters with or without it): " in summary
    assert all(f"{label} ({int(counts[label])})" in summary for label in unjudged)
    table = pd.read_csv(out, keep_default_na=False)
    for _, row in table.iterrows():  # never suggested, never taken away
        for label in unjudged:
            assert (label in row["given"].split("|")) == (label in row["suggested"].split("|"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "no/such/folder"], "no such file or folder"),
        (["--data", "sample", "--target", "nonsense"], "target must be 'genres', 'label' or a rule"),
        (["--data", "sample", "--backbone", "nope"], "unknown backbone 'nope'"),
        (["--data", "sample", "--folds", "1"], "at least 2 folds"),
    ],
)
def test_cli_audit_bad_input_is_one_line(tmp_path, capsys, argv, message):
    assert main(["audit", *argv, "--out", str(tmp_path / "a.csv")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("posterlab: error:") and message in error and "\n" not in error
