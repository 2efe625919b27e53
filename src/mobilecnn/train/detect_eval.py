"""COCO box mAP of a detector: its detections in COCO's results format, scored by ``faster-coco-eval``.

The detections come from the one post-processing definition (:func:`mobilecnn.models.ssd_boxes.detect`),
scaled back to each image's original pixels and written as COCO results (``image_id``, ``category_id``,
``bbox`` ``[x, y, w, h]``, ``score``); the score is COCO's own evaluation (``faster-coco-eval``'s
``COCOeval_faster``, results bit-identical to pycocotools, several times faster): AP@[.5:.95], AP50, AP75, AP
for small / medium / large objects, and each category's AP@[.5:.95] from the accumulated precision (area
"all", 100 detections). Crowd ground truths are handled by COCO's evaluation (matches to them are ignored).
Never a hand-written mAP.

Under torchrun each process detects on its shard; the results are gathered so every process scores the same set.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import DataError
from ..models.ssd_boxes import Detections, PostProcess, detect, to_pixels
from .detection_loss import MultiBoxLoss

__all__ = ["DetEvalOptions", "coco_results", "coco_map", "collect_detections", "evaluate_detection", "METRICS"]

#: ``eval.json`` keys of COCOeval's first six statistics, in its order (percent).
METRICS = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")

#: Raw outputs ``(N, A, 4 + C)`` of a batch ``(images, targets)`` (targets unused outside training).
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DetEvalOptions:
    """How to run the detector and turn its outputs into detections."""

    channels_last: bool = False
    amp: bool = False
    post: PostProcess = field(default_factory=PostProcess)


def coco_results(dets: Sequence[Detections], image_ids: Sequence[int], sizes: Sequence[tuple[int, int]],
                 category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO results of the images ``image_ids`` (their original ``(width, height)`` in ``sizes``); label ``k``
    is category ``category_ids[k - 1]``."""
    out: list[dict[str, Any]] = []
    for det, image_id, (width, height) in zip(dets, image_ids, sizes):
        px = to_pixels(det, width, height)
        boxes = px.boxes.cpu().double().numpy()
        for (x1, y1, x2, y2), score, label in zip(boxes, px.scores.tolist(), px.labels.tolist()):
            out.append({"image_id": int(image_id), "category_id": int(category_ids[label - 1]),
                        "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2),
                                 round(float(y2 - y1), 2)],
                        "score": round(float(score), 5)})
    return out


def _per_class(evaluator: Any, names: dict[int, str]) -> dict[str, float | None]:
    """AP@[.5:.95] of each category (area all, 100 detections); ``None`` where it has no ground truth."""
    precision = np.asarray(evaluator.eval["precision"])  # (iou, recall, category, area, max dets)
    out: dict[str, float | None] = {}
    for k, cat in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[names.get(cat, str(cat))] = round(float(p.mean()) * 100, 3) if p.size else None
    return out


def coco_map(ground_truth: str | os.PathLike | dict, results: list[dict[str, Any]],
             image_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """COCO box mAP (percent) of ``results`` against ``ground_truth`` (an ``instances_*.json`` or its dict),
    over ``image_ids`` (default: every image of the file). Keys: :data:`METRICS`, ``per_class_ap``,
    ``images``, ``detections``."""
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *a, **k: None  # noqa: E731 - faster-coco-eval logs every step otherwise
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ground_truth if isinstance(ground_truth, dict) else str(ground_truth), print_function=quiet)
        ids = sorted(gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
        names = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
        if not results:  # COCO cannot load an empty result set: nothing detected scores 0
            return {**{k: 0.0 for k in METRICS}, "per_class_ap": {n: 0.0 for n in names.values()},
                    "images": len(ids), "detections": 0}
        dt = gt.loadRes([dict(r, bbox=list(r["bbox"])) for r in results])  # loadRes adds keys to what it gets
        evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=quiet)
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(0.0, float(s)) * 100 for s in evaluator.stats[:len(METRICS)]]
    return {**{k: round(v, 3) for k, v in zip(METRICS, stats)}, "per_class_ap": _per_class(evaluator, names),
            "images": len(ids), "detections": len(results)}


def _gather(items: list[Any]) -> list[Any]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def collect_detections(forward: Forward, loader: Any, anchors: torch.Tensor, category_ids: Sequence[int],
                       post: PostProcess) -> tuple[list[dict[str, Any]], list[int]]:
    """COCO results of ``forward`` (raw outputs of a batch) over ``loader`` (a val :class:`DetBatches`: its
    ``image_ids`` and ``image_sizes`` in batch order), and the image ids covered; gathered over processes."""
    ids, sizes = list(loader.image_ids), list(loader.image_sizes)
    results: list[dict[str, Any]] = []
    seen = 0
    for x, y in loader.batches(0):
        dets = detect(forward(x, y), anchors, post)
        results += coco_results(dets, ids[seen:seen + len(dets)], sizes[seen:seen + len(dets)], category_ids)
        seen += len(dets)
    if seen != len(ids):
        raise DataError(f"the val loader gave {seen} images for {len(ids)} image ids")
    return _gather(results), _gather(ids)


@torch.no_grad()
def evaluate_detection(model: nn.Module, loader: Any, info: Any, options: DetEvalOptions | None = None
                       ) -> dict[str, Any]:
    """COCO mAP (:func:`coco_map`) and the multibox loss of ``model`` on ``loader`` (summed over the set, divided by
    its positive anchors) (the val batches of
    :func:`mobilecnn.data.detection.load_detection`, described by ``info``). Also returns ``results``: the
    detections in COCO results format."""
    o = options or DetEvalOptions()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    side = int(info.resolution)
    anchors = model.anchors(side, side).to(device)  # type: ignore[operator]
    criterion = MultiBoxLoss(anchors).to(device)
    sums = torch.zeros(2, dtype=torch.float64)  # the loss summed over anchors, the positive anchors

    def forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if o.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=o.amp):
            raw = model(x).float()
        criterion(raw, y)
        sums[0] += criterion.last_sum
        sums[1] += criterion.last_positives
        return raw

    try:
        results, ids = collect_detections(forward, loader, anchors, info.category_ids, o.post)
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    scores = coco_map(info.val_annotations, results, ids)
    return {**scores, "loss": float(sums[0] / sums[1].clamp(min=1)), "results": results}
