"""Semantic segmentation data: (image, mask) pairs -> deterministic, resumable batches.

:func:`load_segmentation` returns ``(train, val, info)``: two :class:`SegBatches` yielding
``(float32 images N,3,H,W, int64 masks N,H,W)`` (255 = ignore) and a :class:`SegDataInfo`. The folder is a
Pascal VOC tree or ``train/{images,masks}`` + ``val/{images,masks}`` (:mod:`.segmentation_io`); with no
folder, the Fashion-MNIST scenes (:func:`~mobilecnn.data.scenes.scenes_cache`).

* **Train** (DeepLab's recipe), jointly on the image and its mask with ``torchvision.transforms.v2``
  (``tv_tensors.Image`` / ``tv_tensors.Mask``, so the mask is always resized nearest-neighbour): shorter side
  scaled by a random factor in ``scale_range`` (0.5-2.0), a random ``crop_size`` crop padded where the image
  is smaller (image with the normalisation mean, i.e. 0 after normalising; mask with 255), horizontal flip.
* **Eval**: no random op and no resize: the full image, normalised; a batch is padded at the bottom/right to
  a multiple of ``pad_multiple`` (image 0, mask 255), so the confusion matrix counts exactly the pixels of the
  original masks.
* **Normalisation**: :meth:`Preprocessing.normalize <mobilecnn.data.images.Preprocessing.normalize>`, the
  classifiers' definition (ImageNet mean/std unless ``preprocessing`` is given: imported backbone weights).

Batches are dealt like the classification loaders' (:mod:`.batches`): each training epoch is a ``(seed,
epoch)`` permutation cut into full batches, batch ``j`` to rank ``j % world_size``; eval gives each rank a
contiguous shard (merge the ranks' :class:`~mobilecnn.data.segmentation_metrics.ConfusionMatrix`). A sample's
random ops are seeded from ``(seed, epoch, index)``, so batches do not depend on ``workers``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DataError
from ..validators import check_bool, check_int, check_number, refuse
from .batches import (
    Dealing,
    check_batch_args,
    check_global_batch,
    seed_of,
    subset_indices,
)
from .folder import _reason, _shown
from .images import Preprocessing, load_image
from .planned import PlannedBatches
from .segmentation_io import IGNORE_INDEX, SegSample, check_pairs, read_mask, scan_segmentation

__all__ = ["SegDataInfo", "SegOptions", "SegPipeline", "SegBatches", "SegTrainTransform", "load_segmentation",
           "IMAGENET_MEAN", "IMAGENET_STD", "MAX_CROP"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The largest default crop; a dataset of smaller images gets its largest side (rounded up to ``pad_multiple``).
MAX_CROP = 512


@dataclass(frozen=True)
class SegOptions(Dealing):
    """:func:`load_segmentation` options (:class:`~mobilecnn.data.batches.Dealing`: seed, rank, world_size,
    channels_last, device).

    ``crop_size``: the training crop; ``None``: the largest side of the train images rounded up to a multiple
    of ``pad_multiple``, at most :data:`MAX_CROP`. ``eval_batch_size`` defaults to ``batch_size``.
    ``data_dir`` / ``cache_dir``: where the Fashion-MNIST files are and where the default scenes are cached
    (:func:`~mobilecnn.data.scenes.scenes_cache`), used only when no folder is given.
    """

    batch_size: int = 8
    eval_batch_size: int | None = None
    crop_size: int | None = None
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    pad_multiple: int = 32
    subset: int | None = None
    val_subset: int | None = None
    workers: int = 2
    preprocessing: Preprocessing | dict | None = None
    data_dir: str | None = None
    cache_dir: str | None = None

    def validate(self) -> SegOptions:
        check_batch_args(self.batch_size, self.rank, self.world_size)
        if self.eval_batch_size is not None:
            check_int(self.eval_batch_size, "--eval-batch-size", minimum=1)
        if self.crop_size is not None:
            check_int(self.crop_size, "--crop-size", minimum=8, maximum=2048)
        scales = self.scale_range
        if not isinstance(scales, (tuple, list)) or len(scales) != 2:
            raise refuse("--scale-range", scales, "two numbers: the smallest and largest random scale")
        low = check_number(scales[0], "--scale-range minimum", above=0, maximum=8)
        check_number(scales[1], "--scale-range maximum", minimum=low, maximum=8)
        check_bool(self.flip, "--flip")
        check_int(self.pad_multiple, "--pad-multiple", minimum=1, maximum=256)
        check_int(self.workers, "--workers", minimum=0, maximum=64)
        return self


@dataclass
class SegDataInfo:
    """What a segmentation model, its trainer and its evaluator need to know about the dataset."""

    name: str  # "<layout>:<absolute folder>"
    layout: str  # "voc" or "folders"
    num_classes: int  # background included
    class_names: list[str]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: int
    pad_multiple: int
    train_size: int
    val_size: int
    preprocessing: dict = field(default_factory=dict)  # Preprocessing.to_dict(): the normalisation
    ignore_index: int = IGNORE_INDEX
    labels_from: str = ""  # the labels.txt the class names came from (or what stood in for it)
    task: str = "segmentation"

    @property
    def source(self) -> str:
        """The folder to pass to :func:`load_segmentation` to load this dataset again."""
        return self.name.partition(":")[2]

    @property
    def resolution(self) -> int:
        """The training crop (the input side of the model during training and export)."""
        return self.crop_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        d = asdict(self)
        d["mean"], d["std"] = [float(m) for m in self.mean], [float(s) for s in self.std]
        return d


@dataclass(frozen=True)
class SegPipeline:
    """How a file pair becomes tensors: the classes (for the value check), the normalisation and the
    geometry options of :class:`SegOptions`."""

    num_classes: int
    preprocessing: Preprocessing
    crop_size: int
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    pad_multiple: int = 32
    labels_from: str = ""


class SegTrainTransform:
    """Joint random scale, crop (padded: image with ``fill``, mask with 255) and flip of a uint8 image
    ``(3, H, W)`` and its uint8 mask ``(H, W)``, with ``torchvision.transforms.v2`` (a class: DataLoader workers
    pickle it). Randomness comes from torch's global generator (the caller seeds it)."""

    def __init__(self, crop_size: int, scale_range: tuple[float, float], flip: bool, fill: Sequence[int]) -> None:
        from torchvision import tv_tensors  # torchvision loads torch._dynamo (1.5 s): imported when used

        self.crop_size, self.scale_range, self.flip = int(crop_size), tuple(scale_range), bool(flip)
        self.fill: dict[type | str, Any] = {tv_tensors.Image: tuple(int(f) for f in fill),
                                            tv_tensors.Mask: IGNORE_INDEX}

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        short = min(image.shape[-2:])
        low = max(1, round(short * self.scale_range[0]))
        high = max(low + 1, round(short * self.scale_range[1]) + 1)  # RandomResize draws from [low, high)
        steps: list[Any] = [v2.RandomResize(low, high, antialias=True),
                            v2.RandomCrop(self.crop_size, pad_if_needed=True, fill=self.fill)]
        if self.flip:
            steps.append(v2.RandomHorizontalFlip())
        x, y = v2.Compose(steps)(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)


