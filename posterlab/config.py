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
from posterlab.models.registry import BACKBONES, DEFAULT_BACKBONE

MODES = ("probe", "finetune", "full")
BALANCE = ("none", "weights", "undersample", "oversample")
FITS = ("crop", "pad", "squash")
LOSSES = ("auto", "bce", "asl", "ce")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "none")
HEADS = ("linear", "mlp")
DEVICES = ("auto", "cpu", "cuda")
# label corrections from a label audit (posterlab.data.corrections): none, the accepted ones, or leave out
# the flagged posters nobody reviewed
CORRECTIONS = ("none", "apply", "drop")
# Grad-CAM family methods (pytorch-grad-cam); the slow ones run a forward pass per channel of the layer
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam", "scorecam")
SLOW_CAM_METHODS = ("scorecam",)
EVAL_SPLITS = ("all", "train", "val", "test")  # all: every poster given; the others: the run's own split
SAVE_DTYPES = ("float32", "float16")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
# validation metrics a run can watch (the first of each is what ``auto`` means)
MULTILABEL_MONITORS = ("map", "micro_f1", "macro_f1", "roc_auc", "loss")
SINGLE_LABEL_MONITORS = ("balanced_accuracy", "accuracy", "macro_f1", "loss")
MONITORS = ("auto", *dict.fromkeys(MULTILABEL_MONITORS + SINGLE_LABEL_MONITORS))
# the figures a run is summed up by (tables, cards, the CLI), per task, most telling first
HEADLINE = {
    "multilabel": ("map", "micro_f1", "macro_f1"),
    "multiclass": ("accuracy", "balanced_accuracy", "macro_f1"),
    "binary": ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"),
}
EVERY_HEADLINE = tuple(dict.fromkeys(name for names in HEADLINE.values() for name in names))

_THRESHOLD_TARGET = re.compile(
    r"^\s*(?P<column>[A-Za-z_][\w ]*?)\s*(?P<op>>=|<=|>|<)\s*(?P<value>-?\d+(\.\d+)?)\s*$"
)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)} (got {value!r})")


def _seed(value: int) -> None:
    if not 0 <= value < 2**32:
        raise ConfigError(f"seed must be from 0 to {2**32 - 1} (got {value})")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{name} must be at least {low} (got {value})")


