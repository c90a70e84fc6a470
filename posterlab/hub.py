"""A run as a timm model folder (what the Hugging Face Hub shares), and such a folder read back.

``export_hub`` writes what ``timm.save_for_hf`` writes, so plain timm loads it::

    config.json        architecture, num_classes, label_names, pretrained_cfg (the preprocessing),
                       model_args, and a ``posterlab`` section: the run's model.json (label rule,
                       thresholds, fits), its config, its metrics beside their baselines, its data
    model.safetensors  the backbone with the run's trained head in timm's classifier slot
    README.md          the model card (Hub front matter, metrics, thresholds, data, limitations, usage)

``timm.create_model("local-dir:DIR", pretrained=True)`` (or ``"hf-hub:USER/MODEL"`` once pushed) then
builds the backbone with the trained head; one forward pass gives the logits of one view. A posterlab
run may average several fits of a poster (``--fit crop,pad,squash``): the Predictor's probabilities are
the mean over those views, which the card spells out with code.

``local_run`` turns a ``local-dir:`` path or an ``hf-hub:`` name into a posterlab folder (model.json,
weights in posterlab's layout, config, status, metrics) in the cache, keyed by the folder's content, so
``posterlab predict|evaluate|explain|demo`` take these as they take a run folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

from posterlab import settings
from posterlab.errors import ModelError, PosterlabError, RunError, one_line

log = logging.getLogger(__name__)

PREFIXES = ("local-dir:", "hf-hub:")
HUB_FORMAT = "posterlab-timm/1"
HUB_FILES = ("config.json", "model.safetensors", "README.md")
PARITY_TOLERANCE = 1e-4
# posterlab's head is Sequential(Dropout, Linear): the Linear is timm's classifier
HEAD_LINEAR = "head.1"
_FIT_TO_TIMM = {"crop": "center", "pad": "border", "squash": "squash"}  # timm's crop_mode for each fit


def is_reference(text: str | os.PathLike) -> bool:
    """True for ``local-dir:PATH`` and ``hf-hub:USER/MODEL`` (timm's own model-source prefixes)."""
    return str(text).startswith(PREFIXES)


# ------------------------------------------------------------------------------------------- export


def _refuse_unless_timm(info: dict, run: Path) -> None:
    """One line saying why a run cannot become a plain timm model, or nothing."""
    import timm.models

    from posterlab.models import small_cnn  # noqa: F401  (registered, so that it can be named below)

    if info.get("head", "linear") != "linear":
        raise ModelError(
            f"{run}: its head is {info['head']!r}, not one linear layer, so timm's classifier slot cannot "
            "hold it; export it with --format onnx or --format space, or train with --head linear"
        )
    name = info["backbone"]
    module = getattr(timm.models.model_entrypoint(name), "__module__", "")
    if not module.startswith("timm."):  # registered by posterlab at import: plain timm does not know it
        raise ModelError(
            f"{run}: {name} is posterlab's own architecture, which plain timm cannot build; export it "
            "with --format onnx or --format space, or train a timm backbone"
        )


def timm_classifier(run: str | Path):
    """(model.json, PosterModel, the same network as a plain timm classifier): the backbone with its
    classifier reset to the run's label count and the trained head's weights in it."""
    import torch

    from posterlab.inference import load_model_folder
    from posterlab.runs import read_json

    run = Path(run)
    if (run / "model.json").is_file():  # refused before any weights are read
        _refuse_unless_timm(read_json(run / "model.json"), run)
    info, model = load_model_folder(run)
    # a separate copy: the PosterModel stays the reference the export is checked against
    network = copy.deepcopy(model.backbone)
    network.reset_classifier(len(info["rule"]["labels"]))
    linear = model.get_submodule(HEAD_LINEAR)
    classifier = network.get_classifier()
    if not isinstance(classifier, torch.nn.Linear) or classifier.weight.shape != linear.weight.shape:
        raise ModelError(
            f"{run}: {info['backbone']}'s timm classifier is {type(classifier).__name__} "
            f"{tuple(getattr(classifier, 'weight', torch.empty(0)).shape)}, the head is Linear "
            f"{tuple(linear.weight.shape)}; export it with --format onnx instead"
        )
    with torch.no_grad():
        classifier.weight.copy_(linear.weight)
        classifier.bias.copy_(linear.bias)
    return info, model, network.eval()


def _views(info: dict, posters: list[Path]):
    """(fit name, (n, 3, H, W) tensors) for every fit the run averages: exactly what its Predictor sees."""
    import torch

    from posterlab.config import from_dict
    from posterlab.data.images import load_image
    from posterlab.data.transforms import Preprocess

    primary = from_dict(Preprocess, info["preprocess"])
    out = []
    for fit in info.get("fits") or [primary.fit]:
        preprocess = replace(primary, fit=fit)
        transform = preprocess.eval_transform()
        images = [load_image(p, draft=preprocess.draft).image for p in posters]
        out.append((fit, torch.stack([transform(image) for image in images])))
    return out


def data_config(info: dict, fit: str | None = None) -> dict:
    """timm's data config (``resolve_data_config`` keys) for one of the run's fits (default: primary)."""
    pre = info["preprocess"]
    fit = fit or pre["fit"]
    return {
        "input_size": tuple(pre["input_size"]),
        "interpolation": pre["interpolation"],
        "mean": tuple(pre["mean"]),
        "std": tuple(pre["std"]),
        # pad and squash keep the whole poster (posterlab's Preprocess uses crop_pct 1 for them)
        "crop_pct": pre["crop_pct"] if fit == "crop" else 1.0,
        "crop_mode": _FIT_TO_TIMM[fit],
    }


def _check_parity(model, network, views, tolerance: float, run: Path) -> float:
    """Largest |logits| difference between the PosterModel and the timm network, every view."""
    import torch

    worst = 0.0
    with torch.inference_mode():
        for _, batch in views:
            worst = max(worst, float((model(batch) - network(batch)).abs().max()))
    if not worst <= tolerance:  # NaN too
        raise ModelError(
            f"{run}: the timm model differs from posterlab's by {worst:.2e} (limit {tolerance:.0e}); "
            "nothing was written; export it with --format onnx instead"
        )
    return worst


def export_hub(
    run: str | Path, out: str | Path, posters: list[Path] | None = None, tolerance: float = PARITY_TOLERANCE
) -> dict:
    """Write ``run`` as a timm model folder ``out`` (new or empty); returns ``{'path', 'max_abs_diff',
    'posters'}``.

    Before anything is written, the timm network's logits are checked against the run's own model on
    every view of real posters; the folder is assembled beside ``out`` and renamed into place.
    """
    from timm.models import save_for_hf

    from posterlab.export import sample_posters
    from posterlab.runs import read_json

    run, out = Path(run), Path(out)
    info, model, network = timm_classifier(run)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PosterlabError(f"{out}: exists and is not empty; pick a new folder or delete it")
    posters = list(posters) if posters else sample_posters()
    worst = _check_parity(model, network, _views(info, posters), tolerance, run)

    labels = list(info["rule"]["labels"])
    optional = {name: run / f"{name}.json" for name in ("config", "metrics", "data")}
    found = {name: read_json(path) for name, path in optional.items() if path.is_file()}
    section = {
        "format": HUB_FORMAT,
        "model": info,  # label rule, thresholds, prior, preprocessing, fits: what a Predictor reads
        "run": (found.get("config") or {}).get("run"),
        "environment": (found.get("config") or {}).get("environment"),
        "metrics": _headline_metrics(found.get("metrics")),
        "data": found.get("data"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as scratch:
        folder = Path(scratch) / "model"
        save_for_hf(
            network,
            str(folder),
            model_config={
                "label_names": labels,
                "pretrained_cfg": {"tag": "posterlab"},  # timm's PretrainedCfg takes its own keys only
                "posterlab": section,
            },
            # dropout is not recorded by timm unless given: the run's, for whoever fine-tunes it further
            model_args={"drop_rate": float(info.get("dropout", 0.0))},
            safe_serialization=True,
            data_config=data_config(info),
        )
        for path in folder.iterdir():
            os.chmod(path, 0o644)  # safetensors writes owner-only files; this folder is meant to be shared
        config = json.loads((folder / "config.json").read_text())
        (folder / "README.md").write_text(model_card(config, run.resolve().name, worst), encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(folder, out)
    log.info("wrote the timm model folder %s (max |posterlab - timm| %.2e)", out, worst)
    return {"path": str(out), "max_abs_diff": worst, "posters": len(posters)}


def _headline_metrics(metrics: dict | None) -> dict | None:
    """Validation and test metrics beside their baselines (per-label tables included), nothing else."""
    if not metrics:
        return None
    keep = ("metrics", "baseline", "per_label", "n")
    return {
        split: {k: metrics[split][k] for k in keep if k in metrics[split]}
        for split in ("val", "test")
        if isinstance(metrics.get(split), dict)
    } | {"monitor": metrics.get("monitor"), "best_epoch": metrics.get("best_epoch")}


# --------------------------------------------------------------------------------------- model card


def _front_matter(config: dict) -> str:
    section = config["posterlab"]
    rule = section["model"]["rule"]
    dataset = (section.get("data") or {}).get("dataset")
    tags = ["image-classification", "timm", "posterlab", "movie-posters"]
    tags.append("multi-label-classification" if rule["task"] == "multilabel" else "single-label")
    lines = [
        "---",
        "library_name: timm",
        "pipeline_tag: image-classification",
        f"license: {config['pretrained_cfg'].get('license') or 'other'}",
        "tags:",
        *[f"- {tag}" for tag in tags],
    ]
    if dataset:
        lines += ["datasets:", f"- {dataset}"]
    return "\n".join(lines + ["---", ""])


def _metrics_table(block: dict | None) -> list[str]:
    if not block or not block.get("metrics"):
        return ["No held-out metrics were recorded for this run."]
    lines = ["| metric | model | baseline |", "|---|---:|---:|"]
    for name, value in block["metrics"].items():
        base = (block.get("baseline") or {}).get(name)
        shown = "—" if value is None else f"{value:.3f}"
        lines.append(f"| {name} | {shown} | {'—' if base is None else f'{base:.3f}'} |")
    return lines


def model_card(config: dict, name: str, parity: float) -> str:
    """The README.md of a timm model folder, from its config.json."""
    section = config["posterlab"]
    info = section["model"]
    rule = info["rule"]
    labels = list(rule["labels"])
    fits = list(info.get("fits") or [info["preprocess"]["fit"]])
    multilabel = rule["task"] == "multilabel"
    metrics = section.get("metrics") or {}
    out = [
        _front_matter(config),
        f"# {name}: movie posters → {'genres' if multilabel else ' / '.join(labels)}",
        "",
        *_card_usage(config, name, parity, labels, fits, multilabel),
        *_card_labels(labels, info.get("thresholds") or [], multilabel),
        *_card_results(metrics, multilabel),
        *_card_training(section.get("data") or {}, section.get("run") or {}, rule, fits),
        *_card_limitations((metrics.get("test") or {}).get("n")),
    ]
    return "\n".join(out)


def _card_usage(
    config: dict, name: str, parity: float, labels: list, fits: list, multilabel: bool
) -> list[str]:
    """What the model is, and how to load it with timm (and posterlab's views when it averages several)."""
    activation = "sigmoid" if multilabel else "softmax"
    squash = "{}.sigmoid()" if multilabel else "{}.softmax(1)"
    out = [
        f"A {config['architecture']} ({config['num_features']} pooled features) with a linear head over "
        f"{len(labels)} labels ({', '.join(labels)}), trained by "
        "posterlab from ImageNet weights on movie posters "
        f"({'multi-label, one sigmoid per label' if multilabel else 'single-label, softmax'}). "
        f"Exported from the posterlab run `{name}`; timm's logits match posterlab's to {parity:.1e} on real "
        "posters.",
        "",
        "## How to load",
        "",
        "```python",
        "import json",
        "import timm, torch",
        "from PIL import Image",
        "",
        'model = timm.create_model("hf-hub:USER/MODEL", pretrained=True).eval()  # or "local-dir:PATH"',
        "config = timm.data.resolve_data_config(model=model)",
        "transform = timm.data.create_transform(**config)",
        "labels = model.pretrained_cfg['label_names']",
        "thresholds = json.load(open('PATH/config.json'))['posterlab']['model']['thresholds']",
        "with torch.inference_mode():",
        '    logits = model(transform(Image.open("poster.jpg").convert("RGB"))[None])',
        f"probs = {squash.format('logits')}[0]",
        "```",
        "",
        f"One forward pass scores one view of the poster: timm's transform above is posterlab's `{fits[0]}` "
        f"fit ({'resize, then centre-crop' if fits[0] == 'crop' else 'the whole poster'}).",
    ]
    if len(fits) > 1:
        out += [
            f"posterlab itself averages the {activation} probabilities of {len(fits)} views "
            f"({', '.join(fits)}): the figures below and the thresholds are for that average. To get "
            "the same numbers:",
            "",
            "```python",
            "views = {'crop': dict(crop_mode='center'), 'pad': dict(crop_mode='border', crop_pct=1.0), "
            "'squash': dict(crop_mode='squash', crop_pct=1.0)}",
            f"fits = {fits!r}",
            "image = Image.open('poster.jpg').convert('RGB')",
            "batch = torch.stack([timm.data.create_transform(**{**config, **views[f]})(image) for f in fits])",
            "with torch.inference_mode():",
            f"    probs = {squash.format('model(batch)')}.mean(0)",
            "```",
        ]
    return out + [
        "",
        "Or with posterlab, which applies the views, thresholds and label rule for you: "
        "`posterlab predict local-dir:PATH poster.jpg` (or `hf-hub:USER/MODEL`); `evaluate`, `explain` "
        "(Grad-CAM) and `demo` take the same names.",
        "",
    ]


def _card_labels(labels: list, thresholds: list, multilabel: bool) -> list[str]:
    out = ["## Labels and thresholds", ""]
    if multilabel and thresholds:
        out += ["| label | threshold (on the averaged probability) |", "|---|---:|"]
        out += [f"| {label} | {t:.3f} |" for label, t in zip(labels, thresholds, strict=True)]
        out += [
            "",
            "Thresholds were tuned for F1 on the validation split; a poster carries every label over its "
            "threshold.",
        ]
    else:
        out += [f"The predicted class is the most probable one of: {', '.join(labels)}."]
    return out


def _card_results(metrics: dict, multilabel: bool) -> list[str]:
    out = ["", "## Results", ""]
    for split, title in (
        ("test", "Held-out test posters"),
        ("val", "Validation posters (thresholds tuned here)"),
    ):
        block = metrics.get(split)
        if block:
            out += [f"{title} ({block.get('n', '?')} posters):", "", *_metrics_table(block), ""]
    baseline = (
        "every poster scored with the training prevalence of each label (thresholds tuned as the model's)"
        if multilabel
        else "always the training split's majority class"
    )
    return out + [f"The baseline is {baseline}.", ""]


def _card_training(data: dict, run: dict, rule: dict, fits: list) -> list[str]:
    out = ["## Training data", ""]
    if data:
        sizes = data.get("sizes") or {}
        limit = (run.get("data") or {}).get("limit")
        # every step from the posters read to those labelled (a --limit run's card said "7218 read, 235
        # labelled (65 dropped)", which did not add up)
        steps = f"{data.get('cleaning_dropped', 0)} left out by cleaning"
        steps += f", {limit} drawn at random (limit)" if limit else ""
        out += [
            f"- dataset: `{data.get('dataset', '?')}` ({data.get('kind', '?')}), {data.get('read', '?')} posters "
            f"read, {steps}, {data.get('labelled', '?')} labelled ({data.get('label_dropped', 0)} dropped: "
            f"{', '.join(f'{k} {v}' for k, v in (data.get('label_dropped_reasons') or {}).items()) or 'none'})",
            f"- label rule: {data.get('rule', rule['task'])}",
            f"- split per movie, stratified, seeded: {', '.join(f'{k} {v}' for k, v in sizes.items())}",
        ]
    train = run.get("train") or {}
    if train:
        out += [
            f"- recipe: mode `{train.get('mode')}`, {train.get('epochs')} epochs, lr {train.get('lr')}, "
            f"dropout {train.get('dropout')}, seed {train.get('seed')}, fits {', '.join(fits)}"
        ]
    return out


def _card_limitations(n_test: int | None) -> list[str]:
    return [
        "",
        "## Limitations",
        "",
        "- Posters are a weak signal of genre: compare every figure with its baseline, not with 1.0.",
        f"- The test set is {n_test if n_test else 'of unknown size'} posters from one development set and "
        "one seeded split; other poster collections (other decades, countries, artwork styles) were not "
        "measured.",
        "- Genre tags come from IMDb and are noisy and incomplete; posters may be copyrighted: this model "
        "is for research, not for redistributing the images.",
        "- Earlier reports on this task (the project's seed reports) used other posters, splits and "
        "unstated metrics; their figures are context, not a controlled comparison.",
        "",
    ]


# ------------------------------------------------------------------------------------------ push


def push_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a timm model folder to the model repo ``repo_id`` (created when missing); returns its URL.

    Needs a Hugging Face token: ``HF_TOKEN`` or a saved ``hf auth login``."""
    folder = Path(folder)
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise PosterlabError(
            f"{folder}: not a timm model folder (no {', '.join(missing)}); create one with "
            "posterlab export RUN --format hub --out DIR"
        )
    import timm

    upload(
        folder,
        repo_id,
        "model",
        create={"private": private},
        files=list(HUB_FILES),
        library=("timm", timm.__version__),
    )
    return f"https://huggingface.co/{repo_id}"


def check_repo_id(repo_id: str, repo_type: str) -> None:
    """One line naming the fix when ``repo_id`` is not a Hub id (``model`` or ``space``); called before an
    export's seconds of work as well as before the upload."""
    kind = {"model": ("model", "USER/MODEL"), "space": ("Space", "USER/SPACE")}[repo_type]
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise PosterlabError(f"{repo_id!r}: not a {kind[0]} id; use {kind[1]}, e.g. alice/poster-genres")


def upload(
    folder: Path,
    repo_id: str,
    repo_type: str,
    create: dict | None = None,
    files: list[str] | None = None,
    library: tuple[str, str] | None = None,
) -> None:
    """``folder`` uploaded to the Hub repo ``repo_id`` of ``repo_type`` (``model`` or ``space``), created
    when missing (with ``create``'s options); only ``files`` when given. One line naming the fix when the
    id is malformed, no token is available or the Hub refuses."""
    check_repo_id(repo_id, repo_type)
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise PosterlabError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again "
            f"(the folder is ready in {folder})"
        )
    name, version = library or (None, None)
    api = HfApi(token=token, library_name=name, library_version=version)
    target = f"the Space {repo_id}" if repo_type == "space" else repo_id
    try:
        api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, **(create or {}))
        api.upload_folder(
            repo_id=repo_id,
            repo_type=repo_type,
            folder_path=str(folder),
            allow_patterns=files,
            commit_message="posterlab export",
        )
    except Exception as error:  # huggingface_hub raises HTTP, offline and auth errors of many types
        raise PosterlabError(
            f"could not push to {target} ({one_line(error)}); check the token's write access and the network"
        ) from None


# ------------------------------------------------------------------------------------- reading back


def _fetch(reference: str) -> Path:
    """The folder a reference names: the path of ``local-dir:``; the Hub snapshot of ``hf-hub:``."""
    source, _, ident = reference.partition(":")
    if not ident:
        raise RunError(f"{reference!r}: nothing after {source}:; use local-dir:PATH or hf-hub:USER/MODEL")
    if source == "local-dir":
        folder = Path(ident).expanduser()
        if not folder.is_dir():
            raise RunError(
                f"{folder}: no such model folder; export one with posterlab export RUN --format hub"
            )
        return folder
    repo_id, _, revision = ident.partition("@")  # timm's hf-hub:USER/MODEL@REVISION
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=list(HUB_FILES)))
    except Exception as error:  # offline, no such repo, no access: many types
        raise RunError(
            f"could not fetch {repo_id} from the Hugging Face hub ({one_line(error)}); check the name and "
            "the network (with HF_HUB_OFFLINE=1 only models downloaded before are found)"
        ) from None


