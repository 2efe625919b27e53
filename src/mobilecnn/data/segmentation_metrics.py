"""Semantic segmentation metrics the DeepLab way: one confusion matrix over the whole evaluation set.

:class:`ConfusionMatrix` counts ``matrix[target, prediction]`` over every pixel whose target is not
``ignore_index`` (255), summed over all images (not averaged per image). From it:

* per-class IoU = TP / (TP + FP + FN); a class absent from both the predictions and the ground truth
  (denominator 0) has no IoU (``None``) and is left out of the mean;
* mIoU = the mean of the defined per-class IoUs (``nan`` when no pixel was counted);
* pixel accuracy = correct pixels / counted pixels; mean class accuracy and frequency-weighted IoU too.

This is DeepLab's evaluation (``tf.metrics.mean_iou`` accumulated over the val set, which also leaves classes
with a zero denominator out of the mean). The per-class IoUs equal
``torchmetrics.classification.MulticlassJaccardIndex(num_classes, ignore_index=255, average=None)``'s, except
that torchmetrics reports a zero-denominator class as its ``zero_division`` value (0) instead of ``None``.
With several processes, :meth:`ConfusionMatrix.all_reduce` (or ``merge`` of gathered matrices) sums the counts,
so the result equals a single process's over the whole set.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """A ``num_classes x num_classes`` int64 count matrix, rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255,
                 device: str | torch.device | None = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes {num_classes!r} is not accepted: it must be a positive integer")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch. ``pred``: class indices of ``target``'s shape, or scores with one more dimension (the
        class dimension at 1, as a model's ``N, C, H, W`` logits: arg-maxed). ``target``: class indices, pixels
        equal to ``ignore_index`` skipped. Raises ``ValueError`` for shapes that differ or an index out of range."""
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"scores have {pred.shape[1]} classes in dimension 1; expected {self.num_classes}")
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        target = target.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        n = self.num_classes
        for name, values in (("target", target), ("prediction", pred)):
            if values.numel() and (int(values.min()) < 0 or int(values.max()) >= n):
                bad = int(values.max()) if int(values.max()) >= n else int(values.min())
                raise ValueError(f"{name} holds class {bad}; accepted: 0..{n - 1}"
                                 + (f" and {self.ignore_index} (ignore)" if name == "target"
                                    and self.ignore_index is not None else ""))
        self.matrix += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix | torch.Tensor) -> ConfusionMatrix:
        """Add another matrix's counts (another process's, gathered) into this one; returns ``self``."""
        counts = other.matrix if isinstance(other, ConfusionMatrix) else other
        if tuple(counts.shape) != tuple(self.matrix.shape):
            raise ValueError(f"cannot merge a {tuple(counts.shape)} matrix into a {tuple(self.matrix.shape)} one")
        self.matrix += counts.to(device=self.matrix.device, dtype=torch.int64)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrices of every process of the default ``torch.distributed`` group (no-op without one)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> dict[str, Any]:
        """``miou``, ``per_class_iou`` (``None`` where undefined), ``pixel_accuracy``, ``mean_accuracy``,
        ``per_class_accuracy`` (``None`` for classes absent from the ground truth), ``fw_iou``
        (frequency-weighted IoU), ``pixels`` (counted) and ``classes_counted`` (those in the mean)."""
        m = self.matrix.detach().to("cpu", torch.float64)
        tp = m.diag()
        gt, predicted = m.sum(1), m.sum(0)
        union = gt + predicted - tp
        total = float(m.sum())
        iou = [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(self.num_classes)]
        acc = [float(tp[c] / gt[c]) if gt[c] > 0 else None for c in range(self.num_classes)]
        defined = [v for v in iou if v is not None]
        present = [v for v in acc if v is not None]
        fw = sum(float(gt[c]) / total * v for c, v in enumerate(iou) if v is not None) if total else math.nan
        return {
            "miou": sum(defined) / len(defined) if defined else math.nan,
            "per_class_iou": iou,
            "pixel_accuracy": float(tp.sum()) / total if total else math.nan,
            "mean_accuracy": sum(present) / len(present) if present else math.nan,
            "per_class_accuracy": acc,
            "fw_iou": fw,
            "pixels": int(total),
            "classes_counted": len(defined),
        }
