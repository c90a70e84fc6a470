"""posterlab against the ways people usually build a poster classifier: one command, one machine.

Every contender gets the same posters, the same movie-level split (posterlab's own, exported once as
lists of imdb ids to ``<out>/peers/split.json``), the same backbone (tf_efficientnet_lite0) with the
same local ImageNet weights, and the same wall-clock budget. Each runs in its own process; the parent
measures its wall time (start to exit) and peak RSS (``os.wait4``, as benchmarks/speed.py does: the largest
single process of its tree); peers.json adds the peak of the tree's summed PSS, data-loader workers
included, sampled twice a second (a lower bound).
Every contender writes its validation and test probabilities (``id, split, p:<label>``, 5 decimals, the
format of posterlab's ``predictions.csv``); the parent scores them all with the same code: per-label
thresholds tuned on validation (``tune_thresholds``), test metrics (``evaluate_scores``), and the constant
baseline that scores every poster with the training prevalence.

Contenders (``--contenders``, in this order by default):
  fastai     ``vision_learner(dls, "tf_efficientnet_lite0")`` + ``fine_tune(--epochs)``, fastai's multi-label
             tutorial recipe: ``ImageDataLoaders.from_df`` with ``MultiCategoryBlock`` (BCE), presizing
             ``Resize(460)`` + ``aug_transforms(size=224)``, batch 64, Adam with one-cycle, ``base_lr`` 2e-3,
             one frozen epoch, then all layers at discriminative rates. The one change made to run offline:
             ``pretrained_cfg_overlay=dict(file=<local weights>)`` passed through ``vision_learner`` to
             ``timm.create_model``. The budget is a fastai ``Callback`` raising ``CancelFitException``;
             the weights at that moment are scored (fastai keeps no best epoch by default).
  timm       timm's own fine-tuning recipe as its ``train.py`` runs it (defaults listed in ``TIMM_ARGS``:
             SGD + Nesterov, momentum 0.9, lr 0.1 x batch / 256, weight decay 2e-5 off norms and biases,
             cosine schedule, RandomResizedCrop(0.08-1) + flip + colour jitter 0.4 + random interpolation,
             ``BinaryCrossEntropy`` as ``--bce-loss`` builds it, best epoch by validation loss as
             ``--eval-metric loss`` keeps it), through ``create_loader`` / ``create_optimizer_v2`` /
             ``create_scheduler_v2``. Changed from train.py's defaults: ``--epochs`` instead of 300, warm-up
             1 epoch stepped per update instead of 5 per epoch (sized for a short fine-tune), no prefetcher
             (its collate only carries class indices), validation loss as BCE (train.py's validation CE has
             no meaning for multi-label).
  plain      the seed-style plain loop of ``benchmarks/plain_loop.py``: frozen Lite0 run on
             every decoded poster in every epoch, a linear head trained with AdamW 1e-3 and BCE, batch 32, no
             shuffling, no augmentation; epochs until the budget is spent; the last weights are scored.
  probe      posterlab's ``probe`` recipe of ``benchmarks/quality.py`` through ``train_run``
  best       posterlab's ``best`` recipe of ``benchmarks/quality.py`` through ``train_run``
             (both: a stop request at the budget, honoured at a batch boundary; the best epoch so far is
             evaluated; the run's own ``predictions.csv`` is scored like everyone else's)

The budget clock starts in each contender's process after its imports; what follows the stop (scoring
validation and test posters) is not budgeted but is counted in the wall time. posterlab contenders start
with an empty feature cache; the image-scan cache (cleaning, done once for the shared split) is copied in.

    python benchmarks/peers.py --data ../shared/datasets               # 600 s per contender
    python benchmarks/peers.py --limit 120 --budget 45 --contenders plain,probe   # a smoke run

Writes ``<out>/peers.json`` and prints a Markdown table. Needs the bench extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

BACKBONE = "tf_efficientnet_lite0"
DEFAULT_WEIGHTS = "../shared/weights"
# timm train.py's defaults (huggingface/pytorch-image-models, train.py at aa4b5850, 2026-08) for what this
# recipe uses; where a value differs, the comment gives train.py's
TIMM_ARGS = {
    "opt": "sgd",  # timm's "sgd" is SGD with Nesterov momentum
    "momentum": 0.9,
    "weight_decay": 2e-5,
    "lr_base": 0.1,
    "lr_base_size": 256,  # lr = lr_base * batch / 256 (linear scaling for SGD)
    "batch_size": 128,
    "sched": "cosine",
    "warmup_lr": 1e-5,
    "min_lr": 0.0,
    "warmup_epochs": 1,  # train.py: 5 (of 300 epochs)
    "sched_on_updates": True,  # train.py: per epoch; per update, a budget cut never freezes the warm-up
    "scale": (0.08, 1.0),
    "ratio": (3 / 4, 4 / 3),
    "hflip": 0.5,
    "vflip": 0.0,
    "color_jitter": 0.4,
    "aa": None,
    "reprob": 0.0,
    "train_interpolation": "random",
    "smoothing": 0.1,  # BinaryCrossEntropy ignores it for dense (multi-hot) targets, as in train.py
    "drop": 0.0,
    "workers": 4,
    "eval_metric": "loss",  # train.py: top1, which multi-label targets do not have
}


@dataclass(frozen=True)
class Contender:
    """One way of training a classifier: what it is, and the function its process runs."""

    description: str
    run: Callable[[Job], dict]


# ----------------------------------------------------------------------------------- the child side


@dataclass
class Job:
    """What a contender's process is given: the shared split and the shared settings."""

    data: dict  # posterlab DataConfig as a dict (the split is posterlab's, from this config)
    labels: list[str]
    splits: dict[str, list[str]]  # split name → imdb ids
    images: dict[str, str]  # id → image path
    targets: dict[str, list[float]]  # id → multi-hot target over ``labels``
    weights: Path
    workdir: Path
    deadline: float  # time.monotonic() when the budget is spent
    epochs: int
    seed: int
    device: str

    def over(self) -> bool:
        """True once the budget is spent."""
        return time.monotonic() >= self.deadline

    def y(self, split: str) -> np.ndarray:
        return np.asarray([self.targets[i] for i in self.splits[split]], dtype=np.float32)

    def paths(self, split: str) -> list[str]:
        return [self.images[i] for i in self.splits[split]]


