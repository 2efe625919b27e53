"""Datasets and deterministic, resumable batch loaders.

:func:`load_data` returns ``(train, val, info)``: two :class:`Batches` objects and a :class:`DataInfo`.

* Fashion-MNIST (default) and CIFAR-10/100 are decoded once into uint8 tensors in memory
  (:class:`TensorBatches`); training augmentation (zero-padded random crop + horizontal flip) runs as
  tensor ops on the whole batch.
* An image-folder tree (``train/`` and ``val/`` holding one folder per class) is decoded in
  ``DataLoader`` workers with torchvision transforms (:class:`FolderBatches`).

Every batch is a pure function of ``(seed, epoch, batch index, rank, world_size)``, so resuming with
``batches(epoch, start_step=k)`` yields exactly the batches ``k, k+1, ...`` of an uninterrupted epoch.
Nothing is ever downloaded: datasets must already be on disk.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "DATA_DIR_ENV",
    "DataError",
    "DataInfo",
    "Batches",
    "TensorBatches",
    "FolderBatches",
    "load_data",
    "scan_image_folder",
    "read_fashion_mnist",
    "read_cifar",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "MAX_IN_MEMORY_BYTES",
]

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATA_DIR_ENV = "MOBILECNN_DATA_DIR"
#: Where CIFAR is looked for when neither ``data_dir`` nor ``$MOBILECNN_DATA_DIR`` is given.
DEFAULT_CIFAR_DIRS = ("data", "/usr/share/datasets")

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_FOLDER_STATS_SAMPLES = 256
#: In-memory datasets (Fashion-MNIST, CIFAR) resized to more bytes than this are refused.
MAX_IN_MEMORY_BYTES = 8 << 30
_ACCEPTED = "'fashion-mnist', 'cifar10', 'cifar100' or a folder holding train/ and val/ class folders"


class DataError(ValueError):
    """A problem with the data the user can fix; the message names the problem and the fix."""


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

    def to_dict(self) -> dict:
        """JSON-serialisable form (tuples become lists)."""
        d = asdict(self)
        d["mean"] = [float(m) for m in self.mean]
        d["std"] = [float(s) for s in self.std]
        d["class_names"] = list(self.class_names)
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


# --------------------------------------------------------------------------------------------------
# helpers


def _seed_of(*parts: Any) -> int:
    """A 63-bit seed that depends on every part (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(_seed_of(*parts))


def _check_common(batch_size: int, rank: int, world_size: int) -> None:
    if int(batch_size) < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}; pass --batch-size >= 1")
    if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise DataError(f"rank {rank} is not in [0, world_size={world_size}); check the launcher's "
                        "RANK / WORLD_SIZE")


def _check_start_step(start_step: int, n: int) -> None:
    if not 0 <= start_step <= n:
        raise ValueError(f"start_step {start_step} is outside [0, {n}] (batches per epoch)")


