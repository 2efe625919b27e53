"""Image-folder datasets: ``root/train/<class>/*`` and ``root/val/<class>/*``, decoded in ``DataLoader`` workers."""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .batches import (
    Batches,
    DataInfo,
    Dealing,
    LoadOptions,
    check_batch_args,
    check_global_batch,
    check_start_step,
    plan_epoch_size,
    seed_of,
    subset_indices,
    train_plan,
)
from .images import (
    IMAGE_EXTENSIONS,
    RASTER_FORMATS,
    Preprocessing,
    is_image_name,
    load_image,
    open_image,
    train_geometry,
)
from .names import FOLDER_PREFIX

__all__ = ["FolderBatches", "FolderOptions", "scan_image_folder", "load_folder"]

_FOLDER_STATS_SAMPLES = 256


def scan_image_folder(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples, class_names)`` of an ImageFolder tree: class names are the sorted sub-folder names,
    samples ``(path, class index)`` sorted by class then path; files are found recursively and only the
    image extensions in :data:`IMAGE_EXTENSIONS` count (case-insensitive, hidden files ignored).

    Links to folders are followed once: a folder reached again (a link loop such as ``a/loop -> ..``,
    or a second link to the same folder) is skipped, so no image is counted twice or under another
    class. A folder that cannot be read is an error naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; create it with one sub-folder per class")
    try:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot read {root} ({exc.strerror}); make it readable") from None
    if not classes:
        raise DataError(f"{root} has no class folders; put the images of each class in {root}/<class>/")
    samples: list[tuple[str, int]] = []
    seen = {_folder_key(root)}  # a class folder never descends into the dataset root or another class
    for ci, cls in enumerate(classes):
        seen.add(_folder_key(root / cls))
    for ci, cls in enumerate(classes):
        found = _walk_images(root / cls, seen)
        if not found:
            raise DataError(f"class folder {root / cls} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            "add images or remove the folder")
        samples.extend((p, ci) for p in found)
    return samples, classes


def _folder_key(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk_images(top: Path, seen: set[tuple[int, int]]) -> list[str]:
    """Image files below ``top`` (sorted), entering every real folder once."""
    found: list[str] = []

    def refuse(exc: OSError) -> None:
        raise DataError(f"cannot read class folder {exc.filename} ({exc.strerror}); make it readable or remove it")

    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=refuse):
        keep = []
        for name in sorted(dirnames):
            try:
                key = _folder_key(Path(dirpath) / name)
            except OSError:  # a dangling link
                continue
            if key not in seen:
                seen.add(key)
                keep.append(name)
        dirnames[:] = keep
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(f))
    return found


def _check_image(path: str) -> str | None:
    """Why ``path`` is not a readable image (cheap header check), or None if it looks fine."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path, formats=RASTER_FORMATS) as im:
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
    return DataError(f"unreadable image {_shown(path)} ({reason}); remove or replace it, or use --on-corrupt skip "
                     "to skip such files")


class _TrainTransform:
    """Random resized crop + flip, then the eval normalisation (a class: DataLoader workers pickle it)."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing
        self.augment = train_geometry(preprocessing.resolution)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.preprocessing.normalize(self.augment(image))


