"""A run's liveness never lies: a trainer holds its run folder by a lease with a heartbeat written from a
side thread, whatever the loop is doing; readers trust the heartbeat alone; resume, delete and a second
trainer are refused while it is alive, and a dead trainer reads as interrupted within a minute."""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posterlab import runs
from posterlab.errors import RunError
from posterlab.events import EpochEnd, Finished
from posterlab.runs import Lease, RunFolder, delete_run, load_run, read_lease
from posterlab.training.trainer import resume_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def finished_copy(genre_run, tmp_path):
    """A copy of a finished run, made to look like it is still training."""
    import shutil

    path = tmp_path / genre_run.name
    shutil.copytree(genre_run, path)
    status = json.loads((path / "status.json").read_text())
    status.update(status="running", updated="2020-01-01T00:00:00+00:00")  # an epoch far longer than 5 min
    (path / "status.json").write_text(json.dumps(status))
    return path


def _hold(path: Path) -> subprocess.Popen:
    """Another process that takes the run's lease and keeps it (heartbeat every 0.2 s) until killed."""
    code = (
        "import sys, time; from posterlab.runs import Lease; lease = Lease(every=0.2); "
        f"lease.acquire({str(path)!r}); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_live_trainer_is_running_however_old_its_last_status_and_nothing_else_may_touch_it(finished_copy):
    from posterlab.training.trainer import resume_run

    holder = _hold(finished_copy)
    try:
        first = read_lease(finished_copy)["heartbeat"]
        time.sleep(0.6)
        assert read_lease(finished_copy)["heartbeat"] > first  # the side thread beats
        run = load_run(finished_copy)
        assert run.state == "running" and run.status["owner"]["pid"] == holder.pid
        expected = f"is being trained by process {holder.pid} on {socket.gethostname()}"
        for attempt in (lambda: resume_run(finished_copy), lambda: delete_run(finished_copy)):
            with pytest.raises(RunError, match=expected):
                attempt()
        with pytest.raises(RunError, match=expected):  # a second trainer in this process
            Lease().acquire(finished_copy)
    finally:
        holder.kill()
        holder.wait()
    run = load_run(finished_copy)  # its process is gone from this host: interrupted at once
    assert run.state == "failed" and run.status["error"].startswith("interrupted")


def test_a_silent_heartbeat_from_another_host_is_dead_after_the_stale_age(finished_copy, monkeypatch):
    stale = {"token": "x", "pid": 1, "host": "node-7", "heartbeat": time.time() - runs.LEASE_STALE_S - 1}
    (finished_copy / "lease.json").write_text(json.dumps(stale))
    assert load_run(finished_copy).state == "failed"  # interrupted: resumable
    (finished_copy / "lease.json").write_text(json.dumps({**stale, "heartbeat": time.time()}))
    assert load_run(finished_copy).state == "running"  # another machine's live trainer: trusted
    with pytest.raises(RunError, match="process 1 on node-7"):
        delete_run(finished_copy)


def test_a_later_attempt_of_the_same_torchrun_job_takes_over_an_earlier_attempts_lease(tmp_path, monkeypatch):
    other_host = {
        "token": "y",
        "pid": 1,
        "host": "node-7",
        "heartbeat": time.time(),
        "job": "job-1",
        "attempt": 0,
    }
    (tmp_path / "lease.json").write_text(json.dumps(other_host))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")
    with pytest.raises(RunError):  # another job, same folder
        Lease().acquire(tmp_path)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with Lease(every=0.1) as lease:
        lease.acquire(tmp_path)
        assert read_lease(tmp_path)["attempt"] == 1
    assert read_lease(tmp_path) is None  # released


def test_a_stop_asked_for_before_the_session_counts_only_when_it_is_newer_than_the_launch(tmp_path):
    from posterlab.training.trainer import StopSignal

    folder = RunFolder(tmp_path)
    folder.request_stop()
    old = time.time() - 3600
    os.utime(tmp_path / runs.STOP_FILE, (old, old))  # left by a session killed mid-stop
    assert not StopSignal(folder, lambda: False, since=time.time())()
    folder.request_stop()  # asked for after the launch (the workers may not be up yet)
    assert StopSignal(folder, lambda: False, since=time.time() - 5)()


def test_a_command_line_run_killed_before_its_first_checkpoint_reads_interrupted_and_resumes(tmp_path):
    """SIGKILL (posterlab.faults) a batch into epoch 1 of ``posterlab train``: the run reads as interrupted at
    once (its process is gone), and ``--resume`` starts it over in the same folder and completes it."""
    run_dir = tmp_path / "killed"
    train = [sys.executable, "-m", "posterlab", "train", "--data", "sample", "--genres", "4", "--limit", "80"]
    train += ["--backbone", "posterlab_small_cnn", "--no-pretrained", "--mode", "full", "--epochs", "2"]
    train += ["--num-workers", "0", "--out", str(run_dir), "-q"]
    killed = subprocess.run(
        train, env={**os.environ, "POSTERLAB_FAULT": "first-epoch"}, cwd=ROOT, timeout=600
    )
    assert killed.returncode == -9
    run = load_run(run_dir)
    assert run.state == "failed" and run.status["error"].startswith("interrupted")
    resumed = subprocess.run(
        [sys.executable, "-m", "posterlab", "train", "--resume", str(run_dir), "-q"], cwd=ROOT, timeout=600
    )
    assert resumed.returncode == 0
    run = load_run(run_dir)
    assert run.state == "completed" and [row["epoch"] for row in run.history] == [1, 2]


def test_a_run_killed_as_it_finishes_resumes_without_training_again(tmp_path):
    """SIGKILL once every file of a finished run is written, before its status says completed: it read as
    interrupted with its checkpoint already deleted, and Resume trained it again from epoch 1. The checkpoint
    now goes only after the status: Resume finds the last epoch's, trains nothing and completes it."""
    run_dir = tmp_path / "finishing"
    train = [sys.executable, "-m", "posterlab", "train", "--data", "sample", "--genres", "4", "--limit", "80"]
    train += ["--backbone", "posterlab_small_cnn", "--no-pretrained", "--mode", "full", "--epochs", "2"]
    train += ["--num-workers", "0", "--out", str(run_dir), "-q"]
    killed = subprocess.run(train, env={**os.environ, "POSTERLAB_FAULT": "finishing"}, cwd=ROOT, timeout=600)
    assert killed.returncode == -9
    killed_run = load_run(run_dir)
    assert killed_run.state == "failed" and (run_dir / "resume.safetensors").exists()
    # the time of the killed session, up to its last checkpoint, is counted in the next one's
    assert killed_run.status["seconds"] > 0, killed_run.status
    trained = []
    resume_run(run_dir, on_event=lambda event: trained.append(event) if isinstance(event, EpochEnd) else None)
    run = load_run(run_dir)
    assert run.state == "completed" and trained == [], trained
    assert run.status["seconds_before"] == killed_run.status["seconds"] < run.status["seconds"]
    assert [row["epoch"] for row in run.history] == [1, 2] and not (run_dir / "resume.safetensors").exists()


def test_sigterm_to_the_whole_job_stops_an_image_run_gracefully(tmp_path):
    """Slurm, ``timeout`` and systemd send SIGTERM to every process of a job, the data-loader processes
    too: they died, and the run the main process was stopping read 'failed: DataLoader worker ... killed
    by signal: Terminated'. It must read stopped, resumable."""
    import signal

    run_dir = tmp_path / "terminated"
    train = [sys.executable, "-m", "posterlab", "train", "--data", "sample", "--genres", "4", "--limit", "80"]
    train += ["--backbone", "posterlab_small_cnn", "--no-pretrained", "--mode", "full", "--epochs", "200"]
    train += ["--patience", "0", "--num-workers", "1", "--out", str(run_dir), "-q"]
    job = subprocess.Popen(train, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "history.json").exists():  # an epoch done: the loader's processes are up
            assert job.poll() is None and time.monotonic() < deadline, "the run ended or never trained"
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGTERM)  # the whole job, as a scheduler does
        assert job.wait(timeout=300) == 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    run = load_run(run_dir)
    assert run.state == "stopped", run.status
    assert (run_dir / "resume.safetensors").exists()


