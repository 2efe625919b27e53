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

Each quantizer has several calibration methods (``*_CALIBRATIONS``, the first is the default) and
every quantizer takes ``exclude``: module names of the deploy form whose convolutions stay in float.
:func:`int8_sensitivity` ranks the layers (each one alone fake-quantized in PyTorch, KL divergence of
the logits), so :mod:`mobilecnn.deploy.precision` can try the next calibration method and
then keep the most sensitive layers in float before it refuses a file (NNCF's accuracy-control idea,
for every backend).

**OpenVINO trap** (docs/deployment.md): OpenVINO int8 was seen to lose up to 8 points on ShuffleNet
v1 g=3 (grouped 1x1 convolutions with 20 or 30 channels per group were suspected,
:func:`openvino_int8_risky_convs`). Re-measured (scratch q4/q5): keeping those convs in float, padding
or splitting them changes nothing; the loss comes from the first convolution and the most sensitive
layers, which the sensitivity fallback keeps in float.

Library code: returns values and raises, never prints.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .backends import require_backend

__all__ = [
    "Int8Report",
    "evaluate_int8",
    "quantize_onnx",
    "quantize_openvino",
    "quantize_executorch_program",
    "openvino_int8_risky_convs",
    "check_calibration",
    "ONNX_CALIBRATIONS",
    "OPENVINO_CALIBRATIONS",
    "EXECUTORCH_CALIBRATIONS",
    "int8_sensitivity",
]

#: Calibration methods of each quantizer, tried in this order (the first is the default); the format
#: table (:mod:`mobilecnn.deploy.formats`) reads them.
ONNX_CALIBRATIONS = ("percentile", "minmax", "entropy")
OPENVINO_CALIBRATIONS = ("minmax", "histogram", "mean_quantile")
EXECUTORCH_CALIBRATIONS = ("histogram", "minmax", "moving_minmax")


@dataclass(frozen=True)
class Int8Report:
    """fp32 vs int8 on a labelled check set. Accuracies and the drop are in percentage points."""

    fp32_top1: float
    int8_top1: float
    drop: float
    agreement: float
    images: int
    #: What ``max_drop`` and ``drop`` count (a segmentation model's check is a ``dense.MiouReport``: mIoU points).
    unit: ClassVar[str] = "pt"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"fp32 top-1 {self.fp32_top1:.2f}%, int8 top-1 {self.int8_top1:.2f}% (drop {self.drop:+.2f} pt), "
                f"top-1 agreement {self.agreement:.2f}% on {self.images} images")


ArrayFn = Callable[[np.ndarray], np.ndarray]


def _predict(fn: ArrayFn, images: np.ndarray, batch_size: int) -> np.ndarray:
    preds = [np.asarray(fn(images[i:i + batch_size])).argmax(axis=1) for i in range(0, len(images), batch_size)]
    return np.concatenate(preds)


def evaluate_int8(fp32_fn: ArrayFn | None, int8_fn: ArrayFn, images: torch.Tensor | np.ndarray,
                  labels: torch.Tensor | np.ndarray, *, batch_size: int = 250,
                  fp32_preds: np.ndarray | None = None) -> Int8Report:
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
    if fp32_preds is None and fp32_fn is None:
        raise ValueError("evaluate_int8 needs fp32_fn or fp32_preds")
    p32 = fp32_preds if fp32_preds is not None else _predict(fp32_fn, x, batch_size)  # type: ignore[arg-type]
    p8 = _predict(int8_fn, x, batch_size)
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


def openvino_int8_warning(model: nn.Module) -> str | None:
    """The OpenVINO grouped-1x1 weak spot (docs/deployment.md), named when ``model`` has such convs."""
    risky = openvino_int8_risky_convs(model)
    if not risky:
        return None
    return (f"this model has {len(risky)} grouped 1x1 convs with 20/30 channels per group (e.g. {risky[0]}), a "
            "suspected OpenVINO int8 weak spot (docs/deployment.md): export checks the accuracy and keeps sensitive "
            "layers in float; try another format")


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


def _check_method(what: str, methods: tuple[str, ...], method: str | None) -> str:
    if method is None:
        return methods[0]
    if method not in methods:
        raise ValueError(f"unknown {what} int8 calibration {method!r}; accepted: {', '.join(methods)}")
    return method


