"""Processes: DistributedDataParallel under torchrun (gloo on CPU, nccl on GPU) and thread counts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "default_threads", "env_world_size", "env_local_rank"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """torchrun's ``WORLD_SIZE`` (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_rank() -> int:
    """torchrun's ``LOCAL_RANK``: this process's index on its node (its GPU)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _restart_store(world: int) -> dist.Store | None:
    """After an elastic restart (torchrun --max-restarts), the agent's store with a prefix of its own.

    torchrun shares its rendezvous TCPStore with the workers and keeps it across restarts, and the
    process group's keys are not separated per attempt: restarted workers read the dead workers'
    addresses and gloo/NCCL fail with "connection refused". Prefixing by the restart count separates the
    attempts (every agent counts the same restarts when the whole group restarts, which torchrun does on
    any failure). None when not needed (first attempt, or the store is not shared).
    """
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if attempt == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size=world,
                          is_master=False, timeout=timedelta(minutes=10))
    return dist.PrefixStore(f"mobilecnn/restart_{attempt}", store)


def init_distributed(device: torch.device | None = None) -> DistContext:
    """Join torchrun's process group: NCCL when ``device`` is a CUDA GPU (bound to this process), gloo
    on the CPU. Without ``device``: NCCL whenever CUDA is available (the behaviour before ``--device``)."""
    world = env_world_size()
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        if device is not None and torch.device(device).type not in ("cpu", "cuda"):
            from ..errors import UsageError

            raise UsageError(f"--device {device} is not supported under torchrun (DistributedDataParallel runs on "
                             "CUDA with NCCL or on the CPU with gloo); pass --device cuda or --device cpu")
        kwargs: dict = {}
        if on_cuda and device is not None:
            torch.cuda.set_device(device)
            kwargs["device_id"] = torch.device(device)
        store = _restart_store(world)
        if store is not None:
            kwargs.update(store=store, rank=int(os.environ["RANK"]), world_size=world)
        dist.init_process_group(backend="nccl" if on_cuda else "gloo", **kwargs)
    return DistContext(dist.get_rank(), dist.get_world_size(), env_local_rank())


def default_threads(processes_on_this_machine: int = 1) -> int:
    """Threads per process: the free cores shared among this machine's processes.

    Oversubscription is catastrophic on small machines (a 2-thread run beside one busy core ran two
    orders of magnitude slower), so cores already busy by the 1-minute load average are left alone.
    """
    cores = os.cpu_count() or 1
    busy = int(round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else 0
    free = max(1, cores - busy)
    return max(1, min(cores, free) // max(1, processes_on_this_machine))
