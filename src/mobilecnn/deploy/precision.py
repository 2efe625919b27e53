"""The precision step of an export: fp32 as written; bf16 and int8 judged by their top-1 drop.

bf16 and int8 files are refused when their top-1 on a labelled check set (real held-out images) is
more than ``max_drop`` points below PyTorch fp32's. Before refusing int8, :func:`settle_precision` tries
every calibration method of the format in order, then (with the best method) keeps the most
int8-sensitive layers in float, 1, 2, 4, ... of them (NNCF's accuracy-control idea, for every format);
the report names the calibration, the float layers and every attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import Int8AccuracyError
from .formats import Format
from .quantize import Int8Report, evaluate_int8, int8_sensitivity
from .runtimes import Runtime
from .verify import ExportReport

__all__ = ["CheckSet", "Attempt", "PrecisionJob", "settle_precision", "DEFAULT_MAX_DROP", "MAX_EXCLUDE_STEPS"]

#: Top-1 points a bf16/int8 file may lose against PyTorch fp32 unless the caller says otherwise.
DEFAULT_MAX_DROP = 0.5
#: int8 fallback: at most this many quantize-and-check attempts keeping layers in float.
MAX_EXCLUDE_STEPS = 5

#: Writes and verifies the file with a calibration method and float layers; returns the loaded file.
Attempt = Callable[[str | None, tuple[str, ...]], tuple[Runtime, ExportReport]]


@dataclass(frozen=True)
class CheckSet:
    """The labelled check set and PyTorch fp32's predictions on it."""

    images: torch.Tensor
    labels: torch.Tensor
    fp32_preds: np.ndarray

    def judge(self, runtime: Runtime) -> Int8Report:
        return evaluate_int8(None, runtime, self.images, self.labels, fp32_preds=self.fp32_preds)


@dataclass(frozen=True)
class PrecisionJob:
    """What :func:`settle_precision` decides on: the format, precision, allowed drop and fallback."""

    fmt: Format
    precision: str
    max_drop: float
    fallback: bool
    net: nn.Module
    calibration: torch.Tensor | None


def settle_precision(job: PrecisionJob, attempt: Attempt, check: CheckSet | None) -> tuple[Runtime, ExportReport]:
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
        acc = report.int8_report = check.judge(runtime)
        if acc.drop > job.max_drop:
            raise Int8AccuracyError(f"{report.path.name}: {job.fmt.name} bf16 refused: {acc} exceeds max_drop "
                                    f"{job.max_drop:g} pt; the file was deleted", acc)
        report.notes.append(f"bf16 check: {acc}".replace("int8 top-1", "bf16 top-1"))
        return runtime, report
    return _int8_search(job, attempt, check)


def _int8_search(job: PrecisionJob, attempt: Attempt, check: CheckSet) -> tuple[Runtime, ExportReport]:
    attempts: list[dict[str, Any]] = []

    def judged(method: str, exclude: tuple[str, ...]) -> tuple[Runtime, ExportReport, Int8Report]:
        runtime, report = attempt(method, exclude)
        acc = check.judge(runtime)
        attempts.append({"calibration": method, "float_layers": list(exclude), "drop": acc.drop,
                         "int8_top1": acc.int8_top1, "agreement": acc.agreement})
        report.int8_report, report.calibration, report.float_layers = acc, method, list(exclude)
        report.attempts = attempts
        return runtime, report, acc

    methods = job.fmt.int8_calibrations if job.fallback else job.fmt.int8_calibrations[:1]
    tries = [(m, ()) for m in methods]
    best: tuple[float, str] | None = None
    last: Int8Report | None = None
    for method, exclude in tries:
        runtime, report, last = judged(method, exclude)
        if last.drop <= job.max_drop:
            return runtime, _accepted(report, last, len(attempts))
        del runtime
        best = min(best or (last.drop, method), (last.drop, method))
    if job.fallback and best is not None and job.calibration is not None:
        ranked = [name for name, _ in int8_sensitivity(job.net, job.calibration)]
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


def _accepted(report: ExportReport, acc: Int8Report, count: int) -> ExportReport:
    kept = f"; {len(report.float_layers)} layer(s) kept in float: {', '.join(report.float_layers)}" \
        if report.float_layers else ""
    report.notes.append(f"int8 check: {acc} (calibration {report.calibration}{kept}; attempt {count})")
    return report


def _refusal(job: PrecisionJob, attempts: list[dict[str, Any]], last: Int8Report | None,
             name: str) -> Int8AccuracyError:
    tried = "; ".join(f"{a['calibration']}" + (f" + {len(a['float_layers'])} float" if a["float_layers"] else "")
                      + f": drop {a['drop']:+.2f}" for a in attempts)
    warning = job.fmt.int8_warning(job.net) if job.fmt.int8_warning is not None else None
    hint = f"; {warning}" if warning else ""
    return Int8AccuracyError(
        f"{name}: {job.fmt.name} int8 refused: {last} exceeds max_drop {job.max_drop:g} pt after {len(attempts)} "
        f"attempt(s) ({tried}); the file was deleted{hint}", last)
