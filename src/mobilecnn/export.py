"""Export a model to ONNX, TorchScript, OpenVINO IR or ExecuTorch, verified before it is reported.

:func:`export_model` does, for every format:

1. builds the *deploy form* (:func:`deploy_form`): BatchNorm folded into the convolutions
   (:func:`fold_batchnorm`), and for the zoo's classifiers the head rewritten as global pool (keepdim)
   -> 1x1 conv -> flatten, the same arithmetic as pool -> flatten -> Linear. The rewrite keeps the
   ExecuTorch int8 program in one XNNPACK delegate (with a Linear head the flatten between two
   delegates failed to serialise with a dynamic batch: "0 in strides is not supported").
   The channel shuffle is traced as reshape/transpose (:func:`mobilecnn.layers.channel_shuffle`),
   which every runtime here runs natively (MEASURED.md: the legacy ONNX exporter cannot export
   ``aten::channel_shuffle``; ExecuTorch delegates reshape/transpose to XNNPACK). For ExecuTorch
   only, ShuffleNet's zero-padded 3x3 average pools become equal fixed depthwise convs
   (:func:`avgpool_to_depthwise`), because XNNPACK does not take count_include_pad pooling;
2. writes the file(s) into a staging folder beside ``out_path``;
3. loads the written file in its own runtime (:func:`mobilecnn.runtime.load_runtime`) and compares
   with the PyTorch model on ``verify_images``: fp32 must agree to ``rtol`` (max abs logit difference
   / max abs logit), int8 must not lose more than ``max_drop`` top-1 points on the labelled check set;
4. only then moves the file(s) into place (``os.replace``, fsynced: a crash leaves the old file or
   the new one). A file that fails is deleted and :class:`ExportVerificationError` (fp32) or
   :class:`mobilecnn.quantize.Int8AccuracyError` (int8) is raised with the numbers; an existing file at
   ``out_path`` is left untouched.

Batch dimension: dynamic for ONNX (dynamo exporter, ``torch.export.Dim``), TorchScript (traced
shapes) and OpenVINO (converted from that ONNX file). ExecuTorch plans memory for the largest
shape, so its batch is static (the example's batch size) unless ``max_batch`` is given; the
runtime splits and pads other batch sizes, and the report says which it is.

Library code: returns values and raises, never prints.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .models._base import ClassifierNet
from .quantize import (
    INT8_FORMATS,
    INT8_SCHEMES,
    Int8AccuracyError,
    Int8Report,
    check_calibration,
    evaluate_int8,
    openvino_int8_risky_convs,
    quantize_executorch_program,
    quantize_onnx,
    quantize_openvino,
)
from .runtime import MissingBackendError, check_threads, load_runtime, require_backend

__all__ = [
    "FORMATS",
    "ExportReport",
    "ExportVerificationError",
    "MissingBackendError",
    "fold_batchnorm",
    "deploy_form",
    "export_model",
]

#: Accepted formats and the file suffixes each may be written with (the first is the default).
FORMATS: dict[str, tuple[str, ...]] = {
    "onnx": (".onnx",),
    "torchscript": (".pt", ".ts"),
    "openvino": (".xml",),
    "executorch": (".pte",),
}
_DYNAMIC_BATCH_MAX = 4096


class ExportVerificationError(ValueError):
    """The written file disagreed with PyTorch; it has been deleted. ``report`` holds the numbers."""

    def __init__(self, message: str, report: "ExportReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ExportReport:
    """What was written and how well it matched PyTorch on the verification images.

    ``rel_diff`` = max |runtime - torch| / max |torch| over all logits; ``top1_agreement`` is the
    fraction (0-1) of verification images with the same top-1 class. ``file_bytes`` counts every file
    written (OpenVINO: .xml + .bin). ``int8_report`` is the labelled accuracy check of int8 exports.
    """

    path: Path
    format: str
    int8: bool
    max_abs_diff: float
    rel_diff: float
    top1_agreement: float
    file_bytes: int
    notes: list[str] = field(default_factory=list)
    dynamic_batch: bool = True
    static_batch: int | None = None
    scheme: str = "fp32"
    int8_report: Int8Report | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# --------------------------------------------------------------------------------------------------
# Deploy form


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` in eval mode; the arithmetic is done in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm: BatchNorm2d without running statistics cannot be folded")
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    with torch.no_grad():
        fused.weight.copy_((w * scale.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
        fused.bias.copy_((beta + (b - bn.running_mean.detach().double()) * scale).to(conv.weight.dtype))
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Deep-copied eval model with every Conv2d directly followed by a BatchNorm2d folded into it.

    Covers the zoo's ``ConvBNAct`` (children ``conv``, ``bn``) and any ``nn.Sequential`` holding a
    Conv2d then a BatchNorm2d (torchvision's blocks). The conv gets a bias; the BN becomes
    ``nn.Identity``. Outputs match the eval-mode original to float32 rounding (tests: 1e-5 relative).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm expects an nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.num_features == conv.out_channels:
                parent._modules[first] = _fold_pair(conv, bn)
                parent._modules[second] = nn.Identity()
    return folded


class DeployClassifier(nn.Module):
    """``features`` -> global average pool (keepdim) -> 1x1 conv (the Linear's weights) -> flatten."""

    def __init__(self, features: nn.Module, linear: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
        with torch.no_grad():
            self.fc.weight.copy_(linear.weight.detach()[:, :, None, None])
            if linear.bias is not None:
                self.fc.bias.copy_(linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(x).flatten(1)


def _classifier_linear(model: nn.Module) -> nn.Linear | None:
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear) \
            and all(isinstance(m, (nn.Dropout, nn.Identity)) for m in list(head)[:-1]):
        return head[-1]
    return None


def deploy_form(model: nn.Module) -> nn.Module:
    """The module that is exported: BN folded, eval mode, zoo heads as pool -> 1x1 conv -> flatten.

    Other modules (e.g. torchvision's) are exported as :func:`fold_batchnorm` returns them.
    """
    folded = fold_batchnorm(model)
    linear = _classifier_linear(folded)
    standard = (isinstance(folded, ClassifierNet) and type(folded).forward is ClassifierNet.forward
                and type(folded).forward_head is ClassifierNet.forward_head
                and type(folded).forward_features is ClassifierNet.forward_features)
    if standard and linear is not None:
        return DeployClassifier(folded.features, linear).eval()
    return folded


def avgpool_to_depthwise(net: nn.Module, example: torch.Tensor) -> int:
    """Replace padded ``AvgPool2d(count_include_pad=True)`` by the equal fixed depthwise conv, in place.

    XNNPACK refuses average pooling that counts zero padding (executorch's AvgPoolingConfig), so
    ShuffleNet's 3x3/s2 shortcut pool would fall back to ExecuTorch's slow portable kernel. A 3x3
    depthwise conv with weights 1/9 and zero padding is the same arithmetic and is delegated; its
    per-channel int8 weights (all equal) quantize exactly. Returns the number of pools replaced.
    """
    channels: dict[str, int] = {}
    pools = {name: m for name, m in net.named_modules() if isinstance(m, nn.AvgPool2d)
             and m.count_include_pad and not m.ceil_mode and m.divisor_override is None
             and any(p != 0 for p in nn.modules.utils._pair(m.padding))}
    if not pools:
        return 0
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: channels.__setitem__(name, inp[0].shape[1]))
             for name, m in pools.items()]
    try:
        with torch.no_grad():
            net(example[:1])
    finally:
        for h in hooks:
            h.remove()
    for name, pool in pools.items():
        if name not in channels:
            continue
        c = int(channels[name])
        k, st, pad = (nn.modules.utils._pair(v) for v in (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding))
        conv = nn.Conv2d(c, c, k, st, pad, groups=c, bias=False)
        with torch.no_grad():
            conv.weight.fill_(1.0 / (k[0] * k[1]))
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, conv)
    return len(channels)


