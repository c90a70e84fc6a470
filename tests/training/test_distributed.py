"""Several processes on torch.distributed (gloo on this CPU; the same code runs NCCL on GPUs), launched by
torchrun as users launch them: the same run as one process, two "machines" on loopback, a worker killed and
the group restarted, a stop that reaches every rank, and rank 1 writing nothing but cache entries.

Each launch is a real torchrun job (c10d rendezvous on 127.0.0.1; the second "machine" is 127.0.0.2), kept
tiny: the small CNN from scratch on part of the embedded sample.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posterlab import faults
from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig, to_dict
from posterlab.launch import torchrun_command, worker_environment
from posterlab.runs import load_run
from posterlab.training.trainer import resume_run, train_run
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(600)


def test_the_write_audit_sees_a_write_outside_the_allowed_folders(tmp_path):
    """The check the torchrun tests rely on (rank 1 writes only into the cache) can fail."""
    (tmp_path / "cache").mkdir()
    env = {**os.environ, **faults.audit_writes(tmp_path), "RANK": "1"}
    code = f"open({str(tmp_path / 'out.txt')!r}, 'w'); open({str(tmp_path / 'cache' / 'in.txt')!r}, 'w')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert faults.written_outside(tmp_path, 1, tmp_path / "cache") == [str(tmp_path / "out.txt")]
    assert faults.written_outside(tmp_path, 0, tmp_path / "cache") == []


def _config(name: str, epochs: int = 3, mode: str = "full", limit: int | None = 120) -> RunConfig:
    return RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=4), limit=limit),
        TrainConfig(
            backbone="posterlab_small_cnn",
            pretrained=False,
            mode=mode,
            epochs=epochs,
            batch_size=16,
            lr=3e-3,
            patience=0,
            num_workers=0,
            flip_views=False,
        ),
        name=name,
    )


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """Environment for torchrun jobs: their own checkpoints folder and cache, gloo on loopback, audited."""
    checkpoints = tmp_path / "checkpoints"
    env = {
        **worker_environment(True),
        "POSTERLAB_CHECKPOINTS": str(checkpoints),
        **faults.audit_writes(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    return {"env": env, "checkpoints": checkpoints, "tmp": tmp_path}


def _config_file(cluster: dict, config: RunConfig) -> Path:
    path = cluster["tmp"] / f"{config.name}.json"
    path.write_text(json.dumps(to_dict(config)))
    return path


def _launch(
    cluster: dict, args: list[str], nproc: int = 2, log: str = "torchrun", **kwargs
) -> subprocess.Popen:
    command = torchrun_command(args, nproc, **kwargs)
    output = open(cluster["tmp"] / f"{log}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        command, env=cluster["env"], stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )


def _finish(cluster: dict, process: subprocess.Popen, log: str = "torchrun", timeout: float = 400) -> None:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [p for p in _pids() if _descends_from(p, process.pid)]:  # torchrun's workers too
            os.kill(pid, signal.SIGKILL)
        raise
    output = (cluster["tmp"] / f"{log}.log").read_text()
    assert code == 0, output[-4000:]


def _wait_for(predicate, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


EPOCHS = 8


def test_two_processes_learn_what_one_does_stop_on_every_rank_and_resume_on_one(
    cluster, runs_root, monkeypatch
):
    """2 processes started as the Train page starts them (a torchrun job followed through the run folder's
    event log), the same global batch and seed as 1: same labels and split, close validation mAP; Stop
    ends every rank at one batch boundary; the stopped run resumes on a single process; rank 1 wrote
    nothing but cache entries."""
    from posterlab.errors import BusyError
    from posterlab.training.manager import TrainingManager

    for key, value in cluster["env"].items():
        monkeypatch.setenv(key, value)
    manager = TrainingManager(cluster["checkpoints"])
    # 8 epochs: a Stop sent once the first epoch shows lands before the last one, however fast they run
    manager.start(_config("two-procs", epochs=EPOCHS), processes=2)
    with pytest.raises(BusyError):  # one run at a time, whatever its kind
        manager.start(_config("another"))
    run_dir = cluster["checkpoints"] / "two-procs"
    _wait_for(lambda: manager.snapshot().history, what="the first epoch in the followed events")
    manager.stop()
    manager.join(timeout=300)
    snapshot = manager.snapshot()
    assert snapshot.status == "stopped" and snapshot.processes == 2 and snapshot.history, snapshot
    two = load_run(run_dir)
    assert two.state == "stopped" and 1 <= len(two.history) < EPOCHS
    assert two.environment["world_size"] == 2 and two.environment["backend"] == "gloo"
    assert two.environment["per_process_batch"] == 8
    records = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    events = [record["type"] for record in records]
    assert events[0] == "Started" and "EpochEnd" in events and events[-1] == "Finished"
    honoured = [
        r["text"] for r in records if r["type"] == "Message" and r["text"].startswith("stop honoured")
    ]
    assert len(honoured) == 1, honoured
    landed = re.search(r"batch (\d+) of \d+ \(noticed here at batch (\d+)\)", honoured[0])
    if landed:  # rank 0 saw the request itself in this epoch: the ranks agree one batch later at most
        assert int(landed[1]) - int(landed[2]) <= 1, honoured[0]
    assert not faults.written_outside(cluster["tmp"], 1, cluster["env"]["POSTERLAB_CACHE_DIR"])

    one = load_run(train_run(_config("one-proc", epochs=EPOCHS), runs_root))  # the same run in one process
    assert json.loads((run_dir / "split.json").read_text()) == json.loads(
        (one.path / "split.json").read_text()
    )
    assert two.metrics["labels"] == one.metrics["labels"]
    first_two, first_one = two.history[0], one.history[0]
    # rank 0 draws augmentation and dropout as the single process does, rank 1 its own stream: close, not equal
    assert abs(first_two["val_map"] - first_one["val_map"]) <= 0.03
    assert first_two["train_loss"] == pytest.approx(first_one["train_loss"], rel=0.05)

    resume_run(run_dir)  # a different number of processes than it started with
    resumed = load_run(run_dir)
    assert resumed.state == "completed" and [row["epoch"] for row in resumed.history] == [
        *range(1, EPOCHS + 1)
    ]
    assert {row["session"] for row in resumed.history} == {0, 1}


def test_two_machines_on_loopback(cluster):
    """--nnodes 2 with a c10d rendezvous: one process on "127.0.0.1", one on "127.0.0.2"; a probe whose
    embeddings both extract, sharded, into the shared cache."""
    config = _config("two-nodes", epochs=2, mode="probe", limit=80)
    endpoint = f"127.0.0.1:{free_port()}"
    args = [
        "--config",
        str(_config_file(cluster, config)),
        "--out",
        str(cluster["checkpoints"] / "two-nodes"),
        "-q",
    ]
    nodes = [
        _launch(
            cluster,
            args,
            nproc=1,
            log=f"node{i}",
            nnodes="2",
            endpoint=endpoint,
            rdzv_id="two-nodes",
            local_addr=address,
        )
        for i, address in enumerate(("127.0.0.1", "127.0.0.2"))
    ]
    for i, node in enumerate(nodes):
        _finish(cluster, node, log=f"node{i}")
    run = load_run(cluster["checkpoints"] / "two-nodes")
    assert run.state == "completed" and run.environment["world_size"] == 2 and run.metrics["cached_inputs"]
    assert not faults.written_outside(cluster["tmp"], 1, cluster["env"]["POSTERLAB_CACHE_DIR"])


@pytest.mark.parametrize(
    ("phase", "mode"),
    [("first-epoch", "full"), ("later-epoch", "full"), ("extracting", "probe")],
)
def test_a_killed_worker_costs_at_most_its_phase(cluster, phase, mode):
    """SIGKILL of rank 1 (posterlab.faults) before any checkpoint, after one, or in the middle of a probe's
    extraction: torchrun (--max-restarts 1) restarts the group, which carries on in the same folder (from the
    start, or from the last finished epoch); the run completes and loads, at most one epoch is repeated, and
    the history shows the restart."""
    config = _config(f"killed-{phase}", epochs=3, mode=mode, limit=120)
    run_dir = cluster["checkpoints"] / config.name
    cluster["env"]["POSTERLAB_FAULT"] = f"{phase}@1"
    # a cache of its own: the session's may already hold these embeddings, and then nothing is extracted
    cluster["env"]["POSTERLAB_CACHE_DIR"] = str(cluster["tmp"] / "cache")
    process = _launch(
        cluster,
        ["--config", str(_config_file(cluster, config)), "--out", str(run_dir), "-q"],
        log=phase,
        max_restarts=1,
    )
    _finish(cluster, process, log=phase)
    output = (cluster["tmp"] / f"{phase}.log").read_text()
    assert "SIGKILL" in output or "-9" in output, output[-3000:]  # the kill happened
    run = load_run(run_dir)
    assert run.state == "completed" and [row["epoch"] for row in run.history] == [1, 2, 3]
    sessions = [row["session"] for row in run.history]
    assert sessions == (
        [0, 1, 1] if phase == "later-epoch" else [0, 0, 0]
    )  # restarted from scratch: session 0
    assert json.loads((run_dir / "status.json").read_text())["restarts"] == 1
    assert not (run_dir / "lease.json").exists()  # the folder was given up at the end
    from posterlab.inference import Predictor

    assert Predictor(run_dir).labels == tuple(run.metrics["labels"])


def test_a_stop_pressed_before_a_torchrun_job_started_is_not_lost(cluster, monkeypatch):
    """The Train page's Stop, clicked before the torchrun workers reported ``Started``: the request waits
    in the run folder and the job ends stopped at its first check, on every rank."""
    from posterlab.training.manager import TrainingManager

    for key, value in cluster["env"].items():
        monkeypatch.setenv(key, value)
    manager = TrainingManager(cluster["checkpoints"])
    manager.start(_config("early-stop", epochs=3), processes=2)
    manager.stop()  # at once: the processes are not even started
    manager.join(timeout=300)
    snapshot = manager.snapshot()
    assert snapshot.status == "stopped" and not snapshot.history, snapshot
    run = load_run(cluster["checkpoints"] / "early-stop")
    assert run.state == "stopped" and run.status["reason"] == "stop requested"
    assert not (run.path / "stop.request").exists() and not (run.path / "lease.json").exists()


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _rank_pid(launcher: int, rank: int) -> int:
    """The pid of the worker with ``RANK=rank`` among the launcher's descendants."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            worker = f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b"\0".join(environ)
            if worker and _descends_from(int(entry.name), launcher):
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank}")


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def test_the_shorthand_relaunches_under_torchrun(tmp_path, monkeypatch):
    """``posterlab train --nproc-per-node 2 ...`` runs ``relaunch``: torchrun with the same run handed over
    as a config file and a run folder named before launching, a rendezvous id of its own on one machine, a
    fresh store per restart and the launch time (a Stop asked for before the workers start is kept)."""
    from posterlab import cli, launch

    seen = {}

    class FakeTorchrun:
        def __init__(self, command, env):
            config = Path(command[command.index("--config") + 1])
            seen.update(command=command, env=env, config=json.loads(config.read_text()))
            self.returncode = 0

        def wait(self):
            return 0

        def send_signal(self, signum):
            raise AssertionError("no signal expected")

    monkeypatch.setattr(launch.subprocess, "Popen", FakeTorchrun)
    monkeypatch.setenv("POSTERLAB_CHECKPOINTS", str(tmp_path))
    argv = ["train", "--data", "sample", "--genres", "4", "--epochs", "2", "--nproc-per-node", "2"]
    assert cli.main([*argv, "--max-restarts=1", "--name", "short"]) == 0
    command, env = seen["command"], seen["env"]
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert (
        command[command.index("--nproc-per-node") + 1] == "2"
        and command[command.index("--max-restarts") + 1] == "1"
    )
    assert (
        command[command.index("--rdzv-id") + 1] == "short"
    )  # not the shared default: the lease tells jobs apart
    assert any(part.startswith("127.0.0.1:") for part in command)  # one machine: rendezvous on loopback
    assert command[command.index("--out") + 1] == str(tmp_path / "short")
    assert "--nproc-per-node" not in command[command.index("posterlab") :]  # the workers do not relaunch
    assert seen["config"]["train"]["epochs"] == 2 and seen["config"]["data"]["labels"]["top_n"] == 4
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and float(env["POSTERLAB_LAUNCHED_AT"]) > 0
