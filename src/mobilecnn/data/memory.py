"""In-memory datasets (Fashion-MNIST, CIFAR): decoded once into uint8 tensors, augmented on whole batches.

Images are resized once to the training resolution with :func:`mobilecnn.data.images.resize_square`,
the same function ``predict`` applies to a single file, and normalised by
:meth:`Preprocessing.normalize`. ``device`` keeps the uint8 dataset on an accelerator so the batched
augmentation runs there; random numbers are always drawn on the CPU, so batches do not depend on it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .batches import (
    Batches,
    DataInfo,
    Dealing,
    LoadOptions,
    check_batch_args,
    check_global_batch,
    check_start_step,
    generator,
    plan_epoch_size,
    subset_indices,
    train_plan,
)
from .cifar import CIFAR, find_cifar, read_cifar
from .fashion_mnist import FASHION_MNIST_CLASSES, IDX_FILES, fashion_dir, file_key, read_fashion_mnist
from .images import Preprocessing, resize_square
from .names import FASHION_MNIST

__all__ = ["TensorBatches", "TensorOptions", "load_tensor_dataset", "MAX_IN_MEMORY_BYTES"]

#: In-memory datasets resized to more bytes than this are refused.
MAX_IN_MEMORY_BYTES = 8 << 30


@dataclass(frozen=True)
class TensorOptions(Dealing):
    """:class:`TensorBatches` options: how batches are dealt (:class:`~mobilecnn.data.batches.Dealing`) and
    the augmentation of training batches (random crop of the image zero-padded by ``pad`` pixels, flip)."""

    pad: int = 4
    flip: bool = True


class TensorBatches:
    """Batches from an in-memory uint8 ``N,C,R,R`` tensor, augmented on whole batches.

    ``train=True``: a per-epoch permutation seeded from ``(seed, epoch)``, full batches only (the last
    partial one is dropped), batch ``j`` of the permutation served by rank ``j % world_size``; each batch
    gets a random crop of the zero-padded image (``pad`` pixels per side) and a random horizontal flip,
    drawn from a generator seeded with ``(seed, epoch, k, rank)`` for the rank's ``k``-th batch.
    ``train=False``: dataset order, no augmentation, last partial batch kept, each rank a contiguous
    disjoint shard (all ranks together see every sample exactly once).

    ``device`` (optional) keeps the dataset on that device and augments there; random numbers are
    always drawn on the CPU, so the batches do not depend on the device.

    ``options``: the fields of :class:`TensorOptions` (``seed``, ``rank``, ``world_size``, ``channels_last``,
    ``device``, ``pad``, ``flip``).
    """

    # set by plan_epoch_size: batches per epoch, samples per rank; eval: this rank's shard [_start, _stop)
    _len: int
    num_samples: int
    _start: int
    _stop: int

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool,
                 mean: Sequence[float], std: Sequence[float], **options: Any) -> None:
        opts = TensorOptions(**options)
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 N,C,R,R, got {tuple(images.shape)} {images.dtype}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be 1-D with {images.shape[0]} entries, got {tuple(labels.shape)}")
        if opts.pad < 0:
            raise ValueError(f"pad must be >= 0, got {opts.pad}")
        check_batch_args(batch_size, opts.rank, opts.world_size)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed, self.rank, self.world_size = int(opts.seed), int(opts.rank), int(opts.world_size)
        self.pad, self.flip, self.channels_last = int(opts.pad), bool(opts.flip), bool(opts.channels_last)
        device = opts.device
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.preprocessing = Preprocessing(int(images.shape[-1]), int(images.shape[1]), tuple(mean), tuple(std))
        self.mean, self.std = self.preprocessing.mean, self.preprocessing.std
        plan_epoch_size(self, images.shape[0])

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"TensorBatches(n={self.images.shape[0]}, batch_size={self.batch_size}, train={self.train}, "
                f"rank={self.rank}/{self.world_size}, batches={self._len})")

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` for batches ``start_step, ..., len(self) - 1`` of ``epoch``."""
        check_start_step(start_step, self._len)
        if self.train:
            plan = train_plan(self.images.shape[0], self.batch_size, self.seed, epoch, self.rank,
                               self.world_size)
            for k in range(start_step, self._len):
                idx = plan[k].to(self.device)
                imgs = self._augment(self.images[idx], generator("aug", self.seed, epoch, k, self.rank))
                yield self._finish(imgs), self.labels[idx]
        else:
            for k in range(start_step, self._len):
                lo = self._start + k * self.batch_size
                hi = min(lo + self.batch_size, self._stop)
                yield self._finish(self.images[lo:hi]), self.labels[lo:hi]

    def _augment(self, imgs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random zero-padded crop and horizontal flip of a whole uint8 batch with one gather."""
        n, c, h, w = imgs.shape
        p = self.pad
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        flip = (torch.rand(n, generator=gen) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool)
        if p == 0 and not self.flip:
            return imgs
        ar_h, ar_w = torch.arange(h), torch.arange(w)
        rows = dy[:, None] + ar_h  # n,h
        cols = dx[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # n,w
        padded = F.pad(imgs, (p, p, p, p)) if p else imgs
        dev = imgs.device
        return padded[torch.arange(n, device=dev)[:, None, None, None],
                      torch.arange(c, device=dev)[None, :, None, None],
                      rows.to(dev)[:, None, :, None],
                      cols.to(dev)[:, None, None, :]]

    def _finish(self, imgs: torch.Tensor) -> torch.Tensor:
        x = self.preprocessing.normalize(imgs)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _uint8_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std (0-1 scale) of a uint8 ``N,C,H,W`` tensor via histograms."""
    means, stds = [], []
    values = np.arange(256, dtype=np.float64) / 255.0
    for c in range(images.shape[1]):
        hist = np.bincount(images[:, c].numpy().ravel(), minlength=256).astype(np.float64)
        total = hist.sum()
        mean = float((hist * values).sum() / total)
        var = float((hist * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(max(var, 1e-12) ** 0.5)
    return tuple(means), tuple(stds)


def _to_gray(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of a uint8 RGB ``N,3,H,W`` tensor (what PIL's ``convert("L")`` does)."""
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    out = torch.empty(images.shape[0], 1, *images.shape[2:], dtype=torch.uint8)
    for lo in range(0, images.shape[0], 8192):
        out[lo:lo + 8192] = (images[lo:lo + 8192].float() * w).sum(1, keepdim=True).round_().clamp_(0, 255)
    return out


def _tensor_source(name: str, data_dir: str | None) -> tuple:
    """A hashable key naming the on-disk files of an in-memory dataset (with their mtimes and sizes)."""
    if name == FASHION_MNIST:
        read_fashion_mnist("train", data_dir)  # raises DataError when missing or corrupt
        read_fashion_mnist("val", data_dir)
        root = fashion_dir(data_dir)
        return (name, str(root), tuple(file_key(root / f) for s in ("train", "val") for f in IDX_FILES[s]))
    layout, folder = find_cifar(name, data_dir)
    spec = CIFAR[name]
    files = spec[f"{layout}_train"] + spec[f"{layout}_test"]
    return (name, str(folder), layout, tuple(file_key(folder / f) for f in files))


@functools.lru_cache(maxsize=4)
def _prepared(source: tuple, resolution: int, grayscale: bool) -> tuple:
    """``(train_x, train_y, val_x, val_y, classes, mean, std)`` at ``resolution``; stats from the train
    split at its native resolution. Cached per process: the tensors are shared, never modify them."""
    name = source[0]
    if name == FASHION_MNIST:
        tr_x, tr_y = read_fashion_mnist("train", source[1])
        te_x, te_y = read_fashion_mnist("val", source[1])
        classes = list(FASHION_MNIST_CLASSES)
    else:
        tr_x, tr_y, te_x, te_y, classes = read_cifar(name, source[1])
        if grayscale:
            tr_x, te_x = _to_gray(tr_x), _to_gray(te_x)
    mean, std = _uint8_stats(tr_x)
    return (resize_square(tr_x, resolution), tr_y, resize_square(te_x, resolution), te_y, classes, mean, std)


def load_tensor_dataset(name: str, options: LoadOptions) -> tuple[Batches, Batches, DataInfo]:
    """``load_data`` for an in-memory dataset (``options`` with its resolution and eval batch filled in)."""
    o = options
    assert o.resolution is not None and o.eval_batch_size is not None, "load_data fills them in"
    grayscale = bool(o.grayscale) and name != FASHION_MNIST
    source = _tensor_source(name, o.data_dir)
    if o.subset is not None and o.subset < 1:
        raise DataError(f"subset must be at least 1, got {o.subset}")
    if name == FASHION_MNIST:  # both reads are cached, so the sizes cost nothing
        n_images = sum(read_fashion_mnist(s, source[1])[0].shape[0] for s in ("train", "val"))
    else:
        n_images = sum(t.shape[0] for t in read_cifar(name, source[1])[0:4:2])
    in_chans = 1 if (name == FASHION_MNIST or grayscale) else 3
    need = n_images * in_chans * int(o.resolution) ** 2
    if need > MAX_IN_MEMORY_BYTES:
        raise DataError(f"{name} at resolution {o.resolution} needs {need / 2**30:.1f} GiB in memory; use "
                        "--resolution <= 64 (the small-input stems are made for it) or export the images to "
                        "an image folder and pass that folder")
    tr_x, tr_y, te_x, te_y, classes, mean, std = _prepared(source, int(o.resolution), grayscale)
    train_size = tr_x.shape[0] if o.subset is None else min(o.subset, tr_x.shape[0])
    check_global_batch(o.batch_size, o.world_size, train_size)
    tr_idx = subset_indices(tr_x.shape[0], o.subset, o.seed, "subset")
    te_idx = subset_indices(te_x.shape[0], o.val_subset, o.seed, "val_subset")
    if tr_idx is not None:
        tr_x, tr_y = tr_x[tr_idx], tr_y[tr_idx]
    if te_idx is not None:
        te_x, te_y = te_x[te_idx], te_y[te_idx]
    common = dict(mean=mean, std=std, **o.dealing())
    train = TensorBatches(tr_x, tr_y, o.batch_size, train=True, pad=o.crop_padding, **common)
    val = TensorBatches(te_x, te_y, o.eval_batch_size, train=False, **common)
    info = DataInfo(name=name, num_classes=len(classes), class_names=list(classes), in_chans=in_chans,
                    mean=tuple(mean), std=tuple(std), resolution=int(o.resolution),
                    train_size=int(tr_x.shape[0]), val_size=int(te_x.shape[0]))
    return train, val, info
