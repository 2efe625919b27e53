"""Segmentation evaluation, DeepLab's way: one confusion matrix over the whole validation set.

:func:`evaluate_segmentation` runs a segmenter over every batch of a validation
:class:`~mobilecnn.data.segmentation.SegBatches` (whole images, padded with ignore pixels) and returns mIoU,
per-class IoU, pixel accuracy and the per-pixel loss, all from
:class:`~mobilecnn.data.segmentation_metrics.ConfusionMatrix` (255 ignored; a class with a zero denominator
is left out of the mean). Percentages, as the papers print them.

``scales`` and ``flip`` are the multi-scale evaluation of DeepLab (``eval_scales`` 0.5 ... 1.75 plus a
left-right flip: Table 7's "MF"): the input is resized to each scale, the logits resized back to the
input size, and the softmax probabilities of every scale and flip averaged before the arg-max.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data.segmentation_io import IGNORE_INDEX
from ..data.segmentation_metrics import ConfusionMatrix
from ..device import amp_dtype
from ..errors import NonFiniteError
from ..models.deeplab import MF_SCALES, scaled_size
from .evaluation import all_reduce_host

__all__ = ["SegEvalOptions", "evaluate_segmentation", "MF_SCALES"]


@dataclass(frozen=True)
class SegEvalOptions:
    """How to run the segmenter: memory format, autocast, the class count, and the scales / flip (MF)."""

    num_classes: int
    channels_last: bool = False
    amp: bool = False
    scales: Sequence[float] = (1.0,)
    flip: bool = False

    @classmethod
    def multi_scale(cls, num_classes: int, **kw: Any) -> SegEvalOptions:
        """Table 7's MF: DeepLab's six evaluation scales, each also flipped."""
        return cls(num_classes, scales=MF_SCALES, flip=True, **kw)


def _views(x: torch.Tensor, o: SegEvalOptions) -> Iterator[tuple[torch.Tensor, bool]]:
    """The inputs one evaluation runs: each scale (DeepLab's ``scale_dimension`` of each side), each flipped."""
    h, w = x.shape[-2:]
    for scale in o.scales:
        size = (scaled_size(h, scale), scaled_size(w, scale))
        view = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        yield view, False
        if o.flip:
            yield view.flip(-1), True


def _scores(model: nn.Module, x: torch.Tensor, o: SegEvalOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits at one scale, averaged probabilities)``: the single-scale logits give the loss, the average the
    prediction (the same tensor's softmax when there is one view)."""
    logits0: torch.Tensor | None = None
    probs = torch.zeros(())
    views = 0
    for view, flipped in _views(x, o):
        if o.channels_last:
            view = view.contiguous(memory_format=torch.channels_last)
        with torch.autocast(view.device.type, dtype=amp_dtype(view.device), enabled=o.amp):
            out = model(view)
        out = out.float()
        if flipped:
            out = out.flip(-1)
        if tuple(out.shape[-2:]) != tuple(x.shape[-2:]):
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError("the model produced NaN/inf outputs: its weights or normalisation are broken; no "
                                 "mIoU is reported")
        if logits0 is None or (view.shape[-2:] == x.shape[-2:] and not flipped):
            logits0 = out
        probs = probs + out.softmax(1)
        views += 1
    assert logits0 is not None
    return logits0, probs / views


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: Any, options: SegEvalOptions) -> dict[str, Any]:
    """mIoU (%), per-class IoU (%, ``None`` where undefined), pixel accuracy (%), mean class accuracy (%), the mean
    per-pixel cross-entropy (single scale) and the counts, over every batch of ``loader`` (epoch 0)."""
    model.eval()
    matrix = ConfusionMatrix(options.num_classes, IGNORE_INDEX)
    loss_sum = torch.zeros((), dtype=torch.float64)
    images = torch.zeros((), dtype=torch.long)
    for x, y in loader.batches(0):
        logits, probs = _scores(model, x, options)
        y = y.to(logits.device)
        loss_sum += F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum").double().cpu()
        matrix.update(probs.argmax(1).cpu(), y.cpu())
        images += len(x)
    if dist.is_available() and dist.is_initialized():
        for t in (matrix.matrix, loss_sum, images):
            all_reduce_host(t)
    m = matrix.compute()

    def pct(v: float | None) -> float | None:
        return None if v is None or math.isnan(v) else 100.0 * v

    return {
        "miou": pct(m["miou"]),
        "per_class_iou": [pct(v) for v in m["per_class_iou"]],
        "pixel_accuracy": pct(m["pixel_accuracy"]),
        "mean_accuracy": pct(m["mean_accuracy"]),
        "per_class_accuracy": [pct(v) for v in m["per_class_accuracy"]],
        "fw_iou": pct(m["fw_iou"]),
        "loss": float(loss_sum) / max(1, m["pixels"]),
        "images": int(images),
        "pixels": m["pixels"],
        "classes_counted": m["classes_counted"],
        "scales": [float(s) for s in options.scales],
        "flip": bool(options.flip),
        "confusion": matrix.matrix.tolist(),
    }
