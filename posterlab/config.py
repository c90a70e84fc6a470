"""Typed, frozen configurations. The app's form, the command line and the tests build the same objects,
and every run folder stores them as ``config.json``."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from posterlab.errors import ConfigError

MODES = ("probe", "finetune", "full")
BALANCE = ("none", "weights", "undersample", "oversample")
FITS = ("crop", "pad", "squash")
LOSSES = ("auto", "bce", "asl", "ce")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "none")
HEADS = ("linear", "mlp")
DEVICES = ("auto", "cpu", "cuda")
SAVE_DTYPES = ("float32", "float16")
MONITORS = ("auto", "map", "micro_f1", "macro_f1", "roc_auc", "accuracy", "balanced_accuracy", "loss")

_THRESHOLD_TARGET = re.compile(
    r"^\s*(?P<column>[A-Za-z_][\w ]*?)\s*(?P<op>>=|<=|>|<)\s*(?P<value>-?\d+(\.\d+)?)\s*$"
)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)} (got {value!r})")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{name} must be at least {low} (got {value})")


def parse_threshold_target(target: str) -> tuple[str, str, float] | None:
    """``'imdb_score>=7'`` → ``('imdb_score', '>=', 7.0)``; None for ``genres``/``label``."""
    match = _THRESHOLD_TARGET.match(target)
    if not match:
        return None
    return match["column"].strip(), match["op"], float(match["value"])


@dataclass(frozen=True)
class LabelConfig:
    """What to predict and which labels to keep.

    ``target``: ``genres`` (multi-label), ``label`` (one class per poster: the ``label`` column, or the
    single selected genre of posters that carry exactly one), or a binary rule on a numeric column such
    as ``imdb_score>=7``.
    """

    target: str = "genres"
    genres: tuple[str, ...] = ()  # an explicit selection; empty means all (or the top_n)
    top_n: int | None = None
    min_count: int = 1  # labels rarer than this in the data are left out (or merged into Other)
    other: bool = False  # merge genres outside the selection into "Other" instead of ignoring them
    merge: tuple[tuple[str, str], ...] = ()  # synonym merges (from, into), e.g. ("Musical", "Music")

    def __post_init__(self) -> None:
        if self.target not in ("genres", "label") and parse_threshold_target(self.target) is None:
            raise ConfigError(
                f"target must be 'genres', 'label' or a rule such as 'imdb_score>=7' (got {self.target!r})"
            )
        if self.top_n is not None:
            _at_least("top_n", self.top_n, 1)
        if self.top_n is not None and self.genres:
            raise ConfigError("give either a genre list or top_n, not both")
        _at_least("min_count", self.min_count, 1)
        for pair in self.merge:
            if len(pair) != 2:
                raise ConfigError(f"each merge is a (from, into) pair (got {pair!r})")


@dataclass(frozen=True)
class DataConfig:
    """Which posters, how they are labelled, split, balanced and fitted to the model's input."""

    path: str = "sample"  # a folder, a CSV, a zip, or 'sample' / 'sample-rt' (the embedded posters)
    labels: LabelConfig = field(default_factory=LabelConfig)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    balance: str = "none"
    fit: str = "crop"  # crop: centre crop (timm's default); pad: whole poster padded to square; squash
    # more ways to fit each poster: a random one per epoch in training, all averaged at test time
    extra_fits: tuple[str, ...] = ()
    near_duplicate_bits: int = 4  # perceptual-hash distance under which posters count as the same; -1 off
    limit: int | None = None  # use at most this many posters (a random subset, by seed)

    def __post_init__(self) -> None:
        _choice("balance", self.balance, BALANCE)
        _choice("fit", self.fit, FITS)
        for extra in self.extra_fits:
            _choice("extra_fits", extra, FITS)
        if len(set(self.fits)) != len(self.fits):
            raise ConfigError(f"fits must differ (got {', '.join(self.fits)})")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ConfigError(f"{name} must be between 0 and 0.5 (got {value})")
        if self.limit is not None:
            _at_least("limit", self.limit, 10)

    @property
    def fits(self) -> tuple[str, ...]:
        """Every way posters are fitted to the model's input; the first is the one Grad-CAM draws on."""
        return (self.fit, *self.extra_fits)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (image modes only; cached features see no augmentation but flips)."""

    flip: bool = True
    rotate: float = 8.0  # degrees
    shift: float = 0.05  # fraction of the side
    shear: float = 4.0  # degrees
    zoom: float = 0.1  # +/- scale
    random_crop: bool = True

    def __post_init__(self) -> None:
        for name in ("rotate", "shift", "shear", "zoom"):
            _at_least(name, getattr(self, name), 0.0)


@dataclass(frozen=True)
class TrainConfig:
    """How to train: backbone, mode and hyper-parameters."""

    backbone: str = "tf_efficientnet_lite0"
    pretrained: bool = True
    mode: str = "probe"
    head: str = "linear"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1  # backbone lr = lr * this (finetune / full)
    weight_decay: float = 1e-4
    dropout: float = 0.2
    optimizer: str = "adamw"
    schedule: str = "cosine"
    step_every: int = 10  # epochs between lr drops (schedule=step)
    warmup_epochs: int = 0
    loss: str = "auto"  # auto: bce for multi-label, ce for single-label
    label_smoothing: float = 0.0
    unfreeze: int = 1  # finetune: number of feature levels, from the top, that train
    gradual_every: int = 0  # finetune: unfreeze one more level every N epochs (0: all at once)
    patience: int = 6  # early stopping on the validation metric; 0 disables
    monitor: str = "auto"  # validation metric; auto: map (multi-label) or balanced_accuracy
    flip_views: bool = False  # cache flipped posters too: flip augmentation for cached inputs
    cache_activations: bool = True  # finetune on CPU: cache the frozen part's output once
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA
    num_workers: int = -1  # data loader workers; -1 picks from the CPU count
    seed: int = 0
    save_dtype: str = "float32"
    search_trials: int = 0  # random search over lr / dropout / weight decay before the final fit
    search_folds: int = 0  # k-fold cross-validation per trial (0: the validation split)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("head", self.head, HEADS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("loss", self.loss, LOSSES)
        _choice("device", self.device, DEVICES)
        _choice("save_dtype", self.save_dtype, SAVE_DTYPES)
        _choice("monitor", self.monitor, MONITORS)
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("unfreeze", self.unfreeze, 1)
        _at_least("search_trials", self.search_trials, 0)
        if self.search_folds == 1 or self.search_folds < 0:
            raise ConfigError(f"search_folds must be 0 (off) or at least 2 (got {self.search_folds})")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be between 0 and 1 (got {self.lr})")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1) (got {self.dropout})")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run was asked to do; saved as the run folder's ``config.json``."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""  # run folder name; empty picks one from the backbone, mode and time


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build config dataclass ``cls`` from a dict (as read from JSON), checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{cls.__name__} must be a JSON object (got {type(values).__name__})")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    kwargs = {name: _convert(hints[name], values[name], f"{cls.__name__}.{name}") for name in values}
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list (got {value!r})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where} must be {hint.__name__} (got {value!r})")
    return value
