"""The Dataset page's "Label health" view and the Train page's corrections choice.

The audit itself is ``posterlab.evaluation.label_health``; what it flagged and what the user decided live
in the dataset's corrections file (``posterlab.data.corrections``), so the gallery, the decisions and the
download all come from that file and survive a refresh or a restart.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from posterlab.config import CORRECTIONS, DataConfig, LabelConfig, describe
from posterlab.data.corrections import (
    ACCEPT,
    KEEP,
    Corrections,
    corrected_labels_csv,
    corrections_path,
    rule_key,
)
from posterlab.data.labels import LabelRule
from posterlab.errors import PosterlabError
from posterlab.evaluation.label_health import MISSING_LIKELY, TAGGED_UNLIKELY, WRONG_LABEL
from posterlab.models.registry import BACKBONES, DEFAULT_BACKBONE
from workbench.widgets import show_error

PER_PAGE = 12
_CORRECTION_TITLES = {
    "none": "As labelled",
    "apply": "With corrections (accepted suggestions)",
    "drop": "Without flagged posters (unreviewed ones left out)",
}


def corrections_control(path: str, default: str) -> str:
    """The Train page's choice: labels as given, with the accepted corrections, or without flagged posters."""
    corrections = Corrections.load(path)
    accepted = sum(len(corrections.accepted(key)) for key in corrections.flagged)
    flagged = sum(len(value) for value in corrections.flagged.values())
    choice = st.selectbox(
        "Label corrections",
        CORRECTIONS,
        index=CORRECTIONS.index(default),
        format_func=_CORRECTION_TITLES.get,
        key="train_corrections",
        help=describe(DataConfig, "corrections"),
    )
    if flagged:
        st.caption(
            f"Label health: {flagged} poster{'s' * (flagged != 1)} flagged, "
            f"{accepted} suggestion{'s' * (accepted != 1)} accepted."
        )
    elif choice != "none":
        st.caption("No label audit yet: open the Dataset page's Label health tab (or run posterlab audit).")
    return choice


def _kind(change: dict) -> str:
    if "label" in change:
        return WRONG_LABEL
    kinds = [kind for kind, key in ((TAGGED_UNLIKELY, "remove"), (MISSING_LIKELY, "add")) if change.get(key)]
    return ", ".join(kinds)


def flagged_table(frame: pd.DataFrame, corrections: Corrections, rule: LabelRule) -> pd.DataFrame:
    """The flagged posters of ``rule``'s target with their given and suggested labels, kind, score and
    decision, most suspicious first."""
    key = rule_key(rule)
    flagged = corrections.flagged.get(key, {})
    rows = []
    by_id = frame.assign(id=frame["id"].astype(str)).set_index("id")
    for poster, change in flagged.items():
        if poster not in by_id.index:
            continue
        row = by_id.loc[poster]
        if "label" in change:
            given = [str(row.get("label") or "")] if rule.target != "threshold" else []
            suggested = [change["label"]]
        else:
            given = [g for g in row["genres"] if g in rule.labels] if rule.target == "genres" else []
            given = given or [g for g in row["genres"] if g in rule.labels]
            suggested = [g for g in given if g not in change.get("remove", ())] + list(change.get("add", ()))
        rows.append(
            {
                "id": poster,
                "title": str(row.get("title", "") or poster),
                "image": row["image"],
                "quality": float(change.get("quality", 0.0)),
                "given": " | ".join(given) or "—",
                "suggested": " | ".join(suggested) or "—",
                "kind": _kind(change),
                "genres": sorted(set(change.get("add", ())) | set(change.get("remove", ())))
                or [change.get("label", "")],
                "decision": corrections.decision(key, poster) or "",
            }
        )
    columns = ["id", "title", "image", "quality", "given", "suggested", "kind", "genres", "decision"]
    return pd.DataFrame(rows, columns=columns).sort_values(["quality", "id"]).reset_index(drop=True)


def _decide(path: str, key: str, poster: str, decision: str | None) -> None:
    corrections = Corrections.load(path)  # read again: another session may have decided meanwhile
    corrections.decide(key, poster, decision)
    corrections.save()


