"""The Hub round trip, offline: the committed genre run exported as a timm model folder, loaded by plain
timm in a process that never imports posterlab, gives the Predictor's logits (view by view) and, with
the card's recipe, its averaged probabilities; posterlab reads the folder back as a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from posterlab import cli
from posterlab.errors import ModelError, PosterlabError
from posterlab.hub import export_hub, local_run, push_hub
from posterlab.inference import Predictor
from tests.conftest import SAMPLE

RUN = Path(__file__).resolve().parents[1] / "checkpoints" / "demo-genres"
POSTERS = sorted((SAMPLE / "images").glob("*.jpg"))[20:32]  # real posters, not the export's own check set

# plain timm, as a user runs it: per-view logits of every poster, and the card's averaged probabilities
PLAIN_TIMM = textwrap.dedent(
    """
    import json, sys
    import numpy as np, timm, torch
    from PIL import Image

    folder, posters, out = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
    assert "posterlab" not in sys.modules
    model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
    config = timm.data.resolve_data_config(model=model)
    fits = json.load(open(folder + "/config.json"))["posterlab"]["model"]["fits"]
    views = {"crop": dict(crop_mode="center"), "pad": dict(crop_mode="border", crop_pct=1.0),
             "squash": dict(crop_mode="squash", crop_pct=1.0)}
    logits = []
    for path in posters:
        image = Image.open(path).convert("RGB")
        batch = torch.stack([timm.data.create_transform(**{**config, **views[f]})(image) for f in fits])
        with torch.inference_mode():
            logits.append(model(batch).numpy())
    np.save(out, np.stack(logits))  # (posters, views, labels)
    json.dump({"labels": model.pretrained_cfg["label_names"], "num_classes": model.num_classes,
               "crop": timm.data.create_transform(**config)(Image.open(posters[0]).convert("RGB")).tolist()},
              open(out + ".json", "w"))
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hub") / "demo-genres"
    report = export_hub(RUN, out)
    assert report["max_abs_diff"] <= 1e-4
    return out


