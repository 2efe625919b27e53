"""Data: from files on disk to deterministic, resumable batches.

:func:`load_data` returns ``(train, val, info)``: two :class:`Batches` and a :class:`DataInfo`.
Fashion-MNIST (default) and CIFAR-10/100 are held in memory (:mod:`.memory`); an image-folder tree
(``train/`` and ``val/`` holding one folder per class) is decoded in ``DataLoader`` workers
(:mod:`.folder`). :mod:`.images` is the one definition of decoding and preprocessing, shared with
``predict``; :mod:`.names` says what datasets are called. Nothing is ever downloaded: datasets must already
be on disk.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..errors import DataError
from .batches import Batches, DataInfo, LoadOptions, check_batch_args
from .cifar import read_cifar
from .fashion_mnist import DATA_DIR_ENV, DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, read_fashion_mnist
from .folder import FolderBatches, load_folder, scan_image_folder
from .images import IMAGE_EXTENSIONS, Preprocessing, load_image, open_image
from .memory import MAX_IN_MEMORY_BYTES, TensorBatches, load_tensor_dataset
from .names import (
    ACCEPTED_DATASETS,
    DATASETS,
    FASHION_MNIST,
    FOLDER_PREFIX,
    canonical_dataset,
    dataset_argument,
    is_folder_dataset,
    locate_dataset,
)

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "DATA_DIR_ENV",
    "DataError",
    "DataInfo",
    "Batches",
    "LoadOptions",
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
    "is_folder_dataset",
    "DATASETS",
    "FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "FOLDER_PREFIX",
    "IMAGE_EXTENSIONS",
    "MAX_IN_MEMORY_BYTES",
]


def load_data(data: str = FASHION_MNIST, options: LoadOptions | None = None,
              **overrides: Any) -> tuple[Batches, Batches, DataInfo]:
    """Build ``(train_batches, val_batches, info)`` for ``data``.

    ``data``: "fashion-mnist", "cifar10", "cifar100", or a folder with ``train/`` and ``val/`` class
    folders. The options (a :class:`LoadOptions`, and/or its fields as keywords): ``batch_size`` is per
    process, ``eval_batch_size`` defaults to ``max(batch_size, 256)``; ``subset`` / ``val_subset`` take a
    seeded random subset; ``resolution`` defaults to 32 for the in-memory datasets, 224 for folders;
    ``device``: in-memory datasets are kept on that device (uint8) and augmented there; image folders
    are decoded in ``workers`` into pinned batches copied to it without blocking.
    ``preprocessing`` (image folders only): normalise with it instead of the folder's statistics (the
    preprocessing of imported weights being fine-tuned). Raises :class:`DataError` for any problem with
    the data or the arguments.
    """
    o = dataclasses.replace(options or LoadOptions(), **overrides)
    if isinstance(o.preprocessing, dict):
        o = dataclasses.replace(o, preprocessing=Preprocessing.from_dict(o.preprocessing))
    check_batch_args(o.batch_size, o.rank, o.world_size)
    if o.on_corrupt not in ("skip", "error"):
        raise DataError(f"on_corrupt must be 'skip' or 'error', got {o.on_corrupt!r}")
    if o.resolution is not None and int(o.resolution) < 1:
        raise DataError(f"resolution must be a positive number of pixels, got {o.resolution}")
    eval_bs = max(int(o.batch_size), 256) if o.eval_batch_size is None else int(o.eval_batch_size)
    name = canonical_dataset(str(data))
    if name and o.preprocessing is not None:
        raise DataError(f"{name} is normalised with its own statistics; weights that expect their own preprocessing "
                        "(imported weights) need an image folder (train/ and val/ class folders)")
    if name:
        return load_tensor_dataset(name, dataclasses.replace(o, resolution=o.resolution or 32, eval_batch_size=eval_bs))
    root = Path(str(data)).expanduser()
    if not root.is_dir():
        if os.sep in str(data) or str(data).startswith((".", "~")):
            raise DataError(f"dataset folder {root} does not exist; pass {ACCEPTED_DATASETS}")
        raise DataError(f"unknown dataset {data!r}: use {ACCEPTED_DATASETS}")
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise DataError(f"{root} lacks {' and '.join(m + '/' for m in missing)}: an image-folder dataset "
                        "needs train/<class>/* and val/<class>/*")
    return load_folder(root, dataclasses.replace(o, resolution=o.resolution or 224, eval_batch_size=eval_bs))
