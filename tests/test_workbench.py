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
