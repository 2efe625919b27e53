"""Verification of a written file: load it in its own runtime and compare with PyTorch.

fp32 must agree with PyTorch's logits to ``rtol`` (max |runtime - torch| / max |torch|, also at batch 1
where the file's batch is dynamic); bf16 and int8 are judged by their top-1 drop on a labelled check set
(:mod:`mobilecnn.deploy.precision`), their logits reported, and gated only when no labelled check runs
(latency measurement): bf16 keeps 8 mantissa bits, so a trained model's logits move ~4e-3 relative,
but a barely trained one, whose logits nearly tie, moved 0.28 with no top-1 loss
(benchmarks/results/auto_on_runs.md). Non-finite logits are always refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ExportVerificationError
from .formats import load_runtime
from .quantize import Int8Report
from .runtimes import Runtime

__all__ = ["ExportReport", "BF16_RTOL", "logits_of", "verify_file"]

#: bf16 logits closeness, held only when no labelled check runs (module docstring).
BF16_RTOL = 0.05


@dataclass
class ExportReport:
    """What was written and how well it matched PyTorch on the verification images.

    ``rel_diff`` = max |runtime - torch| / max |torch| over all logits; ``top1_agreement`` is the
    fraction (0-1) of verification images with the same top-1 class. ``file_bytes`` counts every file
    written (OpenVINO: .xml + .bin). ``int8_report`` is the labelled accuracy check of bf16/int8 exports.
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
    int8_report: Int8Report | None = None
    calibration: str | None = None
    float_layers: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def logits_of(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """PyTorch's logits for ``images``, in batches."""
    with torch.no_grad():
        return np.concatenate([model(images[i:i + batch_size]).float().numpy()
                               for i in range(0, len(images), batch_size)])


def verify_file(target: Path, report: ExportReport, reference: np.ndarray, images: torch.Tensor, *, threads: int,
                tolerance: float | None) -> Runtime:
    """Load ``target`` and fill ``report``'s agreement fields from its logits on ``images`` against
    ``reference``; raise :class:`ExportVerificationError` (with the report) for another shape, non-finite
    logits, or a relative difference above ``tolerance`` (None: not gated). Returns the loaded runtime."""
    runtime = load_runtime(target, threads=threads, trusted=True)  # the file this process just wrote
    name = report.path.name
    out = runtime(images.numpy())
    if out.shape != reference.shape:
        report.max_abs_diff = report.rel_diff = float("inf")
        raise ExportVerificationError(f"{name}: the {report.format} runtime returned shape {out.shape}, "
                                      f"PyTorch {reference.shape}", report)
    max_abs = float(np.abs(out - reference).max())
    if report.dynamic_batch and len(images) > 1:  # the dynamic batch must work for a single image too
        max_abs = max(max_abs, float(np.abs(runtime(images[:1].numpy()) - reference[:1]).max()))
    report.max_abs_diff = max_abs
    report.rel_diff = max_abs / max(float(np.abs(reference).max()), 1e-30)
    report.top1_agreement = float(np.mean(out.argmax(1) == reference.argmax(1)))
    if not np.isfinite(out).all():
        raise ExportVerificationError(f"{name}: the {report.format} {report.precision} file returned non-finite "
                                      "logits; the file was deleted", report)
    if tolerance is not None and not report.rel_diff <= tolerance:
        raise ExportVerificationError(
            f"{name}: the {report.format} {report.precision} file disagrees with PyTorch on {len(images)} "
            f"verification images: max |diff| {max_abs:.3g}, relative {report.rel_diff:.3g} > rtol {tolerance:g}, "
            f"top-1 agreement {100 * report.top1_agreement:.1f}%; the file was deleted", report)
    return runtime