class _FolderDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(sample index, epoch)``; per-sample randomness is seeded from
    ``(seed, epoch, sample index)`` so the output does not depend on worker count or order."""

    def __init__(self, samples: list[tuple[str, int]], transform: Any, seed: int, grayscale: bool,
                 skip: bool, shape: tuple[int, int, int]) -> None:
        self.samples, self.transform, self.seed = samples, transform, seed
        self.grayscale, self.skip, self.shape = grayscale, skip, shape

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, list[tuple[str, str]]]:
        index, epoch = key
        bad: list[tuple[str, str]] = []  # (path, reason): any byte-valid file name, newlines included
        tries = min(len(self.samples), 16) if self.skip else 1
        for t in range(tries):  # in skip mode a file that fails to decode is replaced by the next one
            path, label = self.samples[(index + t) % len(self.samples)]
            try:
                img = load_image(path, 1 if self.grayscale else 3)
            except Exception as e:  # noqa: BLE001
                bad.append((path, _reason(e, path)))
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_of("sample", self.seed, epoch, index))
                x = self.transform(img)
            return x, label, bad
        return torch.zeros(self.shape), -1, bad


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    xs, ys, bad = zip(*items)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), [entry for b in bad for entry in b]


@dataclass(frozen=True)
class FolderOptions(Dealing):
    """:class:`FolderBatches` options: how batches are dealt (:class:`~mobilecnn.data.batches.Dealing`),
    the decoding workers, what to do with corrupt files, grayscale, the up-front file check, files already
    skipped, and a preprocessing to normalise with instead of ``mean``/``std``."""

    workers: int = 2
    on_corrupt: str = "skip"
    grayscale: bool = False
    verify: bool = True
    skipped: Sequence[str] = ()
    preprocessing: Preprocessing | None = None


def epoch_plan(batches: Any, epoch: int) -> list[list[int]]:
    """The sample indices of each batch of ``epoch`` for a loader over ``batches.samples``: the shuffled,
    rank-sharded training plan, or the rank's own slice in order for evaluation."""
    if batches.train:
        return [b.tolist() for b in train_plan(len(batches.samples), batches.batch_size, batches.seed, epoch,
                                                batches.rank, batches.world_size)]
    idx = list(range(batches._start, batches._stop))
    return [idx[i:i + batches.batch_size] for i in range(0, len(idx), batches.batch_size)]


