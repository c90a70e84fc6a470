"""The processes of a run: one (the default) or many under ``torchrun`` (torch.distributed).

``Dist`` is the one piece the training loop asks about processes. With one process every method is a
no-op or the identity, so the loop has a single code path. Under ``torchrun`` (``WORLD_SIZE`` > 1) it
holds the process group: NCCL with one GPU per process (bound by ``LOCAL_RANK``), gloo on CPUs.

- training batches: a ``DistributedSampler`` over the same seeded permutation whatever the number of
  processes, each process taking ``global batch / world`` of every global batch, so a 2-process run sees
  the same global batches as a 1-process run (gradients are averaged by DistributedDataParallel);
- evaluation: each process scores every ``world``-th poster and the predictions are gathered back into
  dataset order before thresholds and metrics (which every process then computes identically);
- stop requests: a flag any process raises ends the fit on every process at the same batch boundary;
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
    backend: str = ""  # "" (one process), "gloo" or "nccl"

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run folder and speaks to the user."""
        return self.rank == 0

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

        tensor = torch.from_numpy(np.ascontiguousarray(local))
        if self.backend == "nccl":
            tensor = tensor.cuda(self.local_rank)
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        torch_dist.all_gather(parts, tensor)
        out = np.zeros((n, *local.shape[1:]), dtype=local.dtype)
        for rank, part in enumerate(parts):
            rows = np.arange(rank, n, self.world)
            out[rows] = part[: len(rows)].cpu().numpy()
        return out

    # ------------------------------------------------------------------------------ coordination

    def any(self, flag: bool, device: torch.device | None = None) -> bool:
        """True on every process when ``flag`` is true on any (a stop request reaches every rank)."""
        if not self.active:
            return flag
        import torch.distributed as torch_dist

        on = device if self.backend == "nccl" and device is not None else torch.device("cpu")
        tensor = torch.tensor([1.0 if flag else 0.0], device=on)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return bool(tensor.item())

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

            if self.backend == "nccl":
                torch_dist.barrier(device_ids=[self.local_rank])
            else:
                torch_dist.barrier()


SINGLE = Dist()


def launched_by_torchrun() -> bool:
    """True in a process that ``torchrun`` started (it sets these for every worker)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def restart_count() -> int:
    """How many times torchrun has restarted this group (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def from_environment(device: str = "auto") -> Dist:
    """The process group torchrun describes in the environment, initialised; ``SINGLE`` when alone.

    NCCL when the run trains on CUDA (``device`` auto with a GPU, or cuda), gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return SINGLE
    import torch.distributed as torch_dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
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
    return Dist(rank=rank, world=world, local_rank=local_rank, backend=backend)


def shutdown(dist: Dist) -> None:
    if dist.active:
        import torch.distributed as torch_dist

        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