def load_job(args: argparse.Namespace) -> Job:
    """The job described by the parent's split file and flags; the budget clock starts here."""
    started = time.monotonic()
    exported = json.loads(Path(args.split).read_text())
    return Job(
        exported["data"],
        exported["labels"],
        exported["splits"],
        {i: poster["image"] for i, poster in exported["posters"].items()},
        {i: poster["y"] for i, poster in exported["posters"].items()},
        Path(args.weights),
        Path(args.workdir),
        started + args.budget,
        args.epochs,
        args.seed,
        args.device,
    )


def torch_device(name: str):
    """``auto``: a CUDA GPU when one is visible (what every contender does by default)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def write_predictions(job: Job, scores: dict[str, np.ndarray]) -> None:
    """``predictions.csv``: id, split and one probability column per label (posterlab's layout)."""
    parts = []
    for split, probs in scores.items():
        part = pd.DataFrame({"id": job.splits[split], "split": split})
        for k, label in enumerate(job.labels):
            part[f"p:{label}"] = np.round(probs[:, k], 5)
        parts.append(part)
    pd.concat(parts, ignore_index=True).to_csv(job.workdir / "predictions.csv", index=False)


def run_fastai(job: Job) -> dict:
    """fastai's multi-label recipe: vision_learner over the timm backbone, fine_tune, cut at the budget."""
    import timm
    import torch
    from fastai.callback.core import Callback, CancelFitException
    from fastai.torch_core import set_seed
    from fastai.vision.all import (
        ImageDataLoaders,
        MultiCategoryBlock,
        Resize,
        accuracy_multi,
        aug_transforms,
        partial,
        vision_learner,
    )

    class Budget(Callback):
        """Cancels the fit (fastai's normal exit path) at the first batch past the budget."""

        def __init__(self) -> None:
            self.batches, self.stopped = 0, False

        def before_batch(self) -> None:
            if job.over():
                self.stopped = True
                raise CancelFitException()

        def after_batch(self) -> None:
            self.batches += int(self.training)

    set_seed(job.seed)
    train = job.splits["train"]
    frame = pd.DataFrame(
        {
            "image": [job.images[i] for i in train + job.splits["val"]],
            "labels": [
                "|".join(np.asarray(job.labels)[np.asarray(job.targets[i]) > 0])
                for i in train + job.splits["val"]
            ],
            "is_valid": [False] * len(train) + [True] * len(job.splits["val"]),
        }
    )
    size = timm.get_pretrained_cfg(BACKBONE).input_size[-1]
    dls = ImageDataLoaders.from_df(
        frame,
        path="/",
        fn_col="image",
        label_col="labels",
        label_delim="|",
        valid_col="is_valid",
        y_block=MultiCategoryBlock(vocab=job.labels),
        item_tfms=Resize(460),
        batch_tfms=aug_transforms(size=size),
        bs=min(64, len(train)),  # fastai drops the last partial batch: a smoke run still takes a step
        device=torch_device(job.device),
    )
    learn = vision_learner(
        dls,
        BACKBONE,
        metrics=partial(accuracy_multi, thresh=0.5),
        pretrained_cfg_overlay={"file": str(job.weights)},  # the offline tweak: timm reads the local file
    )
    budget = Budget()
    with learn.no_bar():
        learn.fine_tune(job.epochs, cbs=[budget])
    scores = {}
    with learn.no_bar(), torch.no_grad():
        for split in ("val", "test"):
            probs, _ = learn.get_preds(dl=dls.test_dl([Path(p) for p in job.paths(split)]))
            scores[split] = probs.float().numpy()
    write_predictions(job, scores)
    return {
        "train_batches": budget.batches,
        "epochs_done": round(budget.batches / max(len(dls.train), 1), 2),
        "epochs_planned": 1 + job.epochs,
        "stopped_by_budget": budget.stopped,
        "batch_size": dls.bs,
    }


class PosterSet:
    """Posters and multi-hot targets for timm's ``create_loader`` (which sets ``transform``)."""

    def __init__(self, paths: list[str], y: np.ndarray) -> None:
        self.paths, self.y, self.transform = paths, y, None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            picture = image.convert("RGB")
        return self.transform(picture), self.y[index]


def run_timm(job: Job) -> dict:
    """timm train.py's recipe: its loader, augmentation, optimizer, scheduler and BCE, cut at the budget."""
    import timm
    import torch
    from timm.data import create_loader, resolve_data_config
    from timm.loss import BinaryCrossEntropy
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    torch.manual_seed(job.seed)
    device = torch_device(job.device)
    args = SimpleNamespace(**TIMM_ARGS, epochs=job.epochs, seed=job.seed)
    model = timm.create_model(
        BACKBONE,
        pretrained=True,
        num_classes=len(job.labels),
        drop_rate=args.drop,
        pretrained_cfg_overlay={"file": str(job.weights)},
    ).to(device)
    config = resolve_data_config({}, model=model)
    args.batch_size = min(args.batch_size, len(job.splits["train"]))  # the loader drops the last batch
    args.lr = args.lr_base * args.batch_size / args.lr_base_size
    common = {
        "input_size": config["input_size"],
        "mean": config["mean"],
        "std": config["std"],
        "num_workers": min(args.workers, os.cpu_count() or 1),
        "device": device,
        "use_prefetcher": False,
    }
    train_loader = create_loader(
        PosterSet(job.paths("train"), job.y("train")),
        batch_size=args.batch_size,
        is_training=True,
        re_prob=args.reprob,
        scale=args.scale,
        ratio=args.ratio,
        hflip=args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        auto_augment=args.aa,
        interpolation=args.train_interpolation,
        **common,
    )

    def loader(split: str):  # train.py's evaluation loader: resize, centre crop at the model's crop_pct
        return create_loader(
            PosterSet(job.paths(split), job.y(split)),
            batch_size=args.batch_size,
            interpolation=config["interpolation"],
            crop_pct=config["crop_pct"],
            **common,
        )

    val_loader = loader("val")

    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    scheduler, epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=True), updates_per_epoch=len(train_loader)
    )
    loss_fn = BinaryCrossEntropy(smoothing=args.smoothing).to(device)
    best, best_val, best_loss, updates, stopped = None, None, float("inf"), 0, False
    for epoch in range(epochs):
        model.train()
        for images, targets in train_loader:
            if job.over():
                stopped = True
                break
            loss = loss_fn(model(images.to(device)), targets.to(device).float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
        if stopped:
            break
        val = _timm_predict(model, val_loader, device)
        val_loss = _bce(val, job.y("val"))
        if val_loss < best_loss:
            best_loss, best_val = val_loss, val
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        scheduler.step(epoch + 1, val_loss)
    if best is not None:  # what train.py's checkpoint saver keeps: the best epoch by the eval metric
        model.load_state_dict(best)
    else:
        best_val = _timm_predict(model, val_loader, device)
    write_predictions(job, {"val": best_val, "test": _timm_predict(model, loader("test"), device)})
    return {
        "train_batches": updates,
        "epochs_done": round(updates / max(len(train_loader), 1), 2),
        "epochs_planned": epochs,
        "stopped_by_budget": stopped,
        "scored": "best epoch by validation loss"
        if best is not None
        else "weights at the stop (no epoch ended)",
        "batch_size": args.batch_size,
        "lr": args.lr,
    }


def _timm_predict(model, loader, device) -> np.ndarray:
    """Sigmoid probabilities of every poster the (unshuffled) loader yields, in order."""
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([torch.sigmoid(model(x.to(device))).float().cpu() for x, _ in loader]).numpy()


def _bce(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (the validation loss of the timm recipe)."""
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def run_plain(job: Job) -> dict:
    """speed.py's plain seed-style loop, on the training split, for epochs until the budget is spent."""
    import timm
    import torch
    from PIL import Image

    from posterlab.models.factory import create_model

    torch.manual_seed(job.seed)
    device = torch_device(job.device)
    model = create_model(BACKBONE, len(job.labels), pretrained=True).eval().to(device)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model.backbone))
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def batches(split: str):
        paths = job.paths(split)
        for start in range(0, len(paths), 32):
            yield (
                start,
                torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start : start + 32]]),
            )

    y = torch.from_numpy(job.y("train"))
    steps, epochs = 0, 0
    while not job.over():
        for start, batch in batches("train"):
            if job.over():
                break
            with torch.no_grad():
                features = model.backbone(batch.to(device))
            loss = loss_fn(model.head(features), y[start : start + 32].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
        else:
            epochs += 1
    with torch.no_grad():
        scores = {
            split: torch.cat([torch.sigmoid(model(b.to(device))).cpu() for _, b in batches(split)]).numpy()
            for split in ("val", "test")
        }
    write_predictions(job, scores)
    per_epoch = -(-len(job.splits["train"]) // 32)
    return {
        "train_batches": steps,
        "epochs_done": round(steps / per_epoch, 2),
        "epochs_planned": None,
        "stopped_by_budget": True,
    }


def run_posterlab(job: Job, recipe: str) -> dict:
    """A recipe of quality.py through ``train_run`` with a stop at the budget; its predictions.csv."""
    from quality import RECIPES

    from posterlab.config import DataConfig, RunConfig, from_dict
    from posterlab.runs import load_run, read_splits
    from posterlab.training.trainer import train_run

    train, changes = RECIPES[recipe]
    data = replace(from_dict(DataConfig, job.data), **changes)
    train = replace(train, device=job.device, seed=job.seed)
    folder = train_run(RunConfig(data, train, name=recipe), job.workdir / "runs", should_stop=job.over)
    run = load_run(folder)
    if read_splits(folder) != {name: set(ids) for name, ids in job.splits.items()}:
        raise SystemExit(f"{folder}: posterlab split differs from the exported one; the comparison is void")
    info = {
        "run": str(folder),
        "state": run.state,
        "stopped_by_budget": run.state == "stopped",
        "epochs_planned": train.epochs,
    }
    predictions = run.predictions()
    if predictions is None:  # stopped before its first epoch ended: nothing to evaluate
        return info | {"epochs_done": 0, "note": run.status.get("note", "")}
    columns = ["id", "split", *(f"p:{label}" for label in job.labels)]
    predictions[columns].to_csv(job.workdir / "predictions.csv", index=False)
    return info | {
        "epochs_done": run.metrics["epochs_run"],
        "best_epoch": run.metrics["best_epoch"],
        "feature_seconds": run.metrics["seconds"]["features"],
        "own_test_metrics": {k: run.metrics["test"]["metrics"][k] for k in ("micro_f1", "macro_f1", "map")},
    }


CONTENDERS = {
    "fastai": Contender("fastai vision_learner + fine_tune (multi-label tutorial recipe)", run_fastai),
    "timm": Contender("timm train.py fine-tuning recipe (SGD, cosine, RRC + jitter, BCE)", run_timm),
    "plain": Contender("plain seed-style loop (frozen Lite0 forward every epoch, linear head)", run_plain),
    "probe": Contender("posterlab probe (quality.py recipe)", lambda job: run_posterlab(job, "probe")),
    "best": Contender("posterlab best (quality.py recipe)", lambda job: run_posterlab(job, "best")),
}


def child(args: argparse.Namespace) -> int:
    """Run one contender in this process and write its ``info.json`` beside its predictions."""
    job = load_job(args)
    info = CONTENDERS[args.child].run(job)
    info["budget_seconds"] = args.budget
    info["seconds_after_budget_clock_start"] = round(time.monotonic() - (job.deadline - args.budget), 1)
    (job.workdir / "info.json").write_text(json.dumps(info, indent=2))
    return 0


# ---------------------------------------------------------------------------------- the parent side


def export_split(data: Path, limit: int | None, seed: int, path: Path):
    """posterlab's movie-level split of the top-6 task, written as id lists (plus images and targets)."""
    from quality import TOP6

    from posterlab.config import DataConfig, LabelConfig, to_dict
    from posterlab.data.prepare import prepare_data

    config = DataConfig(path=str(data.resolve()), labels=LabelConfig(genres=TOP6), limit=limit, seed=seed)
    prepared = prepare_data(config)
    frame, y = prepared.labelled.frame, prepared.labelled.y
    exported = {
        "data": to_dict(config),
        "labels": list(prepared.labelled.rule.labels),
        "splits": {name: frame["id"].iloc[rows].tolist() for name, rows in prepared.splits.items()},
        "posters": {
            movie: {"image": str(Path(image).resolve()), "y": target.tolist()}
            for movie, image, target in zip(frame["id"], frame["image"], y, strict=True)
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(exported))
    return prepared


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it, from /proc (just ``root`` where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += children.get(pid, [])
    return found


def _tree_pss_kib(root: int) -> int:
    """Memory of ``root``'s process tree (KiB): the sum of proportional set sizes, so that pages that
    forked data-loader workers share with their parent count once (a sum of RSS would count them in
    every worker)."""
    total = 0
    for pid in _descendants(root):
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith("Pss:")), 0)
    return total


def measure(command: list[str], env: dict, log: Path, hard_limit: float) -> dict:
    """Run ``command`` in its own session; wall time, exit code, peak RSS (wait4) and the sampled peak of
    its process tree's summed PSS.

    The process is killed (with its group) past ``hard_limit`` seconds: a contender that ignores its
    budget does not hold the benchmark hostage."""
    peak = {"tree": 0, "killed": False}
    with open(log, "w") as out:
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.5):
                peak["tree"] = max(peak["tree"], _tree_pss_kib(process.pid))
                if time.monotonic() - started > hard_limit and not peak["killed"]:
                    peak["killed"] = True
                    os.killpg(process.pid, signal.SIGKILL)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - started
        done.set()
        watcher.join()
    return {
        "wall_seconds": round(seconds, 1),
        "returncode": os.waitstatus_to_exitcode(status),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        # a lower bound: sampling misses short spikes, and PSS splits shared pages (libraries too) with
        # every process that maps them, the parent included; it shows what data-loader workers add
        "peak_tree_pss_mib": round(peak["tree"] / 1024),
        "killed_at_hard_limit": peak["killed"],
    }


def score(prepared, predictions: Path) -> dict:
    """Test metrics of one contender, thresholds tuned on its validation scores; the same for everyone."""
    from posterlab.evaluation.metrics import evaluate_scores, tune_thresholds

    labelled, rows = prepared.labelled, prepared.splits
    table = pd.read_csv(predictions, dtype={"id": str, "split": str})
    columns = [f"p:{label}" for label in labelled.rule.labels]
    probs = {}
    for split in ("val", "test"):
        ids = labelled.frame["id"].iloc[rows[split]].tolist()
        part = table[table["split"] == split].set_index("id")
        missing = sorted(set(ids) - set(part.index))
        if missing:
            raise ValueError(
                f"{predictions}: no {split} scores for {len(missing)} posters, e.g. {missing[:3]}"
            )
        probs[split] = part.loc[ids, columns].to_numpy(dtype=np.float64)
    y = labelled.y
    thresholds = tune_thresholds(y[rows["val"]], probs["val"])
    prior = y[rows["train"]].mean(axis=0)
    report = evaluate_scores(labelled.rule, y[rows["test"]], probs["test"], thresholds, prior)
    return {
        "metrics": report["metrics"],
        "baseline": report["baseline"],
        "per_label": report["per_label"],
        "thresholds": dict(zip(labelled.rule.labels, thresholds.tolist(), strict=True)),
    }


def run_contender(name: str, args: argparse.Namespace, split: Path, scan_cache: Path, prepared) -> dict:
    """One contender in its own process, then scored; a crash is recorded, not raised."""
    workdir = Path(args.out) / "peers" / name
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "cache").mkdir(parents=True)
    if scan_cache.exists():  # cleaning results only: features are computed inside the budget
        shutil.copy(scan_cache, workdir / "cache" / scan_cache.name)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "POSTERLAB_WEIGHTS_DIR": str(Path(args.weights).resolve()),
        "POSTERLAB_CACHE_DIR": str(workdir / "cache"),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        name,
        "--split",
        str(split),
        "--workdir",
        str(workdir),
        "--budget",
        str(args.budget),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        "--weights",
        str(Path(args.weights).resolve() / f"{BACKBONE}.safetensors"),
    ]
    print(f"{name}: {CONTENDERS[name].description} ...", file=sys.stderr, flush=True)
    row = {"contender": name, "description": CONTENDERS[name].description}
    row |= measure(command, env, workdir / "log.txt", hard_limit=args.budget + max(600, args.budget))
    info = workdir / "info.json"
    row["training"] = json.loads(info.read_text()) if info.exists() else None
    if row["returncode"] != 0:
        row["error"] = (workdir / "log.txt").read_text()[-1500:]
    elif (workdir / "predictions.csv").exists():
        row |= score(prepared, workdir / "predictions.csv")
    else:
        row["error"] = "no predictions: " + (row["training"] or {}).get("note", "the contender wrote none")
    row["log"] = str(workdir / "log.txt")
    shutil.rmtree(workdir / "cache", ignore_errors=True)
    return row