def label_health_view(path: str, labels: LabelConfig, frame: pd.DataFrame, rule: LabelRule) -> None:
    """Run an audit; browse the flagged posters; accept or keep each; download the corrected labels."""
    st.caption(
        "Every poster is scored by a probe that never saw its labels (5-fold, on cached embeddings), "
        "together with how often posters with the same other genres carry each label; confident "
        "learning flags the labels that are probably wrong. Decisions are saved beside "
        "posterlab's cache, never in your labels.csv; the Train page can train with them."
    )
    if not _audit_controls(path, labels):
        return
    corrections = Corrections.load(path)
    key = rule_key(rule)
    table = flagged_table(frame, corrections, rule)
    if key not in corrections.flagged:
        st.info("No audit of these labels yet: press Find suspicious labels.")
        return
    if key in corrections.summaries:
        st.caption(f"Last audit: {corrections.summaries[key]}")
    if table.empty:
        st.success("The audit flagged no poster.", icon=":material/check:")
        return
    shown = _filtered(table)
    decided = table["decision"].value_counts()
    st.caption(
        f"{len(table)} flagged · {decided.get(ACCEPT, 0)} accepted · {decided.get(KEEP, 0)} kept · "
        f"showing {min(len(shown), PER_PAGE)} of {len(shown)}, lowest label quality first"
    )
    columns = st.columns(4)
    for number, poster in enumerate(shown.head(PER_PAGE).itertuples()):
        with columns[number % 4].container(border=True, key=f"health_card_{poster.id}"):
            _card(poster, path, key)
    st.download_button(
        "Download corrected labels.csv",
        data=corrected_labels_csv(path, key),
        file_name="labels.csv",
        mime="text/csv",
        key="health_download",
        icon=":material/download:",
    )
    st.caption(f"Corrections file: `{corrections_path(path)}`")


def _audit_controls(path: str, labels: LabelConfig) -> bool:
    """The backbone and "Find suspicious labels" (which audits and records the result); False when the
    audit failed (its error is shown)."""
    left, right = st.columns([3, 1])
    backbone = left.selectbox(
        "Backbone (its embeddings)",
        list(BACKBONES),
        index=list(BACKBONES).index(DEFAULT_BACKBONE),
        format_func=lambda name: BACKBONES[name].title,
        key="dataset_health_backbone",
        persist_state="session",
        bind="query-params",
    )
    if right.button("Find suspicious labels", key="health_run", icon=":material/search:", type="primary"):
        from posterlab.evaluation.label_health import audit_dataset, record

        with st.spinner("Auditing the labels (embeddings are computed once, then cached)…"):
            try:
                audit = audit_dataset(DataConfig(path=path, labels=labels), backbone)
                record(audit, path)
            except PosterlabError as error:
                show_error(error, path)
                return False
    return True


def _filtered(table: pd.DataFrame) -> pd.DataFrame:
    """The flagged posters the genre, kind and decision filters leave."""
    c1, c2, c3 = st.columns(3)
    every = sorted({g for genres in table["genres"] for g in genres if g})
    kinds = sorted({k for ks in table["kind"] for k in ks.split(", ") if k})
    # kept in the page's URL, as every setting is (workbench.keep): a refresh shows the same posters
    kept = {"persist_state": "session", "bind": "query-params"}
    genre = c1.selectbox("Genre", ["all", *every], key="dataset_health_genre", **kept)
    kind = c2.selectbox("Kind", ["all", *kinds], key="dataset_health_kind", **kept)
    status = c3.selectbox("Decision", ["undecided", "all", ACCEPT, KEEP], key="dataset_health_status", **kept)
    shown = table
    if genre != "all":
        shown = shown[shown["genres"].map(lambda genres: genre in genres)]
    if kind != "all":
        shown = shown[shown["kind"].str.contains(kind, regex=False)]
    if status == "undecided":
        shown = shown[shown["decision"] == ""]
    elif status != "all":
        shown = shown[shown["decision"] == status]
    return shown


def _card(poster, path: str, key: str) -> None:
    """One flagged poster: the image, given vs suggested, the score, Accept and Keep."""
    st.image(poster.image, width="stretch")
    st.markdown(f"**{poster.title}**  \n`{poster.id}` · quality {poster.quality:.2f}")
    st.markdown(f"given: {poster.given}  \nsuggested: **{poster.suggested}**  \n_{poster.kind}_")
    if poster.decision:
        st.caption(f"decision: {poster.decision}")
    a, b = st.columns(2)
    for column, label, decision in ((a, "Accept", ACCEPT), (b, "Keep", KEEP)):
        column.button(
            label,
            key=f"health_{decision}_{poster.id}",
            on_click=_decide,
            args=(path, key, poster.id, decision),
            disabled=poster.decision == decision,
        )


def quality_column(points: pd.DataFrame, path: str) -> pd.DataFrame:
    """``points`` with a ``label quality`` column from the dataset's last audit (genres first, then any
    other target); unchanged when the dataset was never audited."""
    from posterlab.data.corrections import load_scores

    corrections = Corrections.load(path)
    for key in sorted(corrections.flagged, key=lambda name: name != "genres"):
        scores = load_scores(path, key)
        if scores is not None:
            return points.assign(**{"label quality": points["id"].astype(str).map(scores)})
    return points
