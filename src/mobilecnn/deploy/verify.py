"""Verification of a written file: load it in its own runtime and compare with PyTorch.

fp32 must agree with PyTorch's logits to ``rtol`` (max |runtime - torch| / max |torch|, also at batch 1
where the file's batch is dynamic); bf16 and int8 are judged by their top-1 drop on a labelled check set
(:mod:`mobilecnn.deploy.precision`), their logits reported, and gated only when no labelled check runs
(latency measurement): bf16 keeps 8 mantissa bits, so a trained model's logits move ~4e-3 relative,
but a barely trained one, whose logits nearly tie, moved 0.28 with no top-1 loss
(benchmarks/results/auto_on_runs.md). Non-finite logits are always refused.

Segmentation models (output N, K, H, W: :mod:`mobilecnn.deploy.dense`): fp32 must also give the same class
as PyTorch on at least :data:`SEG_MIN_AGREEMENT` of the verification pixels; ``top1_agreement`` is then per
pixel, and ``pixel_agreement`` says so. bf16/int8 are judged by their mIoU drop instead of top-1.

Detectors (raw outputs N, A, 4 + C: :mod:`mobilecnn.deploy.boxes`): fp32 must also give PyTorch's detections
(a :class:`~mobilecnn.deploy.boxes.BoxJudge`: every detection scoring >= 0.3 paired across, same class, IoU >=
0.99); ``top1_agreement`` is then the share of detections paired, ``box_agreement`` the whole comparison.
bf16/int8 are judged by their COCO mAP drop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportVerificationError
from .boxes import BoxJudge, MapReport, compare_detections
from .dense import MiouReport, all_finite, dense_batch, max_abs_diff, pixel_agreement
from .formats import load_runtime
from .quantize import Int8Report
from .runtimes import Runtime

__all__ = ["ExportReport", "BF16_RTOL", "SEG_MIN_AGREEMENT", "logits_of", "verify_file"]

#: bf16 logits closeness, held only when no labelled check runs (module docstring).
BF16_RTOL = 0.05
#: fp32 segmentation files: the least fraction of verification pixels whose argmax class equals PyTorch's.
SEG_MIN_AGREEMENT = 0.999


@dataclass
class ExportReport:
    """What was written and how well it matched PyTorch on the verification images.

    ``rel_diff`` = max |runtime - torch| / max |torch| over all logits; ``top1_agreement`` is the
    fraction (0-1) of verification images with the same top-1 class -- for a segmentation model (output
    N, K, H, W) the fraction of verification *pixels* with the same class, also given as
    ``pixel_agreement`` (absent for classifiers). ``file_bytes`` counts every file written (OpenVINO:
    .xml + .bin). ``int8_report`` is the labelled accuracy check of bf16/int8 exports (a
    :class:`~mobilecnn.deploy.dense.MiouReport` for a segmentation model, a
    :class:`~mobilecnn.deploy.boxes.MapReport` for a detector). ``box_agreement``: a detector's detections
    against PyTorch's (:class:`~mobilecnn.deploy.boxes.BoxMatch` as a dict; absent for the other models), whose
    ``agreement`` is also ``top1_agreement``.
    """

    path: Path
    format: str
    precision: str
    max_abs_diff: float
    rel_diff: float
    top1_agreement: float
    file_bytes: int
    notes: list[str] = field(default_factory=list)
    dynamic_batch: bool = True
    static_batch: int | None = None
    scheme: str = "fp32"
    int8_report: Int8Report | MiouReport | MapReport | None = None
    calibration: str | None = None
    float_layers: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    pixel_agreement: float | None = None
    box_agreement: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        if self.pixel_agreement is None:  # a classifier's report, as it always was
            del d["pixel_agreement"]
        else:
            d["agreement_per"] = "pixel"
        if self.box_agreement is None:
            del d["box_agreement"]
        else:
            d["agreement_per"] = "detection"
        if isinstance(self.int8_report, (MiouReport, MapReport)):
            d["int8_report"] = self.int8_report.to_dict()
        return d


def logits_of(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """PyTorch's logits for ``images``, in batches (a segmentation model's of about
    :data:`~mobilecnn.deploy.dense.DENSE_BATCH_PIXELS` input pixels), written into one array."""
    out: np.ndarray | None = None
    step = batch_size
    with torch.no_grad():
        i = 0
        while i < len(images):
            y = model(images[i:i + step]).float().numpy()
            if out is None:
                out = np.empty((len(images), *y.shape[1:]), np.float32)
                if y.ndim >= 3:  # a class map or a detector's anchors per image: smaller batches from now on
                    step = min(step, dense_batch(tuple(images.shape)))
            out[i:i + len(y)] = y
            i += len(y)
    return out if out is not None else np.empty((0,), np.float32)


def _agreement(out: np.ndarray, reference: np.ndarray, report: ExportReport, boxes: BoxJudge | None) -> str:
    """Fill the report's agreement fields; the phrase that names it in messages."""
    if out.ndim == 4:
        report.top1_agreement = report.pixel_agreement = pixel_agreement(out, reference)
        return f"pixel agreement {100 * report.top1_agreement:.3f}%"
    if out.ndim == 3 and boxes is not None:
        match = compare_detections(reference, out, boxes)
        report.box_agreement = match.to_dict()
        report.top1_agreement = match.agreement
        return f"{match.matched} of {match.reference} PyTorch detections scoring >= {boxes.score_threshold:g} paired"
    report.top1_agreement = float(np.mean(out.argmax(1) == reference.argmax(1)))
    return f"top-1 agreement {100 * report.top1_agreement:.1f}%"


