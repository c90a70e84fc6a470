"""The processes of a run: one (the default) or many under ``torchrun`` (torch.distributed).

``Dist`` is the one piece the training loop asks about processes. With one process every method is a
no-op or the identity, so the loop has a single code path. Under ``torchrun`` (``WORLD_SIZE`` > 1) it
holds the process group: on GPUs one group with both backends (``cpu:gloo,cuda:nccl``: NCCL for CUDA
tensors, one GPU per process bound by ``LOCAL_RANK``; gloo for the small CPU tensors of coordination),
gloo alone on CPUs. Every collective goes through ``Dist``, which places its tensor on a device the
group's backend serves and refuses any other (NCCL serves CUDA tensors only): callers never pick a device.

- training batches: a ``DistributedSampler`` over the same seeded permutation whatever the number of
  processes, each process taking ``global batch / world`` of every global batch, so a 2-process run sees
  the same global batches as a 1-process run (gradients are averaged by DistributedDataParallel);
- evaluation: each process scores every ``world``-th poster and the predictions are gathered back into
  dataset order before thresholds and metrics (which every process then computes identically);
- stop requests: a flag any process raises ends the fit on every process at the same batch boundary,
  exchanged as a CPU tensor without waiting (``StopVote``): no host sync per step;
- rank 0 alone writes the run folder, events and progress bars.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

log = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(minutes=30)  # feature extraction can keep one rank busy for long


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world`` processes (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""  # "" (one process), "gloo", or "cpu:gloo,cuda:nccl" (GPUs)
    seed_offset: int = 0  # added to the seed of augmentation and dropout: each rank draws its own

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run folder and speaks to the user."""
        return self.rank == 0

    @property
    def served(self) -> set[str]:
        """Device types the process group's backends take tensors on."""
        out = set()
        for part in self.backend.split(","):
            device, _, name = part.rpartition(":")
            if device:
                out.add(device)
            else:
                out |= {"gloo": {"cpu"}, "nccl": {"cuda"}}.get(name, set())
        return out

    @property
    def data_device(self) -> torch.device:
        """Where gathered data travels: this process's GPU under NCCL, the CPU otherwise."""
        return torch.device("cuda", self.local_rank) if "cuda" in self.served else torch.device("cpu")

    def _checked(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every collective's tensor passes here: one on a device the backend does not serve is a bug
        (NCCL would fail on it deep inside a multi-GPU job), said at once on any machine."""
        if tensor.device.type not in self.served:
            raise RuntimeError(
                f"a {tensor.device.type} tensor in a collective of a {self.backend} process group "
                f"(it serves {', '.join(sorted(self.served))}): place it with Dist"
            )
        return tensor

    # ---------------------------------------------------------------------------------- placement

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per process (``cuda:LOCAL_RANK``) when training on CUDA; the CPU otherwise."""
        if requested.type == "cuda" and self.active:
            return torch.device("cuda", self.local_rank)
        return requested

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` under DistributedDataParallel when there are several processes (itself otherwise).

        Call again whenever the set of trainable parameters changes (gradual unfreezing): DDP registers
        the parameters that require gradients when it is built."""
        if not self.active or not any(p.requires_grad for p in module.parameters()):
            return module
        if device.type == "cuda":  # batch statistics over the global batch, as one process would see it
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            return nn.parallel.DistributedDataParallel(module, device_ids=[device.index])
        return nn.parallel.DistributedDataParallel(module)

    # --------------------------------------------------------------------------------------- data

    def train_sampler(self, dataset: Dataset, seed: int) -> DistributedSampler:
        """This process's share of a seeded shuffle; call ``set_epoch`` before every epoch.

        Used with one process too, so that the order of posters depends on the seed and the epoch only."""
        return DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed)

    def local_batch(self, global_batch: int) -> int:
        """Per-process batch size: the global batch split evenly (the global batch is what the user sets)."""
        return max(1, global_batch // self.world)

    def shard(self, n: int) -> np.ndarray:
        """Rows ``rank, rank + world, ...`` of ``n``: this process's share of an evaluation, padded (by
        repeating its last row) to the same length on every process, so that all run the same number of
        batches; ``gather_rows`` drops the padding."""
        rows = np.arange(self.rank, n, self.world)
        if not self.active:
            return rows
        size = -(-n // self.world)
        pad = rows[-1:] if len(rows) else np.zeros(1, dtype=rows.dtype)
        return np.concatenate([rows, np.repeat(pad, size - len(rows))]).astype(np.int64)

    def gather_rows(self, local: np.ndarray, n: int) -> np.ndarray:
        """Every process's results for its ``shard`` (padded rows included), back in dataset order."""
        if not self.active:
            return local
        import torch.distributed as torch_dist

        tensor = self._checked(torch.from_numpy(np.ascontiguousarray(local)).to(self.data_device))
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        torch_dist.all_gather(parts, tensor)
        out = np.zeros((n, *local.shape[1:]), dtype=local.dtype)
        for rank, part in enumerate(parts):
            rows = np.arange(rank, n, self.world)
            out[rows] = part[: len(rows)].cpu().numpy()
        return out

    # ------------------------------------------------------------------------------ coordination

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (a stop request reaches every rank).

        A one-element CPU tensor: gloo carries it on every kind of group, and no GPU stream waits."""
        if not self.active:
            return flag
        import torch.distributed as torch_dist

        tensor = self._checked(torch.tensor([1.0 if flag else 0.0]))
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return bool(tensor.item())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over every process (sent from where the backend serves them; same device back)."""
        if not self.active:
            return values
        import torch.distributed as torch_dist

        tensor = self._checked(values.detach().to(self.data_device))
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor.to(values.device)

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object) on every process."""
        if not self.active:
            return value
        import torch.distributed as torch_dist

        box = [value if self.main else None]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as torch_dist

            if "cuda" in self.served:
                torch_dist.barrier(device_ids=[self.local_rank])
            else:
                torch_dist.barrier()


class StopVote:
    """Whether any process asked to stop, agreed without a host sync per step.

    Each ``ask(flag)`` starts an all-reduce of this batch's flag (a CPU tensor, gloo, ``async_op``) and
    returns the result of the previous batch's vote, which has long arrived: a stop is honoured one batch
    after it was asked for, at the same batch on every process. One process: the flag itself."""

    def __init__(self, dist: Dist) -> None:
        self.dist = dist
        self._pending = None
        self._tensor: torch.Tensor | None = None

    def ask(self, flag: bool) -> bool:
        if not self.dist.active:
            return flag
        import torch.distributed as torch_dist

        stopped = self.settle()
        self._tensor = self.dist._checked(torch.tensor([1.0 if flag else 0.0]))
        self._pending = torch_dist.all_reduce(self._tensor, op=torch_dist.ReduceOp.MAX, async_op=True)
        return stopped

    def settle(self) -> bool:
        """The outcome of the vote in flight (False when none is); call before leaving the loop."""
        if self._pending is None:
            return False
        self._pending.wait()
        self._pending = None
        return bool(self._tensor.item())


SINGLE = Dist()


def restart_count() -> int:
    """How many times torchrun has restarted this group (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def from_environment(device: str = "auto") -> Dist:
    """The process group torchrun describes in the environment, initialised; ``SINGLE`` when alone.

    On CUDA (``device`` auto with a GPU, or cuda) one group with NCCL for CUDA tensors and gloo for CPU
    ones; gloo alone otherwise. Each rank seeds augmentation and dropout with ``seed + rank``."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return SINGLE
    import torch.distributed as torch_dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = backend_for(cuda)
    if cuda:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, timeout=TIMEOUT)
    log.info("process %d of %d (%s, local rank %d)", rank, world, backend, local_rank)
    shared_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if rank == 0 and shared_store and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0):
        log.warning(
            "torchrun shares one store across restarts, so a restarted group may fail to connect: "
            "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun (pytorch/pytorch#135712)"
        )
    return Dist(rank=rank, world=world, local_rank=local_rank, backend=backend, seed_offset=rank)


def backend_for(cuda: bool) -> str:
    """The process group's backends: NCCL only serves CUDA tensors, so GPU runs pair it with gloo."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def shutdown(dist: Dist) -> None:
    if dist.active:
        import torch.distributed as torch_dist

        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