def _trained(row: dict) -> str:
    info = row.get("training") or {}
    if "epochs_done" not in info:
        return "failed"
    planned = f"/{info['epochs_planned']}" if info.get("epochs_planned") else ""
    if info.get("stopped_by_budget"):
        end = "stopped at budget"
    else:
        early = info.get("epochs_planned") and info["epochs_done"] < info["epochs_planned"]
        end = "early-stopped" if early else "completed"
    return f"{info['epochs_done']}{planned} epochs, {end}"


def markdown(rows: list[dict], baseline: dict | None) -> str:
    """The results table: one row per contender, then the constant baseline."""
    lines = [
        "| contender | wall s | peak RSS MiB | training | test micro-F1 | macro-F1 | mAP |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        m = row.get("metrics")
        shown = (
            " | ".join(f"{m[k]:.3f}" for k in ("micro_f1", "macro_f1", "map"))
            if m
            else f"{(row.get('error') or 'no result').strip().splitlines()[-1][:80]} | | "
        )
        lines.append(
            f"| {row['contender']} | {row['wall_seconds']:.1f} | {row['peak_rss_mib']} | {_trained(row)} | {shown} |"
        )
    if baseline:
        values = " | ".join(f"{baseline[k]:.3f}" for k in ("micro_f1", "macro_f1", "map"))
        lines.append(f"| constant baseline (training prevalence) | | | | {values} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/datasets", help="folder holding posters/")
    parser.add_argument(
        "--budget", type=float, default=600, help="wall-clock seconds of training per contender"
    )
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    parser.add_argument("--limit", type=int, help="use N posters (a seeded subset, as posterlab's --limit)")
    parser.add_argument("--out", default="benchmarks/results", help="writes peers.json and peers/ here")
    parser.add_argument(
        "--epochs", type=int, default=8, help="schedule length of fastai (after its frozen epoch) and timm"
    )
    parser.add_argument("--seed", type=int, default=0, help="split and initialisation seed")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--weights",
        default=os.environ.get("POSTERLAB_WEIGHTS_DIR", DEFAULT_WEIGHTS),
        help=f"folder holding {BACKBONE}.safetensors (default: $POSTERLAB_WEIGHTS_DIR or {DEFAULT_WEIGHTS})",
    )
    for hidden in ("--child", "--split", "--workdir"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.child:
        return child(args)
    chosen = args.contenders.split(",")
    unknown = sorted(set(chosen) - set(CONTENDERS))
    if unknown:
        raise SystemExit(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    if not (Path(args.weights) / f"{BACKBONE}.safetensors").is_file():
        raise SystemExit(
            f"{Path(args.weights) / BACKBONE}.safetensors not found; pass --weights FOLDER or set POSTERLAB_WEIGHTS_DIR"
        )
    if not (Path(args.data) / "posters").is_dir():
        raise SystemExit(f"{Path(args.data) / 'posters'}: not found; pass --data FOLDER (holding posters/)")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from posterlab import settings
    from posterlab.runs import write_json

    out = Path(args.out)
    split = out / "peers" / "split.json"
    print("preparing posterlab's split ...", file=sys.stderr, flush=True)
    prepared = export_split(Path(args.data) / "posters", args.limit, args.seed, split)
    rows = [
        run_contender(name, args, split, settings.cache_dir() / "scan.sqlite", prepared) for name in chosen
    ]
    baseline = next((row["baseline"] for row in rows if "baseline" in row), None)
    result = {
        "setup": {
            "data": str(Path(args.data).resolve() / "posters"),
            "limit": args.limit,
            "labels": list(prepared.labelled.rule.labels),
            "sizes": {name: len(ids) for name, ids in prepared.splits.items()},
            "budget_seconds": args.budget,
            "epochs": args.epochs,
            "backbone": BACKBONE,
            "device": args.device,
            "cpu_count": os.cpu_count(),
            "split_file": str(split),
        },
        "baseline": baseline,
        "contenders": rows,
    }
    write_json(out / "peers.json", result)  # NaN (a metric with no positives) becomes null
    print(markdown(rows, baseline))
    print(f"wrote {out / 'peers.json'}")
    return 0 if all("metrics" in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
