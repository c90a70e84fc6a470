"""``posterlab train --nproc-per-node N ...``: the same run re-launched under ``torchrun``.

torchrun (PyTorch's elastic launcher) starts the processes, runs the c10d rendezvous across machines and
restarts the group when a worker dies (``--max-restarts``); every process runs ``python -m posterlab
train`` with the same arguments. The command line hands over plain values: the training arguments (the
run's config file and its folder, picked before launching so that a restarted group, and the app, find the
run it belongs to) and the launcher's own settings.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from posterlab.runs import LAUNCHED_AT


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def torchrun_command(
    train_args: list[str],
    nproc: int,
    nnodes: str = "1",
    endpoint: str | None = None,
    rdzv_id: str = "posterlab",
    max_restarts: int = 0,
    local_addr: str | None = None,
) -> list[str]:
    """The torchrun command line for ``posterlab train <train_args>``.

    One machine: a c10d rendezvous on a free loopback port (all traffic stays on this machine). Several:
    the rendezvous at ``endpoint`` (HOST:PORT, the same on every machine)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--max-restarts",
        str(max_restarts),
        "--rdzv-backend",
        "c10d",
    ]
    if endpoint:
        command += ["--nnodes", str(nnodes), "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id]
    else:
        command += [
            "--nnodes",
            "1",
            "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}",
            "--rdzv-id",
            rdzv_id,
            "--local-addr",
            "127.0.0.1",
        ]
    if local_addr:
        command += ["--local-addr", local_addr]
    return command + ["-m", "posterlab", "train", *train_args]


# torchrun (>= 2.5) shares its rendezvous store with the workers and keeps it across restarts, so a
# restarted group can read the dead group's addresses and fail to connect (pytorch/pytorch#135712,
# #167288); with sharing off, every attempt gets a fresh store.
FRESH_STORE_PER_RESTART = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def worker_environment(single_machine: bool) -> dict[str, str]:
    """The workers' environment: a fresh store for each restart; on one machine, gloo on loopback only."""
    env = {**FRESH_STORE_PER_RESTART, **os.environ}
    if single_machine:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def relaunch(
    train_args: list[str],
    nproc: int,
    nnodes: str = "1",
    endpoint: str | None = None,
    rdzv_id: str = "posterlab",
    max_restarts: int = 0,
) -> int:
    """Run ``posterlab train <train_args>`` under torchrun and wait for it; its exit code is ours.

    SIGTERM is passed on to every worker (a graceful stop); Ctrl-C reaches them through the process group."""
    command = torchrun_command(train_args, nproc, nnodes, endpoint, rdzv_id, max_restarts)
    env = {**worker_environment(endpoint is None), LAUNCHED_AT: repr(time.time())}
    process = subprocess.Popen(command, env=env)

    def forward(signum, frame) -> None:  # torchrun passes it on to every worker
        process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the whole process group: wait for the graceful stop
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
