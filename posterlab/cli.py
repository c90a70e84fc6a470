"""``posterlab train|evaluate|predict|explain|export|demo``: the core from the command line.

The training flags are generated from the config dataclasses (``posterlab.config``): their defaults,
choices and help are declared there once. ``--config FILE`` (a RunConfig or a run's ``config.json``) sets
the defaults and the flags given on the command line override them, as timm's ``train.py`` does.

Bad input ends with one line on stderr and a non-zero exit (2 for input errors), never a traceback
(``--debug`` shows one for bugs). Commands import only what they use: ``posterlab --help`` loads neither
torch nor timm.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import types
import typing
from pathlib import Path

from posterlab.config import (
    CAM_METHODS,
    EVAL_SPLITS,
    EVERY_HEADLINE,
    AugmentConfig,
    RunConfig,
    from_dict,
    leaves,
    to_dict,
)
from posterlab.errors import ConfigError, PosterlabError, RunError, one_line, out_of_memory

log = logging.getLogger("posterlab")

# flags that stand for several fields, or for a field in another shape: flag → the fields it sets
COMPOSITE = {
    "--genres": ("data.labels.genres", "data.labels.top_n"),
    "--fit": ("data.fit", "data.extra_fits"),
    "--merge": ("data.labels.merge",),
    "--seed": ("data.seed", "train.seed"),
}
COMPOSITE_HELP = {
    "--genres": "N for the top-N, a comma-separated list (genres, or classes with --target label), or all",
    "--merge": "merge a synonym genre FROM=INTO, e.g. Musical=Music (repeatable)",
}


# --------------------------------------------------------------------------- config ↔ flags


def flag_of(path: str, item: dataclasses.Field) -> str:
    """The command-line flag of a config field: declared in the field, else ``--field-name``."""
    return item.metadata.get("flag") or "--" + path.rsplit(".", 1)[-1].replace("_", "-")


def _dest(flag: str) -> str:
    return "cfg_" + flag.lstrip("-").replace("-", "_")


def _value_at(config: RunConfig, path: str):
    value = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _composite_default(flag: str, config: RunConfig | None):
    config = config or RunConfig()
    labels, data = config.data.labels, config.data
    if flag == "--genres":
        return str(labels.top_n) if labels.top_n else (",".join(labels.genres) if labels.genres else None)
    if flag == "--fit":
        return ",".join(data.fits)
    if flag == "--merge":
        return [f"{a}={b}" for a, b in labels.merge] or None
    return config.train.seed  # --seed


def add_config_flags(parser: argparse.ArgumentParser, defaults: RunConfig | None) -> None:
    """One flag per config field (or per composite flag). ``defaults`` None: the fields' own defaults."""
    hints = {path: item for path, item in leaves(RunConfig)}
    done: set[str] = set()
    for path, item in hints.items():
        if path == "name":
            continue
        flag = flag_of(path, item)
        if flag in done:
            continue
        done.add(flag)
        if flag in COMPOSITE:
            help_text = COMPOSITE_HELP.get(flag, item.metadata["help"])
            kwargs = {"action": "append", "metavar": "FROM=INTO"} if flag == "--merge" else {}
            if flag == "--seed":
                kwargs["type"] = int
            kwargs.setdefault("metavar", flag.lstrip("-").upper())
            parser.add_argument(
                flag, dest=_dest(flag), default=_composite_default(flag, defaults), help=help_text, **kwargs
            )
            continue
        _add_field_flag(parser, flag, path, item, defaults)


