"""What every loader shares: the dataset description, the batch protocol and the epoch planner.

Every batch is a pure function of ``(seed, epoch, batch index, rank, world_size)``, so resuming with
``batches(epoch, start_step=k)`` yields exactly the batches ``k, k+1, ...`` of an uninterrupted epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import DataError
from .images import Preprocessing
from .names import dataset_argument

__all__ = ["DataInfo", "Batches", "Dealing", "LoadOptions", "seed_of", "generator", "check_batch_args",
           "check_start_step", "train_plan", "eval_shard", "plan_epoch_size", "subset_indices", "check_global_batch"]


@dataclass(frozen=True)
class Dealing:
    """How a loader deals its batches to this process: the seed of every random draw, this process's
    ``rank`` among ``world_size``, the memory format and the device the batches are for."""

    seed: int = 0
    rank: int = 0
    world_size: int = 1
    channels_last: bool = False
    device: str | torch.device | None = None

    def dealing(self) -> dict[str, Any]:
        """The :class:`Dealing` fields of this (possibly larger) options object, as keywords."""
        return {f.name: getattr(self, f.name) for f in fields(Dealing)}


@dataclass(frozen=True)
class LoadOptions(Dealing):
    """Every option of :func:`mobilecnn.data.load_data` but the dataset (its docstring says what each does)."""

    data_dir: str | None = None
    resolution: int | None = None
    batch_size: int = 128
    eval_batch_size: int | None = None
    subset: int | None = None
    val_subset: int | None = None
    workers: int = 2
    on_corrupt: str = "skip"
    grayscale: bool = False
    crop_padding: int = 4
    preprocessing: Preprocessing | dict | None = None


@dataclass
class DataInfo:
    """What the model and the run directory need to know about a dataset."""

    name: str
    num_classes: int
    class_names: list[str]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int
    train_size: int
    val_size: int
    #: a Preprocessing dict when the normalisation is not the dataset's own statistics (fine-tuning
    #: imported weights: their preprocessing); absent from ``to_dict()`` otherwise
    preprocessing: dict | None = None

    @property
    def source(self) -> str:
        """What to pass as ``load_data(data=...)`` to load this dataset again."""
        return dataset_argument(self.name)

    def to_dict(self) -> dict:
        """JSON-serialisable form (tuples become lists)."""
        d = asdict(self)
        d["mean"] = [float(m) for m in self.mean]
        d["std"] = [float(s) for s in self.std]
        d["class_names"] = list(self.class_names)
        if d.get("preprocessing") is None:
            d.pop("preprocessing", None)
        return d


@runtime_checkable
class Batches(Protocol):
    """A deterministic, resumable source of ``(images, labels)`` batches for one process."""

    batch_size: int

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        ...

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield float32 ``N,C,R,R`` normalised images and int64 labels from batch ``start_step`` on."""
        ...


def seed_of(*parts: Any) -> int:
    """A 63-bit seed that depends on every part (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*parts))


def check_batch_args(batch_size: int, rank: int, world_size: int) -> None:
    if int(batch_size) < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}; pass --batch-size >= 1")
    if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise DataError(f"rank {rank} is not in [0, world_size={world_size}); check the launcher's "
                        "RANK / WORLD_SIZE")


def check_start_step(start_step: int, n: int) -> None:
    if not 0 <= start_step <= n:
        raise ValueError(f"start_step {start_step} is outside [0, {n}] (batches per epoch)")


def train_plan(num: int, batch_size: int, seed: int, epoch: int, rank: int,
                world_size: int) -> list[torch.Tensor]:
    """Index batches of this rank for one training epoch: a (seed, epoch) permutation cut into full
    batches, batch ``j`` going to rank ``j % world_size`` (every rank gets the same count)."""
    perm = torch.randperm(num, generator=generator("perm", seed, epoch))
    per_rank = (num // batch_size) // world_size
    return [perm[(k * world_size + rank) * batch_size:(k * world_size + rank + 1) * batch_size]
            for k in range(per_rank)]


def eval_shard(num: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, disjoint ``[start, stop)`` of the eval set for this rank (sizes differ by <= 1)."""
    base, extra = divmod(num, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def plan_epoch_size(loader: Any, n: int) -> None:
    """Batches per epoch and samples per rank of a loader over ``n`` samples (training: full batches
    dealt round-robin to ranks; eval: a contiguous shard per rank, last batch kept)."""
    if loader.train:
        loader._len = (n // loader.batch_size) // loader.world_size
        loader.num_samples = loader._len * loader.batch_size
    else:
        loader._start, loader._stop = eval_shard(n, loader.rank, loader.world_size)
        loader.num_samples = loader._stop - loader._start
        loader._len = -(-loader.num_samples // loader.batch_size)


def subset_indices(n: int, k: int | None, seed: int, what: str) -> torch.Tensor | None:
    if k is None or k >= n:
        return None
    if k < 1:
        raise DataError(f"{what} must be at least 1, got {k}")
    return torch.randperm(n, generator=generator(what, seed))[:k].sort().values


def check_global_batch(batch_size: int, world_size: int, train_size: int) -> None:
    total = batch_size * world_size
    if train_size == 0:
        raise DataError("the dataset has no training images (after --subset and skipping unreadable files); "
                        "add images")
    if total > train_size:
        procs = f" ({batch_size} x {world_size} processes)" if world_size > 1 else ""
        raise DataError(f"batch size {total}{procs} is larger than the {train_size} training images; "
                        f"use --batch-size <= {train_size // world_size}")


