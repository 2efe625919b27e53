"""Evaluation during and after training: :func:`evaluate` (classification: top-1, top-5, loss, confusion).

Segmentation is :mod:`.segment_eval`. Under torch.distributed, counts are summed over ranks
(:func:`all_reduce_host`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..data import Batches
from ..device import amp_dtype
from ..errors import NonFiniteError

__all__ = ["evaluate", "all_reduce_host"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Batches, channels_last: bool = False, amp: bool = False,
             num_classes: int | None = None, keep_logits: bool = False) -> dict[str, Any]:
    """Top-1, top-5, loss and the confusion matrix of ``model`` over every batch of ``loader`` (epoch 0).

    Under torch.distributed, counts are summed over ranks (each rank holds a shard). ``keep_logits``
    adds the per-image ``logits`` and ``labels`` (single process). Non-finite logits raise
    :class:`NonFiniteError`: an accuracy computed from NaN is not a result.
    """
    model.eval()
    n_cls = num_classes or getattr(model, "num_classes", None)
    if n_cls is None:
        raise TypeError("evaluate: pass num_classes for a model without a num_classes attribute")
    confusion = torch.zeros(n_cls, n_cls, dtype=torch.long)
    correct5 = torch.zeros((), dtype=torch.long)
    loss_sum = torch.zeros((), dtype=torch.float64)
    all_logits, all_labels = [], []
    for x, y in loader.batches(0):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=amp_dtype(x.device), enabled=amp):
            logits = model(x)
        logits = logits.float().cpu()  # the counts live on the CPU (a no-op there)
        y = y.cpu()
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteError(f"the model produced NaN/inf outputs on "
                                 f"{int((~torch.isfinite(logits)).any(1).sum())} of {len(y)} images: its weights or "
                                 "normalisation are broken; no accuracy is reported")
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        pred = logits.argmax(1)
        confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
        k = min(5, logits.shape[1])
        correct5 += (logits.topk(k, 1).indices == y[:, None]).any(1).sum()
        if keep_logits:
            all_logits.append(logits)
            all_labels.append(y)
    if dist.is_available() and dist.is_initialized():
        for t in (confusion, correct5, loss_sum):
            all_reduce_host(t)
    total = int(confusion.sum())
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1).double()).tolist()
    result = {
        "samples": total,
        "top1": 100.0 * float(confusion.diag().sum()) / max(1, total),
        "top5": 100.0 * float(correct5) / max(1, total),
        "loss": float(loss_sum) / max(1, total),
        "per_class_accuracy": [100.0 * a for a in per_class],
        "confusion": confusion.tolist(),
    }
    if keep_logits:
        result["logits"] = torch.cat(all_logits) if all_logits else torch.zeros(0, n_cls)
        result["labels"] = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long)
    return result


def all_reduce_host(t: torch.Tensor) -> None:
    """Sum a CPU tensor over ranks (NCCL reduces only GPU tensors: a round trip through this rank's GPU)."""
    if dist.get_backend() == "nccl":
        on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu)
        t.copy_(on_gpu.cpu())
    else:
        dist.all_reduce(t)
