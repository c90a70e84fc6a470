"""Typed configs: validated on construction, round-trip through JSON, unknown fields refused."""

from __future__ import annotations

import json

import pytest

from posterlab.config import (
    AugmentConfig,
    DataConfig,
    LabelConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    to_dict,
)
from posterlab.errors import ConfigError


def test_round_trip_through_json():
    config = RunConfig(
        DataConfig(
            path="sample",
            labels=LabelConfig(genres=("Drama", "Comedy"), merge=(("Musical", "Music"),)),
            balance="weights",
            fit="pad",
        ),
        TrainConfig(mode="finetune", unfreeze=2, augment=AugmentConfig(rotate=3.0)),
        name="x",
    )
    again = from_dict(RunConfig, json.loads(json.dumps(to_dict(config))))
    assert again == config


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrainConfig(mode="linear"), "mode must be one of probe, finetune, full (got 'linear')"),
        (lambda: TrainConfig(epochs=0), "epochs must be at least 1 (got 0)"),
        (lambda: TrainConfig(lr=3), "lr must be between 0 and 1 (got 3)"),
        (lambda: TrainConfig(search_folds=1), "search_folds must be 0 (off) or at least 2 (got 1)"),
        (lambda: DataConfig(val_fraction=0.7), "val_fraction must be between 0 and 0.5 (got 0.7)"),
        (lambda: DataConfig(fit="stretch"), "fit must be one of crop, pad, squash (got 'stretch')"),
        (lambda: LabelConfig(top_n=0), "top_n must be at least 1 (got 0)"),
    ],
)
def test_invalid_values_are_one_line_errors(build, message):
    with pytest.raises(ConfigError) as info:
        build()
    assert str(info.value) == message


def test_unknown_and_mistyped_fields():
    with pytest.raises(ConfigError, match="unknown TrainConfig field"):
        from_dict(TrainConfig, {"epochz": 3})
    with pytest.raises(ConfigError, match=r"TrainConfig.epochs must be int \(got '3'\)"):
        from_dict(TrainConfig, {"epochs": "3"})


def test_fits():
    assert DataConfig(fit="pad", extra_fits=("crop",)).fits == ("pad", "crop")
    with pytest.raises(ConfigError, match="fits must differ"):
        DataConfig(fit="crop", extra_fits=("crop",))
    with pytest.raises(ConfigError, match="extra_fits must be one of crop, pad, squash"):
        DataConfig(extra_fits=("zoom",))
