"""Object detection data: a COCO folder -> deterministic, resumable batches of images and boxes (SSD).

:func:`load_detection` returns ``(train, val, info)``: two :class:`DetBatches` and a :class:`DetDataInfo`. The
folder is a COCO layout (:mod:`.coco`); with no folder, the Fashion-MNIST scenes
(:func:`~mobilecnn.data.scenes.scenes_cache`).

**Batches**: ``(x, y)``, ``x`` float32 ``(N, 3, S, S)`` normalised with :meth:`Preprocessing.normalize
<mobilecnn.data.images.Preprocessing.normalize>` (ImageNet mean/std unless ``preprocessing`` is given), ``y``
float32 ``(N, M, 5)``: rows ``[x1, y1, x2, y2, label]``, corners as fractions of the network input (0..1),
label 1..K; the rows after an image's boxes are all zero (label 0); ``M`` is the most boxes of any image of the
batch, at least 1.

* **Train** (SSD's recipe, as torchvision's detection references run it), jointly on the image and its boxes
  with ``torchvision.transforms.v2`` and ``tv_tensors.BoundingBoxes``: photometric distortion, zoom out (the
  canvas filled with the normalisation mean), a random crop keeping boxes at a minimum IoU, horizontal flip,
  a warp to ``S x S``, then boxes under 1 px or cut away are dropped. Each step can be turned off
  (:class:`DetOptions`).
* **Eval**: no random op; the image warped to ``S x S`` (:meth:`Preprocessing.geometry`, as ``predict`` does).
  The val :class:`DetBatches` gives, in batch order, ``image_ids`` (COCO ids) and ``image_sizes`` (``(width,
  height)`` of the originals), so that boxes can be mapped back to the original pixels for COCO's evaluation.

Batches are dealt like the segmentation loader's: training epochs are ``(seed, epoch)`` permutations cut into
full batches (batch ``j`` to rank ``j % world_size``), eval gives each rank a contiguous shard; a sample's random
ops are seeded from ``(seed, epoch, index)``, so batches do not depend on ``workers``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..validators import check_bool, check_int
from .batches import (
    Dealing,
    check_batch_args,
    check_global_batch,
    seed_of,
    subset_indices,
)
from .coco import SPLITS, CocoSample, CocoSplit, check_images, exif_undo, find_coco, read_coco
from .folder import _reason, _shown
from .images import MAX_RESOLUTION, Preprocessing, open_image
from .planned import PlannedBatches
from .segmentation import IMAGENET_MEAN, IMAGENET_STD, _fill

__all__ = ["DetOptions", "DetDataInfo", "DetPipeline", "DetTrainTransform", "DetBatches", "load_detection"]


@dataclass(frozen=True)
class DetOptions(Dealing):
    """:func:`load_detection` options (:class:`~mobilecnn.data.batches.Dealing`: seed, rank, world_size,
    channels_last, device).

    ``resolution``: the side of the square network input. ``eval_batch_size`` defaults to ``batch_size``.
    ``photometric``, ``zoom_out``, ``iou_crop``, ``flip``: the training augmentation steps (the warp to
    ``resolution`` and the removal of lost boxes always run). ``data_dir`` / ``cache_dir``: where the
    Fashion-MNIST files are and where the default scenes are cached, used only when no folder is given.
    """

    batch_size: int = 32
    eval_batch_size: int | None = None
    resolution: int = 320
    subset: int | None = None
    val_subset: int | None = None
    workers: int = 2
    preprocessing: Preprocessing | dict | None = None
    data_dir: str | None = None
    cache_dir: str | None = None
    photometric: bool = True
    zoom_out: bool = True
    iou_crop: bool = True
    flip: bool = True

    def validate(self) -> DetOptions:
        check_batch_args(self.batch_size, self.rank, self.world_size)
        if self.eval_batch_size is not None:
            check_int(self.eval_batch_size, "--eval-batch-size", minimum=1)
        check_int(self.resolution, "--resolution", minimum=32, maximum=MAX_RESOLUTION)
        for name in ("photometric", "zoom_out", "iou_crop", "flip"):
            check_bool(getattr(self, name), "--" + name.replace("_", "-"))
        check_int(self.workers, "--workers", minimum=0, maximum=64)
        return self


@dataclass
class DetDataInfo:
    """What a detector, its trainer and its evaluator need to know about the dataset."""

    name: str  # "coco:<absolute folder>"
    layout: str  # "coco"
    num_classes: int  # background included
    class_names: list[str]  # "background" first
    category_ids: list[int]  # the COCO category id of labels 1..K
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int
    train_size: int
    val_size: int
    preprocessing: dict = field(default_factory=dict)  # Preprocessing.to_dict(): the normalisation
    task: str = "detection"
    val_annotations: str = ""  # the val instances file (COCO's evaluation reads its ground truth there)
    box_counts: dict = field(default_factory=dict)  # {split: {crowd, degenerate, clipped, outside}} (coco.py)

    @property
    def source(self) -> str:
        """The folder to pass to :func:`load_detection` to load this dataset again."""
        return self.name.partition(":")[2]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        d = asdict(self)
        d["mean"], d["std"] = [float(m) for m in self.mean], [float(s) for s in self.std]
        return d


@dataclass(frozen=True)
class DetPipeline:
    """How an image and its boxes become tensors: the normalisation, the input side and the augmentation."""

    preprocessing: Preprocessing
    resolution: int
    photometric: bool = True
    zoom_out: bool = True
    iou_crop: bool = True
    flip: bool = True


class DetTrainTransform:
    """SSD's augmentation of a uint8 image ``(3, H, W)`` and its pixel boxes ``(n, 4)`` x1 y1 x2 y2 with labels
    ``(n,)``, to a ``(3, S, S)`` image and boxes as fractions of it (a class: DataLoader workers pickle it).
    Randomness comes from torch's global generator (the caller seeds it)."""

    def __init__(self, pipeline: DetPipeline, fill: tuple[int, ...]) -> None:
        from torchvision import tv_tensors  # torchvision loads torch._dynamo (1.5 s): imported when used
        from torchvision.transforms import v2

        p = pipeline
        steps: list[Any] = [v2.RandomPhotometricDistort()] if p.photometric else []
        if p.zoom_out:  # the canvas is the mean: 0 once normalised
            steps.append(v2.RandomZoomOut(fill={tv_tensors.Image: fill, "others": 0}))
        if p.iou_crop:
            steps.append(v2.RandomIoUCrop())
        if p.flip:
            steps.append(v2.RandomHorizontalFlip())
        steps += [v2.Resize((p.resolution, p.resolution), antialias=True), v2.SanitizeBoundingBoxes(min_size=1)]
        self.transform, self.resolution = v2.Compose(steps), p.resolution

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        h, w = image.shape[-2:]
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)), "labels": labels}
        x, out = self.transform(tv_tensors.Image(image), target)
        b = out["boxes"].as_subclass(torch.Tensor) / self.resolution
        return x.as_subclass(torch.Tensor), b.clamp_(0.0, 1.0), out["labels"]


