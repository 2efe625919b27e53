"""Data: from files on disk to deterministic, resumable batches.

:func:`load_data` returns ``(train, val, info)``: two :class:`Batches` and a :class:`DataInfo`.
Fashion-MNIST (default) and CIFAR-10/100 are held in memory (:mod:`.memory`); an image-folder tree
(``train/`` and ``val/`` holding one folder per class) is decoded in ``DataLoader`` workers
(:mod:`.folder`). :mod:`.images` is the one definition of decoding and preprocessing, shared with
``predict``. Nothing is ever downloaded: datasets must already be on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import DataError
from .batches import FOLDER_PREFIX, Batches, DataInfo, check_batch_args, dataset_argument, locate_dataset
from .cifar import read_cifar
from .fashion_mnist import DATA_DIR_ENV, DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, read_fashion_mnist
from .folder import FolderBatches, load_folder, scan_image_folder
from .images import IMAGE_EXTENSIONS, Preprocessing, load_image, open_image
from .memory import MAX_IN_MEMORY_BYTES, TensorBatches, load_tensor_dataset

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "DATA_DIR_ENV",
    "DataError",
    "DataInfo",
    "Batches",
    "TensorBatches",
    "FolderBatches",
    "Preprocessing",
    "load_data",
    "load_image",
    "open_image",
    "scan_image_folder",
    "read_fashion_mnist",
    "read_cifar",
    "dataset_argument",
    "locate_dataset",
    "FASHION_MNIST_CLASSES",
    "FOLDER_PREFIX",
    "IMAGE_EXTENSIONS",
    "MAX_IN_MEMORY_BYTES",
]

_ACCEPTED = "'fashion-mnist', 'cifar10', 'cifar100' or a folder holding train/ and val/ class folders"


def _normalise_name(data: str) -> str:
    key = data.strip().lower().replace("_", "-")
    return {"fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar10": "cifar10",
            "cifar-10": "cifar10", "cifar100": "cifar100", "cifar-100": "cifar100"}.get(key, "")


def load_data(data: str = "fashion-mnist", *, data_dir: str | None = None, resolution: int | None = None,
              batch_size: int = 128, eval_batch_size: int | None = None, seed: int = 0,
              subset: int | None = None, val_subset: int | None = None, rank: int = 0, world_size: int = 1,
              workers: int = 2, on_corrupt: str = "skip", channels_last: bool = False, grayscale: bool = False,
              device: str | torch.device | None = None, crop_padding: int = 4,
              preprocessing: Preprocessing | dict | None = None) -> tuple[Batches, Batches, DataInfo]:
    """Build ``(train_batches, val_batches, info)`` for ``data``.

    ``data``: "fashion-mnist", "cifar10", "cifar100", or a folder with ``train/`` and ``val/`` class
    folders. ``batch_size`` is per process; ``subset`` / ``val_subset`` take a seeded random subset;
    ``device``: in-memory datasets are kept on that device (uint8) and augmented there; image folders
    are decoded in workers into pinned batches copied to it without blocking.
    ``preprocessing`` (image folders only): normalise with it instead of the folder's statistics (the
    preprocessing of imported weights being fine-tuned). Raises :class:`DataError` for any problem with
    the data or the arguments.
    """
    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    check_batch_args(batch_size, rank, world_size)
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    if resolution is not None and int(resolution) < 1:
        raise DataError(f"resolution must be a positive number of pixels, got {resolution}")
    eval_bs = int(eval_batch_size) if eval_batch_size else max(int(batch_size), 256)
    name = _normalise_name(str(data))
    if name and preprocessing is not None:
        raise DataError(f"{name} is normalised with its own statistics; weights that expect their own preprocessing "
                        "(imported weights) need an image folder (train/ and val/ class folders)")
    if name:
        return load_tensor_dataset(name, data_dir=data_dir, resolution=resolution or 32,
                                    batch_size=batch_size, eval_batch_size=eval_bs, seed=seed, subset=subset,
                                    val_subset=val_subset, rank=rank, world_size=world_size,
                                    channels_last=channels_last, grayscale=grayscale, device=device,
                                    crop_padding=crop_padding)
    root = Path(str(data)).expanduser()
    if not root.is_dir():
        if os.sep in str(data) or str(data).startswith((".", "~")):
            raise DataError(f"dataset folder {root} does not exist; pass {_ACCEPTED}")
        raise DataError(f"unknown dataset {data!r}: use {_ACCEPTED}")
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise DataError(f"{root} lacks {' and '.join(m + '/' for m in missing)}: an image-folder dataset "
                        "needs train/<class>/* and val/<class>/*")
    return load_folder(root, resolution=resolution or 224, batch_size=batch_size, eval_batch_size=eval_bs,
                        seed=seed, subset=subset, val_subset=val_subset, rank=rank, world_size=world_size,
                        workers=workers, on_corrupt=on_corrupt, channels_last=channels_last,
                        grayscale=grayscale, preprocessing=preprocessing, device=device)
