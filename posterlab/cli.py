"""``posterlab train|evaluate|predict|explain|export|demo``: the core from the command line.

Bad input ends with one line on stderr and a non-zero exit (2 for input errors), never a traceback
(``--debug`` shows one for bugs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from posterlab.errors import PosterlabError

log = logging.getLogger("posterlab")


def _genres_arg(value: str | None) -> dict:
    """``--genres 6`` → top-6; ``--genres Action,Comedy`` → that list."""
    if value is None or value == "":
        return {}
    if value.isdigit():
        return {"top_n": int(value)}
    return {"genres": tuple(v.strip() for v in value.split(",") if v.strip())}


def _merge_arg(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values or []:
        if "=" not in value:
            raise PosterlabError(f"--merge takes FROM=INTO (e.g. Musical=Music), got {value!r}")
        source, target = value.split("=", 1)
        pairs.append((source.strip(), target.strip()))
    return tuple(pairs)


def build_run_config(args: argparse.Namespace):
    """The same ``RunConfig`` the app's form builds, from command-line flags (or a JSON file)."""
    from posterlab.config import AugmentConfig, DataConfig, LabelConfig, RunConfig, TrainConfig, from_dict

    if args.config:
        try:
            values = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise PosterlabError(f"{args.config}: cannot read the config ({error})") from None
        return from_dict(RunConfig, values.get("run", values))
    out = Path(args.out) if args.out else None
    fits = [f.strip() for f in args.fit.split(",") if f.strip()] or ["crop"]
    labels = LabelConfig(
        target=args.target,
        other=args.other,
        merge=_merge_arg(args.merge),
        min_count=args.min_count,
        **_genres_arg(args.genres),
    )
    data = DataConfig(
        path=args.data,
        labels=labels,
        seed=args.seed,
        balance=args.balance,
        fit=fits[0],
        extra_fits=tuple(fits[1:]),
        limit=args.limit,
    )
    train = TrainConfig(
        backbone=args.backbone,
        pretrained=not args.no_pretrained,
        mode=args.mode,
        head=args.head,
        epochs=args.epochs if args.epochs is not None else (30 if args.mode == "probe" else 8),
        batch_size=args.batch_size,
        lr=args.lr,
        backbone_lr_scale=args.backbone_lr_scale,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        optimizer=args.optimizer,
        schedule=args.schedule,
        loss=args.loss,
        label_smoothing=args.label_smoothing,
        unfreeze=args.unfreeze,
        gradual_every=args.gradual_every,
        patience=args.patience,
        monitor=args.monitor,
        flip_views=args.flip_views,
        device=args.device,
        seed=args.seed,
        save_dtype=args.save_dtype,
        search_trials=args.search,
        search_folds=args.folds,
        augment=AugmentConfig(
            flip=not args.no_augment,
            rotate=0 if args.no_augment else 8.0,
            shift=0 if args.no_augment else 0.05,
            shear=0 if args.no_augment else 4.0,
            zoom=0 if args.no_augment else 0.1,
            random_crop=not args.no_augment,
        ),
    )
    return RunConfig(data=data, train=train, name=out.name if out else (args.name or ""))