def decode(sample: CocoSample) -> torch.Tensor:
    """uint8 ``(3, H, W)`` of a sample in the frame of its boxes (EXIF rotation undone where the JSON gives the
    stored size: see :mod:`.coco`); :class:`DataError` naming the file when it does not decode to that size."""
    from torchvision.transforms import v2

    try:
        im = open_image(sample.image, 3)
        undo = exif_undo(sample.undo_exif)
        if undo is not None:
            im = im.transpose(undo)
        image = v2.functional.pil_to_tensor(im)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise DataError(f"image {_shown(sample.image)} cannot be decoded ({_reason(e, sample.image)}); "
                        "replace it") from None
    if (image.shape[2], image.shape[1]) != tuple(sample.size):
        raise DataError(f"image {_shown(sample.image)} decodes to {image.shape[2]}x{image.shape[1]} but its COCO "
                        f"entry (image id {sample.image_id}) says {sample.size[0]}x{sample.size[1]}")
    return image


class _DetDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by ``(sample index, epoch)``; returns ``(image, target rows, error)`` where
    ``error`` is a one-line message (raised in the main process: a worker's exception would carry its
    traceback)."""

    def __init__(self, samples: list[CocoSample], pipeline: DetPipeline, train: bool, seed: int) -> None:
        self.samples, self.pipeline, self.train, self.seed = samples, pipeline, train, seed
        self.augment = DetTrainTransform(pipeline, _fill(pipeline.preprocessing)) if train else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor | None, str | None]:
        index, epoch = key
        s = self.samples[index]
        try:
            image = decode(s)
        except DataError as e:
            return None, None, " ".join(str(e).split())
        boxes, labels = torch.from_numpy(s.boxes.copy()), torch.from_numpy(s.labels.copy())
        if self.augment is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_of("detection", self.seed, epoch, index))
                image, boxes, labels = self.augment(image, boxes, labels)
        else:  # the warp scales both axes: fractions of the original are fractions of the input
            image = self.pipeline.preprocessing.geometry(image)
            boxes = (boxes / torch.tensor([*s.size, *s.size], dtype=torch.float32)).clamp_(0.0, 1.0)
        y = torch.cat([boxes.to(torch.float32), labels.to(torch.float32)[:, None]], dim=1)
        return self.pipeline.preprocessing.normalize(image), y, None


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """Stack the images; pad each image's rows with zeros to the most boxes of the batch (at least 1)."""
    errors = [e for _, _, e in items if e is not None]
    if errors:
        return torch.empty(0), torch.empty(0), errors[0]
    m = max(1, max(y.shape[0] for _, y, _ in items))
    y = torch.zeros(len(items), m, 5, dtype=torch.float32)
    for i, (_, rows, _) in enumerate(items):
        y[i, :rows.shape[0]] = rows
    return torch.stack([x for x, _, _ in items]), y, None