# ------------------------------------------------------------------------------------ collectives


def test_collectives_refuse_tensors_their_backend_does_not_serve():
    import torch

    from posterlab.training.distributed import Dist, backend_for

    nccl_only = Dist(rank=0, world=2, backend="nccl")
    with pytest.raises(RuntimeError, match="a cpu tensor in a collective of a nccl process group"):
        nccl_only._checked(torch.zeros(1))
    gpu_group = Dist(rank=0, world=2, backend=backend_for(cuda=True))
    assert gpu_group.served == {"cpu", "cuda"}  # the stop vote's CPU flag is served on GPU runs
    assert gpu_group._checked(torch.zeros(1)) is not None
    assert Dist(rank=0, world=2, backend=backend_for(cuda=False)).served == {"cpu"}


def test_a_gpu_group_is_made_with_both_backends_and_each_rank_seeds_its_own_augmentation(monkeypatch):
    import torch
    import torch.distributed as torch_dist

    from posterlab.training import distributed

    made = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: made.setdefault("device", index))
    monkeypatch.setattr(torch_dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        torch_dist, "init_process_group", lambda backend, timeout: made.setdefault("backend", backend)
    )
    dist = distributed.from_environment("auto")
    assert made == {"device": 1, "backend": "cpu:gloo,cuda:nccl"}
    assert dist.backend == "cpu:gloo,cuda:nccl" and dist.seed_offset == 1


