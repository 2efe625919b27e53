"""Fashion-MNIST from its gzipped IDX files (Debian's dataset-fashion-mnist puts them in /usr/share/datasets)."""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "DATA_DIR_ENV", "FASHION_MNIST_CLASSES", "read_fashion_mnist", "fashion_dir",
           "file_key", "IDX_FILES"]

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATA_DIR_ENV = "MOBILECNN_DATA_DIR"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


#: An IDX file larger than this (decompressed) is refused: Fashion-MNIST's largest is 47 MB.
MAX_IDX_BYTES = 1 << 30


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read one gzipped IDX file (uint8 payload), validating magic number and size.

    The header is read first and the payload only up to the size it announces, so a gzip bomb given
    as the dataset is refused after a few bytes instead of being decompressed whole.
    """
    header = 4 + 4 * ndim
    try:
        with gzip.open(path, "rb") as fh:
            head = fh.read(header)
            got = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
            if got != magic:
                raise DataError(f"{path} is not an IDX file (magic number {got}, expected {magic}); replace it "
                                "(e.g. reinstall dataset-fashion-mnist)")
            if len(head) < header:
                raise DataError(f"{path} is truncated (header incomplete); replace it")
            dims = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
            expected = int(np.prod(dims, dtype=np.int64))
            if expected > MAX_IDX_BYTES:
                raise DataError(f"{path} announces {dims} = {expected} bytes, more than any Fashion-MNIST file "
                                f"({MAX_IDX_BYTES} at most); replace it")
            payload = fh.read(expected + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is corrupt or truncated ({e}); replace it (e.g. reinstall "
                        "dataset-fashion-mnist)") from None
    if len(payload) != expected:
        held = f"more than {expected}" if len(payload) > expected else str(len(payload))
        raise DataError(f"{path} holds {held} data bytes but its header {dims} needs {expected}; the file is "
                        "truncated or corrupt, replace it")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


@functools.lru_cache(maxsize=4)
def _fashion_split_cached(img_key: tuple, lbl_key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    img_path, lbl_path = Path(img_key[0]), Path(lbl_key[0])
    images = _read_idx(img_path, 2051, 3)
    labels = _read_idx(lbl_path, 2049, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} has {images.shape[0]} images but {lbl_path} has {labels.shape[0]} "
                        "labels; replace the mismatched file")
    if labels.size and int(labels.max()) >= 10:
        raise DataError(f"{lbl_path} has label {int(labels.max())} (Fashion-MNIST has 10 classes); replace it")
    imgs = torch.from_numpy(images.copy()).unsqueeze(1)
    imgs.requires_grad_(False)
    return imgs, torch.from_numpy(labels.astype(np.int64))


def fashion_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_FASHION_MNIST_DIR).expanduser()


def read_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded Fashion-MNIST split as (uint8 ``N,1,28,28``, int64 ``N``); cached per process.

    Looks in ``data_dir``, else ``$MOBILECNN_DATA_DIR``, else :data:`DEFAULT_FASHION_MNIST_DIR`.
    The returned tensors are shared by the cache: do not modify them in place.
    """
    root = fashion_dir(data_dir)
    paths = [root / f for f in IDX_FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}): install it with "
                        "`apt-get install dataset-fashion-mnist` or pass --data-dir / set "
                        f"{DATA_DIR_ENV}")
    return _fashion_split_cached(file_key(paths[0]), file_key(paths[1]))