def onnx_nodes_for_modules(onnx_model: Any, module_names: list[str] | tuple[str, ...],
                           op_types: tuple[str, ...] = ("Conv", "Gemm", "MatMul")) -> list[str]:
    """ONNX node names of the ops that the modules ``module_names`` produced (the dynamo exporter's
    ``namespace`` metadata: ``': Cls/features.0.conv: torch.nn.modules.conv.Conv2d/conv2d: aten.conv2d.default'``)."""
    wanted, found = set(module_names), []
    for node in onnx_model.graph.node:
        ns = {p.key: p.value for p in node.metadata_props}.get("namespace", "")
        parts = [seg.split(":")[0].strip() for seg in ns.split("/")]
        if len(parts) >= 2 and parts[-2] in wanted and node.op_type in op_types:
            found.append(node.name)
    return found


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, calibration: torch.Tensor,
                  *, batch_size: int = 32, method: str | None = None, exclude: tuple[str, ...] = ()) -> None:
    """onnxruntime static QDQ quantization of ``fp32_path`` into ``out_path`` (the format table states the scheme);
    ``method``: one of ``ONNX_CALIBRATIONS``; ``exclude``: module names kept in float."""
    method = _check_method("onnx", ONNX_CALIBRATIONS, method)
    q = require_backend("onnxruntime.quantization", "onnxruntime int8 quantization")
    import onnx

    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    input_name = fp32.graph.input[0].name
    nodes = onnx_nodes_for_modules(fp32, tuple(exclude)) if exclude else []
    # equal batches: onnxruntime's histogram calibrators (percentile, entropy) stack every batch's outputs, and a
    # short last batch (39 images in batches of 32) makes that fail
    n = len(calibration)
    size = max(d for d in range(1, max(1, min(batch_size, n)) + 1) if n % d == 0) if n else batch_size
    batches = [{input_name: calibration[i:i + size].numpy()} for i in range(0, n, size)]

    class _Reader(q.CalibrationDataReader):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    calibrate = {"percentile": q.CalibrationMethod.Percentile, "minmax": q.CalibrationMethod.MinMax,
                 "entropy": q.CalibrationMethod.Entropy}[method]
    with _quiet():
        q.quantize_static(
            str(fp32_path), str(out_path), _Reader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=calibrate,
            nodes_to_exclude=nodes,
        )


def openvino_ignored_scope(module_names: tuple[str, ...] | list[str]) -> Any:
    """NNCF ``IgnoredScope`` for the convolutions of ``module_names`` in a model converted by
    ``ov.convert_model`` from the torch module (op names ``__module.<name>/aten::_convolution/...``)."""
    import re

    nncf = require_backend("nncf", "OpenVINO int8 quantization")
    pats = [rf"^__module\.{re.escape(n)}/aten::(_convolution|linear)/.*" for n in module_names]
    return nncf.IgnoredScope(patterns=pats, validate=False)


def quantize_openvino(fp32_model: Any, calibration: torch.Tensor, *, batch_size: int = 32,
                      method: str | None = None, exclude: tuple[str, ...] = ()) -> Any:
    """NNCF post-training quantization of an ``openvino.Model``; returns the quantized model.
    ``method``: activation range estimator (``OPENVINO_CALIBRATIONS``); ``exclude``: module names
    (of a model converted from torch) whose convolutions stay in float."""
    method = _check_method("openvino", OPENVINO_CALIBRATIONS, method)
    nncf = require_backend("nncf", "OpenVINO int8 quantization")
    nncf.set_log_level(logging.ERROR)
    kwargs: dict[str, Any] = {}
    if method != "minmax":
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, method.upper()))
    if exclude:
        kwargs["ignored_scope"] = openvino_ignored_scope(exclude)
    data = [calibration[i:i + batch_size].numpy() for i in range(0, len(calibration), batch_size)]
    with _quiet():
        return nncf.quantize(fp32_model, nncf.Dataset(data), preset=nncf.QuantizationPreset.PERFORMANCE,
                             subset_size=len(calibration), **kwargs)