class _Bars:
    """Event sink for the terminal: a progress bar per stage, one line per epoch."""

    def __init__(self, quiet: bool) -> None:
        from tqdm import tqdm

        self.tqdm = tqdm
        self.quiet = quiet
        self.bar = None
        self.stage = None

    def __call__(self, event) -> None:
        from posterlab.events import EpochEnd, Finished, Message, Progress

        if isinstance(event, Progress):
            if self.quiet:
                return
            if self.bar is None or self.stage != event.stage or event.done < self.bar.n:
                self.close()
                self.bar = self.tqdm(
                    total=event.total,
                    desc=event.stage,
                    unit="",
                    file=sys.stderr,
                    leave=False,
                    dynamic_ncols=True,
                )
                self.stage = event.stage
            self.bar.total = event.total
            self.bar.update(event.done - self.bar.n)
            if event.detail:
                self.bar.set_postfix_str(event.detail, refresh=False)
        elif isinstance(event, EpochEnd):
            self.close()
            shown = " ".join(
                f"{k} {v:.3f}"
                for k, v in event.metrics.items()
                if k in ("map", "micro_f1", "macro_f1", "accuracy", "balanced_accuracy", "roc_auc")
            )
            mark = " *" if event.best else ""
            print(
                f"epoch {event.epoch}/{event.epochs}  train_loss {event.train_loss:.4f}  val_loss {event.val_loss:.4f}  {shown}  ({event.seconds:.1f}s){mark}",
                file=sys.stderr,
            )
        elif isinstance(event, Message):
            self.close()
            print(event.text, file=sys.stderr)
        elif isinstance(event, Finished):
            self.close()
            print(
                f"{event.status}: {event.run_dir}" + (f" ({event.error})" if event.error else ""),
                file=sys.stderr,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_train(args: argparse.Namespace) -> int:
    from posterlab.training.trainer import resume_run, train_run

    sink = _Bars(args.quiet)
    if args.resume:
        path = resume_run(Path(args.resume), on_event=sink)
    else:
        config = build_run_config(args)
        root = Path(args.out).parent if args.out else None
        path = train_run(config, root, on_event=sink)
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
        print(json.dumps(_finite(result), indent=2))
        return 0
    print(f"{result['n']} posters ({result['dropped']} dropped); labels: {', '.join(result['labels'])}")
    print(f"{'metric':<18}{'model':>10}{'baseline':>10}")
    for name, value in result["metrics"].items():
        print(f"{name:<18}{value:>10.4f}{result['baseline'].get(name, float('nan')):>10.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
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

    path = explain_to_file(args.run, args.image, args.out, label=args.label, method=args.method)
    print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from posterlab.export import export_onnx, export_space, push_space

    if args.format == "onnx":
        report = export_onnx(args.run, Path(args.out))
        print(
            f"{args.out}  (max |torch - onnx| = {report['max_abs_diff']:.2e} on {report['posters']} posters)"
        )
    else:
        folder = export_space(args.run, Path(args.out))
        print(folder)
        if args.push:
            print(push_space(folder, args.push))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from posterlab.demo import launch

    launch(
        run=args.run,
        port=args.port,
        share=args.share,
        checkpoints=Path(args.checkpoints) if args.checkpoints else None,
    )
    return 0


def _finite(value):
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def parser() -> argparse.ArgumentParser:
    from posterlab.config import (
        BALANCE,
        DEVICES,
        FITS,
        HEADS,
        LOSSES,
        MODES,
        MONITORS,
        OPTIMIZERS,
        SAVE_DTYPES,
        SCHEDULES,
    )
    from posterlab.models.registry import BACKBONES, DEFAULT_BACKBONE

    main = argparse.ArgumentParser(
        prog="posterlab",
        description="Genre (and fresh/rotten) classifiers from movie posters, with Grad-CAM.",
    )
    main.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    main.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = main.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a run on a dataset")
    t.add_argument(
        "--data",
        default="sample",
        help="dataset folder, labels CSV, MovieGenre.csv or zip; 'sample' / 'sample-rt' for the embedded posters",
    )
    t.add_argument("--target", default="genres", help="genres | label | a rule such as imdb_score>=7")
    t.add_argument(
        "--genres", help="N for the top-N, or a comma-separated list (genres, or classes with --target label)"
    )
    t.add_argument("--other", action="store_true", help="merge genres outside the selection into 'Other'")
    t.add_argument(
        "--merge",
        action="append",
        metavar="FROM=INTO",
        help="merge a synonym genre, e.g. Musical=Music (repeatable)",
    )
    t.add_argument("--min-count", type=int, default=1, help="leave out labels with fewer posters")
    t.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        choices=list(BACKBONES),
        metavar="NAME",
        help=f"one of: {', '.join(BACKBONES)}",
    )
    t.add_argument("--no-pretrained", action="store_true", help="start from random weights")
    t.add_argument("--mode", default="probe", choices=MODES)
    t.add_argument("--head", default="linear", choices=HEADS)
    t.add_argument("--epochs", type=int, help="default 30 (probe) or 8")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument(
        "--lr", type=float, default=1e-3, help="head learning rate (the backbone's is scaled, below)"
    )
    t.add_argument("--backbone-lr-scale", type=float, default=0.1)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--dropout", type=float, default=0.2)
    t.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    t.add_argument("--schedule", default="cosine", choices=SCHEDULES)
    t.add_argument("--loss", default="auto", choices=LOSSES)
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--unfreeze", type=int, default=1, help="finetune: feature levels from the top that train")
    t.add_argument(
        "--gradual-every", type=int, default=0, help="finetune: unfreeze one more level every N epochs"
    )
    t.add_argument("--patience", type=int, default=6, help="early stopping patience in epochs (0: off)")
    t.add_argument(
        "--monitor",
        default="auto",
        choices=MONITORS,
        help="validation metric for early stopping and model selection (auto: map, or balanced_accuracy)",
    )
    t.add_argument(
        "--flip-views",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also cache flipped posters: flip augmentation for cached inputs and flip TTA (doubles extraction)",
    )
    t.add_argument("--no-augment", action="store_true", help="no image augmentation (image modes)")
    t.add_argument("--balance", default="none", choices=BALANCE)
    t.add_argument(
        "--fit",
        default="crop",
        help=f"how posters fit the square input: {', '.join(FITS)}; several (crop,pad,squash) train on each "
        "and average them at test time, the first is the one Grad-CAM draws on",
    )
    t.add_argument("--limit", type=int, help="use at most N posters (quick runs)")
    t.add_argument(
        "--search",
        type=int,
        default=0,
        metavar="TRIALS",
        help="random search over lr / dropout / weight decay",
    )
    t.add_argument("--folds", type=int, default=0, help="k-fold cross-validation for each search trial")
    t.add_argument("--device", default="auto", choices=DEVICES)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-dtype", default="float32", choices=SAVE_DTYPES)
    t.add_argument("--out", help="run folder to create (default checkpoints/<time>-<backbone>-<mode>)")
    t.add_argument("--name", help="run folder name under ./checkpoints")
    t.add_argument("--config", help="a JSON RunConfig (e.g. another run's config.json) instead of flags")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or interrupted run")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a run on a dataset (its own labels and thresholds)")
    e.add_argument("run")
    e.add_argument("--data", required=True)
    e.add_argument(
        "--split",
        default="all",
        choices=("all", "train", "val", "test"),
        help="only the posters the run put in this split (from its split.json); default: every poster given",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="score posters with a run")
    p.add_argument("run")
    p.add_argument("images", nargs="+")
    p.add_argument("--json", action="store_true")
    p.add_argument("--onnx", action="store_true", help="use the run's model.onnx through ONNX Runtime")
    p.set_defaults(func=cmd_predict)

    x = sub.add_parser("explain", help="Grad-CAM overlay for a poster")
    x.add_argument("run")
    x.add_argument("image")
    x.add_argument("--label", help="label to explain (default: the top-scored one)")
    x.add_argument(
        "--method", default="gradcam", help="gradcam | gradcam++ | hirescam | eigencam | scorecam | layercam"
    )
    x.add_argument("--out", required=True, help="PNG to write")
    x.set_defaults(func=cmd_explain)

    s = sub.add_parser("export", help="export a run as ONNX or a Hugging Face Space bundle")
    s.add_argument("run")
    s.add_argument("--format", required=True, choices=("onnx", "space"))
    s.add_argument("--out", required=True)
    s.add_argument(
        "--push", metavar="USER/SPACE", help="upload the Space bundle with huggingface_hub (needs HF_TOKEN)"
    )
    s.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="start the Gradio demo")
    d.add_argument("run", nargs="?", help="a run folder (default: every finished run under --checkpoints)")
    d.add_argument("--port", type=int, default=7860)
    d.add_argument("--share", action="store_true", help="ask Gradio for a public link")
    d.add_argument("--checkpoints", help="folder of runs for the model picker (default ./checkpoints)")
    d.set_defaults(func=cmd_demo)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return args.func(args)
    except PosterlabError as error:
        print(f"posterlab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("posterlab: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: one line unless --debug
        if args.debug:
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        print(
            f"posterlab: unexpected {type(error).__name__}: {first} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