def parse_threshold_target(target: str) -> tuple[str, str, float] | None:
    """``'imdb_score>=7'`` → ``('imdb_score', '>=', 7.0)``; None for ``genres``/``label``."""
    match = _THRESHOLD_TARGET.match(target)
    if not match:
        return None
    return match["column"].strip(), match["op"], float(match["value"])


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    flag: str | None = None,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field with its help text (and choices, and command-line flag when it is not
    ``--field-name``): the one place a setting is declared. The command line and the app's form read
    defaults, choices and help from here."""
    metadata = {"help": help, "choices": choices, "flag": flag}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class LabelConfig:
    """What to predict and which labels to keep.

    ``target``: ``genres`` (multi-label), ``label`` (one class per poster: the ``label`` column, or the
    single selected genre of posters that carry exactly one), or a binary rule on a numeric column such
    as ``imdb_score>=7``.
    """

    target: str = option("genres", "genres | label | a rule on a numeric column such as imdb_score>=7")
    genres: tuple[str, ...] = option(
        (), "an explicit selection of labels (empty: all, or the top_n)", flag="--genres"
    )
    top_n: int | None = option(None, "keep the N most common labels (None: all)", flag="--genres")
    min_count: int = option(1, "labels rarer than this in the data are left out (or merged into Other)")
    other: bool = option(False, "merge labels outside the selection into 'Other' instead of ignoring them")
    merge: tuple[tuple[str, str], ...] = option(
        (), "synonym merges FROM=INTO, e.g. Musical=Music (repeatable)"
    )

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

    path: str = option(
        "sample",
        "dataset folder, labels CSV, MovieGenre.csv or zip; 'sample' / 'sample-rt' for the embedded posters",
        flag="--data",
    )
    labels: LabelConfig = option(factory=LabelConfig, help="what to predict")
    val_fraction: float = option(
        0.2, "share of the movies held out for validation (thresholds, early stopping)"
    )
    test_fraction: float = option(0.2, "share of the movies held out for the final test")
    seed: int = option(0, "seed of the split, the initialisation and the shuffles", flag="--seed")
    balance: str = option(
        "none", "balance the training split: loss weights, under- or over-sampling", choices=BALANCE
    )
    fit: str = option(
        "crop",
        "how posters fit the square input: crop (timm's centre crop), pad (whole "
        "poster on a square) or squash; several (crop,pad,squash) train on each and average "
        "them at test time, the first is the one Grad-CAM draws on",
        choices=FITS,
        flag="--fit",
    )
    extra_fits: tuple[str, ...] = option((), "more fits after the first", choices=FITS, flag="--fit")
    near_duplicate_bits: int = option(
        4,
        "perceptual-hash distance under which two posters count as the "
        "same and one is dropped (-1: keep near-duplicates)",
    )
    limit: int | None = option(None, "use at most N posters (a random subset, by seed): quick runs")
    corrections: str = option(
        "none",
        "label corrections from a label audit (posterlab audit, Dataset page): none; apply (the accepted "
        "suggestions replace the labels); drop (also leave out flagged posters nobody reviewed)",
        choices=CORRECTIONS,
    )

    def __post_init__(self) -> None:
        _choice("balance", self.balance, BALANCE)
        _choice("corrections", self.corrections, CORRECTIONS)
        _choice("fit", self.fit, FITS)
        for extra in self.extra_fits:
            _choice("fit", extra, FITS)  # one flag (--fit crop,pad) and one field on the page: "fit"
        if len(set(self.fits)) != len(self.fits):
            raise ConfigError(f"fits must differ (got {', '.join(self.fits)})")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ConfigError(f"{name} must be between 0 and 0.5 (got {value})")
        if self.limit is not None:
            _at_least("limit", self.limit, 10)
        _seed(self.seed)
        if not -1 <= self.near_duplicate_bits <= 64:
            raise ConfigError(
                f"near_duplicate_bits must be from -1 (keep near-duplicates) to 64 (got {self.near_duplicate_bits})"
            )

    @property
    def fits(self) -> tuple[str, ...]:
        """Every way posters are fitted to the model's input; the first is the one Grad-CAM draws on."""
        return (self.fit, *self.extra_fits)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation (image modes only; cached features see no augmentation but flips)."""

    flip: bool = option(True, "random horizontal flips", flag="--aug-flip")
    rotate: float = option(8.0, "random rotation up to this many degrees", flag="--aug-rotate")
    shift: float = option(0.05, "random shift up to this fraction of the side", flag="--aug-shift")
    shear: float = option(4.0, "random shear up to this many degrees", flag="--aug-shear")
    zoom: float = option(0.1, "random zoom, +/- this fraction", flag="--aug-zoom")
    random_crop: bool = option(True, "a random window of at least 85% of each side", flag="--aug-random-crop")

    def __post_init__(self) -> None:
        for name in ("rotate", "shift", "shear", "zoom"):
            _at_least(name, getattr(self, name), 0.0)

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (``--no-augment``)."""
        return cls(flip=False, rotate=0.0, shift=0.0, shear=0.0, zoom=0.0, random_crop=False)


# epochs when none are given: a probe head trains in seconds an epoch, a network's top in minutes
DEFAULT_EPOCHS = {"probe": 30, "finetune": 8, "full": 8}


