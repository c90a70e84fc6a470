"""Run folders: self-describing, written atomically, loaded without unpickling anything.

::

    checkpoints/<run_id>/
      config.json        RunConfig + environment (versions, device, seed)
      status.json        running | completed | stopped | failed, error, progress
      lease.json         who trains the run now (pid, host, job) and its heartbeat, refreshed every few
                         seconds from a side thread; present only while a trainer holds the folder
      model.json         what a Predictor needs: backbone, head, label rule, thresholds, preprocessing
      model.safetensors  the weights (float32 or float16)
      history.json       one row per epoch
      metrics.json       validation and test metrics beside their baselines, per-label tables
      predictions.csv    validation and test scores per poster (for charts and galleries)
      split.json         which movie went to which split
      search.json        the hyper-parameter search's trials (runs with --search N); search.db its Optuna study
      events.jsonl       every progress event, one JSON object a line, appended as the run goes (rank 0)
      resume.safetensors weights, optimizer state and progress while a run can still be resumed (one
                         file, so a crash never leaves half a checkpoint)
      stop.request       a stop asked for (the app's Stop for multi-process runs); honoured when it is newer
                         than the session it is meant for, so a stale one never stops a later resume
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from posterlab import settings
from posterlab.config import RunConfig, from_dict
from posterlab.errors import RunError, one_line
from posterlab.models.weights import check_safetensors

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

STATUSES = ("running", "completed", "stopped", "failed")
HEARTBEAT_EVERY_S = 5.0  # how often the trainer's side thread refreshes its lease
LEASE_STALE_S = 30.0  # a lease not refreshed for this long belongs to a dead trainer
LEASE_FILE = "lease.json"
# set by a launcher (the app, ``--nproc-per-node``) for the processes it starts: when it asked for the run,
# so that a stop asked for before they started is honoured, and one older than that is not
LAUNCHED_AT = "POSTERLAB_LAUNCHED_AT"
INTERRUPTED = "interrupted: the process training it ended; resume it with posterlab train --resume RUN_DIR"
# files that would be unpickled by torch.load & co.: never opened, and named in the error instead
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
STOP_FILE = "stop.request"
RESUME_FILE = "resume.safetensors"
EVENTS_FILE = "events.jsonl"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def finite(value: Any) -> Any:
    """NaN/inf are not JSON; write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return finite(value.item())
    return value


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and ``os.replace``: readers never see half a file."""
    text = json.dumps(finite(data), indent=2, allow_nan=False)
    with _replacing(path) as temporary:
        temporary.write_text(text)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (that no other process or thread writes: the checkpoint writer and
    the trainer's own thread both write status.json) to write, then moved onto ``path``; removed if the
    write fails (a full disk kept a hidden partial checkpoint of four times the model, and stayed full)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: missing; the run folder is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{path}: not valid JSON ({error}); restore or delete the run") from None


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    from safetensors.torch import save_file

    with _replacing(path) as temporary:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(temporary), metadata=metadata
        )
        os.chmod(temporary, 0o644)  # safetensors writes owner-only files; run folders are meant to be shared


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything else (a pickle above all) is refused with a one-line error."""
    from safetensors.torch import load_file

    check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for malformed files
        raise RunError(
            f"{path}: unreadable safetensors file ({one_line(error, typed=False)}); re-save the weights"
        ) from None