def test_every_collective_goes_through_dist():
    """torch.distributed's collectives are called in distributed.py alone, where each tensor is placed on a
    device the backend serves (the multi-GPU probe crashed on a CPU tensor a caller chose)."""
    collectives = {
        "all_reduce",
        "all_gather",
        "broadcast",
        "broadcast_object_list",
        "barrier",
        "reduce",
        "all_gather_object",
        "gather",
        "scatter",
        "all_to_all",
        "reduce_scatter",
    }
    offenders = []
    for path in (ROOT / "posterlab").rglob("*.py"):
        if path.name == "distributed.py":
            continue
        tree = ast.parse(path.read_text())
        aliases = {  # names this module binds to torch.distributed
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
            if (isinstance(node, ast.Import) and alias.name == "torch.distributed")
            or (isinstance(node, ast.ImportFrom) and node.module == "torch" and alias.name == "distributed")
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr in collectives):
                continue
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id in aliases) or (
                isinstance(owner, ast.Attribute) and owner.attr == "distributed"
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
    assert not offenders


def test_the_stop_vote_answers_one_batch_later_on_every_rank(monkeypatch):
    """Under several processes the stop flag is all-reduced without waiting and read a batch later."""
    import torch
    import torch.distributed as torch_dist

    from posterlab.training.distributed import Dist, StopVote

    class Done:
        def wait(self):
            return True

    peer_flags = iter([0.0, 1.0, 0.0, 0.0])  # the other rank asks for a stop at its second batch

    def all_reduce(tensor, op=None, async_op=False):
        assert async_op and tensor.device.type == "cpu"
        tensor.copy_(torch.maximum(tensor, torch.tensor([next(peer_flags)])))
        return Done()

    monkeypatch.setattr(torch_dist, "all_reduce", all_reduce)
    vote = StopVote(Dist(rank=0, world=2, backend="cpu:gloo,cuda:nccl"))
    assert [vote.ask(False) for _ in range(3)] == [False, False, True]
    assert vote.settle() is False


def test_two_starters_at_once_never_both_hold_a_run(tmp_path):
    """Two trainers acquiring one run folder at the same moment: both could read 'no holder', write their
    lease and read their own back (the last writer's check came after the first's), and both trained it."""
    import threading

    for attempt in range(30):
        folder = tmp_path / f"run-{attempt}"
        folder.mkdir()
        both = threading.Barrier(2)
        held: list[Lease] = []

        def start(folder=folder, both=both, held=held) -> None:
            lease = Lease(every=60)
            both.wait()
            try:
                lease.acquire(folder)
                held.append(lease)
            except RunError:
                pass

        threads = [threading.Thread(target=start) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(held) == 1, f"attempt {attempt}: {len(held)} holders"
        held[0].release()


@pytest.mark.parametrize("at", [1, 3])
def test_a_trainer_whose_run_was_taken_over_stops_and_writes_nothing_more(tmp_path, at):
    """A trainer paused past the stale age (SIGSTOP, a suspended laptop) loses its run to another trainer.
    Awake again, it used to train on and write its checkpoints, status and events into the new holder's
    run. Here another trainer's lease lands as epoch ``at`` ends (the last: nothing is left to train): the
    run stops with an error that says so, and the folder is as the new holder left it."""
    from posterlab.config import DataConfig, LabelConfig, RunConfig, TrainConfig
    from posterlab.training.trainer import train_run

    config = RunConfig(
        DataConfig(path="sample", labels=LabelConfig(top_n=4)),
        TrainConfig(
            backbone="posterlab_small_cnn",
            pretrained=False,
            mode="full",
            epochs=3,
            patience=0,
            batch_size=16,
            flip_views=False,
            num_workers=0,
        ),
        name="taken",
    )
    folder = tmp_path / "taken"
    seen: dict = {}

    def take_over(event) -> None:
        if isinstance(event, EpochEnd) and event.epoch == at and not seen:
            holder = {"token": "new", "pid": 1, "host": "node-7", "heartbeat": time.time()}
            (folder / "lease.json").write_text(json.dumps(holder))
            seen["files"] = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    events: list = []
    with pytest.raises(RunError, match="another trainer took this run over"):
        train_run(config, tmp_path, on_event=lambda event: (events.append(event), take_over(event)))
    assert seen, f"epoch {at} never ended"
    assert not any(isinstance(event, Finished) for event in events)  # no "failed": it trains on elsewhere
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for name in ("status.json", "events.jsonl", "history.json", "lease.json"):
        if name in seen["files"] or name in after:
            assert after.get(name) == seen["files"].get(name), f"{name} was written after the takeover"
    assert json.loads(after["status.json"])["status"] == "running"  # the new holder's run: not "failed"
    assert json.loads(after["lease.json"])["token"] == "new"