class FolderBatches:
    """Batches decoded from image files in ``DataLoader`` workers.

    ``samples`` are ``(path, class index)`` pairs (see :func:`scan_image_folder`). Files are decoded
    by :func:`~mobilecnn.data.images.load_image`; train: :func:`~mobilecnn.data.images.train_geometry`,
    eval: :class:`~mobilecnn.data.images.Preprocessing` with ``resize="center_crop"`` (the transform
    ``predict`` applies too); both end in its normalisation. The epoch's order is a permutation
    seeded from ``(seed, epoch)`` and sharded like :class:`TensorBatches`; each sample's random crop/flip is
    seeded from ``(seed, epoch, sample index)`` inside the worker (the caller's RNG state is untouched),
    so batches do not depend on ``workers``. ``start_step`` slices the index plan: skipped batches are
    never decoded.

    Files are checked at construction with PIL's ``verify`` (``verify=False`` skips that, e.g. when the
    caller already did): ``on_corrupt="skip"`` drops unreadable files, lists them in ``skipped`` and
    warns; ``on_corrupt="error"`` raises :class:`DataError` naming the first one. A file that passes the
    check but fails to decode later is, in skip mode, replaced by the next sample of the dataset (and
    appended to ``skipped`` with a warning); in error mode it raises :class:`DataError`.

    ``options``: the fields of :class:`FolderOptions`.
    """

    # set by plan_epoch_size: batches per epoch, samples per rank; eval: this rank's shard [_start, _stop)
    _len: int
    num_samples: int
    _start: int
    _stop: int

    def __init__(self, samples: Sequence[tuple[str, int]], batch_size: int, *, train: bool, resolution: int,
                 mean: Sequence[float], std: Sequence[float], **options: Any) -> None:
        o = FolderOptions(**options)
        seed, rank, world_size, on_corrupt, verify, preprocessing = (o.seed, o.rank, o.world_size, o.on_corrupt,
                                                                      o.verify, o.preprocessing)
        check_batch_args(batch_size, rank, world_size)
        if on_corrupt not in ("skip", "error"):
            raise DataError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        if int(resolution) < 1:
            raise DataError(f"resolution must be a positive number of pixels, got {resolution}")
        self.batch_size = int(batch_size)
        self.train, self.resolution = bool(train), int(resolution)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.workers, self.on_corrupt = max(0, int(o.workers)), on_corrupt
        self.grayscale, self.channels_last = bool(o.grayscale), bool(o.channels_last)
        self.skipped: list[str] = list(o.skipped)
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
        r = self.resolution
        self.preprocessing = (
            Preprocessing(r, c, tuple(mean), tuple(std), resize="center_crop") if preprocessing is None
            else dataclasses.replace(preprocessing, resolution=r, in_chans=c, resize="center_crop"))
        self.mean, self.std = self.preprocessing.mean, self.preprocessing.std
        transform = _TrainTransform(self.preprocessing) if self.train else self.preprocessing
        self._dataset = _FolderDataset(samples, transform, self.seed, self.grayscale,
                                       on_corrupt == "skip", (c, r, r))
        plan_epoch_size(self, len(samples))
        self._warned: set[str] = set()
        # an accelerator: pinned batches, non-blocking copies, workers kept alive between epochs
        self.device = torch.device(o.device) if o.device is not None else None
        self._accelerated = self.device is not None and self.device.type != "cpu"
        self._sampler: _PlanSampler | None = None
        self._loader: torch.utils.data.DataLoader | None = None

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"FolderBatches(n={len(self.samples)}, batch_size={self.batch_size}, train={self.train}, "
                f"rank={self.rank}/{self.world_size}, batches={self._len}, skipped={len(self.skipped)})")

    def _plan(self, epoch: int) -> list[list[int]]:
        return epoch_plan(self, epoch)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` for batches ``start_step, ..., len(self) - 1`` of ``epoch``."""
        check_start_step(start_step, self._len)
        plan = self._plan(epoch)[start_step:]
        if not plan:
            return
        if self._accelerated:
            yield from self._device_batches(plan, epoch)
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

    def _device_batches(self, plan: list[list[int]], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The accelerator path: one DataLoader whose workers persist across epochs, pinned host batches
        copied without blocking (the copy of batch k+1 overlaps the step on batch k)."""
        assert self.device is not None, "only called when self._accelerated"
        if self._loader is None:
            self._sampler = _PlanSampler()
            self._loader = torch.utils.data.DataLoader(
                self._dataset, batch_sampler=self._sampler, num_workers=self.workers, collate_fn=_collate,
                pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                prefetch_factor=4 if self.workers > 0 else None, generator=torch.Generator().manual_seed(0))
        assert self._sampler is not None, "made with the loader"
        self._sampler.plan = [[(i, epoch) for i in b] for b in plan]
        for x, y, bad in self._loader:
            if bad:
                self._handle_bad(bad)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _handle_bad(self, bad: list[tuple[str, str]]) -> None:
        entries = [(str(p), str(r)) for p, r in bad]
        if self.on_corrupt == "error":
            raise _corrupt_error(*entries[0])
        new = [(p, r) for p, r in entries if p not in self._warned]
        if new:
            self._warned.update(p for p, _ in new)
            self.skipped.extend(p for p, _ in new)
            _warn_skipped(new, "decoding; each was replaced by the next image", stacklevel=4)


def _shown(path: str) -> str:
    """A file name fit for a one-line message: control characters (newlines, escapes) made visible."""
    return path if path.isprintable() else "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in path)


class _PlanSampler:
    """A batch sampler whose batches are set before each pass (lets persistent workers serve every epoch)."""

    def __init__(self) -> None:
        self.plan: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(list(self.plan))

    def __len__(self) -> int:
        return len(self.plan)


def _warn_skipped(bad: list[tuple[str, str]], where: str, stacklevel: int = 3) -> None:
    first = "; ".join(f"{_shown(p)} ({r})" for p, r in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {where}: {first}{more}", stacklevel=stacklevel)


@functools.lru_cache(maxsize=8)
def _folder_stats(paths: tuple[str, ...], grayscale: bool
                  ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[str, ...]]:
    """Per-channel mean/std from up to ``_FOLDER_STATS_SAMPLES`` train images (a fixed-seed sample,
    decoded at <= 64 px), plus the paths that failed to decode."""
    g = torch.Generator().manual_seed(seed_of("folder-stats"))
    order = torch.randperm(len(paths), generator=g)[:_FOLDER_STATS_SAMPLES].tolist()
    c = 1 if grayscale else 3
    s = np.zeros(c)
    s2 = np.zeros(c)
    count = 0
    failed = []
    for i in sorted(order):
        try:
            im = open_image(paths[i], c, draft=64)
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


def _checked_splits(root: Path, on_corrupt: str) -> tuple[list[str], dict[str, tuple[list, list[str]]]]:
    """Class names and, per split, ``(readable samples, skipped paths)``; refuses mismatched class folders."""
    tr_samples, classes = scan_image_folder(root / "train")
    te_samples, te_classes = scan_image_folder(root / "val")
    if classes != te_classes:
        only_tr = sorted(set(classes) - set(te_classes))
        only_te = sorted(set(te_classes) - set(classes))
        parts = ([f"only in train/: {', '.join(only_tr)}"] if only_tr else []) + \
                ([f"only in val/: {', '.join(only_te)}"] if only_te else [])
        raise DataError(f"train/ and val/ of {root} have different class folders ({'; '.join(parts)}); "
                        "make both hold the same class folders")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} has {len(classes)} class folder ({classes[0]}): a classifier needs "
                        "at least 2 classes, one folder each")
    splits = {}
    for split, samples in (("train", tr_samples), ("val", te_samples)):
        bad = _verify_files(samples)
        if bad and on_corrupt == "error":
            raise _corrupt_error(*bad[0])
        if bad:
            _warn_skipped(bad, str(root / split), stacklevel=5)
            drop = {p for p, _ in bad}
            samples = [s for s in samples if s[0] not in drop]
        splits[split] = (samples, [p for p, _ in bad])
    return classes, splits


def load_folder(root: Path, options: LoadOptions) -> tuple[Batches, Batches, DataInfo]:
    """``load_data`` for an image folder (``options`` with its resolution and eval batch filled in)."""
    o = options
    # load_data fills these in and turns a preprocessing dict into a Preprocessing
    assert o.resolution is not None and o.eval_batch_size is not None and not isinstance(o.preprocessing, dict)
    classes, splits = _checked_splits(root, o.on_corrupt)
    tr_samples, tr_bad = splits["train"]
    te_samples, te_bad = splits["val"]
    if o.preprocessing is None:
        mean, std, failed = _folder_stats(tuple(p for p, _ in tr_samples), bool(o.grayscale))
    else:  # given (fine-tuning imported weights): the weights' normalisation, not this folder's statistics
        mean, std, failed = o.preprocessing.mean, o.preprocessing.std, ()
    if failed:  # passed verify but does not decode
        if o.on_corrupt == "error":
            raise _corrupt_error(failed[0], "cannot be decoded")
        _warn_skipped([(p, "cannot be decoded") for p in failed], str(root / "train"), stacklevel=4)
        tr_samples = [s for s in tr_samples if s[0] not in set(failed)]
        tr_bad = tr_bad + list(failed)
    for split, samples in (("train", tr_samples), ("val", te_samples)):
        if not samples:
            raise DataError(f"{root / split} has no readable images; add images or fix the unreadable ones")
    tr_idx = subset_indices(len(tr_samples), o.subset, o.seed, "subset")
    te_idx = subset_indices(len(te_samples), o.val_subset, o.seed, "val_subset")
    if tr_idx is not None:
        tr_samples = [tr_samples[i] for i in tr_idx.tolist()]
    if te_idx is not None:
        te_samples = [te_samples[i] for i in te_idx.tolist()]
    check_global_batch(o.batch_size, o.world_size, len(tr_samples))
    common = dict(resolution=o.resolution, mean=mean, std=std, workers=o.workers, on_corrupt=o.on_corrupt,
                  grayscale=o.grayscale, verify=False, preprocessing=o.preprocessing, **o.dealing())
    train = FolderBatches(tr_samples, o.batch_size, train=True, skipped=tr_bad, **common)
    val = FolderBatches(te_samples, o.eval_batch_size, train=False, skipped=te_bad, **common)
    info = DataInfo(name=f"{FOLDER_PREFIX}{root.resolve()}", num_classes=len(classes), class_names=list(classes),
                    in_chans=1 if o.grayscale else 3, mean=tuple(mean), std=tuple(std), resolution=o.resolution,
                    train_size=len(tr_samples), val_size=len(te_samples),
                    preprocessing=None if o.preprocessing is None else train.preprocessing.to_dict())
    return train, val, info
