"""Processes: DistributedDataParallel under torchrun (gloo on CPU, nccl on GPU) and thread counts."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "default_threads"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def default_threads(processes_on_this_machine: int = 1) -> int:
    """Threads per process: the free cores shared among this machine's processes.

    Oversubscription is catastrophic on small machines (a 2-thread run beside one busy core ran two
    orders of magnitude slower), so cores already busy by the 1-minute load average are left alone.
    """
    cores = os.cpu_count() or 1
    busy = int(round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else 0
    free = max(1, cores - busy)
    return max(1, min(cores, free) // max(1, processes_on_this_machine))
