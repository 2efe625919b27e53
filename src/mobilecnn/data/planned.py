"""The batches of the dense tasks (segmentation, detection): a map-style dataset indexed by ``(sample, epoch)``,
dealt by the epoch planner (:func:`~mobilecnn.data.folder.epoch_plan`) through one DataLoader for every epoch.

A subclass sets ``_dataset`` (items ``(x, y, error)``: a one-line error is raised in the main process, as a
worker's exception would carry its traceback) and ``_collate``; everything else -- dealing, resuming at a
step, pinning and moving to the device, channels_last -- is here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..errors import DataError
from .batches import Dealing, check_batch_args, check_start_step, plan_epoch_size
from .folder import _PlanSampler, epoch_plan

__all__ = ["PlannedBatches"]


class PlannedBatches:
    """Batches for one process (the :class:`~mobilecnn.data.batches.Batches` protocol); see the module docstring."""

    # set by plan_epoch_size: batches per epoch, samples per rank; eval: this rank's shard [_start, _stop)
    _len: int
    num_samples: int
    _start: int
    _stop: int
    _dataset: torch.utils.data.Dataset
    _collate: Callable[[list], tuple[torch.Tensor, torch.Tensor, str | None]]

    def __init__(self, samples: Sequence[Any], batch_size: int, *, train: bool, workers: int, empty: str,
                 **dealing: Any) -> None:
        d = Dealing(**dealing)
        check_batch_args(batch_size, d.rank, d.world_size)
        if not samples:
            raise DataError(empty)
        self.samples = list(samples)
        self.batch_size, self.train, self.workers = int(batch_size), bool(train), max(0, int(workers))
        self.seed, self.rank, self.world_size = int(d.seed), int(d.rank), int(d.world_size)
        self.channels_last = bool(d.channels_last)
        self.device = torch.device(d.device) if d.device is not None else None
        self._accelerated = self.device is not None and self.device.type != "cpu"
        plan_epoch_size(self, len(self.samples))
        self._sampler = _PlanSampler()
        self._loader: torch.utils.data.DataLoader | None = None

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={len(self.samples)}, batch_size={self.batch_size}, train={self.train}, "
                f"rank={self.rank}/{self.world_size}, batches={self._len})")

    def _plan(self, epoch: int) -> list[list[int]]:
        return epoch_plan(self, epoch)

    def _data_loader(self) -> torch.utils.data.DataLoader:
        """One DataLoader for every epoch (its batches set through the sampler); an accelerator gets pinned
        batches and workers kept alive between epochs."""
        if self._loader is None:
            cuda = self.device is not None and self.device.type == "cuda"
            persistent = self._accelerated and self.workers > 0
            self._loader = torch.utils.data.DataLoader(
                self._dataset, batch_sampler=self._sampler, num_workers=self.workers, collate_fn=self._collate,
                pin_memory=cuda, persistent_workers=persistent, prefetch_factor=4 if persistent else None,
                generator=torch.Generator().manual_seed(0))  # keeps the caller's global RNG untouched
        return self._loader

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` for batches ``start_step, ...`` of ``epoch`` (each subclass says what they hold)."""
        check_start_step(start_step, self._len)
        plan = self._plan(epoch)[start_step:]
        if not plan:
            return
        self._sampler.plan = [[(i, epoch) for i in b] for b in plan]
        for x, y, error in self._data_loader():
            if error is not None:
                raise DataError(error)
            if self.device is not None:
                x = x.to(self.device, non_blocking=self._accelerated)
                y = y.to(self.device, non_blocking=self._accelerated)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