# --------------------------------------------------------------------------------------------------
# Writers: each writes ``target`` (inside the staging folder; scratch files go to ``work``).


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters print progress to stdout and deprecation chatter as warnings; keep both out."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
        yield


def _batch2(example: torch.Tensor) -> torch.Tensor:
    """Trace with batch 2: a traced batch of 1 would be specialised as a constant by torch.export."""
    return example[:1].expand(2, *example.shape[1:]).contiguous()


def _write_onnx(net: nn.Module, example: torch.Tensor, target: Path, opset: int | None) -> None:
    require_backend("onnxscript", "ONNX export (torch's dynamo exporter)")
    require_backend("onnx", "ONNX export")
    batch = torch.export.Dim("batch", min=1, max=_DYNAMIC_BATCH_MAX)
    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    with _quiet():
        program = torch.onnx.export(net, (_batch2(example),), None, dynamo=True, verbose=False,
                                    dynamic_shapes=({0: batch},), input_names=["input"], output_names=["logits"],
                                    **kwargs)
        program.save(str(target))


def _write_torchscript(net: nn.Module, example: torch.Tensor, target: Path) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(net, (_batch2(example),), check_trace=False)
        frozen = torch.jit.freeze(traced)
        buffer = io.BytesIO()  # torch.jit.save to a path aborts the process (C++ terminate) when the disk is full
        torch.jit.save(frozen, buffer)
    target.write_bytes(buffer.getvalue())


