"""The precision step of an export: fp32 as written; bf16 and int8 judged by their top-1 (or mIoU) drop.

bf16 and int8 files are refused when their top-1 on a labelled check set (real held-out images) is
more than ``max_drop`` points below PyTorch fp32's; a segmentation model's (labels: masks N, H, W) when
its mIoU -- one confusion matrix over the whole check set, DeepLab's way -- is more than ``max_drop``
mIoU points below PyTorch fp32's (:mod:`mobilecnn.deploy.dense`); a detector's (labels: a
:class:`~mobilecnn.deploy.boxes.BoxTruth`) when its COCO box mAP on the check images is more than ``max_drop``
mAP points below PyTorch fp32's (:mod:`mobilecnn.deploy.boxes`). Before refusing int8,
:func:`settle_precision` tries every calibration method of the format in order, then (with the best
method) keeps the most int8-sensitive layers in float, 1, 2, 4, ... of them (NNCF's accuracy-control idea,
for every format); the report names the calibration, the float layers and every attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import Int8AccuracyError
from .boxes import BoxCheckSet, MapReport
from .dense import MiouReport, class_maps, evaluate_miou, sensitivity_plan, torch_fn
from .formats import Format
from .quantize import Int8Report, evaluate_int8, int8_sensitivity
from .runtimes import Runtime
from .verify import ExportReport, logits_of

__all__ = ["CheckSet", "Check", "Attempt", "PrecisionJob", "settle_precision", "check_set", "DEFAULT_MAX_DROP",
           "MAX_EXCLUDE_STEPS"]

#: Top-1 points (mIoU points for a segmentation model) a bf16/int8 file may lose against PyTorch fp32
#: unless the caller says otherwise.
DEFAULT_MAX_DROP = 0.5
#: int8 fallback: at most this many quantize-and-check attempts keeping layers in float.
MAX_EXCLUDE_STEPS = 5

#: Writes and verifies the file with a calibration method and float layers; returns the loaded file.
Attempt = Callable[[str | None, tuple[str, ...]], tuple[Runtime, ExportReport]]


Judged = Int8Report | MiouReport | MapReport


@dataclass(frozen=True)
class CheckSet:
    """The labelled check set and PyTorch fp32's predictions on it: labels (N,) and top-1 classes, or for a
    segmentation model masks (N, H, W) and class maps, with its ``num_classes``."""

    images: torch.Tensor
    labels: torch.Tensor
    fp32_preds: np.ndarray
    num_classes: int | None = None

    @property
    def dense(self) -> bool:
        return self.labels.dim() == 3

    def judge(self, runtime: Runtime, precision: str = "int8") -> Judged:
        if self.dense:
            assert self.num_classes is not None
            return evaluate_miou(runtime, self.images, self.labels, self.fp32_preds, num_classes=self.num_classes,
                                 precision=precision)
        return evaluate_int8(None, runtime, self.images, self.labels, fp32_preds=self.fp32_preds)

    def ranked_layers(self, net: nn.Module, calibration: torch.Tensor) -> list[str]:
        """The int8 fallback's layers, most sensitive first (a segmentation model's ranked per pixel, in batches)."""
        images, batch = sensitivity_plan(calibration) if self.dense else (32, None)
        return [name for name, _ in int8_sensitivity(net, calibration, images=images, batch_size=batch)]


#: The labelled check set of a bf16/int8 export: a classifier's or segmenter's, or a detector's.
Check = CheckSet | BoxCheckSet


def check_set(reference: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              num_classes: int | None = None) -> CheckSet:
    """The check set with PyTorch fp32's predictions by ``reference`` (eval mode): top-1 of every image, or
    (masks as ``labels``, the model's ``num_classes``) the class map of every image, kept as uint8."""
    if labels.dim() == 3:
        return CheckSet(images, labels, class_maps(torch_fn(reference), images.numpy()), num_classes)
    return CheckSet(images, labels, logits_of(reference, images).argmax(1))


@dataclass(frozen=True)
class PrecisionJob:
    """What :func:`settle_precision` decides on: the format, precision, allowed drop and fallback."""

    fmt: Format
    precision: str
    max_drop: float
    fallback: bool
    net: nn.Module
    calibration: torch.Tensor | None


def settle_precision(job: PrecisionJob, attempt: Attempt, check: Check | None) -> tuple[Runtime, ExportReport]:
    """Write, verify and (bf16/int8 with a ``check`` set) judge the file; raise when it loses too much."""
    if job.precision == "fp32":
        return attempt(None, ())
    if check is None:  # latency measurement only
        runtime, report = attempt(None, ())
        if job.precision == "int8":
            report.calibration = job.fmt.int8_calibrations[0]
        report.notes.append(f"{job.precision} accuracy NOT checked (latency measurement only)")
        return runtime, report
    if job.precision == "bf16":
        runtime, report = attempt(None, ())
        acc = report.int8_report = check.judge(runtime, "bf16")
        if acc.drop > job.max_drop:
            raise Int8AccuracyError(f"{report.path.name}: {job.fmt.name} bf16 refused: {acc} exceeds max_drop "
                                    f"{job.max_drop:g} {acc.unit}; the file was deleted", acc)
        report.notes.append(f"bf16 check: {acc}".replace("int8 top-1", "bf16 top-1"))
        return runtime, report
    return _int8_search(job, attempt, check)


def _score(acc: Judged) -> dict[str, float]:
    if isinstance(acc, MiouReport):
        return {"int8_miou": acc.int8_miou}
    if isinstance(acc, MapReport):
        return {"int8_map": acc.int8_map}
    return {"int8_top1": acc.int8_top1}


def _int8_search(job: PrecisionJob, attempt: Attempt, check: Check) -> tuple[Runtime, ExportReport]:
    attempts: list[dict[str, Any]] = []

    def judged(method: str, exclude: tuple[str, ...]) -> tuple[Runtime, ExportReport, Judged]:
        runtime, report = attempt(method, exclude)
        acc = check.judge(runtime)
        attempts.append({"calibration": method, "float_layers": list(exclude), "drop": acc.drop, **_score(acc),
                         "agreement": acc.agreement})
        report.int8_report, report.calibration, report.float_layers = acc, method, list(exclude)
        report.attempts = attempts
        return runtime, report, acc

    methods = job.fmt.int8_calibrations if job.fallback else job.fmt.int8_calibrations[:1]
    tries = [(m, ()) for m in methods]
    best: tuple[float, str] | None = None
    last: Judged | None = None
    for method, exclude in tries:
        runtime, report, last = judged(method, exclude)
        if last.drop <= job.max_drop:
            return runtime, _accepted(report, last, len(attempts))
        del runtime
        best = min(best or (last.drop, method), (last.drop, method))
    if job.fallback and best is not None and job.calibration is not None:
        ranked = check.ranked_layers(job.net, job.calibration)
        k = 1
        for _ in range(MAX_EXCLUDE_STEPS):
            if k > max(1, len(ranked) // 2):
                break
            runtime, report, last = judged(best[1], tuple(ranked[:k]))
            if last.drop <= job.max_drop:
                return runtime, _accepted(report, last, len(attempts))
            del runtime
            k *= 2
    raise _refusal(job, attempts, last, report.path.name)


def _accepted(report: ExportReport, acc: Judged, count: int) -> ExportReport:
    kept = f"; {len(report.float_layers)} layer(s) kept in float: {', '.join(report.float_layers)}" \
        if report.float_layers else ""
    report.notes.append(f"int8 check: {acc} (calibration {report.calibration}{kept}; attempt {count})")
    return report


def _refusal(job: PrecisionJob, attempts: list[dict[str, Any]], last: Judged | None,
             name: str) -> Int8AccuracyError:
    tried = "; ".join(f"{a['calibration']}" + (f" + {len(a['float_layers'])} float" if a["float_layers"] else "")
                      + f": drop {a['drop']:+.2f}" for a in attempts)
    warning = job.fmt.int8_warning(job.net) if job.fmt.int8_warning is not None else None
    hint = f"; {warning}" if warning else ""
    return Int8AccuracyError(
        f"{name}: {job.fmt.name} int8 refused: {last} exceeds max_drop {job.max_drop:g} "
        f"{last.unit if last is not None else 'pt'} after {len(attempts)} "
        f"attempt(s) ({tried}); the file was deleted{hint}", last)