def _train_plan(num: int, batch_size: int, seed: int, epoch: int, rank: int,
                world_size: int) -> list[torch.Tensor]:
    """Index batches of this rank for one training epoch: a (seed, epoch) permutation cut into full
    batches, batch ``j`` going to rank ``j % world_size`` (every rank gets the same count)."""
    perm = torch.randperm(num, generator=_generator("perm", seed, epoch))
    per_rank = (num // batch_size) // world_size
    return [perm[(k * world_size + rank) * batch_size:(k * world_size + rank + 1) * batch_size]
            for k in range(per_rank)]


def _eval_shard(num: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, disjoint ``[start, stop)`` of the eval set for this rank (sizes differ by <= 1)."""
    base, extra = divmod(num, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _plan_epoch_size(loader: Any, n: int) -> None:
    """Batches per epoch and samples per rank of a loader over ``n`` samples (training: full batches
    dealt round-robin to ranks; eval: a contiguous shard per rank, last batch kept)."""
    if loader.train:
        loader._len = (n // loader.batch_size) // loader.world_size
        loader.num_samples = loader._len * loader.batch_size
    else:
        loader._start, loader._stop = _eval_shard(n, loader.rank, loader.world_size)
        loader.num_samples = loader._stop - loader._start
        loader._len = -(-loader.num_samples // loader.batch_size)


def _as_stats(values: Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    vals = tuple(float(v) for v in values)
    if len(vals) == 1 and channels > 1:
        vals = vals * channels
    if len(vals) != channels:
        raise ValueError(f"{what} has {len(vals)} values for {channels} channels")
    return vals


# --------------------------------------------------------------------------------------------------
# in-memory loader


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
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool,
                 mean: Sequence[float], std: Sequence[float], seed: int = 0, rank: int = 0,
                 world_size: int = 1, pad: int = 4, flip: bool = True, channels_last: bool = False,
                 device: str | torch.device | None = None) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 N,C,R,R, got {tuple(images.shape)} {images.dtype}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be 1-D with {images.shape[0]} entries, got {tuple(labels.shape)}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        _check_common(batch_size, rank, world_size)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.pad, self.flip, self.channels_last = int(pad), bool(flip), bool(channels_last)
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        c = images.shape[1]
        self.mean = _as_stats(mean, c, "mean")
        self.std = _as_stats(std, c, "std")
        self._mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self._inv_std = 1.0 / torch.tensor(self.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        _plan_epoch_size(self, images.shape[0])

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"TensorBatches(n={self.images.shape[0]}, batch_size={self.batch_size}, train={self.train}, "
                f"rank={self.rank}/{self.world_size}, batches={self._len})")

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` for batches ``start_step, ..., len(self) - 1`` of ``epoch``."""
        _check_start_step(start_step, self._len)
        if self.train:
            plan = _train_plan(self.images.shape[0], self.batch_size, self.seed, epoch, self.rank,
                               self.world_size)
            for k in range(start_step, self._len):
                idx = plan[k].to(self.device)
                imgs = self._augment(self.images[idx], _generator("aug", self.seed, epoch, k, self.rank))
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
        x = imgs.to(torch.float32).mul_(1.0 / 255.0).sub_(self._mean).mul_(self._inv_std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read one gzipped IDX file (uint8 payload), validating magic number and size."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is corrupt or truncated ({e}); replace it (e.g. reinstall "
                        "dataset-fashion-mnist)") from None
    header = 4 + 4 * ndim
    got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if got != magic:
        raise DataError(f"{path} is not an IDX file (magic number {got}, expected {magic}); replace it "
                        "(e.g. reinstall dataset-fashion-mnist)")
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header incomplete); replace it")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path} holds {len(raw) - header} data bytes but its header {dims} needs "
                        f"{expected}; the file is truncated or corrupt, replace it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


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


def _fashion_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_FASHION_MNIST_DIR).expanduser()


def read_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded Fashion-MNIST split as (uint8 ``N,1,28,28``, int64 ``N``); cached per process.

    Looks in ``data_dir``, else ``$MOBILECNN_DATA_DIR``, else :data:`DEFAULT_FASHION_MNIST_DIR`.
    The returned tensors are shared by the cache: do not modify them in place.
    """
    root = _fashion_dir(data_dir)
    paths = [root / f for f in _IDX_FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}): install it with "
                        "`apt-get install dataset-fashion-mnist` or pass --data-dir / set "
                        f"{DATA_DIR_ENV}")
    return _fashion_split_cached(_file_key(paths[0]), _file_key(paths[1]))


def _resize_uint8(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of a uint8 ``N,C,H,W`` tensor to ``resolution`` (antialiased when shrinking)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    antialias = resolution < max(images.shape[-2:])
    per_image = images.shape[1] * max(resolution, images.shape[-1]) * max(resolution, images.shape[-2]) * 4
    chunk = max(1, (256 << 20) // per_image)  # ~256 MiB of float32 at a time
    out = torch.empty(images.shape[0], images.shape[1], resolution, resolution, dtype=torch.uint8)
    for lo in range(0, images.shape[0], chunk):
        x = images[lo:lo + chunk].to(torch.float32)
        y = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=antialias)
        out[lo:lo + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


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


# --------------------------------------------------------------------------------------------------
# CIFAR


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


_CIFAR = {
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


def _find_cifar(name: str, data_dir: str | os.PathLike | None) -> tuple[str, Path]:
    spec = _CIFAR[name]
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
    spec, root = _CIFAR[name], Path(folder)
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
    layout, folder = _find_cifar(name, data_dir)
    spec = _CIFAR[name]
    files = spec[f"{layout}_train"] + spec[f"{layout}_test"]
    stamp = tuple(_file_key(folder / f)[1:] for f in files)
    return _read_cifar_cached(name, layout, str(folder.resolve()), stamp)


def _to_gray(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of a uint8 RGB ``N,3,H,W`` tensor (what PIL's ``convert("L")`` does)."""
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    out = torch.empty(images.shape[0], 1, *images.shape[2:], dtype=torch.uint8)
    for lo in range(0, images.shape[0], 8192):
        out[lo:lo + 8192] = (images[lo:lo + 8192].float() * w).sum(1, keepdim=True).round_().clamp_(0, 255)
    return out