def _add_field_flag(
    parser, flag: str, path: str, item: dataclasses.Field, defaults: RunConfig | None
) -> None:
    hint = _leaf_hint(path)
    default = (
        _value_at(defaults, path)
        if defaults is not None
        else (item.default if item.default is not dataclasses.MISSING else None)
    )
    choices = item.metadata.get("choices")
    help_text = item.metadata["help"] + (f" (default: {default})" if default not in (None, "") else "")
    help_text = help_text.replace("%", "%%")  # argparse formats help with %
    if hint is bool:
        parser.add_argument(
            flag,
            dest=_dest(flag),
            default=default,
            action=argparse.BooleanOptionalAction,
            help=item.metadata["help"].replace("%", "%%"),
        )
        return
    kind = hint if hint in (int, float, str) else str
    extra = (
        {"choices": list(choices), "metavar": "NAME"}
        if choices and len(choices) > 8
        else ({"choices": list(choices)} if choices else {})
    )
    if extra.get("metavar"):
        help_text += f"; one of: {', '.join(choices)}"
    extra.setdefault("metavar", flag.lstrip("-").upper().replace("-", "_"))
    parser.add_argument(flag, dest=_dest(flag), type=kind, default=default, help=help_text, **extra)


def _leaf_hint(path: str):
    """The type of a config field, ``X | None`` read as X."""
    cls = RunConfig
    parts = path.split(".")
    for part in parts[:-1]:
        cls = typing.get_type_hints(cls)[part]
    hint = typing.get_type_hints(cls)[parts[-1]]
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(inner) == 1
    return inner[0] if optional else hint


def _genres(value: str | None) -> dict:
    """``6`` → top-6; ``Action,Comedy`` → that list; ``all`` or nothing → every label."""
    if value is None or value.strip().lower() in ("", "all"):
        return {"genres": (), "top_n": None}
    if value.strip().isdigit():
        return {"genres": (), "top_n": int(value)}
    return {"genres": tuple(v.strip() for v in value.split(",") if v.strip()), "top_n": None}