def _write_openvino(net: nn.Module, example: torch.Tensor, target: Path, work: Path, opset: int | None,
                    calibration: torch.Tensor | None) -> None:
    ov = require_backend("openvino", "OpenVINO export")
    onnx_path = work / "fp32.onnx"
    _write_onnx(net, example, onnx_path, opset)
    model = ov.convert_model(str(onnx_path))
    if calibration is not None:
        model = quantize_openvino(model, calibration)
    ov.save_model(model, str(target), compress_to_fp16=False)


def _undelegated_ops(edge: Any) -> list[str]:
    skip = ("executorch_call_delegate", "getitem", "sym_size")
    ops = []
    for node in edge.exported_program().graph_module.graph.nodes:
        if node.op == "call_function" and not any(s in str(node.target) for s in skip):
            ops.append(str(getattr(node.target, "__name__", node.target)))
    return ops


def _write_executorch(net: nn.Module, example: torch.Tensor, target: Path, max_batch: int | None,
                      calibration: torch.Tensor | None, notes: list[str]) -> None:
    xnn = require_backend("executorch.backends.xnnpack.partition.xnnpack_partitioner", "ExecuTorch export")
    exir = require_backend("executorch.exir", "ExecuTorch export")
    with _quiet():
        module: nn.Module = net
        if calibration is not None:
            module = quantize_executorch_program(net, example, calibration)
        if max_batch is None:
            program = torch.export.export(module, (example.contiguous(),))
        else:
            batch = torch.export.Dim("batch", min=1, max=max_batch)
            program = torch.export.export(module, (_batch2(example),), dynamic_shapes=({0: batch},))
        edge = exir.to_edge_transform_and_lower(program, partitioner=[xnn.XnnpackPartitioner()])
        leftover = _undelegated_ops(edge)
        buffer = edge.to_executorch().buffer
    if leftover:
        notes.append(f"ops not delegated to XNNPACK (run by the portable kernels): {', '.join(sorted(set(leftover)))}")
    with open(target, "wb") as fh:
        fh.write(buffer)


# --------------------------------------------------------------------------------------------------


