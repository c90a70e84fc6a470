"""The workbench's small helpers that need no page: titles made readable, the map's colours."""

from __future__ import annotations

import pandas as pd

from workbench.titles import readable_title
from workbench.widgets import NOT_SCORED, OUTCOME_COLOURS, _categories


def test_titles_are_repaired_where_they_can_be_and_shown_as_is_elsewhere() -> None:
    """Both broken encodings of the development labels; letters the data lost stay as they are."""
    assert readable_title("CafÃ©") == "Café"  # UTF-8 read as Windows-1252: ftfy
    assert readable_title("DespuÌ©s de LucÌ_a") == "Después de LucÌ_a"  # Mac Roman round trip; "Ì_" lost
    assert readable_title("Der groÌÙe KÌ¦nig") == "Der große König"
    assert readable_title("Ì÷rnens Ìüje") == "Ørnens øje"
    assert readable_title("TrÌ_dgÌ´rdsmÌ_staren") == "TrÌ_dgårdsmÌ_staren"
    for fine in ("Amélie", "Trädgårdsmästaren", "Ringu", "El Niño", ""):
        assert readable_title(fine) == fine


def test_the_map_never_colours_unscored_posters_like_a_prediction() -> None:
    """Outcomes get their own colours (partly apart from wrong), "not scored" is always grey, and past a
    dozen combinations the rarest share one colour instead of repeating the palette."""
    outcome = pd.DataFrame({"colour": ["right", "partly", "wrong", "not scored", "right"]})
    points, domain, colours = _categories(outcome)
    assert dict(zip(domain, colours, strict=True)) == {**OUTCOME_COLOURS, "not scored": NOT_SCORED}

    combos = [f"Drama | Genre{i}" for i in range(20) for _ in range(20 - i)] + ["not scored"] * 100
    points, domain, colours = _categories(pd.DataFrame({"colour": combos}))
    named = dict(zip(domain, colours, strict=True))
    assert named["not scored"] == NOT_SCORED
    assert len(domain) == 13 and "(other combinations)" in named  # 11 most common + the rest + unscored
    scored = [c for d, c in named.items() if d != "not scored"]
    assert NOT_SCORED not in scored and len(set(scored)) == len(scored)
    assert set(points["colour"]) == set(domain)


def test_the_live_panel_waits_for_a_run_only_in_its_last_second() -> None:
    """The poll waits for the run's end only when the planned last epoch is under way and its rest, at
    the mean epoch's pace, is shorter than the wait, or when every epoch is done (the test figures)."""
    from posterlab.training.manager import Snapshot
    from workbench.widgets import ends_within

    def snapshot(finished: int, done: int = 0, stage: str = "training", **fields) -> Snapshot:
        history = [{"epoch": e + 1, "seconds": 2.0} for e in range(finished)]
        return Snapshot(
            status="running",
            stage=stage,
            epochs=6,
            history=history,
            done=done,
            total=10,
            detail=f"epoch {finished + 1}",
            **fields,
        )

    assert not ends_within(snapshot(4, done=9), 1.0)  # epoch 5 of 6: a whole epoch is left
    assert not ends_within(snapshot(5, done=2), 1.0)  # the last epoch, 1.6 s of it left
    assert ends_within(snapshot(5, done=6), 1.0)  # the last epoch, 0.8 s left
    assert ends_within(snapshot(6, stage="evaluating"), 1.0)  # every epoch done: the test figures
    assert not ends_within(snapshot(0, stage="extracting"), 1.0)
    assert not ends_within(Snapshot(status="completed", epochs=6), 1.0)
    assert not ends_within(Snapshot(status="running", stage="starting"), 1.0)  # epochs not known yet


def test_curves_after_one_epoch_show_the_point_on_sensible_axes():
    """One epoch: its point over epoch 1 and an axis from zero (plotly drew x 0-2 and y below zero)."""
    import plotly.graph_objects as go

    from workbench.widgets import integer_epochs

    one = integer_epochs(go.Figure(go.Scatter(x=[1], y=[0.31])), 1)
    assert list(one.layout.xaxis.range) == [0.5, 1.5] and one.layout.yaxis.rangemode == "tozero"
    three = integer_epochs(go.Figure(go.Scatter(x=[1, 2, 3], y=[0.31, 0.4, 0.45])), 3)
    assert list(three.layout.xaxis.range) == [0.5, 3.5] and three.layout.yaxis.rangemode is None
    assert three.layout.xaxis.dtick == 1


def test_every_chart_keeps_its_tool_buttons_off_its_title():
    """plotly's tool buttons along the top covered the start of a chart's title on hover (the Train page's
    loss chart): every figure posterlab draws puts them down the right side."""
    from posterlab.evaluation import figures

    history = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "val_map": 0.3}]
    drawn = [
        figures.loss_curves(history, "bce"),
        figures.curves({"run": history}, "val_map"),
        figures.bar(pd.Series({"Drama": 3, "Comedy": 2}), "Posters per label"),
        figures.scores_bar({"Drama": 0.7}),
    ]
    assert all(figure.layout.modebar.orientation == "v" for figure in drawn)