def test_plain_timm_loads_the_export_with_posterlabs_logits(exported, tmp_path):
    script = tmp_path / "plain_timm.py"
    script.write_text(PLAIN_TIMM)
    out = tmp_path / "logits.npy"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # plain timm: posterlab not importable
    done = subprocess.run(
        [sys.executable, str(script), str(exported), ",".join(map(str, POSTERS)), str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    timm_logits = np.load(out)
    facts = json.loads(Path(str(out) + ".json").read_text())

    predictor = Predictor(RUN)
    assert facts["labels"] == list(predictor.labels) and facts["num_classes"] == len(predictor.labels)
    tensors = torch.stack([predictor.prepare(p)[1] for p in POSTERS])  # (posters, views, 3, H, W)
    # like with like: one forward pass per view, the same views the Predictor averages
    with torch.inference_mode():
        ours = predictor.model(tensors.flatten(0, 1)).view(len(POSTERS), len(predictor.fits), -1).numpy()
    assert timm_logits.shape == ours.shape == (len(POSTERS), 3, 6)
    assert np.abs(timm_logits - ours).max() <= 1e-4
    # timm's own transform from the exported pretrained_cfg is the run's primary (crop) view
    assert np.abs(np.asarray(facts["crop"]) - tensors[0, 0].numpy()).max() <= 1e-4
    # the card's recipe (mean of sigmoids over the fits) is the Predictor's probability
    averaged = (1 / (1 + np.exp(-timm_logits))).mean(axis=1)
    assert np.abs(averaged - predictor.probabilities(tensors)).max() <= 1e-4


def test_config_and_card(exported):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((exported / "config.json").read_text())
    model = json.loads((RUN / "model.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0" and config["num_classes"] == 6
    assert config["label_names"] == model["rule"]["labels"]
    assert (
        config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and config["pretrained_cfg"]["crop_pct"] == 0.875
    )
    assert config["posterlab"]["model"]["thresholds"] == model["thresholds"]
    assert config["posterlab"]["model"]["rule"] == model["rule"]
    test = config["posterlab"]["metrics"]["test"]
    assert test["n"] == 1303 and test["baseline"]["map"] < test["metrics"]["map"]
    card = (exported / "README.md").read_text()
    front = card.split("---")[1]
    for line in ("library_name: timm", "pipeline_tag: image-classification", "license: apache-2.0"):
        assert line in front
    for text in ("## How to load", 'timm.create_model("hf-hub:', "crop, pad, squash", "| Horror | 0.190 |"):
        assert text in card
    assert "| map | 0.546 | 0.254 |" in card and "## Limitations" in card and "## Training data" in card


def test_posterlab_reads_the_folder_back(exported, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTERLAB_CACHE_DIR", str(tmp_path / "cache"))
    images = [str(p) for p in POSTERS[:3]]
    assert cli.main(["predict", f"local-dir:{exported}", *images, "--json"]) == 0
    from_hub = json.loads(capsys.readouterr().out)
    assert cli.main(["predict", str(RUN), *images, "--json"]) == 0
    assert from_hub == json.loads(capsys.readouterr().out)

    # hf-hub: the same code path with the download replaced (the hub is not reachable here)
    import huggingface_hub

    asked = []
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append((repo, kw)) or str(exported)
    )
    folder = local_run("hf-hub:alice/poster-genres@v1")
    assert asked[0][0] == "alice/poster-genres" and asked[0][1]["revision"] == "v1"
    assert folder.name == "poster-genres" and Predictor(folder).labels == Predictor(RUN).labels


def test_refusals_and_errors(tmp_path, capsys):
    info = json.loads((RUN / "model.json").read_text())
    for change, reason in (
        ({"head": "mlp"}, "not one linear layer"),
        ({"backbone": "posterlab_small_cnn"}, "posterlab's own architecture, which plain timm cannot build"),
    ):
        run = tmp_path / f"run-{len(change)}-{next(iter(change.values()))}"
        run.mkdir()
        (run / "model.json").write_text(json.dumps({**info, **change}))
        with pytest.raises(ModelError, match=reason):
            export_hub(run, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    assert cli.main(["predict", "local-dir:/nonexistent/model", str(POSTERS[0])]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_push_builds_the_upload(exported, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PosterlabError, match="no Hugging Face token"):
        push_hub(exported, "alice/poster-genres")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    with pytest.raises(PosterlabError, match="not a model id"):
        push_hub(exported, "poster genres")
    assert push_hub(exported, "alice/poster-genres") == "https://huggingface.co/alice/poster-genres"
    assert calls[0] == (
        "init",
        {"token": "hf_test", "library_name": "timm", "library_version": calls[0][1]["library_version"]},
    )
    assert calls[1][:2] == ("create_repo", "alice/poster-genres") and calls[1][2]["repo_type"] == "model"
    upload = calls[2][1]
    assert upload["folder_path"] == str(exported) and upload["repo_type"] == "model"
    assert sorted(upload["allow_patterns"]) == ["README.md", "config.json", "model.safetensors"]


def test_the_cards_poster_counts_add_up():
    """A --limit 300 run's card said '7218 posters read, 235 labelled (65 dropped)': the posters left out by
    cleaning and the 300 drawn by the limit were not named, and the counts did not add up."""
    from posterlab.hub import _card_training

    data = {"read": 7218, "cleaning_dropped": 689, "labelled": 235, "label_dropped": 65}
    [line] = [
        x
        for x in _card_training(data, {"data": {"limit": 300}}, {"task": "multilabel"}, ["crop"])
        if "read" in x
    ]
    assert (
        "7218 posters read, 689 left out by cleaning, 300 drawn at random (limit), 235 labelled (65 dropped"
        in line
    )