def _box_refusal(name: str, report: ExportReport, count: int, boxes: BoxJudge) -> ExportVerificationError:
    m = report.box_agreement or {}
    return ExportVerificationError(
        f"{name}: the {report.format} {report.precision} file's detections differ from PyTorch's on "
        f"{m.get('images_differing')} of {count} verification images: {m.get('unmatched_reference')} of PyTorch's "
        f"{m.get('reference')} and {m.get('unmatched_file')} of the file's {m.get('file')} detections scoring >= "
        f"{boxes.score_threshold:g} have no partner of the same class with IoU >= {boxes.min_iou:g}; the file was "
        "deleted", report)


def verify_file(target: Path, report: ExportReport, reference: np.ndarray, images: torch.Tensor, *, threads: int,
                tolerance: float | None, min_pixel_agreement: float | None = None,
                boxes: BoxJudge | None = None) -> Runtime:
    """Load ``target`` and fill ``report``'s agreement fields from its logits on ``images`` against
    ``reference``; raise :class:`ExportVerificationError` (with the report) for another shape, non-finite
    logits, a relative difference above ``tolerance`` (None: not gated), for a segmentation output
    (N, K, H, W) a per-pixel class agreement below ``min_pixel_agreement`` (None: not gated) or, for a
    detector's (N, A, 4 + C) with a gated ``boxes`` judge, detections that differ from PyTorch's. Returns the
    loaded runtime."""
    runtime = load_runtime(target, threads=threads, trusted=True)  # the file this process just wrote
    name = report.path.name
    out = runtime(images.numpy())
    if out.shape != reference.shape:
        report.max_abs_diff = report.rel_diff = float("inf")
        raise ExportVerificationError(f"{name}: the {report.format} runtime returned shape {out.shape}, "
                                      f"PyTorch {reference.shape}", report)
    max_abs = max_abs_diff(out, reference)
    if report.dynamic_batch and len(images) > 1:  # the dynamic batch must work for a single image too
        max_abs = max(max_abs, max_abs_diff(runtime(images[:1].numpy()), reference[:1]))
    report.max_abs_diff = max_abs
    report.rel_diff = max_abs / max(float(np.max([np.abs(r).max() for r in reference])), 1e-30)
    if not all_finite(out):
        raise ExportVerificationError(f"{name}: the {report.format} {report.precision} file returned non-finite "
                                      "logits; the file was deleted", report)
    agreement = _agreement(out, reference, report, boxes)
    if tolerance is not None and not report.rel_diff <= tolerance:
        raise ExportVerificationError(
            f"{name}: the {report.format} {report.precision} file disagrees with PyTorch on {len(images)} "
            f"verification images: max |diff| {max_abs:.3g}, relative {report.rel_diff:.3g} > rtol {tolerance:g}, "
            f"{agreement}; the file was deleted", report)
    if out.ndim == 4 and min_pixel_agreement is not None and not report.top1_agreement >= min_pixel_agreement:
        raise ExportVerificationError(
            f"{name}: the {report.format} {report.precision} file gives PyTorch's class on only "
            f"{100 * report.top1_agreement:.3f}% of the pixels of {len(images)} verification images (at least "
            f"{100 * min_pixel_agreement:g}% needed); the file was deleted", report)
    if boxes is not None and boxes.gated and report.box_agreement is not None \
            and report.box_agreement["images_differing"]:
        raise _box_refusal(name, report, len(images), boxes)
    return runtime