def _content_key(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def _name(reference: str) -> str:
    ident = reference.partition(":")[2].rstrip("/").partition("@")[0]
    return re.sub(r"[^\w.-]", "-", Path(ident).name or "model")


def local_run(reference: str) -> Path:
    """A posterlab folder for ``local-dir:PATH`` or ``hf-hub:USER/MODEL`` (built once, in the cache).

    The weights go back into posterlab's layout (timm's classifier becomes the head); config, status,
    metrics and data come from the ``posterlab`` section of config.json, so a Predictor, an evaluation,
    Grad-CAM and the demo read it as they read a run."""
    from posterlab.runs import load_tensors, save_tensors, write_json

    folder = _fetch(reference)
    config_path = folder / "config.json"
    if not config_path.is_file() or not (folder / "model.safetensors").is_file():
        raise RunError(f"{folder}: not a timm model folder (config.json and model.safetensors are needed)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{config_path}: not valid JSON ({error}); export the model again") from None
    section = config.get("posterlab")
    if not isinstance(section, dict) or "model" not in section:
        raise RunError(
            f"{reference}: a timm model without posterlab's labels and thresholds; load it with "
            "timm.create_model, or export a posterlab run with --format hub"
        )
    target = settings.cache_dir() / "hub" / _content_key(folder) / _name(reference)
    if (target / "status.json").is_file():
        return target
    classifier = config["pretrained_cfg"].get("classifier", "classifier")
    tensors = load_tensors(folder / "model.safetensors")
    remapped = {
        (
            f"{HEAD_LINEAR}.{key[len(classifier) + 1 :]}"
            if key.startswith(classifier + ".")
            else f"backbone.{key}"
        ): value
        for key, value in tensors.items()
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        build = Path(scratch) / target.name
        build.mkdir()
        save_tensors(build / "model.safetensors", remapped, metadata={"format": "pt"})
        write_json(build / "model.json", section["model"])
        run = dict(section.get("run") or {})
        run["name"] = target.name
        write_json(
            build / "config.json",
            {"run": run, "environment": {**(section.get("environment") or {}), "source": reference}},
        )
        metrics = section.get("metrics") or {}
        write_json(
            build / "metrics.json",
            {
                **metrics,
                "task": section["model"]["rule"]["task"],
                "labels": section["model"]["rule"]["labels"],
            },
        )
        if section.get("data"):
            write_json(build / "data.json", section["data"])
        write_json(build / "status.json", {"status": "completed", "source": reference})
        try:
            os.replace(build, target)
        except OSError:  # another process built it meanwhile: theirs is the same content
            if not (target / "status.json").is_file():
                raise
    log.info("%s read as the posterlab folder %s", reference, target)
    return target
