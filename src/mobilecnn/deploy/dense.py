"""Segmentation models in export: outputs of shape (N, K, H, W), compared and judged per pixel.

A model whose output has a class map per image (Mobile DeepLabv3: logits upsampled to the input size) is
verified like a classifier -- its logits against PyTorch's to ``rtol`` -- plus the per-pixel argmax
agreement (:mod:`mobilecnn.deploy.verify`); its bf16/int8 files are judged by their **mIoU** drop on a
labelled check set of (image, mask) pairs (masks N, H, W of class indices, 255 = ignore), DeepLab's way: one
:class:`~mobilecnn.data.segmentation_metrics.ConfusionMatrix` over the whole check set for PyTorch fp32 and
one for the file's runtime (:class:`MiouReport`).

Memory: one segmentation output is ``K x H x W`` floats per image (21 x 513 x 513: 22 MB), so everything here
runs in batches of about :data:`DENSE_BATCH_PIXELS` input pixels and keeps class maps (uint8), not logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..data.segmentation_io import IGNORE_INDEX
from ..data.segmentation_metrics import ConfusionMatrix

__all__ = ["MiouReport", "DENSE_BATCH_PIXELS", "IGNORE_INDEX", "is_dense", "dense_batch", "max_abs_diff",
           "pixel_agreement", "all_finite", "class_maps", "torch_fn", "evaluate_miou", "check_masks",
           "sensitivity_plan"]

#: Input pixels per batch when a segmentation model runs over many images (1 Mpx: 3 images at 513 x 513).
DENSE_BATCH_PIXELS = 1 << 20
#: int8 fallback: input pixels of the layer-sensitivity ranking of a segmentation model (15 images at 513).
SENSITIVITY_PIXELS = 1 << 22

ArrayFn = Callable[[np.ndarray], np.ndarray]


def is_dense(output_shape: tuple[int, ...]) -> bool:
    """Whether a model output of this shape is a class map per image (N, K, H, W), not logits (N, K)."""
    return len(output_shape) == 4


def dense_batch(image_shape: tuple[int, ...]) -> int:
    """Images per batch for inputs of ``image_shape`` (N, C, H, W): about :data:`DENSE_BATCH_PIXELS` pixels."""
    return max(1, DENSE_BATCH_PIXELS // max(1, int(image_shape[-2]) * int(image_shape[-1])))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| (NaN when any is NaN), one image at a time (no full-size temporary)."""
    if len(a) == 0:
        return 0.0
    return float(np.max([np.abs(x - y).max() for x, y in zip(a, b)]))


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction (0-1) of pixels where the (N, K, H, W) outputs ``a`` and ``b`` pick the same class."""
    same = sum(int(np.count_nonzero(x.argmax(0) == y.argmax(0))) for x, y in zip(a, b))
    return same / max(1, a.shape[0] * a.shape[2] * a.shape[3])


def all_finite(a: np.ndarray) -> bool:
    return all(bool(np.isfinite(x).all()) for x in a)


def _map_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.int32


def torch_fn(model: nn.Module) -> ArrayFn:
    """``model`` as a float32 NCHW array -> float32 array function (no autograd)."""
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).float().numpy()
    return run


def class_maps(fn: ArrayFn, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """The argmax class of every pixel (N, H, W), uint8 for up to 256 classes; ``fn`` runs in batches."""
    step = batch_size or dense_batch(images.shape)
    out: np.ndarray | None = None
    for i in range(0, len(images), step):
        logits = np.asarray(fn(images[i:i + step]))
        if logits.ndim != 4:
            raise ValueError(f"a segmentation output must be (N, K, H, W), got shape {logits.shape}")
        if out is None:
            out = np.empty((len(images), *logits.shape[2:]), _map_dtype(logits.shape[1]))
        out[i:i + step] = logits.argmax(1)
    assert out is not None, "class_maps needs at least one image"
    return out


@dataclass(frozen=True)
class MiouReport:
    """fp32 vs a bf16/int8 file on a labelled segmentation check set (the sibling of
    :class:`~mobilecnn.deploy.quantize.Int8Report`): mIoU in percent, each from one confusion matrix over the
    whole set; ``drop`` = fp32 mIoU - file mIoU in mIoU points; ``agreement``: % of all pixels with the same
    class; ``pixels``: the labelled (not 255) pixels counted; ``precision``: the file's (bf16 or int8)."""

    fp32_miou: float
    int8_miou: float
    drop: float
    agreement: float
    images: int
    pixels: int
    precision: str = "int8"
    #: What ``max_drop`` and ``drop`` count.
    unit: ClassVar[str] = "mIoU pt"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "metric": "mIoU"}

    def __str__(self) -> str:
        return (f"fp32 mIoU {self.fp32_miou:.2f}%, {self.precision} mIoU {self.int8_miou:.2f}% "
                f"(drop {self.drop:+.2f} mIoU pt), pixel agreement {self.agreement:.2f}% on {self.images} images "
                f"({self.pixels} labelled pixels)")


