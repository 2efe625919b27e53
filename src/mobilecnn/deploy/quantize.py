"""Int8 post-training static quantization, calibrated on real (preprocessed) training images.

One scheme per target, each the target's fast int8 path (docs/deployment.md):

* **onnxruntime** -- ``quantize_static``, QDQ format, u8 activations / s8 per-channel weights
  (s8 activations are 1.7x slower; ``quantize_dynamic`` is 10-25x slower than fp32 on CNNs), with
  percentile calibration.
* **OpenVINO** -- NNCF ``quantize`` on the IR, ``PERFORMANCE`` preset (symmetric; OpenVINO rejects
  s8 activations, NNCF picks u8 after ReLU itself).
* **ExecuTorch** -- PT2E with ``XNNPACKQuantizer`` (from ``executorch.backends.xnnpack``; the
  prepare/convert functions from ``torchao.quantization.pt2e``, torch.ao's copy is gone in 2.14),
  8-bit per-channel symmetric weights, static per-tensor activations, histogram observer.

Accuracy and latency of each scheme, as measured, are in docs/deployment.md.

**OpenVINO trap** (docs/deployment.md): OpenVINO 2026.4 int8 miscomputes grouped 1x1 convolutions with 20
or 30 output channels per group -- ShuffleNet v1 g=3 widths hit it (an 8-point drop; the same
ONNX file is right in onnxruntime). Nothing here works around it: the accuracy check of
:func:`mobilecnn.export.export_model` refuses such a file (:class:`Int8AccuracyError`) and
:func:`openvino_int8_risky_convs` names the layers in the message.

Library code: returns values and raises, never prints.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import Int8AccuracyError
from .formats import FORMATS
from .runtime import require_backend

__all__ = [
    "Int8Report",
    "Int8AccuracyError",
    "evaluate_int8",
    "INT8_SCHEMES",
    "INT8_FORMATS",
    "quantize_onnx",
    "quantize_openvino",
    "quantize_executorch_program",
    "openvino_int8_risky_convs",
    "check_calibration",
]

#: Scheme used per export format (the format table holds it).
INT8_SCHEMES: dict[str, str] = {f.name: f.int8_scheme for f in FORMATS.values() if f.int8_scheme}
INT8_FORMATS = tuple(INT8_SCHEMES)


@dataclass(frozen=True)
class Int8Report:
    """fp32 vs int8 on a labelled check set. Accuracies and the drop are in percentage points."""

    fp32_top1: float
    int8_top1: float
    drop: float
    agreement: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"fp32 top-1 {self.fp32_top1:.2f}%, int8 top-1 {self.int8_top1:.2f}% (drop {self.drop:+.2f} pt), "
                f"top-1 agreement {self.agreement:.2f}% on {self.images} images")


ArrayFn = Callable[[np.ndarray], np.ndarray]


def _predict(fn: ArrayFn, images: np.ndarray, batch_size: int) -> np.ndarray:
    preds = [np.asarray(fn(images[i:i + batch_size])).argmax(axis=1) for i in range(0, len(images), batch_size)]
    return np.concatenate(preds)


def evaluate_int8(fp32_fn: ArrayFn, int8_fn: ArrayFn, images: torch.Tensor | np.ndarray,
                  labels: torch.Tensor | np.ndarray, *, batch_size: int = 250) -> Int8Report:
    """Top-1 of ``fp32_fn`` and ``int8_fn`` (float32 NCHW array -> logits) on ``images``/``labels``.

    ``drop`` = fp32 top-1 - int8 top-1 (points; negative when int8 happens to score higher);
    ``agreement`` = % of images where both predict the same class.
    """
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"evaluate_int8 needs N >= 1 images (N, C, H, W) and N labels, got shapes "
                         f"{x.shape} and {y.shape}")
    p32, p8 = _predict(fp32_fn, x, batch_size), _predict(int8_fn, x, batch_size)
    a32, a8 = 100.0 * float(np.mean(p32 == y)), 100.0 * float(np.mean(p8 == y))
    return Int8Report(a32, a8, a32 - a8, 100.0 * float(np.mean(p32 == p8)), len(x))


def check_calibration(calibration: torch.Tensor | None, example: torch.Tensor) -> torch.Tensor:
    """Validate calibration images: a float (N, C, H, W) tensor matching ``example``'s C, H, W."""
    if calibration is None:
        raise ValueError("int8 export needs calibration=<tensor (N, C, H, W) of preprocessed training images>, "
                         "e.g. 256-512 real images; none was given")
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 4 or not calibration.is_floating_point():
        raise ValueError(f"calibration must be a float tensor (N, C, H, W), got "
                         f"{type(calibration).__name__} {tuple(getattr(calibration, 'shape', ()))}")
    if tuple(calibration.shape[1:]) != tuple(example.shape[1:]):
        raise ValueError(f"calibration images have shape {tuple(calibration.shape[1:])} per image but the example "
                         f"input has {tuple(example.shape[1:])}")
    if len(calibration) < 1:
        raise ValueError("calibration holds no images; pass preprocessed training images (256-512 recommended)")
    return calibration.detach().float().cpu().clone(memory_format=torch.contiguous_format)


