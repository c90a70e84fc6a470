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
        # accepted before, and then a run stopped at once (patience -1) or failed on a traceback (seed -1)
        (lambda: TrainConfig(patience=-1), "patience must be at least 0 (got -1)"),
        (lambda: TrainConfig(seed=-1), "seed must be from 0 to 4294967295 (got -1)"),
        (lambda: DataConfig(seed=2**32), "seed must be from 0 to 4294967295 (got 4294967296)"),
        (
            lambda: DataConfig(near_duplicate_bits=1000),
            "near_duplicate_bits must be from -1 (keep near-duplicates) to 64 (got 1000)",
        ),
        (
            lambda: TrainConfig(backbone_lr_scale=-1),
            "backbone_lr_scale must be above 0 (got -1); probe freezes it",
        ),
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
    with pytest.raises(ConfigError, match="fit must be one of crop, pad, squash"):
        DataConfig(extra_fits=("zoom",))


def _cli_config(*flags: str) -> RunConfig:
    from posterlab.cli import build_run_config, parse

    return build_run_config(parse(["train", *flags]))


def test_the_command_line_is_the_config():
    """No flag given: exactly the config's defaults; every field has a flag whose choices are the config's."""
    import argparse
    import dataclasses

    from posterlab.cli import COMPOSITE, flag_of, parser
    from posterlab.config import leaves

    assert _cli_config() == RunConfig()
    train = parser()._subparsers._group_actions[0].choices["train"]
    flags = {option: action for action in train._actions for option in action.option_strings}
    for path, item in leaves(RunConfig):
        if path == "name":
            assert "--name" in flags and "--out" in flags
            continue
        flag = flag_of(path, item)
        assert flag in flags, f"{path} has no flag"
        choices = item.metadata.get("choices")
        if choices and flag not in COMPOSITE:
            assert list(flags[flag].choices) == list(choices), path
        if flag not in COMPOSITE and not isinstance(flags[flag], argparse.BooleanOptionalAction):
            default = item.default if item.default is not dataclasses.MISSING else None
            assert flags[flag].default == default, path
        assert item.metadata.get("help"), f"{path} has no help"


def test_a_config_file_sets_the_defaults_and_flags_override_them(tmp_path):
    base = RunConfig(
        DataConfig(
            path="sample", labels=LabelConfig(genres=("Drama", "Comedy")), fit="pad", extra_fits=("crop",)
        ),
        TrainConfig(mode="finetune", epochs=5, lr=0.01, unfreeze=2, augment=AugmentConfig(rotate=3.0)),
        name="from-file",
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"run": to_dict(base), "environment": {}}))  # a run's config.json
    assert _cli_config("--config", str(path)) == base
    changed = _cli_config(
        "--config", str(path), "--lr", "0.002", "--genres", "3", "--out", str(tmp_path / "x")
    )
    assert changed.train.lr == 0.002 and changed.data.labels.top_n == 3 and changed.data.labels.genres == ()
    assert changed.name == "x"  # --out is honoured with --config too
    assert changed.train.epochs == 5 and changed.train.unfreeze == 2 and changed.data.fits == ("pad", "crop")
    assert changed.train.augment.rotate == 3.0


def test_epochs_default_by_mode():
    assert TrainConfig().epochs == 30 and TrainConfig(mode="finetune").epochs == 8
    assert _cli_config("--mode", "full").train.epochs == 8
    assert _cli_config("--no-augment").train.augment == AugmentConfig.none()
