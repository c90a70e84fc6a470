"""A process that exits while posterlab's background threads work (a training run, the demo's model
warm-up) exits cleanly: the threads are stopped and joined before Python finalizes, so none is cut off
inside native code (which C++ answers with 'terminate called without an active exception', exit 134), and
the run ends stopped and resumable, not 'running' forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig
    from posterlab.demo import DemoState
    from posterlab.training.manager import TrainingManager

    runs = Path(sys.argv[1])
    config = RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=4)),
        TrainConfig(backbone="posterlab_small_cnn", pretrained=False, mode="full", epochs=50, batch_size=8,
                    num_workers=0, flip_views=False),
        name="left-running",
    )
    manager = TrainingManager(runs)
    manager.start(config)
    while not manager.snapshot().history:  # well into training: native code on the other thread
        time.sleep(0.1)
    DemoState(run=sys.argv[2]).warm()  # torch, timm and Grad-CAM loading on a third
    print("exiting", flush=True)
    """
)


def test_exiting_while_a_run_trains_and_the_demo_warms_up_is_clean(tmp_path, genre_run):
    runs = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(runs), str(genre_run)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    status = json.loads((runs / "left-running" / "status.json").read_text())
    assert status["status"] == "stopped" and (runs / "left-running" / "resume.safetensors").exists()
    assert not (runs / "left-running" / "lease.json").exists()