@dataclass(frozen=True)
class TrainConfig:
    """How to train: backbone, mode and hyper-parameters."""

    backbone: str = option(
        DEFAULT_BACKBONE, "timm backbone from posterlab's registry", choices=tuple(BACKBONES)
    )
    pretrained: bool = option(True, "start from ImageNet weights (--no-pretrained: random weights)")
    mode: str = option(
        "probe",
        "probe: frozen backbone, cached embeddings; finetune: the top stages train "
        "too; full: every layer trains",
        choices=MODES,
    )
    head: str = option("linear", "classification head on the pooled features", choices=HEADS)
    epochs: int | None = option(None, "epochs (default: 30 for probe, 8 otherwise)")
    batch_size: int = option(64, "global batch size (split across processes when there are several)")
    lr: float = option(1e-3, "head learning rate (the backbone's is scaled, below)")
    backbone_lr_scale: float = option(0.1, "backbone learning rate = lr * this (finetune / full)")
    layer_decay: float = option(
        1.0,
        "each backbone stage below the top trains at this times the stage "
        "above's rate (timm's layer-wise decay; 1: all stages at backbone_lr_scale)",
    )
    weight_decay: float = option(1e-4, "AdamW / SGD weight decay (never on biases and norm weights)")
    dropout: float = option(0.2, "dropout before the head")
    optimizer: str = option(
        "adamw", "optimizer: AdamW or SGD with momentum (torch.optim)", choices=OPTIMIZERS
    )
    schedule: str = option("cosine", "learning-rate schedule per epoch", choices=SCHEDULES)
    step_every: int = option(10, "epochs between 10x learning-rate drops (schedule step)")
    warmup_epochs: int = option(0, "epochs of linear learning-rate warm-up")
    loss: str = option(
        "auto", "auto: bce for multi-label, ce for one label; asl: asymmetric loss", choices=LOSSES
    )
    label_smoothing: float = option(0.0, "label smoothing (ce)")
    unfreeze: int = option(1, "finetune: feature levels, from the top, that train")
    gradual_every: int = option(0, "finetune: unfreeze one more level every N epochs (0: all at once)")
    patience: int = option(
        6, "early stopping after this many epochs without a better validation score (0: off)"
    )
    monitor: str = option(
        "auto",
        "validation metric for early stopping and the best epoch (auto: map, or balanced_accuracy)",
        choices=MONITORS,
    )
    flip_views: bool = option(
        False,
        "also cache flipped posters: flip augmentation for cached inputs and "
        "flip test-time averaging (doubles extraction)",
    )
    cache_activations: bool = option(True, "finetune on a CPU: cache the frozen part's output once")
    device: str = option("auto", "auto: a CUDA GPU when one is visible", choices=DEVICES)
    amp: bool = option(True, "mixed precision on CUDA (bf16 from compute capability 8.0, else fp16)")
    int8: bool = option(
        False,
        "cached features on a CPU through an int8-quantised ONNX backbone (opt-in: "
        "measured no faster on CPUs without VNNI, and less accurate; see the README)",
    )
    num_workers: int = option(-1, "data-loader processes (-1: from the CPU cores this process may use)")
    seed: int = option(0, "seed of the split, the initialisation and the shuffles", flag="--seed")
    save_dtype: str = option("float32", "precision of the saved weights", choices=SAVE_DTYPES)
    search_trials: int = option(0, "Optuna search over lr / dropout / weight decay (trials)", flag="--search")
    search_folds: int = option(
        0, "k-fold cross-validation for each search trial (0: the validation split)", flag="--folds"
    )
    search_sampler: str = option(
        "tpe",
        "how a search picks trials (random: seed report 001's method)",
        choices=SAMPLERS,
        flag="--sampler",
    )
    search_pruner: str = option(
        "median",
        "stop a trial's epochs early when it falls below the median (none: never)",
        choices=PRUNERS,
        flag="--pruner",
    )
    search_storage: str = option(
        "",
        "Optuna storage URL shared by several searching processes (empty: SQLite in the run folder)",
        flag="--storage",
    )
    search_study: str = option(
        "", "study name in --storage (the processes sharing a study use one name)", flag="--study"
    )
    augment: AugmentConfig = option(factory=AugmentConfig, help="augmentation (image modes)")

    def __post_init__(self) -> None:
        if self.epochs is None:
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS.get(self.mode, 8))
        _choice("backbone", self.backbone, tuple(BACKBONES))
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
        _at_least("gradual_every", self.gradual_every, 0)
        _at_least("patience", self.patience, 0)
        _at_least("warmup_epochs", self.warmup_epochs, 0)
        _seed(self.seed)
        if not self.backbone_lr_scale > 0:
            raise ConfigError(
                f"backbone_lr_scale must be above 0 (got {self.backbone_lr_scale}); probe freezes it"
            )
        _at_least("search_trials", self.search_trials, 0)
        if self.search_folds == 1 or self.search_folds < 0:
            raise ConfigError(f"search_folds must be 0 (off) or at least 2 (got {self.search_folds})")
        _choice("search_sampler", self.search_sampler, SAMPLERS)
        _choice("search_pruner", self.search_pruner, PRUNERS)
        if bool(self.search_storage) != bool(self.search_study):
            raise ConfigError(
                "--storage and --study go together: processes that share a search all name the same storage "
                "URL and study; give both (or neither: the search then lives in the run folder)"
            )
        if self.search_storage and not self.search_trials:
            raise ConfigError("--storage shares a search: add --search N (the study's number of trials)")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be between 0 and 1 (got {self.lr})")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay must be in (0, 1] (got {self.layer_decay})")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1) (got {self.dropout})")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run was asked to do; saved as the run folder's ``config.json``."""

    data: DataConfig = option(factory=DataConfig, help="the posters")
    train: TrainConfig = option(factory=TrainConfig, help="the training")
    name: str = option("", "run folder name under ./checkpoints (empty: <time>-<backbone>-<mode>)")


def describe(cls: type, name: str) -> str:
    """A config field's help text (for the app's widgets; the command line reads the same)."""
    return next(item.metadata.get("help", "") for item in dataclasses.fields(cls) if item.name == name)


def leaves(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """Every setting of a config class, nested configs flattened: (dotted path, field)."""
    out = []
    for item in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[item.name]
        if dataclasses.is_dataclass(hint):
            out += leaves(hint, f"{prefix}{item.name}.")
        else:
            out.append((f"{prefix}{item.name}", item))
    return out


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