def _fill(pre: Preprocessing) -> tuple[int, ...]:
    """The uint8 RGB pixel that normalises to 0: the mean (reversed when the model takes BGR)."""
    mean = pre.mean[::-1] if pre.channel_order == "BGR" else pre.mean
    return tuple(min(255, max(0, round(m / pre.scale))) for m in mean)


class _SegDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(sample index, epoch)``; returns ``(image, mask, error)`` where
    ``error`` is a one-line message (raised in the main process: a worker's exception would carry its
    traceback)."""

    def __init__(self, samples: list[SegSample], pipeline: SegPipeline, train: bool, seed: int) -> None:
        self.samples, self.pipeline, self.train, self.seed = samples, pipeline, train, seed
        p = pipeline
        self.augment = SegTrainTransform(p.crop_size, p.scale_range, p.flip, _fill(p.preprocessing)) if train else None

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, s: SegSample) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.from_numpy(read_mask(s, self.pipeline.num_classes, self.pipeline.labels_from).copy())
        try:
            image = load_image(s.image, 3)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
            raise DataError(f"image {_shown(s.image)} cannot be decoded ({_reason(e, s.image)}); replace it") from None
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            raise DataError(f"mask {_shown(s.mask)} is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{_shown(s.image)} decodes to {image.shape[2]}x{image.shape[1]}; a mask must have "
                            "its image's size")
        return image, mask

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor | None, str | None]:
        index, epoch = key
        try:
            image, mask = self._load(self.samples[index])
        except DataError as e:
            return None, None, " ".join(str(e).split())
        if self.augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_of("segmentation", self.seed, epoch, index))
                image, mask = self.augment(image, mask)
        return self.pipeline.preprocessing.normalize(image), mask.to(torch.int64), None


def _padded_size(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


class _Collate:
    """Stack a batch; eval images of different sizes are padded bottom/right to a multiple (image 0, mask 255)."""

    def __init__(self, pad_multiple: int) -> None:
        self.pad_multiple = pad_multiple

    def __call__(self, items: list) -> tuple[torch.Tensor, torch.Tensor, str | None]:
        errors = [e for _, _, e in items if e is not None]
        if errors:
            return torch.empty(0), torch.empty(0), errors[0]
        h = _padded_size(max(x.shape[-2] for x, _, _ in items), self.pad_multiple)
        w = _padded_size(max(x.shape[-1] for x, _, _ in items), self.pad_multiple)
        xs = [F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), value=0.0) for x, _, _ in items]
        ys = [F.pad(y, (0, w - y.shape[-1], 0, h - y.shape[-2]), value=IGNORE_INDEX) for _, y, _ in items]
        return torch.stack(xs), torch.stack(ys), None


class SegBatches(PlannedBatches):
    """Segmentation batches for one process (:class:`~mobilecnn.data.planned.PlannedBatches`): ``batches()`` yields
    ``(images float32 N,3,H,W, masks int64 N,H,W)``.

    ``samples``: checked pairs (:func:`~mobilecnn.data.segmentation_io.check_pairs`); ``dealing``: the fields of
    :class:`~mobilecnn.data.batches.Dealing` and ``workers``. Train batches are ``crop_size`` squares; eval
    batches hold whole images padded to a common size (see the module docstring). A file that fails on load
    raises :class:`DataError` naming it.
    """

    def __init__(self, samples: Sequence[SegSample], batch_size: int, pipeline: SegPipeline, *, train: bool,
                 workers: int = 2, **dealing: Any) -> None:
        super().__init__(samples, batch_size, train=train, workers=workers,
                         empty="no image/mask pairs to load; add images with their masks", **dealing)
        self.pipeline = pipeline
        self._dataset = _SegDataset(self.samples, pipeline, self.train, self.seed)
        self._collate = _Collate(1 if self.train else pipeline.pad_multiple)  # train crops are one size


def _preprocessing(o: SegOptions, crop: int) -> Preprocessing:
    pre = o.preprocessing
    if isinstance(pre, dict):
        pre = Preprocessing.from_dict(pre)
    if pre is None:
        return Preprocessing(crop, 3, IMAGENET_MEAN, IMAGENET_STD)
    if pre.in_chans != 3:
        raise DataError(f"preprocessing in_chans {pre.in_chans} is not accepted: segmentation reads RGB images (3)")
    return dataclasses.replace(pre, resolution=crop)


def _subset(samples: list[SegSample], k: int | None, seed: int, what: str) -> list[SegSample]:
    idx = subset_indices(len(samples), k, seed, what)
    return samples if idx is None else [samples[i] for i in idx.tolist()]


def load_segmentation(data: str | os.PathLike | None = None, options: SegOptions | None = None,
                      **overrides: Any) -> tuple[SegBatches, SegBatches, SegDataInfo]:
    """``(train, val, info)`` of a segmentation folder (``None``: the default Fashion-MNIST scenes).

    Every file's header is checked first (see :mod:`.segmentation_io`); any problem raises a one-line
    :class:`DataError` naming the file, before a batch is made. ``options``: a :class:`SegOptions` and/or its
    fields as keywords.
    """
    o = dataclasses.replace(options or SegOptions(), **overrides).validate()
    if data is None:
        from .scenes import scenes_cache

        data = scenes_cache("segmentation", o.cache_dir, data_dir=o.data_dir)
    source = scan_segmentation(data)
    n, where = len(source.class_names), source.labels_from
    train = check_pairs(source.pairs["train"], n, where)
    val = check_pairs(source.pairs["val"], n, where)
    train, val = _subset(train, o.subset, o.seed, "subset"), _subset(val, o.val_subset, o.seed, "val_subset")
    check_global_batch(o.batch_size, o.world_size, len(train))
    crop = o.crop_size or min(MAX_CROP, _padded_size(max(max(s.size) for s in train), o.pad_multiple))
    pre = _preprocessing(o, crop)
    scales = (float(o.scale_range[0]), float(o.scale_range[1]))
    pipeline = SegPipeline(n, pre, crop, scales, o.flip, o.pad_multiple, where)
    common: dict[str, Any] = dict(workers=o.workers, **o.dealing())
    train_b = SegBatches(train, o.batch_size, pipeline, train=True, **common)
    val_b = SegBatches(val, o.eval_batch_size or o.batch_size, pipeline, train=False, **common)
    info = SegDataInfo(name=f"{source.layout}:{Path(source.root).resolve()}", layout=source.layout, num_classes=n,
                       class_names=list(source.class_names), in_chans=3, mean=pre.mean, std=pre.std, crop_size=crop,
                       pad_multiple=o.pad_multiple, train_size=len(train), val_size=len(val),
                       preprocessing=pre.to_dict(), labels_from=where)
    return train_b, val_b, info
