"""CIFAR-10/100 from the binary or the python layout; pickles go through a numpy-only unpickler."""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .fashion_mnist import DATA_DIR_ENV, file_key

__all__ = ["read_cifar", "find_cifar", "CIFAR", "DEFAULT_CIFAR_DIRS"]

#: Where CIFAR is looked for when neither ``data_dir`` nor ``$MOBILECNN_DATA_DIR`` is given.
DEFAULT_CIFAR_DIRS = ("data", "/usr/share/datasets")


_ALLOWED_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: np.ndarray(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): lambda: np.ndarray(0).__reduce__()[0],
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals numpy arrays need; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_PICKLE_GLOBALS.get((module, name))
        if factory is None:
            raise DataError(f"refusing to load {getattr(self, 'path', 'a pickle')}: it references "
                            f"{module}.{name}, which a CIFAR file never does; use the original CIFAR "
                            "archive (or its binary version)")
        return factory()


def _safe_unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            up = _NumpyOnlyUnpickler(fh, encoding="latin1")
            up.path = str(path)  # type: ignore[attr-defined]
            return up.load()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise DataError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e}); replace it "
                        "with the original file") from None


def _key(d: dict, name: str) -> Any:
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    raise KeyError(name)


#: Per variant: folder names, file names, label layout and class count of the binary and python layouts.
CIFAR: dict[str, dict[str, Any]] = {
    "cifar10": {"bin": "cifar-10-batches-bin", "py": "cifar-10-batches-py", "classes": 10,
                "bin_train": [f"data_batch_{i}.bin" for i in range(1, 6)], "bin_test": ["test_batch.bin"],
                "bin_meta": "batches.meta.txt", "label_bytes": 1,
                "py_train": [f"data_batch_{i}" for i in range(1, 6)], "py_test": ["test_batch"],
                "py_meta": "batches.meta", "py_names": "label_names", "py_labels": "labels"},
    "cifar100": {"bin": "cifar-100-binary", "py": "cifar-100-python", "classes": 100,
                 "bin_train": ["train.bin"], "bin_test": ["test.bin"], "bin_meta": "fine_label_names.txt",
                 "label_bytes": 2, "py_train": ["train"], "py_test": ["test"], "py_meta": "meta",
                 "py_names": "fine_label_names", "py_labels": "fine_labels"},
}


def _cifar_roots(data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir:
        return [Path(data_dir).expanduser()]
    if os.environ.get(DATA_DIR_ENV):
        return [Path(os.environ[DATA_DIR_ENV]).expanduser()]
    return [Path(d).expanduser() for d in DEFAULT_CIFAR_DIRS]


def find_cifar(name: str, data_dir: str | os.PathLike | None) -> tuple[str, Path]:
    spec = CIFAR[name]
    looked = []
    for root in _cifar_roots(data_dir):
        for layout in ("bin", "py"):
            for cand in (root / spec[layout], root):
                files = spec[f"{layout}_train"] + spec[f"{layout}_test"]
                if cand not in looked:
                    looked.append(cand)
                if all((cand / f).is_file() for f in files):
                    return layout, cand
    raise DataError(f"{name} not found (looked in {', '.join(str(p) for p in looked)}); no download is "
                    f"possible: place {spec['bin']}/ or {spec['py']}/ there, or pass --data-dir / set "
                    f"{DATA_DIR_ENV} to the folder holding it")


def _read_cifar_bin(files: list[Path], label_bytes: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rec = label_bytes + 3072
    images, labels = [], []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % rec:
            raise DataError(f"{f} has {raw.size} bytes, not a multiple of the {rec}-byte CIFAR record; "
                            "the file is truncated or corrupt, replace it")
        raw = raw.reshape(-1, rec)
        labels.append(raw[:, label_bytes - 1].astype(np.int64))  # CIFAR-100: fine label is the 2nd byte
        images.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32))
    lab = np.concatenate(labels)
    if lab.size and int(lab.max()) >= num_classes:
        raise DataError(f"{files[0].parent} has label {int(lab.max())} >= {num_classes}; the files are not "
                        "this CIFAR variant, check --data")
    return np.concatenate(images), lab


def _read_cifar_py(files: list[Path], label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for f in files:
        d = _safe_unpickle(f)
        try:
            data = np.asarray(_key(d, "data"), dtype=np.uint8)
            lab = np.asarray(_key(d, label_key), dtype=np.int64)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{f} lacks CIFAR fields ({e}); replace it with the original file") from None
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != lab.shape[0]:
            raise DataError(f"{f} holds data {data.shape} and {lab.shape[0]} labels, not N x 3072 "
                            "CIFAR rows; replace it with the original file")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    lab = np.concatenate(labels)
    if lab.size and (int(lab.max()) >= num_classes or int(lab.min()) < 0):
        raise DataError(f"{files[0].parent} has labels outside [0, {num_classes}); check --data")
    return np.concatenate(images), lab


@functools.lru_cache(maxsize=4)
def _read_cifar_cached(name: str, layout: str, folder: str, stamp: tuple
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    del stamp
    spec, root = CIFAR[name], Path(folder)
    n = spec["classes"]
    if layout == "bin":
        tr = _read_cifar_bin([root / f for f in spec["bin_train"]], spec["label_bytes"], n)
        te = _read_cifar_bin([root / f for f in spec["bin_test"]], spec["label_bytes"], n)
        meta = root / spec["bin_meta"]
        names = ([ln.strip() for ln in meta.read_text(errors="replace").splitlines() if ln.strip()]
                 if meta.is_file() else [])
    else:
        tr = _read_cifar_py([root / f for f in spec["py_train"]], spec["py_labels"], n)
        te = _read_cifar_py([root / f for f in spec["py_test"]], spec["py_labels"], n)
        meta = root / spec["py_meta"]
        names = []
        if meta.is_file():
            try:
                names = [x.decode() if isinstance(x, bytes) else str(x)
                         for x in _key(_safe_unpickle(meta), spec["py_names"])]
            except (KeyError, TypeError):
                names = []
    if len(names) != n:
        names = [str(i) for i in range(n)]
    return (torch.from_numpy(np.ascontiguousarray(tr[0])), torch.from_numpy(tr[1]),
            torch.from_numpy(np.ascontiguousarray(te[0])), torch.from_numpy(te[1]), names)


def read_cifar(name: str = "cifar10", data_dir: str | os.PathLike | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """CIFAR-10/100 from the binary or python layout: ``(train_x, train_y, test_x, test_y, class_names)``.

    Images are uint8 ``N,3,32,32``; cached per process (do not modify in place). Python-layout pickles are
    read with an unpickler that only resolves numpy's array reconstruction globals.
    """
    layout, folder = find_cifar(name, data_dir)
    spec = CIFAR[name]
    files = spec[f"{layout}_train"] + spec[f"{layout}_test"]
    stamp = tuple(file_key(folder / f)[1:] for f in files)
    return _read_cifar_cached(name, layout, str(folder.resolve()), stamp)