def new_run_id(config: RunConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    backbone = config.train.backbone.split(".")[0].replace("tf_efficientnet_", "").replace("_", "-")
    return f"{stamp}-{backbone}-{config.train.mode}"


class RunFolder:
    """Writes one run's files. Only the training code writes; everything else reads via ``load_run``.

    ``writes=False`` (the other processes of a distributed run) makes every write a no-op: rank 0 alone
    writes the run folder. So does losing ``lease`` (the trainer's, when it holds one) to another trainer:
    the folder is then that trainer's."""

    def __init__(self, path: Path, writes: bool = True, lease: Lease | None = None) -> None:
        self.path = Path(path)
        self.writes = writes
        self.lease = lease

    def may_write(self) -> bool:
        """This process writes the folder: rank 0, and still the lease's holder (read at each write)."""
        return self.writes and (self.lease is None or self.lease.held())

    def check_held(self, look: bool = False) -> None:
        """Raise (``Lease.check``) once another trainer took the run over: the loop's per-batch check (what
        the heartbeat or a write found), or with ``look`` the lease file read now."""
        if self.lease is not None:
            if look:
                self.lease.held()
            self.lease.check()

    @classmethod
    def create(cls, root: Path, config: RunConfig, environment: dict[str, Any], lease: Lease) -> RunFolder:
        """A new run folder, held by ``lease`` from the start (a folder that already holds a run is
        refused: pick another name)."""
        name = config.name or new_run_id(config)
        path = Path(root) / name
        if (path / "config.json").exists():
            if not _never_started(path):
                raise RunError(f"{path}: a run with this name exists; pick another name or delete it")
            delete_run(path)  # a typo in --data must not take the name away from the corrected command
        path.mkdir(parents=True, exist_ok=True)
        lease.acquire(path)
        folder = cls(path, lease=lease)
        write_json(path / "config.json", {"run": _config_dict(config, name), "environment": environment})
        folder.set_status("running", started=now_iso())
        return folder

    def set_status(self, status: str, **fields: Any) -> None:
        assert status in STATUSES
        if not self.may_write():
            return
        current = {}
        if (self.path / "status.json").exists():
            current = read_json(self.path / "status.json")
        current.update(fields)
        current.update(status=status, updated=now_iso(), pid=os.getpid(), host=socket.gethostname())
        if status != "failed" and "error" not in fields:
            current.pop("error", None)
        write_json(self.path / "status.json", current)

    def write(self, name: str, data: Any) -> None:
        if self.may_write():
            write_json(self.path / name, data)

    def append_event(self, line: str) -> None:
        """One line of the event log (appended and flushed: a reader never sees half a line for long)."""
        if self.may_write():
            with open(self.path / EVENTS_FILE, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")

    def request_stop(self) -> None:
        """Ask the run's processes to stop at their next batch boundary (also before they started: a
        session honours any request made after it was launched)."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / STOP_FILE).write_text(now_iso())

    def stop_requested(self, since: float) -> bool:
        """A stop asked for at or after ``since`` (a time.time()); older requests are stale."""
        try:
            return (self.path / STOP_FILE).stat().st_mtime >= since - 1.0  # file systems round times
        except FileNotFoundError:
            return False

    def clear_stop(self) -> None:
        if self.may_write():
            (self.path / STOP_FILE).unlink(missing_ok=True)

    def save_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """The resume checkpoint: the tensors, and the rest as JSON in the file's metadata."""
        if self.may_write():
            save_tensors(self.path / RESUME_FILE, tensors, metadata={"resume": json.dumps(meta)})

    def remove_checkpoint(self) -> None:
        if self.may_write():
            (self.path / RESUME_FILE).unlink(missing_ok=True)

    def save_weights(self, state: dict[str, torch.Tensor], dtype: str = "float32") -> None:
        if not self.may_write():
            return
        import torch

        cast = torch.float16 if dtype == "float16" else torch.float32
        tensors = {k: (v.to(cast) if v.is_floating_point() else v) for k, v in state.items()}
        save_tensors(self.path / "model.safetensors", tensors, metadata={"format": "pt", "dtype": dtype})

    def write_predictions(self, frame: pd.DataFrame) -> None:
        if not self.may_write():
            return
        with _replacing(self.path / "predictions.csv") as temporary:
            frame.to_csv(temporary, index=False)


def _config_dict(config: RunConfig, name: str) -> dict:
    from posterlab.config import to_dict

    values = to_dict(config)
    values["name"] = name
    return values


def _job() -> str:
    """The torchrun job this process belongs to ('' outside torchrun): its rendezvous id."""
    return os.environ.get("TORCHELASTIC_RUN_ID", "")


def _attempt() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` itself while the block runs (no lock file left in it): between
    processes and between threads (each opens its own description). Without ``fcntl`` (Windows), none."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # and the lock with it


class Lease:
    """The right to train a run folder: one holder at a time, proven by a heartbeat.

    ``acquire`` writes ``lease.json`` (pid, host, torchrun job and attempt, heartbeat) and starts a side
    thread that refreshes the heartbeat every ``every`` seconds, whatever the training does (a 20-minute
    epoch, an extraction, an evaluation). A lease whose heartbeat is older than ``LEASE_STALE_S``, or whose
    process is gone from this host, is dead and may be taken; a live one is refused with its holder named.
    A later attempt of the same torchrun job takes over its predecessor's lease (torchrun restarts a group
    only after all its workers ended, perhaps on another machine).

    A holder paused for longer than that (a suspended laptop, SIGSTOP, a VM frozen for a snapshot) is
    presumed dead and may be taken over. When it wakes, ``lost`` is set (by the next heartbeat, or by
    ``held`` before any write to the folder): its folder writes nothing more and its training stops at the
    next batch with ``check``'s error. It used to train on and write into the new holder's run."""

    def __init__(self, every: float = HEARTBEAT_EVERY_S) -> None:
        self.every = every
        self.token = uuid.uuid4().hex
        self.path: Path | None = None
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, folder: Path) -> None:
        folder = Path(folder)
        with _locked(folder):  # look and write as one step: two starters at once both
            holder = read_lease(folder)  # saw no holder, both wrote, and both read their own lease back
            if holder is not None and holder.get("token") != self.token and lease_alive(holder):
                same_job = (
                    holder.get("job")
                    and holder.get("job") == _job()
                    and _attempt() > holder.get("attempt", 0)
                )
                if not same_job:
                    raise RunError.busy(folder, holder)
            self.path = folder / LEASE_FILE
            self._beat(started=now_iso())
            self.lost.clear()
        self._done.clear()
        self._thread = threading.Thread(target=self._loop, name="posterlab-heartbeat", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether the lease file still names this holder (read now: False once another took it over; a
        file that went missing is not taken as a takeover)."""
        if self.lost.is_set():
            return False
        holder = read_lease(self.path.parent) if self.path is not None else None
        if holder is not None and holder.get("token") != self.token:
            self.lost.set()  # said once, by ``check``'s error
            log.info("%s: another trainer took this run over; this process writes nothing more", self.path)
        return not self.lost.is_set()

    def check(self) -> None:
        """Raise once the lease is lost (see the class docstring)."""
        if self.lost.is_set():
            folder = self.path.parent if self.path is not None else "the run folder"
            raise RunError(
                f"{folder}: another trainer took this run over while this process went "
                f"{LEASE_STALE_S:.0f} s without a heartbeat (was it paused or suspended?); this process "
                "stopped without writing to the folder again: follow the run where it trains now"
            )

    def _beat(self, started: str | None = None) -> None:
        assert self.path is not None
        if started is None:
            with _locked(self.path.parent):  # the look and the write as one step, as ``acquire`` does
                current = read_lease(self.path.parent) or {}
                if not self.held() or current.get("token") != self.token:
                    return  # taken over (we were presumed dead), or gone: never write over a new holder
                self._write(current.get("started"))
            return
        self._write(started)

    def _write(self, started: str | None) -> None:
        assert self.path is not None
        write_json(
            self.path,
            {
                "token": self.token,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "job": _job(),
                "attempt": _attempt(),
                "started": started,
                "heartbeat": time.time(),
            },
        )

    def _loop(self) -> None:
        while not self._done.wait(self.every) and not self.lost.is_set():
            try:
                self._beat()
            except OSError as error:  # a full disk or a vanished folder must not kill the run
                log.warning("heartbeat not written: %s", error)

    def release(self) -> None:
        """Stop the heartbeat and give the folder up (the lease file goes if it is still ours)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.path is not None:
            holder = read_lease(self.path.parent)
            if holder is not None and holder.get("token") == self.token:
                self.path.unlink(missing_ok=True)
            self.path = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_) -> None:
        self.release()


def read_lease(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / LEASE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def lease_alive(holder: dict) -> bool:
    """A heartbeat younger than ``LEASE_STALE_S`` from a process that, on this host, still exists."""
    age = time.time() - float(holder.get("heartbeat") or 0)
    if age > LEASE_STALE_S:
        return False
    if holder.get("host") == socket.gethostname():
        return _pid_alive(holder.get("pid"))
    return True


def check_not_live(folder: Path, doing: str) -> None:
    """Refuse ``doing`` (resume, delete) on a run folder another trainer holds."""
    holder = read_lease(folder)
    if holder is not None and lease_alive(holder):
        raise RunError.busy(Path(folder), holder, doing)


@dataclass
class Run:
    """A run folder as read back: everything the app, the CLI and a Predictor need."""

    path: Path
    config: RunConfig
    environment: dict
    status: dict
    model: dict | None = None
    metrics: dict | None = None
    history: list[dict] = field(default_factory=list)
    data: dict | None = None  # data.json: what the run was trained on (sizes, counts, cleaning)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        return self.status.get("status", "failed")

    def predictions(self) -> pd.DataFrame | None:
        """Validation and test scores per poster (``predictions.csv``), image paths located."""
        path = self.path / "predictions.csv"
        if not path.exists():
            return None
        table = pd.read_csv(path, dtype={"id": str, "split": str, "truth": str})
        table["image"] = table["image"].map(locate_image)
        return table


def read_splits(path: str | Path) -> dict[str, set[str]]:
    """A run's split (``split.json``: split name → poster ids); empty for folders without one (bundles)."""
    file = Path(path) / "split.json"
    if not file.is_file():
        return {}
    return {name: {str(i) for i in ids} for name, ids in read_json(file).items()}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def locate_image(path: str) -> str:
    """A stored poster path, or the embedded sample's copy of the same file when the original is not on
    this machine (the committed demo runs were evaluated on posters the sample carries)."""
    if Path(path).is_file():
        return path
    for root in settings.SAMPLES.values():
        candidate = root / "images" / Path(path).name
        if candidate.is_file():
            return str(candidate)
    return path


def _effective_status(status: dict, holder: dict | None) -> dict:
    """A 'running' run reads as running while its trainer's lease is alive, and as interrupted (failed,
    resumable) once the heartbeat stops: within ``LEASE_STALE_S``, at once when its process is gone."""
    if status.get("status") != "running":
        return status
    if holder is not None and lease_alive(holder):
        return {**status, "owner": {k: holder.get(k) for k in ("pid", "host", "heartbeat")}}
    return {**status, "status": "failed", "error": INTERRUPTED}


def load_run(path: str | Path) -> Run:
    """Read a run folder (never unpickles; weights are checked to be safetensors when loaded)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError.missing(path)
    stray = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if stray and not (path / "model.safetensors").exists():
        raise RunError(
            f"{path}: holds {', '.join(stray)} but no model.safetensors; posterlab never unpickles checkpoints "
            "(they can run code); convert the weights with safetensors on a machine you trust"
        )
    raw = read_json(path / "config.json")
    try:
        config = from_dict(RunConfig, raw["run"])
    except (KeyError, TypeError) as error:
        raise RunError(f"{path / 'config.json'}: not a posterlab run config ({error})") from None
    status = (
        read_json(path / "status.json")
        if (path / "status.json").exists()
        else {"status": "failed", "error": "no status.json"}
    )
    model = read_json(path / "model.json") if (path / "model.json").exists() else None
    metrics = read_json(path / "metrics.json") if (path / "metrics.json").exists() else None
    history = read_json(path / "history.json") if (path / "history.json").exists() else []
    data = read_json(path / "data.json") if (path / "data.json").exists() else None
    return Run(
        path,
        config,
        raw.get("environment", {}),
        _effective_status(status, read_lease(path)),
        model,
        metrics,
        history,
        data,
    )


def list_runs(root: str | Path) -> list[Run]:
    """Every readable run under ``root``, newest first (unreadable folders are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for path in root.iterdir():
        if (path / "config.json").exists():
            try:
                runs.append(load_run(path))
            except RunError:
                continue
    return sorted(runs, key=lambda r: r.status.get("started", ""), reverse=True)


def summary(run: Run) -> dict[str, Any]:
    """One row for a runs table: what was trained on what, how it ended, test metrics and baselines."""
    config = run.config
    metrics = (run.metrics or {}).get("test", {})
    row: dict[str, Any] = {
        "run": run.name,
        "status": run.state,
        "backbone": config.train.backbone,
        "mode": config.train.mode,
        "data": config.data.path,
        "target": config.data.labels.target,
        "labels": ", ".join((run.metrics or {}).get("labels", [])),
        "epochs": len(run.history),
        "seconds": run.status.get("seconds"),
        "started": run.status.get("started", ""),
        "n_test": metrics.get("n"),
    }
    for name, value in metrics.get("metrics", {}).items():
        row[name] = value
    for name, value in metrics.get("baseline", {}).items():
        row[f"baseline_{name}"] = value
    if run.state == "failed":
        row["error"] = run.status.get("error", "")
    return row


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """``summary`` for each run, as a DataFrame (empty with the key columns when there are none)."""
    rows = [summary(run) for run in runs]
    return (
        pd.DataFrame(rows)
        if rows
        else pd.DataFrame(columns=["run", "status", "backbone", "mode", "data", "target"])
    )


# what a run that trained anything leaves (weights, epochs, a checkpoint, search trials)
TRAINED_FILES = ("model.safetensors", "history.json", "resume.safetensors", "search.db", "search.json")


def _never_started(path: Path) -> bool:
    """A run that failed before it trained anything (its data could not be read, a label was unknown):
    its folder holds only its config, status and events, and no trainer holds it."""
    try:
        run = load_run(path)
    except RunError:
        return False
    return run.state == "failed" and not any((path / name).exists() for name in TRAINED_FILES)


def delete_run(path: str | Path) -> None:
    """Remove a run folder (refused while a trainer holds it, wherever that trainer runs)."""
    run = load_run(path)
    check_not_live(run.path, "delete it")
    shutil.rmtree(run.path)
