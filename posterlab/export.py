"""Exports of a trained run: an ONNX model checked against torch, and a Hugging Face Space bundle.

``export_onnx`` writes an ONNX graph (input ``image``, output ``logits``, dynamic batch) and keeps it only
when every installed engine (ONNX Runtime, and OpenVINO when installed; ``posterlab.models.onnx``)
reproduces torch on real posters; written as ``RUN/model.onnx`` it serves
``Predictor(RUN, backend="onnx")`` and ``posterlab predict --onnx``.

``export_space`` writes a folder that starts with ``pip install -r requirements.txt && python app.py``::

    README.md          Hugging Face front matter (sdk gradio, pinned sdk_version, app_file, ...)
    app.py             the posterlab demo on the bundled run, on 0.0.0.0:$GRADIO_SERVER_PORT (or $PORT, or 7860)
    requirements.txt   pinned versions of what the bundle imports (found by reading its imports)
    posterlab/         the package source (posterlab is not on PyPI), without the sample data
    runs/<name>/       the run folder (JSON + safetensors; nothing pickled)
    examples/          a few example posters
    gallery/           a few labelled fresh/rotten posters (binary runs only)

``push_space`` uploads such a folder with huggingface_hub when a token is available.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd
import torch

from posterlab import settings
from posterlab.errors import ConfigError, ModelError, PosterlabError, RunError
from posterlab.inference import Predictor, load_model_folder
from posterlab.models.onnx import NAMES, candidates, export_graph, open_engine
from posterlab.runs import PICKLE_SUFFIXES, read_json

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
PARITY_POSTERS = 8
# What a Space needs to serve a run; predictions.csv and split.json stay behind (local paths, no use there).
RUN_FILES = (
    "model.json",
    "model.safetensors",
    "config.json",
    "status.json",
    "metrics.json",
    "history.json",
    "data.json",
)
GALLERY_PER_CLASS = 12
TEMPLATES = Path(__file__).resolve().parent / "space_template"
# the workbench's own dependencies: a Space runs the Gradio demo only (OpenVINO speeds up feature
# extraction for training; a Space serves with torch, or ONNX Runtime for an exported model.onnx)
WORKBENCH_ONLY = ("streamlit", "plotly", "openvino")


# ---------------------------------------------------------------------------------------------- ONNX


def sample_posters(count: int = PARITY_POSTERS) -> list[Path]:
    """The first ``count`` posters of the embedded sample (real posters for parity checks)."""
    for folder in settings.SAMPLES.values():
        images = sorted((folder / "images").glob("*.jpg"))
        if images:
            return images[:count]
    raise RunError(
        "no sample posters to check the export on (posterlab/sample is missing); pass posters=[...]"
    )


def _onnx_target(run: Path, out: Path) -> Path:
    """``out`` as a file: a folder (or a path without ``.onnx``) gets ``model.onnx`` inside it."""
    out = Path(out)
    if out.is_file() and out.suffix != ".onnx":
        raise ConfigError(f"{out}: a file that is not an .onnx; give a folder or a path ending in .onnx")
    if out.is_dir() or out.suffix != ".onnx":
        out = out / "model.onnx"
    if out.resolve() != (run / "model.onnx").resolve():
        log.info(
            "Predictor(backend='onnx') reads %s; pass that path to serve this export", run / "model.onnx"
        )
    return out


def _probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    if multilabel:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def export_onnx(
    run: str | Path,
    out: Path,
    posters: list[Path] | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> dict:
    """Export a run's model to ONNX and check it against torch on real posters.

    The graph takes ``image`` (batch, 3, H, W), normalised as the run's preprocessing says, and returns
    ``logits``. Parity is checked on a batch of posters and on a single poster (the batch axis is dynamic);
    the file is only written when the largest difference of logits and probabilities is within
    ``tolerance``. Returns ``{'path', 'max_abs_diff', 'posters', 'exporter'}``.
    """
    engines = candidates()
    if not engines:
        raise ModelError("onnxruntime is not installed; pip install onnxruntime")
    folder = Path(run)
    info, model = load_model_folder(folder)
    predictor = Predictor(folder)  # only for its preprocessing: the exact tensors a prediction uses
    posters = list(posters) if posters else sample_posters()
    batch = torch.stack([predictor.prepare(p)[1][0] for p in posters])  # the primary view of each
    target = _onnx_target(folder, out)
    target.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".onnx-") as scratch:
        temporary = Path(scratch) / "model.onnx"
        exporter = export_graph(model, batch, temporary)
        multilabel = info["rule"]["task"] == "multilabel"
        worst, gaps = 0.0, {}
        for name in engines:  # whichever engine serves it later, it was checked
            engine = open_engine(temporary, name, threads=1)
            gap = 0.0
            for inputs in (batch, batch[:1]):
                with torch.inference_mode():
                    expected = model(inputs).float().numpy()
                got = engine.run(inputs.numpy())
                if got.shape != expected.shape:
                    raise ModelError(
                        f"ONNX export of {folder} returns shape {got.shape} on {NAMES[name]}, torch "
                        f"{expected.shape}; report this backbone"
                    )
                gap = max(
                    gap,
                    float(np.abs(got - expected).max()),
                    float(
                        np.abs(_probabilities(got, multilabel) - _probabilities(expected, multilabel)).max()
                    ),
                )
            if not gap <= tolerance:  # also catches NaN
                raise ModelError(
                    f"ONNX export of {folder} differs from torch by {gap:.2e} on {NAMES[name]} (limit "
                    f"{tolerance:.0e}) on {len(posters)} posters; nothing was written; keep the torch backend "
                    "for this run"
                )
            gaps[name], worst = gap, max(worst, gap)
        _describe(temporary, info)
        os.replace(temporary, target)
    log.info("wrote %s (%s exporter, max |torch - onnx| %.2e)", target, exporter, worst)
    return {
        "path": str(target),
        "max_abs_diff": worst,
        "engines": gaps,
        "posters": len(posters),
        "exporter": exporter,
    }


def _describe(path: Path, info: dict) -> None:
    """What the file's numbers mean, in its ``metadata_props``: a bare graph (``image`` in, ``logits`` out)
    could not be read on its own. Labels (in the logits' order), task (sigmoid per label or softmax),
    thresholds, preprocessing (input size, mean, std, crop_pct, fit), each as JSON."""
    import onnx

    graph = onnx.load(str(path))
    described = {
        "posterlab.labels": info["rule"]["labels"],
        "posterlab.task": info["rule"]["task"],
        "posterlab.thresholds": info.get("thresholds"),
        "posterlab.preprocess": info["preprocess"],
        "posterlab.fits": info.get("fits"),
        "posterlab.backbone": info["backbone"],
    }
    onnx.helper.set_model_props(graph, {key: json.dumps(value) for key, value in described.items()})
    onnx.save(graph, str(path))


# --------------------------------------------------------------------------------------- Space bundle


def space_requirements() -> list[str]:
    """``name==version`` for what a Space needs: posterlab's own dependencies (its package metadata)
    without those only the Streamlit workbench uses, pinned to the versions installed here.

    Local version labels (``+cu132``) are dropped: the Space installs from PyPI."""
    from packaging.requirements import Requirement

    try:
        requires = importlib.metadata.requires("posterlab") or []
    except importlib.metadata.PackageNotFoundError:
        raise PosterlabError(
            "posterlab is not installed (pip install -e .); its metadata lists what a Space needs"
        ) from None
    lines = {}
    for text in requires:
        requirement = Requirement(text)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        if requirement.name.lower() in WORKBENCH_ONLY:
            continue
        try:
            version = importlib.metadata.version(requirement.name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            raise PosterlabError(
                f"{requirement.name} is not installed here; pip install -e . and export again"
            ) from None
        lines[requirement.name.lower()] = f"{requirement.name}=={version}"
    return [lines[k] for k in sorted(lines)]


def _copy_run(run: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for name in RUN_FILES:
        if (run / name).exists():
            shutil.copyfile(run / name, target / name)
    for name in ("model.json", "model.safetensors"):
        if not (target / name).exists():
            raise RunError(f"{run}: has no {name}; only a completed run can be exported")


def _vendor_package(target: Path) -> None:
    """The posterlab source without the sample data, caches or templates."""
    source = Path(__file__).resolve().parent
    shutil.copytree(
        source,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "sample", "space_template", ".*"),
    )


def _copy_examples(target: Path) -> None:
    """The demo's example posters, with their titles (``labels.csv``) for the example captions."""
    target.mkdir()
    posters = settings.example_posters()
    for poster in posters:
        shutil.copyfile(poster, target / poster.name)
    table = settings.SAMPLES["sample"] / "labels.csv"
    if posters and table.is_file():
        frame = pd.read_csv(table, dtype=str)
        frame = frame[frame["imdb_id"].isin([p.stem for p in posters])]
        frame[["imdb_id", "title", "year", "genres"]].to_csv(target / "labels.csv", index=False)


def _gallery_subset(target: Path, labels: tuple[str, ...]) -> int:
    """A few labelled posters from the fresh/rotten sample, ``GALLERY_PER_CLASS`` per class."""
    source = settings.SAMPLES["sample-rt"]
    if not (source / "labels.csv").exists():
        return 0
    table = pd.read_csv(source / "labels.csv")
    if "label" not in table or not set(labels) & set(table["label"].astype(str)):
        return 0
    chosen = table.groupby("label", group_keys=False).head(GALLERY_PER_CLASS).reset_index(drop=True)
    (target / "images").mkdir(parents=True)
    for image in chosen["image"]:
        shutil.copyfile(source / image, target / image)
    chosen.to_csv(target / "labels.csv", index=False)
    return len(chosen)


def _short_description(info: dict) -> str:
    task = info["rule"]["task"]
    labels = info["rule"]["labels"]
    text = (
        f"Movie genres from a poster, with Grad-CAM ({len(labels)} genres)"
        if task == "multilabel"
        else f"{' or '.join(labels)} from a movie poster, with Grad-CAM"
    )
    return text if len(text) <= 60 else text[:59] + "…"  # Spaces cap it at 60 characters


def export_space(run: str | Path, out: Path) -> Path:
    """Write a Hugging Face Space bundle for ``run`` into the new folder ``out``; returns ``out``.

    The folder is assembled beside ``out`` and renamed into place, so a failed export leaves nothing.
    """
    run = Path(run)
    load_model_folder(run)  # fails early, with the usual message, on an unfinished or unsafe run
    info = read_json(run / "model.json")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PosterlabError(f"{out}: exists and is not empty; pick a new folder or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    name = run.resolve().name

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as scratch:
        bundle = Path(scratch) / "bundle"
        bundle.mkdir()
        _vendor_package(bundle / "posterlab")
        _copy_run(run, bundle / "runs" / name)
        _copy_examples(bundle / "examples")
        gallery = 0
        if info["rule"]["task"] == "binary":
            gallery = _gallery_subset(bundle / "gallery", tuple(info["rule"]["labels"]))
        values = {
            "run_name": name,
            "title": "posterlab: "
            + ("poster genres" if info["rule"]["task"] == "multilabel" else "fresh or rotten"),
            # the Space runs the gradio this demo was written and tested with
            "gradio_version": importlib.metadata.version("gradio"),
            "python_version": ".".join(platform.python_version_tuple()[:2]),
            "short_description": _short_description(info),
            "backbone": info["backbone"],
            "labels": ", ".join(info["rule"]["labels"]),
            "gallery": f"{gallery} labelled posters for the fresh-or-rotten view" if gallery else "none",
        }
        for template in ("app.py", "README.md"):
            text = Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values)
            (bundle / template).write_text(text, encoding="utf-8")
        requirements = space_requirements()
        (bundle / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
        stray = [p for p in bundle.rglob("*") if p.suffix in (*PICKLE_SUFFIXES, ".pyc")]
        if stray:
            raise RunError(f"{stray[0]}: a pickled file would ship in the bundle; remove it from {run}")
        if out.exists():
            out.rmdir()
        os.replace(bundle, out)
    log.info("wrote the Space bundle %s (%s)", out, ", ".join(requirements))
    return out


def push_space(folder: str | Path, repo_id: str) -> str:
    """Upload a bundle to the Space ``repo_id`` (created when missing); returns the Space's URL.

    Needs a Hugging Face token: ``HF_TOKEN`` or a saved ``hf auth login``.
    """
    folder = Path(folder)
    if not (folder / "app.py").is_file() or not (folder / "README.md").is_file():
        raise PosterlabError(
            f"{folder}: not a Space bundle; create one with posterlab export RUN --format space --out DIR"
        )
    from posterlab.hub import upload

    upload(folder, repo_id, "space", create={"space_sdk": "gradio"})
    return f"https://huggingface.co/spaces/{repo_id}"