def _check_images(name: str, images: Any, example: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point() or len(images) == 0:
        raise ValueError(f"{name} must be a non-empty float tensor (N, C, H, W) of preprocessed images, got "
                         f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    if tuple(images.shape[1:]) != tuple(example.shape[1:]):
        raise ValueError(f"{name} has images of shape {tuple(images.shape[1:])}, the example input "
                         f"{tuple(example.shape[1:])}")
    return _fresh(images)


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy with standard strides: a size-1 dim can carry stride 0 (e.g. ``np_array[:, None]``),
    which ExecuTorch refuses to serialise ("0 in strides is not supported")."""
    return t.detach().float().cpu().clone(memory_format=torch.contiguous_format)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _commit(stage: Path, out_dir: Path, main_name: str) -> None:
    """Move the staged files into ``out_dir`` with ``os.replace``; the main file (e.g. .xml) last."""
    files = sorted((p for p in stage.iterdir() if p.is_file()), key=lambda p: p.name == main_name)
    for f in files:
        _fsync(f)
    for f in files:
        os.replace(f, out_dir / f.name)
    try:
        fd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(images[i:i + batch_size]).float().numpy()
                               for i in range(0, len(images), batch_size)])


def export_model(
    model: nn.Module,
    fmt: str,
    out_path: str | Path,
    *,
    example: torch.Tensor,
    verify_images: torch.Tensor,
    int8: bool = False,
    calibration: torch.Tensor | None = None,
    check_images: torch.Tensor | None = None,
    check_labels: torch.Tensor | None = None,
    max_drop: float = 0.5,
    rtol: float = 1e-4,
    threads: int = 1,
    max_batch: int | None = None,
    opset: int | None = None,
) -> ExportReport:
    """Export ``model`` as ``fmt`` to ``out_path`` and verify the written file (module docstring).

    ``example``: an input batch (N, C, H, W) fixing C, H, W (and ExecuTorch's static batch N).
    ``verify_images``: real preprocessed images; fp32 exports must match PyTorch to ``rtol``.
    ``int8=True`` (onnx, openvino, executorch) needs ``calibration`` (preprocessed training images,
    256-512) and a labelled check set ``check_images``/``check_labels``; the export is refused with
    :class:`Int8AccuracyError` when int8 top-1 is more than ``max_drop`` points below fp32.
    ``max_batch`` (ExecuTorch only): export a dynamic batch 1..max_batch instead of a static one
    (memory is planned for max_batch). ``threads``: runtime threads used for verification.
    """
    return _export(model, fmt, out_path, example=example, verify_images=verify_images, int8=int8,
                   calibration=calibration, check_images=check_images, check_labels=check_labels, max_drop=max_drop,
                   rtol=rtol, threads=threads, max_batch=max_batch, opset=opset, accuracy_check=True)


def _export(model: nn.Module, fmt: str, out_path: str | Path, *, example: torch.Tensor, verify_images: torch.Tensor,
            int8: bool, calibration: torch.Tensor | None, check_images: torch.Tensor | None,
            check_labels: torch.Tensor | None, max_drop: float, rtol: float, threads: int, max_batch: int | None,
            opset: int | None, accuracy_check: bool) -> ExportReport:
    """:func:`export_model`; ``accuracy_check=False`` (benchmarks only) skips the int8 labelled check."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; accepted: {', '.join(FORMATS)}")
    out_path = Path(out_path)
    if out_path.suffix.lower() not in FORMATS[fmt]:
        raise ValueError(f"{out_path}: a {fmt} file must end in {' or '.join(FORMATS[fmt])}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_model expects an nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() != 4 or not example.is_floating_point():
        raise ValueError(f"example must be a float tensor (N, C, H, W), got {type(example).__name__} "
                         f"{tuple(getattr(example, 'shape', ()))}")
    example = _fresh(example)
    verify = _check_images("verify_images", verify_images, example)
    threads = check_threads(threads)
    if not (isinstance(rtol, (int, float)) and rtol > 0):
        raise ValueError(f"rtol must be a number > 0, got {rtol!r}")
    if max_batch is not None:
        if fmt != "executorch":
            raise ValueError(f"max_batch applies to executorch only ({fmt} files always have a dynamic batch)")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 2:
            raise ValueError(f"max_batch must be an integer >= 2 (or None for a static batch), got {max_batch!r}")
    calib = None
    if int8:
        if fmt not in INT8_FORMATS:
            raise ValueError(f"int8 export is available for {', '.join(INT8_FORMATS)}, not {fmt!r}")
        calib = check_calibration(calibration, example)
        if accuracy_check and (check_images is None or check_labels is None):
            raise ValueError("int8 export needs a labelled check set (check_images=, check_labels=) to refuse an int8 "
                             f"model that loses more than max_drop={max_drop} top-1 points")
        if accuracy_check:
            check_images = _check_images("check_images", check_images, example)
            check_labels = torch.as_tensor(check_labels).long().reshape(-1)
            if len(check_labels) != len(check_images):
                raise ValueError(f"check_labels has {len(check_labels)} entries for {len(check_images)} check images")
        if not (isinstance(max_drop, (int, float)) and max_drop >= 0):
            raise ValueError(f"max_drop must be a number >= 0 (top-1 points), got {max_drop!r}")
    elif calibration is not None:
        raise ValueError("calibration images were given but int8=False; pass int8=True to quantize")

    reference = copy.deepcopy(model).eval()
    net = deploy_form(model)
    notes: list[str] = ["BatchNorm folded into the convolutions"]
    if isinstance(net, DeployClassifier):
        notes.append("head exported as global pool -> 1x1 conv -> flatten (same arithmetic as the Linear)")
    if fmt == "executorch":
        replaced = avgpool_to_depthwise(net, example)
        if replaced:
            notes.append(f"{replaced} zero-padded average pool(s) exported as fixed depthwise convs (XNNPACK does not "
                         "delegate count_include_pad pooling)")
    dynamic = fmt != "executorch" or max_batch is not None
    static_batch = None if dynamic else int(example.shape[0])
    if fmt == "executorch":
        notes.append(f"dynamic batch 1..{max_batch} (memory planned for {max_batch})" if dynamic else
                     f"static batch {static_batch} (the example's); the runtime splits/pads other batch sizes")
    scheme = INT8_SCHEMES[fmt] if int8 else "fp32"

    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".export", dir=out_dir))
    work = Path(tempfile.mkdtemp(prefix="work-", dir=stage))
    target = stage / out_path.name
    try:
        if fmt == "onnx":
            if int8:
                fp32_path = work / "fp32.onnx"
                _write_onnx(net, example, fp32_path, opset)
                quantize_onnx(fp32_path, target, calib)
            else:
                _write_onnx(net, example, target, opset)
        elif fmt == "torchscript":
            _write_torchscript(net, example, target)
        elif fmt == "openvino":
            _write_openvino(net, example, target, work, opset, calib)
        else:
            _write_executorch(net, example, target, max_batch, calib, notes)
        shutil.rmtree(work)
        file_bytes = sum(p.stat().st_size for p in stage.iterdir() if p.is_file())

        runtime = load_runtime(target, threads=threads)
        ref = _logits(reference, verify)
        out = runtime(verify.numpy())
        if out.shape != ref.shape:
            raise ExportVerificationError(f"{out_path.name}: the {fmt} runtime returned shape {out.shape}, "
                                          f"PyTorch {ref.shape}", _report(out_path, fmt, int8, np.inf, np.inf, 0.0,
                                                                           file_bytes, notes, dynamic,
                                                                           static_batch, scheme))
        max_abs = float(np.abs(out - ref).max())
        if dynamic and len(verify) > 1:  # the dynamic batch must work for a single image too
            max_abs = max(max_abs, float(np.abs(runtime(verify[:1].numpy()) - ref[:1]).max()))
        rel = max_abs / max(float(np.abs(ref).max()), 1e-30)
        agreement = float(np.mean(out.argmax(1) == ref.argmax(1)))
        report = _report(out_path, fmt, int8, max_abs, rel, agreement, file_bytes, notes, dynamic, static_batch, scheme)
        if not int8:
            if not rel <= rtol:
                raise ExportVerificationError(
                    f"{out_path.name}: the {fmt} file disagrees with PyTorch on {len(verify)} verification images: "
                    f"max |diff| {max_abs:.3g}, relative {rel:.3g} > rtol {rtol:g}, top-1 agreement "
                    f"{100 * agreement:.1f}%; the file was deleted", report)
        elif not accuracy_check:
            notes.append("int8 accuracy NOT checked (latency measurement only)")
        else:
            int8_report = evaluate_int8(lambda a: _logits(reference, torch.from_numpy(a)), runtime,
                                        check_images, check_labels)
            report.int8_report = int8_report
            if int8_report.drop > max_drop:
                hint = ""
                risky = openvino_int8_risky_convs(net) if fmt == "openvino" else []
                if risky:
                    hint = (f"; OpenVINO int8 is known to miscompute grouped 1x1 convs with 20 or 30 channels per group "
                            f"(MEASURED.md), this model has {len(risky)} (e.g. {risky[0]}): use onnx or executorch")
                raise Int8AccuracyError(
                    f"{out_path.name}: {fmt} int8 refused: {int8_report} exceeds max_drop {max_drop:g} pt; "
                    f"the file was deleted{hint}", int8_report)
            notes.append(f"int8 check: {int8_report}")
        del runtime
        _commit(stage, out_dir, out_path.name)
        report.path = out_path
        return report
    except OSError as exc:  # disk full, read-only...: say which file could not be written
        if exc.filename or not exc.errno:
            raise
        raise OSError(exc.errno, f"{exc.strerror}: could not write {out_path}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _report(path: Path, fmt: str, int8: bool, max_abs: float, rel: float, agreement: float, file_bytes: int,
            notes: list[str], dynamic: bool, static_batch: int | None, scheme: str) -> ExportReport:
    return ExportReport(path=path, format=fmt, int8=int8, max_abs_diff=max_abs, rel_diff=rel, top1_agreement=agreement,
                        file_bytes=file_bytes, notes=notes, dynamic_batch=dynamic, static_batch=static_batch,
                        scheme=scheme)