# --------------------------------------------------------------------------------------------------
# image folders


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def scan_image_folder(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples, class_names)`` of an ImageFolder tree: class names are the sorted sub-folder names,
    samples ``(path, class index)`` sorted by class then path; files are found recursively and only the
    image extensions in :data:`IMAGE_EXTENSIONS` count (case-insensitive, hidden files ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; create it with one sub-folder per class")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class folders; put the images of each class in {root}/<class>/")
    samples: list[tuple[str, int]] = []
    for ci, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            dirnames.sort()
            found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image_name(f))
        if not found:
            raise DataError(f"class folder {root / cls} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            "add images or remove the folder")
        samples.extend((p, ci) for p in found)
    return samples, classes


def _check_image(path: str) -> str | None:
    """Why ``path`` is not a readable image (cheap header check), or None if it looks fine."""
    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        return _reason(e, path)
    return None


def _reason(e: BaseException, path: str) -> str:
    """Short cause of a failed open (PIL messages often repeat the path)."""
    msg = str(e)
    return type(e).__name__ if not msg or path in msg else f"{type(e).__name__}: {msg}"


def _verify_files(samples: list[tuple[str, int]], threads: int = 8) -> list[tuple[str, str]]:
    """``(path, reason)`` for every sample that fails PIL's ``verify``."""
    paths = [p for p, _ in samples]
    if len(paths) > 64 and threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            reasons = list(pool.map(_check_image, paths, chunksize=64))
    else:
        reasons = [_check_image(p) for p in paths]
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def _corrupt_error(path: str, reason: str) -> DataError:
    return DataError(f"unreadable image {path} ({reason}); remove or replace it, or use --on-corrupt skip "
                     "to skip such files")


def _load_image(path: str, grayscale: bool, draft: int | None = None):
    """Open an image of any mode as PIL "RGB" (or "L" when ``grayscale``)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        if draft and im.format == "JPEG":
            im.draft("L" if grayscale else "RGB", (draft, draft))
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - a broken EXIF block should not lose the image
            pass
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            if im.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
                arr = arr * 255.0
            elif im.mode != "F" and (im.mode.startswith("I;16") or (arr.size and arr.max() > 255)):
                arr = arr / 257.0  # 16-bit range to 8-bit
            im = Image.fromarray(np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8), "L")
        elif im.mode in ("P", "PA"):
            im = im.convert("RGBA")
        elif im.mode == "LAB":
            raise ValueError("LAB images are not supported")
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        target = "L" if grayscale else "RGB"
        return im if im.mode == target else im.convert(target)


class _FolderDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(sample index, epoch)``; per-sample randomness is seeded from
    ``(seed, epoch, sample index)`` so the output does not depend on worker count or order."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any, seed: int, grayscale: bool,
                 skip: bool, shape: tuple[int, int, int]) -> None:
        self.samples, self.transform, self.seed = samples, transform, seed
        self.grayscale, self.skip, self.shape = grayscale, skip, shape

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, str]:
        index, epoch = key
        bad: list[str] = []
        tries = min(len(self.samples), 16) if self.skip else 1
        for t in range(tries):  # in skip mode a file that fails to decode is replaced by the next one
            path, label = self.samples[(index + t) % len(self.samples)]
            try:
                img = _load_image(path, self.grayscale)
            except Exception as e:  # noqa: BLE001
                bad.append(f"{path}\t{_reason(e, path)}")
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed_of("sample", self.seed, epoch, index))
                x = self.transform(img)
            return x, label, "\n".join(bad)
        return torch.zeros(self.shape), -1, "\n".join(bad)


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    xs, ys, bad = zip(*items)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), [b for b in bad if b]


class FolderBatches:
    """Batches decoded from image files in ``DataLoader`` workers with torchvision ``transforms.v2``.

    ``samples`` are ``(path, class index)`` pairs (see :func:`scan_image_folder`). Train:
    RandomResizedCrop(resolution) + RandomHorizontalFlip; eval: Resize(int(resolution / 0.875)) +
    CenterCrop(resolution); then scaling to [0, 1] and normalisation. The epoch's order is a permutation
    seeded from ``(seed, epoch)`` and sharded like :class:`TensorBatches`; each sample's random crop/flip is
    seeded from ``(seed, epoch, sample index)`` inside the worker (the caller's RNG state is untouched),
    so batches do not depend on ``workers``. ``start_step`` slices the index plan: skipped batches are
    never decoded.

    Files are checked at construction with PIL's ``verify`` (``verify=False`` skips that, e.g. when the
    caller already did): ``on_corrupt="skip"`` drops unreadable files, lists them in ``skipped`` and
    warns; ``on_corrupt="error"`` raises :class:`DataError` naming the first one. A file that passes the
    check but fails to decode later is, in skip mode, replaced by the next sample of the dataset (and
    appended to ``skipped`` with a warning); in error mode it raises :class:`DataError`.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], batch_size: int, *, train: bool, resolution: int,
                 mean: Sequence[float], std: Sequence[float], seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 2, on_corrupt: str = "skip", grayscale: bool = False,
                 channels_last: bool = False, verify: bool = True, skipped: Sequence[str] = ()) -> None:
        from torchvision.transforms import v2

        _check_common(batch_size, rank, world_size)
        if on_corrupt not in ("skip", "error"):
            raise DataError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        if int(resolution) < 1:
            raise DataError(f"resolution must be a positive number of pixels, got {resolution}")
        self.batch_size = int(batch_size)
        self.train, self.resolution = bool(train), int(resolution)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.workers, self.on_corrupt = max(0, int(workers)), on_corrupt
        self.grayscale, self.channels_last = bool(grayscale), bool(channels_last)
        self.skipped: list[str] = list(skipped)
        samples = [(str(p), int(c)) for p, c in samples]
        if verify:
            bad = _verify_files(samples)
            if bad and on_corrupt == "error":
                raise _corrupt_error(*bad[0])
            if bad:
                _warn_skipped(bad, "the image list")
                drop = {p for p, _ in bad}
                samples = [s for s in samples if s[0] not in drop]
                self.skipped.extend(p for p, _ in bad)
        if not samples:
            raise DataError("no readable images to load; add images or fix the unreadable ones")
        self.samples = samples
        c = 1 if self.grayscale else 3
        self.mean = _as_stats(mean, c, "mean")
        self.std = _as_stats(std, c, "std")
        r = self.resolution
        if self.train:
            geometry = [v2.RandomResizedCrop(r, antialias=True), v2.RandomHorizontalFlip()]
        else:
            geometry = [v2.Resize(int(r / 0.875), antialias=True), v2.CenterCrop(r)]
        transform = v2.Compose([v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True),
                                v2.Normalize(list(self.mean), list(self.std))])
        self._dataset = _FolderDataset(samples, transform, self.seed, self.grayscale,
                                       on_corrupt == "skip", (c, r, r))
        _plan_epoch_size(self, len(samples))
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"FolderBatches(n={len(self.samples)}, batch_size={self.batch_size}, train={self.train}, "
                f"rank={self.rank}/{self.world_size}, batches={self._len}, skipped={len(self.skipped)})")

    def _plan(self, epoch: int) -> list[list[int]]:
        if self.train:
            return [b.tolist() for b in _train_plan(len(self.samples), self.batch_size, self.seed, epoch,
                                                    self.rank, self.world_size)]
        idx = list(range(self._start, self._stop))
        return [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` for batches ``start_step, ..., len(self) - 1`` of ``epoch``."""
        _check_start_step(start_step, self._len)
        plan = self._plan(epoch)[start_step:]
        if not plan:
            return
        loader = torch.utils.data.DataLoader(
            self._dataset, batch_sampler=[[(i, epoch) for i in b] for b in plan],
            num_workers=self.workers, collate_fn=_collate, pin_memory=False, persistent_workers=False,
            generator=torch.Generator().manual_seed(0))  # keeps the caller's global RNG untouched
        for x, y, bad in loader:
            if bad:
                self._handle_bad(bad)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _handle_bad(self, bad: list[str]) -> None:
        entries = [tuple(line.split("\t", 1)) for b in bad for line in b.split("\n")]
        if self.on_corrupt == "error":
            raise _corrupt_error(*entries[0])
        new = [(p, r) for p, r in entries if p not in self._warned]
        if new:
            self._warned.update(p for p, _ in new)
            self.skipped.extend(p for p, _ in new)
            _warn_skipped(new, "decoding; each was replaced by the next image", stacklevel=4)


def _warn_skipped(bad: list[tuple[str, str]], where: str, stacklevel: int = 3) -> None:
    first = "; ".join(f"{p} ({r})" for p, r in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {where}: {first}{more}", stacklevel=stacklevel)


@functools.lru_cache(maxsize=8)
def _folder_stats(paths: tuple[str, ...], grayscale: bool) -> tuple[tuple[float, ...], tuple[float, ...], tuple[str, ...]]:
    """Per-channel mean/std from up to ``_FOLDER_STATS_SAMPLES`` train images (a fixed-seed sample,
    decoded at <= 64 px), plus the paths that failed to decode."""
    g = torch.Generator().manual_seed(_seed_of("folder-stats"))
    order = torch.randperm(len(paths), generator=g)[:_FOLDER_STATS_SAMPLES].tolist()
    c = 1 if grayscale else 3
    s = np.zeros(c)
    s2 = np.zeros(c)
    count = 0
    failed = []
    for i in sorted(order):
        try:
            im = _load_image(paths[i], grayscale, draft=64)
        except Exception:  # noqa: BLE001
            failed.append(paths[i])
            continue
        im.thumbnail((64, 64))
        a = np.asarray(im, dtype=np.float64).reshape(-1, c) / 255.0
        s += a.sum(0)
        s2 += (a * a).sum(0)
        count += a.shape[0]
    if count == 0:
        return (0.5,) * c, (0.25,) * c, tuple(failed)
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean * mean, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(v) for v in std), tuple(failed)


# --------------------------------------------------------------------------------------------------
# entry point


def _subset_indices(n: int, k: int | None, seed: int, what: str) -> torch.Tensor | None:
    if k is None or k >= n:
        return None
    if k < 1:
        raise DataError(f"{what} must be at least 1, got {k}")
    return torch.randperm(n, generator=_generator(what, seed))[:k].sort().values


def _check_global_batch(batch_size: int, world_size: int, train_size: int) -> None:
    total = batch_size * world_size
    if total > train_size:
        procs = f" ({batch_size} x {world_size} processes)" if world_size > 1 else ""
        raise DataError(f"batch size {total}{procs} is larger than the {train_size} training images; "
                        f"use --batch-size <= {train_size // world_size}")


def _normalise_name(data: str) -> str:
    key = data.strip().lower().replace("_", "-")
    return {"fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar10": "cifar10",
            "cifar-10": "cifar10", "cifar100": "cifar100", "cifar-100": "cifar100"}.get(key, "")


def load_data(data: str = "fashion-mnist", *, data_dir: str | None = None, resolution: int | None = None,
              batch_size: int = 128, eval_batch_size: int | None = None, seed: int = 0,
              subset: int | None = None, val_subset: int | None = None, rank: int = 0, world_size: int = 1,
              workers: int = 2, on_corrupt: str = "skip", channels_last: bool = False, grayscale: bool = False,
              device: str | torch.device | None = None, crop_padding: int = 4
              ) -> tuple[Batches, Batches, DataInfo]:
    """Build ``(train_batches, val_batches, info)`` for ``data``.

    ``data``: "fashion-mnist", "cifar10", "cifar100", or a folder with ``train/`` and ``val/`` class
    folders. ``batch_size`` is per process; ``subset`` / ``val_subset`` take a seeded random subset;
    ``device`` (in-memory datasets only) keeps the data on that device and augments there.
    Raises :class:`DataError` for any problem with the data or the arguments.
    """
    _check_common(batch_size, rank, world_size)
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    if resolution is not None and int(resolution) < 1:
        raise DataError(f"resolution must be a positive number of pixels, got {resolution}")
    eval_bs = int(eval_batch_size) if eval_batch_size else max(int(batch_size), 256)
    name = _normalise_name(str(data))
    if name:
        return _load_tensor_dataset(name, data_dir=data_dir, resolution=resolution or 32,
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
    return _load_folder(root, resolution=resolution or 224, batch_size=batch_size, eval_batch_size=eval_bs,
                        seed=seed, subset=subset, val_subset=val_subset, rank=rank, world_size=world_size,
                        workers=workers, on_corrupt=on_corrupt, channels_last=channels_last,
                        grayscale=grayscale)


def _tensor_source(name: str, data_dir: str | None) -> tuple:
    """A hashable key naming the on-disk files of an in-memory dataset (with their mtimes and sizes)."""
    if name == "fashion-mnist":
        read_fashion_mnist("train", data_dir)  # raises DataError when missing or corrupt
        read_fashion_mnist("val", data_dir)
        root = _fashion_dir(data_dir)
        return (name, str(root), tuple(_file_key(root / f) for s in ("train", "val") for f in _IDX_FILES[s]))
    layout, folder = _find_cifar(name, data_dir)
    spec = _CIFAR[name]
    files = spec[f"{layout}_train"] + spec[f"{layout}_test"]
    return (name, str(folder), layout, tuple(_file_key(folder / f) for f in files))


@functools.lru_cache(maxsize=4)
def _prepared(source: tuple, resolution: int, grayscale: bool) -> tuple:
    """``(train_x, train_y, val_x, val_y, classes, mean, std)`` at ``resolution``; stats from the train
    split at its native resolution. Cached per process: the tensors are shared, never modify them."""
    name = source[0]
    if name == "fashion-mnist":
        tr_x, tr_y = read_fashion_mnist("train", source[1])
        te_x, te_y = read_fashion_mnist("val", source[1])
        classes = list(FASHION_MNIST_CLASSES)
    else:
        tr_x, tr_y, te_x, te_y, classes = read_cifar(name, source[1])
        if grayscale:
            tr_x, te_x = _to_gray(tr_x), _to_gray(te_x)
    mean, std = _uint8_stats(tr_x)
    return (_resize_uint8(tr_x, resolution), tr_y, _resize_uint8(te_x, resolution), te_y, classes, mean, std)


def _load_tensor_dataset(name: str, *, data_dir: str | None, resolution: int, batch_size: int,
                         eval_batch_size: int, seed: int, subset: int | None, val_subset: int | None,
                         rank: int, world_size: int, channels_last: bool, grayscale: bool,
                         device: str | torch.device | None, crop_padding: int = 4
                         ) -> tuple[Batches, Batches, DataInfo]:
    grayscale = bool(grayscale) and name != "fashion-mnist"
    source = _tensor_source(name, data_dir)
    if subset is not None and subset < 1:
        raise DataError(f"subset must be at least 1, got {subset}")
    if name == "fashion-mnist":  # both reads are cached, so the sizes cost nothing
        n_images = sum(read_fashion_mnist(s, source[1])[0].shape[0] for s in ("train", "val"))
    else:
        n_images = sum(t.shape[0] for t in read_cifar(name, source[1])[0:4:2])
    need = n_images * (1 if (name == "fashion-mnist" or grayscale) else 3) * int(resolution) ** 2
    if need > MAX_IN_MEMORY_BYTES:
        raise DataError(f"{name} at resolution {resolution} needs {need / 2**30:.1f} GiB in memory; use "
                        "--resolution <= 64 (the small-input stems are made for it) or export the images to "
                        "an image folder and pass that folder")
    tr_x, tr_y, te_x, te_y, classes, mean, std = _prepared(source, int(resolution), grayscale)
    train_size = tr_x.shape[0] if subset is None else min(subset, tr_x.shape[0])
    _check_global_batch(batch_size, world_size, train_size)
    tr_idx = _subset_indices(tr_x.shape[0], subset, seed, "subset")
    te_idx = _subset_indices(te_x.shape[0], val_subset, seed, "val_subset")
    if tr_idx is not None:
        tr_x, tr_y = tr_x[tr_idx], tr_y[tr_idx]
    if te_idx is not None:
        te_x, te_y = te_x[te_idx], te_y[te_idx]
    common = dict(mean=mean, std=std, seed=seed, rank=rank, world_size=world_size,
                  channels_last=channels_last, device=device)
    train = TensorBatches(tr_x, tr_y, batch_size, train=True, pad=crop_padding, **common)
    val = TensorBatches(te_x, te_y, eval_batch_size, train=False, **common)
    in_chans = 1 if (name == "fashion-mnist" or grayscale) else 3
    info = DataInfo(name=name, num_classes=len(classes), class_names=list(classes), in_chans=in_chans,
                    mean=tuple(mean), std=tuple(std), resolution=int(resolution),
                    train_size=int(tr_x.shape[0]), val_size=int(te_x.shape[0]))
    return train, val, info


def _load_folder(root: Path, *, resolution: int, batch_size: int, eval_batch_size: int, seed: int,
                 subset: int | None, val_subset: int | None, rank: int, world_size: int, workers: int,
                 on_corrupt: str, channels_last: bool, grayscale: bool) -> tuple[Batches, Batches, DataInfo]:
    tr_samples, classes = scan_image_folder(root / "train")
    te_samples, te_classes = scan_image_folder(root / "val")
    if classes != te_classes:
        only_tr = sorted(set(classes) - set(te_classes))
        only_te = sorted(set(te_classes) - set(classes))
        parts = ([f"only in train/: {', '.join(only_tr)}"] if only_tr else []) + \
                ([f"only in val/: {', '.join(only_te)}"] if only_te else [])
        raise DataError(f"train/ and val/ of {root} have different class folders ({'; '.join(parts)}); "
                        "make both hold the same class folders")
    splits = {}
    for split, samples in (("train", tr_samples), ("val", te_samples)):
        bad = _verify_files(samples)
        if bad and on_corrupt == "error":
            raise _corrupt_error(*bad[0])
        if bad:
            _warn_skipped(bad, str(root / split), stacklevel=4)
            drop = {p for p, _ in bad}
            samples = [s for s in samples if s[0] not in drop]
        splits[split] = (samples, [p for p, _ in bad])
    tr_samples, tr_bad = splits["train"]
    te_samples, te_bad = splits["val"]
    mean, std, failed = _folder_stats(tuple(p for p, _ in tr_samples), bool(grayscale))
    if failed:  # passed verify but does not decode
        if on_corrupt == "error":
            raise _corrupt_error(failed[0], "cannot be decoded")
        _warn_skipped([(p, "cannot be decoded") for p in failed], str(root / "train"), stacklevel=4)
        tr_samples = [s for s in tr_samples if s[0] not in set(failed)]
        tr_bad = tr_bad + list(failed)
    for split, samples in (("train", tr_samples), ("val", te_samples)):
        if not samples:
            raise DataError(f"{root / split} has no readable images; add images or fix the unreadable ones")
    tr_idx = _subset_indices(len(tr_samples), subset, seed, "subset")
    te_idx = _subset_indices(len(te_samples), val_subset, seed, "val_subset")
    if tr_idx is not None:
        tr_samples = [tr_samples[i] for i in tr_idx.tolist()]
    if te_idx is not None:
        te_samples = [te_samples[i] for i in te_idx.tolist()]
    _check_global_batch(batch_size, world_size, len(tr_samples))
    common = dict(resolution=resolution, mean=mean, std=std, seed=seed, rank=rank, world_size=world_size,
                  workers=workers, on_corrupt=on_corrupt, grayscale=grayscale, channels_last=channels_last,
                  verify=False)
    train = FolderBatches(tr_samples, batch_size, train=True, skipped=tr_bad, **common)
    val = FolderBatches(te_samples, eval_batch_size, train=False, skipped=te_bad, **common)
    info = DataInfo(name=f"folder:{root.resolve()}", num_classes=len(classes), class_names=list(classes),
                    in_chans=1 if grayscale else 3, mean=tuple(mean), std=tuple(std), resolution=resolution,
                    train_size=len(tr_samples), val_size=len(te_samples))
    return train, val, info