def quantize_executorch_program(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor,
                                *, batch_size: int = 32, method: str | None = None,
                                exclude: tuple[str, ...] = ()) -> nn.Module:
    """PT2E-quantize ``model`` for XNNPACK; returns the converted graph module (to be exported + lowered).

    The capture uses a dynamic batch so calibration runs in batches of ``batch_size``. ``method``: the
    activation observer (``EXECUTORCH_CALIBRATIONS``); ``exclude``: module names kept in float.
    """
    import dataclasses

    method = _check_method("executorch", EXECUTORCH_CALIBRATIONS, method)
    xq = require_backend("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "ExecuTorch int8 quantization")
    pt2e = require_backend("torchao.quantization.pt2e.quantize_pt2e", "ExecuTorch int8 quantization")
    config = xq.get_symmetric_quantization_config(is_per_channel=True)
    if method != "histogram":
        obs = require_backend("torchao.quantization.pt2e.observer", "ExecuTorch int8 quantization")
        ctor = {"minmax": obs.MinMaxObserver, "moving_minmax": obs.MovingAverageMinMaxObserver}[method]
        act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctor.with_args(eps=2 ** -12))
        config = dataclasses.replace(config, input_activation=act, output_activation=act)
    quantizer = xq.XNNPACKQuantizer().set_global(config)
    if exclude:
        # set_module_name(name, None) is not supported (executorch 1.5); a filter function is
        flt = require_backend("torchao.quantization.pt2e.quantizer", "ExecuTorch int8 quantization")
        excluded = [flt.get_module_name_filter(name) for name in exclude]
        quantizer.set_filter_function(lambda node: not any(f(node) for f in excluded))
    two = example[:1].expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=max(1024, batch_size))
    captured = torch.export.export(model, (two,), dynamic_shapes=({0: batch},)).module()
    prepared = pt2e.prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), batch_size):
            prepared(calibration[i:i + batch_size])
    return pt2e.convert_pt2e(prepared)


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric s8 per output channel."""
    flat = w.reshape(w.shape[0], -1)
    scale = flat.abs().amax(1).clamp_min(1e-12) / 127.0
    return (torch.round(flat / scale[:, None]).clamp(-127, 127) * scale[:, None]).reshape(w.shape)


def int8_sensitivity(net: nn.Module, calibration: torch.Tensor, *, images: int = 32,
                     batch_size: int | None = None,
                     to_logits: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[tuple[str, float]]:
    """Layers of ``net`` (convs and linears), most int8-sensitive first, with their score.

    Each layer alone gets s8 per-channel weights and u8 per-tensor (min/max) input activations, in
    PyTorch; the score is the mean KL divergence of the softmax (over dimension 1: per image, or per pixel
    of a segmentation output) from the float model's on ``images`` calibration images, run ``batch_size``
    at a time (None: all at once). ``to_logits``: maps the output to the logits whose softmax over dimension 1 is
    compared (a detector's class logits per anchor); default the output itself. Backend-independent, one
    forward per layer.
    """
    x = calibration[:images]
    chunks = [x] if batch_size is None else [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    logits = to_logits or (lambda y: y)
    ranges: dict[str, tuple[float, float]] = {}

    def record(name: str):
        def hook(_m: nn.Module, args: tuple) -> None:
            lo, hi = float(args[0].min()), float(args[0].max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(old[0], lo), max(old[1], hi))
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in layers]
    try:
        with torch.no_grad():
            refs = [torch.log_softmax(logits(net(c)).float(), 1) for c in chunks]
    finally:
        for h in handles:
            h.remove()
    scores = []
    for name, m in layers:
        lo, hi = ranges.get(name, (0.0, 0.0))
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max(hi - lo, 1e-12) / 255.0
        zero = round(-lo / scale)

        def fq(_m: nn.Module, args: tuple, scale: float = scale, zero: int = zero) -> tuple:
            a = args[0]
            return ((torch.round(a / scale) + zero).clamp(0, 255) - zero) * scale,

        saved = m.weight.data
        m.weight.data = _fake_quant_weight(saved)
        handle = m.register_forward_pre_hook(fq)
        try:
            with torch.no_grad():
                kls = [(ref.exp() * (ref - torch.log_softmax(logits(net(c)).float(), 1))).sum(1)
                       for c, ref in zip(chunks, refs)]
        finally:
            handle.remove()
            m.weight.data = saved
        kl = float(kls[0].mean()) if len(kls) == 1 else float(sum(k.sum() for k in kls) / sum(k.numel() for k in kls))
        scores.append((name, max(kl, 0.0)))  # rounding can make a ~0 KL slightly negative
    return sorted(scores, key=lambda t: -t[1])