def openvino_int8_risky_convs(model: nn.Module) -> list[str]:
    """Names of grouped 1x1 convs with 20 or 30 output channels per group (the OpenVINO int8 trap)."""
    risky = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.kernel_size == (1, 1) \
                and m.out_channels // m.groups in (20, 30):
            risky.append(name)
    return risky


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet():
    """Swallow the progress bars / banners / root-logger advice the quantization tools emit while they run
    (onnxruntime's quantizer logs "consider pre-processing" on the root logger; measured here, its
    ``quant_pre_process`` changed neither accuracy nor latency of our graphs, which are already folded)."""
    sink = io.StringIO()
    drop = _DropRecords()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        root.removeFilter(drop)


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calibration: torch.Tensor,
                  *, batch_size: int = 32) -> None:
    """onnxruntime static QDQ quantization of ``fp32_path`` into ``out_path`` (scheme in :data:`INT8_SCHEMES`)."""
    q = require_backend("onnxruntime.quantization", "onnxruntime int8 quantization")
    import onnx

    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    batches = [{input_name: calibration[i:i + batch_size].numpy()} for i in range(0, len(calibration), batch_size)]

    class _Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with _quiet():
        q.quantize_static(
            str(fp32_path), str(out_path), _Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.Percentile,
        )


def quantize_openvino(fp32_model: Any, calibration: torch.Tensor, *, batch_size: int = 32) -> Any:
    """NNCF post-training quantization of an ``openvino.Model``; returns the quantized model."""
    nncf = require_backend("nncf", "OpenVINO int8 quantization")
    nncf.set_log_level(logging.ERROR)
    data = [calibration[i:i + batch_size].numpy() for i in range(0, len(calibration), batch_size)]
    with _quiet():
        return nncf.quantize(fp32_model, nncf.Dataset(data), preset=nncf.QuantizationPreset.PERFORMANCE,
                             subset_size=len(calibration))


def quantize_executorch_program(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor,
                                *, batch_size: int = 32) -> nn.Module:
    """PT2E-quantize ``model`` for XNNPACK; returns the converted graph module (to be exported + lowered).

    The capture uses a dynamic batch so calibration runs in batches of ``batch_size``.
    """
    xq = require_backend("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "ExecuTorch int8 quantization")
    pt2e = require_backend("torchao.quantization.pt2e.quantize_pt2e", "ExecuTorch int8 quantization")
    quantizer = xq.XNNPACKQuantizer().set_global(xq.get_symmetric_quantization_config(is_per_channel=True))
    two = example[:1].expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=max(1024, batch_size))
    captured = torch.export.export(model, (two,), dynamic_shapes=({0: batch},)).module()
    prepared = pt2e.prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), batch_size):
            prepared(calibration[i:i + batch_size])
    return pt2e.convert_pt2e(prepared)