def _merges(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values or []:
        if "=" not in value:
            raise PosterlabError(f"--merge takes FROM=INTO (e.g. Musical=Music), got {value!r}")
        source, target = value.split("=", 1)
        pairs.append((source.strip(), target.strip()))
    return tuple(pairs)


def _nest(flat: dict[str, object]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def build_run_config(args: argparse.Namespace) -> RunConfig:
    """The same ``RunConfig`` the app's form builds, from the flags (over ``--config``'s defaults)."""
    flat: dict[str, object] = {}
    for path, item in leaves(RunConfig):
        flag = flag_of(path, item)
        if path == "name" or flag in COMPOSITE:
            continue
        flat[path] = getattr(args, _dest(flag))
    flat.update({f"data.labels.{k}": v for k, v in _genres(args.cfg_genres).items()})
    fits = [f.strip() for f in (args.cfg_fit or "crop").split(",") if f.strip()] or ["crop"]
    flat["data.fit"], flat["data.extra_fits"] = fits[0], tuple(fits[1:])
    flat["data.labels.merge"] = _merges(args.cfg_merge)
    flat["data.seed"] = flat["train.seed"] = args.cfg_seed
    if args.no_augment:
        flat.update({f"train.augment.{k}": v for k, v in dataclasses.asdict(AugmentConfig.none()).items()})
    out = Path(args.out) if args.out else None
    flat["name"] = out.name if out else (args.name or "")
    return from_dict(RunConfig, _nest(flat))


def _port(text: str) -> int:
    """A TCP port for ``--port``."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: give one from 1 to 65535")
    return port


def _config_file(path: str) -> RunConfig:
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not text at all (a pickle)
        raise PosterlabError(
            f"{path}: cannot read the config ({one_line(error)}); give a run's config.json or a JSON file of "
            "its fields"
        ) from None
    return from_dict(RunConfig, values.get("run", values))


# ------------------------------------------------------------------------------------ parsers


def _train_parser(sub, defaults: RunConfig | None) -> None:
    t = sub.add_parser(
        "train",
        help="train a run on a dataset",
        description="Every flag below is a field of posterlab's typed configs; --config FILE "
        "sets their defaults (flags given here override it).",
    )
    t.add_argument("--config", help="a JSON RunConfig (e.g. another run's config.json): sets the defaults")
    add_config_flags(t, defaults)
    t.add_argument("--no-augment", action="store_true", help="no image augmentation at all (image modes)")
    t.add_argument("--out", help="run folder to create (default checkpoints/<time>-<backbone>-<mode>)")
    t.add_argument(
        "--name", default=defaults.name if defaults else None, help="run folder name under ./checkpoints"
    )
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or interrupted run")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    launch = t.add_argument_group("several processes (torch.distributed; see README)")
    launch.add_argument(
        "--nproc-per-node",
        type=int,
        default=0,
        metavar="N",
        help="train with N processes on this machine (one per GPU): re-launches under torchrun",
    )
    launch.add_argument("--nnodes", default="1", help="machines taking part (torchrun's --nnodes)")
    launch.add_argument(
        "--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous of a multi-machine run (c10d)"
    )
    launch.add_argument(
        "--rdzv-id", default="posterlab", help="rendezvous id shared by the machines of one run"
    )
    launch.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="K",
        help="restart the group up to K times after a worker fails; it resumes from its last epoch",
    )
    t.set_defaults(func=cmd_train)


def _other_parsers(sub) -> None:
    e = sub.add_parser("evaluate", help="evaluate a run on a dataset (its own labels and thresholds)")
    e.add_argument("run")
    e.add_argument("--data", required=True)
    e.add_argument(
        "--split",
        default="all",
        choices=EVAL_SPLITS,
        help="only the posters the run put in this split (from its split.json); default: every poster given",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="score posters with a run")
    p.add_argument("run")
    p.add_argument("images", nargs="+", help="images; with --out also folders and labels.csv files")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="use the run's model.onnx on the CPU engine (OpenVINO if installed, else ONNX Runtime)",
    )
    scale = p.add_argument_group(
        "scoring to a file (batched, resumable; under torchrun every rank takes a share)"
    )
    scale.add_argument("--out", help="FILE.csv or FILE.parquet: one row per poster; run again to resume")
    scale.add_argument("--batch-size", type=int, default=32, help="posters per forward pass (default: 32)")
    scale.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    scale.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    x = sub.add_parser("explain", help="Grad-CAM overlay for a poster")
    x.add_argument("run")
    x.add_argument("image")
    x.add_argument("--label", help="label to explain (default: the top-scored one)")
    x.add_argument("--method", default=CAM_METHODS[0], choices=CAM_METHODS, help="Grad-CAM family method")
    x.add_argument("--out", required=True, help="PNG to write")
    x.set_defaults(func=cmd_explain)

    s = sub.add_parser(
        "export", help="export a run as ONNX, a Hugging Face Space bundle or a timm model folder (hub)"
    )
    s.add_argument("run")
    s.add_argument("--format", required=True, choices=("onnx", "space", "hub"))
    s.add_argument("--out", required=True)
    s.add_argument(
        "--push",
        metavar="USER/NAME",
        help="upload the Space bundle (USER/SPACE) or the timm model (USER/MODEL) with huggingface_hub "
        "(needs HF_TOKEN)",
    )
    s.set_defaults(func=cmd_export)

    _audit_parser(sub)

    d = sub.add_parser("demo", help="start the Gradio demo")
    d.add_argument("run", nargs="?", help="a run folder (default: every finished run under --checkpoints)")
    d.add_argument("--port", type=_port, default=7860)
    d.add_argument("--host", help="interface to listen on (default: loopback; 0.0.0.0 for every interface)")
    d.add_argument("--share", action="store_true", help="ask Gradio for a public link")
    d.add_argument("--checkpoints", help="folder of runs for the model picker (default ./checkpoints)")
    d.set_defaults(func=cmd_demo)


def _audit_parser(sub) -> None:
    from posterlab.config import FITS
    from posterlab.models.registry import DEFAULT_BACKBONE

    a = sub.add_parser(
        "audit",
        help="find probably wrong labels (out-of-fold probe + confident learning); writes a CSV",
        description="Scores every poster's labels with a k-fold probe on cached embeddings and confident "
        "learning; writes one row per poster, most suspicious first, and records the flagged posters in "
        "the dataset's corrections file (labels.csv is never written).",
    )
    a.add_argument(
        "--data",
        default="sample",
        help="dataset folder, labels CSV, MovieGenre.csv, zip or 'sample' (default: sample)",
    )
    a.add_argument("--target", default="genres", help="genres | label | a rule such as imdb_score>=7")
    a.add_argument("--genres", help=COMPOSITE_HELP["--genres"])
    a.add_argument("--merge", action="append", metavar="FROM=INTO", help=COMPOSITE_HELP["--merge"])
    a.add_argument("--backbone", default=DEFAULT_BACKBONE, help="embeddings of this backbone")
    a.add_argument(
        "--fit",
        default="crop",
        help=f"fits to embed, comma-separated ({', '.join(FITS)}); cached fits and flips are used too",
    )
    a.add_argument("--folds", type=int, default=5, help="k of the k-fold probe (default 5)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--accept-all", action="store_true", help="accept every suggestion in the corrections file"
    )
    a.add_argument("--out", required=True, help="CSV to write")
    a.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=cmd_audit)


def parser(defaults: RunConfig | None = None) -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="posterlab",
        description="Genre (and fresh/rotten) classifiers from movie posters, with Grad-CAM.",
    )
    main.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    main.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = main.add_subparsers(dest="command", required=True)
    _train_parser(sub, defaults)
    _other_parsers(sub)
    return main


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse, with a ``--config`` file's values as the training flags' defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = None
    if "train" in argv and "--config" in argv[argv.index("train") :]:
        early = argparse.ArgumentParser(add_help=False)
        early.add_argument("--config")
        known, _ = early.parse_known_args(argv[argv.index("train") + 1 :])
        if known.config:
            defaults = _config_file(known.config)
    return parser(defaults).parse_args(argv)


# ----------------------------------------------------------------------------------- commands


class _Bars:
    """Event sink for the terminal: a progress bar per stage, one line per epoch."""

    def __init__(self, quiet: bool) -> None:
        from tqdm import tqdm

        self.tqdm, self.quiet, self.bar, self.stage = tqdm, quiet, None, None

    def __call__(self, event) -> None:
        from posterlab.events import EpochEnd, Finished, Message, Progress

        if isinstance(event, Progress):
            self._progress(event)
        elif isinstance(event, EpochEnd):
            self.close()
            shown = " ".join(f"{k} {v:.3f}" for k, v in event.metrics.items() if k in EVERY_HEADLINE)
            mark = " *" if event.best else ""
            print(
                f"epoch {event.epoch}/{event.epochs}  train_loss {event.train_loss:.4f}  val_loss "
                f"{event.val_loss:.4f}  {shown}  ({event.seconds:.1f}s){mark}",
                file=sys.stderr,
            )
        elif isinstance(event, Message):
            self.close()
            print(event.text, file=sys.stderr)
        elif isinstance(event, Finished):
            self.close()
            print(f"{event.status}: {event.run_dir}", file=sys.stderr)  # a failure's error: main's line

    def _progress(self, event) -> None:
        if self.quiet:
            return
        if self.bar is None or self.stage != event.stage or event.done < self.bar.n:
            self.close()
            self.bar = self.tqdm(
                total=event.total, desc=event.stage, unit="", file=sys.stderr, leave=False, dynamic_ncols=True
            )
            self.stage = event.stage
        self.bar.total = event.total
        self.bar.update(event.done - self.bar.n)
        if event.detail:
            self.bar.set_postfix_str(event.detail, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _stop_on_signals() -> threading.Event:
    """Ctrl-C or SIGTERM asks the run to stop at its next batch boundary (it is evaluated, saved and can be
    resumed); a second one aborts at once."""
    requested = threading.Event()

    def handle(signum, frame) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        print(
            "posterlab: stopping at the next batch (the run stays resumable); again to abort", file=sys.stderr
        )

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)
    return requested


def _changed_flags(config: RunConfig) -> list[str]:
    """The training flags the command line set to something other than their defaults."""
    default = build_run_config(parser().parse_args(["train"]))
    composite = {path: flag for flag, paths in COMPOSITE.items() for path in paths}
    flags = {
        composite.get(path) or flag_of(path, item)
        for path, item in leaves(RunConfig)
        if path != "name" and _value_at(config, path) != _value_at(default, path)
    }
    return sorted(flags)


def _resume_target(args: argparse.Namespace) -> Path:
    """``--resume RUN``: continued with the run's own config; any other training flag is refused, not
    silently ignored (a run's settings are what its history was trained with)."""
    changed = _changed_flags(build_run_config(args))
    given = changed + [flag for flag, value in (("--out", args.out), ("--name", args.name)) if value]
    if given:
        raise PosterlabError(
            f"--resume continues {args.resume} with its own settings; drop {', '.join(given)} "
            "(or start a new run with --config RUN/config.json and your changes)"
        )
    return Path(args.resume)


def _relaunch(args: argparse.Namespace) -> int:
    """``--nproc-per-node N``: the same run under torchrun, handed over as a config file and its folder."""
    import tempfile

    from posterlab import settings
    from posterlab.launch import relaunch
    from posterlab.runs import new_run_id

    with tempfile.TemporaryDirectory(prefix="posterlab-launch-") as folder:
        if args.resume:
            run_dir = _resume_target(args)
            train_args = ["--resume", str(run_dir)]
        else:
            config = build_run_config(args)
            run_dir = (
                Path(args.out)
                if args.out
                else settings.checkpoints_dir() / (config.name or new_run_id(config))
            )
            config = dataclasses.replace(config, name=run_dir.name)
            path = Path(folder) / "config.json"
            path.write_text(json.dumps(to_dict(config)))
            train_args = ["--config", str(path), "--out", str(run_dir)]
        train_args += ["-q"] if args.quiet else []
        single = args.rdzv_endpoint is None  # one machine: a rendezvous id of its own, the run's name
        return relaunch(
            train_args,
            args.nproc_per_node,
            args.nnodes,
            args.rdzv_endpoint,
            run_dir.name if single and args.rdzv_id == "posterlab" else args.rdzv_id,
            args.max_restarts,
        )


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc_per_node:
        return _relaunch(args)
    from posterlab.runs import load_run
    from posterlab.training import distributed
    from posterlab.training.trainer import resume_run, train_run

    requested = _stop_on_signals()
    if args.resume:  # the run's own device decides the backend (a GPU run resumes on GPUs, NCCL)
        run_dir = _resume_target(args)
        config, device = None, load_run(run_dir).config.train.device
    else:
        config = build_run_config(args)
        device = config.train.device
    dist = distributed.from_environment(device)
    sink = _Bars(args.quiet or not dist.main)
    try:
        if args.resume:
            path = resume_run(run_dir, on_event=sink, should_stop=requested.is_set, dist=dist)
        else:
            root = Path(args.out).parent if args.out else None
            path = train_run(config, root, on_event=sink, should_stop=requested.is_set, dist=dist)
    finally:  # out of the loop, a signal ends the process again (torchrun stops a failed group so)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    distributed.shutdown(dist)  # only after success: with a peer gone it would wait for that peer
    if dist.main:
        print(path)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from posterlab.evaluation.evaluate import evaluate_run

    result = evaluate_run(args.run, args.data, on_event=_Bars(args.quiet or args.json), split=args.split)
    if result["seen_in_training"] and args.split != "train":
        print(
            f"posterlab: note: {result['seen_in_training']} of these {result['n']} posters were in the run's "
            "training split and flatter it; add --split test for held-out figures",
            file=sys.stderr,
        )
    if args.json:
        from posterlab.runs import finite

        print(json.dumps(finite(result), indent=2))
        return 0
    print(f"{result['n']} posters ({result['dropped']} dropped); labels: {', '.join(result['labels'])}")
    print(f"{'metric':<18}{'model':>10}{'baseline':>10}")
    for name, value in result["metrics"].items():
        print(f"{name:<18}{value:>10.4f}{result['baseline'].get(name, float('nan')):>10.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    if args.out:
        from posterlab.scoring import score_command

        return score_command(args)
    many = [path for path in args.images if Path(path).is_dir() or Path(path).suffix.lower() == ".csv"]
    if many:
        raise ConfigError(
            f"{many[0]}: a folder or a CSV of posters is scored into a file: add --out scores.csv (or .parquet)"
        )
    from posterlab.inference import Predictor

    predictor = Predictor(args.run, backend="onnx" if args.onnx else "torch")
    results = predictor.predict(list(args.images), names=list(args.images))
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in results:
            if not r.ok:
                print(f"{r.image}: error: {r.error}")
                continue
            top = sorted(r.scores.items(), key=lambda kv: -kv[1])[:6]
            print(
                f"{r.image}: {', '.join(r.predicted) or '(none over threshold)'}  ["
                + ", ".join(f"{k} {v:.2f}" for k, v in top)
                + "]"
            )
    return 0 if all(r.ok for r in results) else 1


def cmd_explain(args: argparse.Namespace) -> int:
    from posterlab.explain import explain_to_file

    print(explain_to_file(args.run, args.image, args.out, label=args.label, method=args.method))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from posterlab.export import export_onnx, export_space, push_space

    if args.push:  # before the export's seconds of work, not after them
        from posterlab.hub import check_repo_id

        check_repo_id(args.push, "space" if args.format == "space" else "model")

    if args.format == "onnx":
        report = export_onnx(args.run, Path(args.out))
        print(
            f"{args.out}  (max |torch - onnx| = {report['max_abs_diff']:.2e} on {report['posters']} posters)"
        )
    elif args.format == "hub":
        from posterlab.hub import export_hub, push_hub

        report = export_hub(args.run, Path(args.out))
        print(
            f"{args.out}  (max |posterlab - timm| = {report['max_abs_diff']:.2e} on {report['posters']} posters)"
        )
        if args.push:
            print(push_hub(args.out, args.push))
    else:
        folder = export_space(args.run, Path(args.out))
        print(folder)
        if args.push:
            print(push_space(folder, args.push))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from posterlab.config import DataConfig, LabelConfig

    fits = [f.strip() for f in args.fit.split(",") if f.strip()] or ["crop"]
    labels = LabelConfig(target=args.target, merge=_merges(args.merge), **_genres(args.genres))
    data = DataConfig(path=args.data, labels=labels, fit=fits[0], extra_fits=tuple(fits[1:]), seed=args.seed)
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise PosterlabError(f"{out}: give a CSV file path in an existing folder for --out")
    from posterlab.evaluation.label_health import audit_to_csv

    summary = audit_to_csv(data, args.backbone, args.folds, out, _Bars(args.quiet), args.accept_all)
    print(summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from posterlab.demo import launch

    launch(
        run=args.run,
        port=args.port,
        share=args.share,
        host=args.host,
        checkpoints=Path(args.checkpoints) if args.checkpoints else None,
    )
    return 0


def _resolve_run(args: argparse.Namespace) -> None:
    """A run folder as given, or a timm model folder (``local-dir:PATH``, ``hf-hub:USER/MODEL``) read as
    one; a missing folder is said before torch is imported."""
    from posterlab.hub import is_reference, local_run  # imports neither torch nor timm

    if is_reference(args.run):
        args.run = str(local_run(args.run))
    elif not Path(args.run).is_dir():
        raise RunError.missing(args.run)


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
        logging.basicConfig(
            level=logging.INFO if args.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if getattr(args, "run", None):
            _resolve_run(args)
        return args.func(args)
    except PosterlabError as error:
        print(f"posterlab: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("posterlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # ``posterlab evaluate --json | head``: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as error:  # a bug: one line unless --debug
        if out_of_memory(error) and not debug:
            print(f"posterlab: error: {one_line(error)}", file=sys.stderr)
            return 2
        if debug:
            raise
        print(
            f"posterlab: unexpected {one_line(error)} (run with --debug for the traceback)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