def evaluate_miou(fn: ArrayFn, images: torch.Tensor, masks: torch.Tensor, fp32_maps: np.ndarray, *,
                  num_classes: int, precision: str = "int8") -> MiouReport:
    """Judge ``fn`` (the file's runtime) against PyTorch fp32's class maps ``fp32_maps`` on ``images`` (float
    N, C, H, W) with ``masks`` (N, H, W; 255 = ignore): one confusion matrix per model over the whole set."""
    x = images.numpy()
    step = dense_batch(x.shape)
    ref, got = ConfusionMatrix(num_classes, IGNORE_INDEX), ConfusionMatrix(num_classes, IGNORE_INDEX)
    same = 0
    for i in range(0, len(x), step):
        target = masks[i:i + step]
        logits = np.asarray(fn(x[i:i + step]))
        if logits.ndim != 4 or logits.shape[1] != num_classes or logits.shape[2:] != tuple(target.shape[1:]):
            raise ValueError(f"the {precision} file returned shape {logits.shape} for {len(target)} images "
                             f"{tuple(x.shape[2:])}: expected (N, {num_classes}, H, W) at the input size")
        pred = torch.from_numpy(logits.argmax(1))
        mine = torch.from_numpy(fp32_maps[i:i + step].astype(np.int64))
        ref.update(mine, target)
        got.update(pred, target)
        same += int((pred == mine).sum())
    a, b = ref.compute(), got.compute()
    m32, m8 = 100.0 * a["miou"], 100.0 * b["miou"]
    return MiouReport(m32, m8, m32 - m8, 100.0 * same / fp32_maps.size, len(x), int(a["pixels"]), precision)


def check_masks(masks: Any, images: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Validate the masks of a segmentation check set against its images and the model's classes; returns
    them as uint8 (N, H, W) (255 = ignore). Every problem is a one-line ``ValueError``."""
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"check_labels must be a tensor of masks (N, H, W) for a segmentation model, got "
                         f"{type(masks).__name__}")
    if masks.dim() != 3:
        raise ValueError(f"check_labels must be masks (N, H, W) of class indices (255 = ignore) for a segmentation "
                         f"model, got shape {tuple(masks.shape)}")
    if masks.is_floating_point() or masks.is_complex() or masks.dtype == torch.bool:
        raise ValueError(f"check_labels masks must hold integer class indices (int64, 255 = ignore), got {masks.dtype}")
    if len(masks) != len(images):
        raise ValueError(f"check_labels has {len(masks)} masks for {len(images)} check images")
    if tuple(masks.shape[1:]) != tuple(images.shape[2:]):
        raise ValueError(f"check_labels masks are {masks.shape[1]}x{masks.shape[2]} but the check images "
                         f"{images.shape[2]}x{images.shape[3]}; a mask must have its image's size")
    values = masks.detach().cpu()
    bad = (values < 0) | ((values >= num_classes) & (values != IGNORE_INDEX))
    if bool(bad.any()):
        raise ValueError(f"check_labels masks hold class {int(values[bad][0])}; the model has {num_classes} classes: "
                         f"accepted 0..{num_classes - 1} and {IGNORE_INDEX} (ignore)")
    if not bool((values != IGNORE_INDEX).any()):
        raise ValueError(f"check_labels masks hold no labelled pixel (all {IGNORE_INDEX} = ignore): mIoU cannot "
                         "be measured")
    return values.to(torch.uint8).contiguous()


def sensitivity_plan(calibration: torch.Tensor, images: int = 32) -> tuple[int, int]:
    """(images, batch) of the int8 layer-sensitivity ranking of a segmentation model: at most ``images`` and
    about :data:`SENSITIVITY_PIXELS` input pixels in all, run in batches of :func:`dense_batch`."""
    pixels = max(1, int(calibration.shape[-2]) * int(calibration.shape[-1]))
    return max(1, min(images, SENSITIVITY_PIXELS // pixels)), dense_batch(tuple(calibration.shape))