class DetBatches(PlannedBatches):
    """Detection batches for one process (:class:`~mobilecnn.data.planned.PlannedBatches`): ``batches()`` yields
    ``(images float32 N,3,S,S, targets float32 N,M,5)`` (see the module docstring for the target rows).

    ``samples``: checked images (:func:`~mobilecnn.data.coco.check_images`); ``dealing``: the fields of
    :class:`~mobilecnn.data.batches.Dealing`. A file that fails on load raises :class:`DataError` naming it.
    """

    def __init__(self, samples: list[CocoSample], batch_size: int, pipeline: DetPipeline, *, train: bool,
                 workers: int = 2, **dealing: Any) -> None:
        super().__init__(samples, batch_size, train=train, workers=workers,
                         empty="no images to load; add images to the COCO instances file", **dealing)
        self.pipeline = pipeline
        self._dataset = _DetDataset(self.samples, pipeline, self.train, self.seed)
        self._collate = _collate

    def _shard(self) -> list[CocoSample]:
        return self.samples if self.train else self.samples[self._start:self._stop]

    @property
    def image_ids(self) -> list[int]:
        """COCO image ids of this rank's eval shard in batch order (training: every sample, in id order)."""
        return [s.image_id for s in self._shard()]

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """``(width, height)`` of the original images, in the order of :attr:`image_ids`."""
        return [tuple(s.size) for s in self._shard()]  # type: ignore[misc]


def _preprocessing(o: DetOptions) -> Preprocessing:
    pre = o.preprocessing
    if isinstance(pre, dict):
        pre = Preprocessing.from_dict(pre)
    if pre is None:
        return Preprocessing(o.resolution, 3, IMAGENET_MEAN, IMAGENET_STD)
    if pre.in_chans != 3:
        raise DataError(f"preprocessing in_chans {pre.in_chans} is not accepted: detection reads RGB images (3)")
    return dataclasses.replace(pre, resolution=o.resolution, resize="square")  # SSD warps to the square input


def _same_categories(train: CocoSplit, val: CocoSplit) -> None:
    if train.categories == val.categories:
        return
    tr, va = dict(train.categories), dict(val.categories)
    diff = next(c for c in sorted(set(tr) | set(va)) if tr.get(c) != va.get(c))
    raise DataError(f"{_shown(str(val.annotations))} gives category id {diff} as {va.get(diff)!r} but "
                    f"{_shown(str(train.annotations))} as {tr.get(diff)!r}; train and val need the same categories")


def _subset(samples: list[CocoSample], k: int | None, seed: int, what: str) -> list[CocoSample]:
    idx = subset_indices(len(samples), k, seed, what)
    return samples if idx is None else [samples[i] for i in idx.tolist()]


def load_detection(data: str | os.PathLike | None = None, options: DetOptions | None = None,
                   **overrides: Any) -> tuple[DetBatches, DetBatches, DetDataInfo]:
    """``(train, val, info)`` of a COCO detection folder (``None``: the default Fashion-MNIST scenes).

    Both instances files are read and checked, then the header of every image used (after ``subset`` /
    ``val_subset``); any problem raises a one-line :class:`DataError` naming the file and entry, before a batch
    is made. ``options``: a :class:`DetOptions` and/or its fields as keywords.
    """
    o = dataclasses.replace(options or DetOptions(), **overrides).validate()
    if data is None:
        from .scenes import scenes_cache

        data = scenes_cache("detection", o.cache_dir, data_dir=o.data_dir)
    files = find_coco(data)
    splits = {s: read_coco(*files[s]) for s in SPLITS}
    _same_categories(splits["train"], splits["val"])
    train = _subset(splits["train"].samples, o.subset, o.seed, "subset")
    val = _subset(splits["val"].samples, o.val_subset, o.seed, "val_subset")
    check_global_batch(o.batch_size, o.world_size, len(train))
    train = check_images(train, files["train"][0])
    val = check_images(val, files["val"][0])
    pre = _preprocessing(o)
    pipeline = DetPipeline(pre, o.resolution, o.photometric, o.zoom_out, o.iou_crop, o.flip)
    common: dict[str, Any] = dict(workers=o.workers, **o.dealing())
    train_b = DetBatches(train, o.batch_size, pipeline, train=True, **common)
    val_b = DetBatches(val, o.eval_batch_size or o.batch_size, pipeline, train=False, **common)
    cats = splits["train"].categories
    info = DetDataInfo(name=f"coco:{Path(files['train'][0]).parent.parent.resolve()}", layout="coco",
                       num_classes=len(cats) + 1, class_names=["background", *(n for _, n in cats)],
                       category_ids=[c for c, _ in cats], in_chans=3, mean=pre.mean, std=pre.std,
                       resolution=o.resolution, train_size=len(train), val_size=len(val),
                       preprocessing=pre.to_dict(), val_annotations=str(Path(files["val"][0]).resolve()),
                       box_counts={s: dict(splits[s].counts) for s in SPLITS})
    return train_b, val_b, info
