"""Export a model to ONNX, TorchScript, OpenVINO IR or ExecuTorch, verified before it is reported.

:func:`export_model` does, for every format:

1. builds the deploy form (:func:`mobilecnn.deploy.fold.deploy_form`: BN folded, export-friendly head);
   the channel shuffle is traced as one Gather for ONNX and OpenVINO, as reshape/transpose for the others
   (:func:`mobilecnn.layers.shuffle.shuffle_traced_as_gather`), so every runtime here runs it natively;
2. writes the file(s) into a staging folder beside ``out_path``;
3. loads the written file in its own runtime (:func:`mobilecnn.deploy.runtime.load_runtime`) and compares
   with the PyTorch model on ``verify_images``: fp32 must agree to ``rtol`` (max abs logit difference
   / max abs logit), bf16 and int8 must not lose more than ``max_drop`` top-1 points on the labelled
   check set;
4. only then moves the file(s) into place (``os.replace``, fsynced: a crash leaves the old file or
   the new one). A file that fails is deleted and :class:`ExportVerificationError` (fp32) or
   :class:`Int8AccuracyError` (int8) is raised with the numbers; an existing file at ``out_path`` is
   left untouched.

:func:`export_run` does the same for a trained run directory, with real images of the dataset it was
trained on (training images for int8 calibration, test images for verification), and writes the
``<file>.mobilecnn.json`` sidecar (model, labels, preprocessing, verification numbers) that
``predict`` and ``bench`` read.

Batch dimension: dynamic for ONNX (dynamo exporter, ``torch.export.Dim``), TorchScript (traced
shapes) and OpenVINO (converted from that ONNX file). ExecuTorch plans memory for the largest
shape, so its batch is static (the example's batch size) unless ``max_batch`` is given; the
runtime splits and pads other batch sizes, and the report says which it is.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..data import Preprocessing, load_data, locate_dataset
from ..errors import ExportVerificationError, Int8AccuracyError, MissingBackendError, UsageError
from .fold import DeployClassifier, avgpool_to_depthwise, deploy_form, fold_batchnorm
from ..layers.shuffle import shuffle_traced_as_gather
from ..runs.rundir import load_trained
from .formats import FORMATS, SIDECAR_SUFFIX, format_named
from .quantize import (
    INT8_CALIBRATIONS,
    INT8_FORMATS,
    INT8_SCHEMES,
    Int8Report,
    check_calibration,
    evaluate_int8,
    int8_sensitivity,
    openvino_int8_risky_convs,
    quantize_executorch_program,
    quantize_onnx,
    quantize_openvino,
)
from .runtime import bf16_supported, check_threads, load_runtime, require_backend

__all__ = [
    "FORMATS",
    "ExportReport",
    "ExportVerificationError",
    "MissingBackendError",
    "fold_batchnorm",
    "deploy_form",
    "export_model",
    "PRECISIONS",
]

#: Precisions an export can have. bf16: OpenVINO only (onnxruntime's CPU provider has no bf16 Conv,
#: ExecuTorch's XNNPACK does not delegate bf16 -- research q3), and only on CPUs with bf16 instructions.
PRECISIONS = ("fp32", "bf16", "int8")
BF16_FORMATS = ("openvino",)
#: bf16 is judged like int8, by the top-1 drop on the labelled check set. Its logits are only held to
#: this closeness when no labelled check runs (latency measurement): bf16 keeps 8 mantissa bits, so a
#: trained model's logits move ~4e-3 relative, but a barely trained one, whose logits nearly tie, moved
#: 0.28 with no top-1 loss (benchmarks/results/auto_on_runs.md).
BF16_RTOL = 0.05
#: int8 fallback: at most this many quantize-and-check attempts keeping layers in float.
MAX_EXCLUDE_STEPS = 5

_DYNAMIC_BATCH_MAX = 4096
MAX_CALIBRATION = 2048  # int8 calibration holds activations of every image: 60,000 tiny images took 21 GB


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
    precision: str = "fp32"
    calibration: str | None = None
    float_layers: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


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
    with _quiet(), shuffle_traced_as_gather():
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
                    calibration: torch.Tensor | None, method: str | None = None, exclude: tuple[str, ...] = (),
                    precision: str = "fp32") -> None:
    """``ov.convert_model`` straight from the deploy form (dynamic batch, static C/H/W): as fast as or faster
    than the model converted from ONNX (research q2), and op names carry the module names (for ``exclude``).
    Falls back to the ONNX route when the torch frontend fails. bf16 is recorded in the IR's rt_info
    (``mobilecnn/inference_precision``), which :class:`mobilecnn.deploy.runtime.OpenVINORuntime` reads."""
    ov = require_backend("openvino", "OpenVINO export")
    try:
        with _quiet(), torch.no_grad(), shuffle_traced_as_gather():
            model = ov.convert_model(net, example_input=_batch2(example), input=[-1, *example.shape[1:]])
    except Exception:  # noqa: BLE001 - the torch frontend's many failure types; ONNX is the proven route
        onnx_path = work / "fp32.onnx"
        _write_onnx(net, example, onnx_path, opset)
        model = ov.convert_model(str(onnx_path))
    if calibration is not None:
        model = quantize_openvino(model, calibration, method=method, exclude=exclude)
    if precision == "bf16":
        model.set_rt_info("bf16", ["mobilecnn", "inference_precision"])
    ov.save_model(model, str(target), compress_to_fp16=False)


def _undelegated_ops(edge: Any) -> list[str]:
    skip = ("executorch_call_delegate", "getitem", "sym_size")
    ops = []
    for node in edge.exported_program().graph_module.graph.nodes:
        if node.op == "call_function" and not any(s in str(node.target) for s in skip):
            ops.append(str(getattr(node.target, "__name__", node.target)))
    return ops


def _write_executorch(net: nn.Module, example: torch.Tensor, target: Path, max_batch: int | None,
                      calibration: torch.Tensor | None, notes: list[str], method: str | None = None,
                      exclude: tuple[str, ...] = ()) -> None:
    xnn = require_backend("executorch.backends.xnnpack.partition.xnnpack_partitioner", "ExecuTorch export")
    exir = require_backend("executorch.exir", "ExecuTorch export")
    with _quiet():
        module: nn.Module = net
        if calibration is not None:
            module = quantize_executorch_program(net, example, calibration, method=method, exclude=exclude)
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


_STAGE_NAME = re.compile(r"\..+\.(\d+)\.[^.]+\.export")


def _sweep_stale_stages(out_dir: Path) -> None:
    """Remove staging folders of our naming (``.NAME.PID.XXXX.export``) whose export process is gone
    (killed by SIGKILL or a power cut); a live concurrent export's folder is left alone."""
    for entry in out_dir.glob(".*.export"):
        match = _STAGE_NAME.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except (PermissionError, OverflowError, ValueError):
            continue


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
    check_accuracy: bool = True,
    sidecar: dict[str, Any] | None = None,
    precision: str | None = None,
    int8_fallback: bool = True,
) -> ExportReport:
    """Export ``model`` as ``fmt`` to ``out_path`` and verify the written file (module docstring).

    ``example``: an input batch (N, C, H, W) fixing C, H, W (and ExecuTorch's static batch N).
    ``verify_images``: real preprocessed images; fp32 exports must match PyTorch to ``rtol``.
    ``precision``: ``"fp32"`` (default), ``"bf16"`` (OpenVINO on a CPU with bf16 instructions) or
    ``"int8"`` (same as ``int8=True``). int8 (onnx, openvino, executorch) needs ``calibration``
    (preprocessed training images, 256-512); int8 and bf16 need a labelled check set
    ``check_images``/``check_labels`` and are refused when their top-1 is more than ``max_drop`` points
    below fp32 (their logits are reported, not gated: rounding moves them; :data:`BF16_RTOL` guards
    bf16 only when ``check_accuracy=False``). Before refusing int8 the
    other calibration methods of the format are tried, then the most int8-sensitive layers are kept in
    float (``int8_fallback=False``: the default calibration only); the report names the calibration
    and the float layers (``calibration``, ``float_layers``, ``attempts``).
    ``max_batch`` (ExecuTorch only): export a dynamic batch 1..max_batch instead of a static one
    (memory is planned for max_batch). ``threads``: runtime threads used for verification.
    ``check_accuracy=False`` (latency benchmarks only) skips the labelled check.
    ``sidecar``: written as ``<out_path>.mobilecnn.json`` with the report added, committed together
    with the model file (the previous pair stays until both new files are complete).
    """
    if precision is None:
        precision = "int8" if int8 else "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    if int8 and precision != "int8":
        raise UsageError(f"int8=True contradicts precision={precision!r}")
    int8 = precision == "int8"
    accuracy_check = check_accuracy
    suffixes = format_named(fmt).suffixes
    out_path = Path(out_path)
    if out_path.suffix.lower() not in suffixes:
        raise UsageError(f"{out_path}: a {fmt} file must end in {' or '.join(suffixes)}")
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
    if precision == "bf16":
        if fmt not in BF16_FORMATS:
            raise UsageError(f"bf16 export is available for {', '.join(BF16_FORMATS)}, not {fmt!r} (onnxruntime's CPU "
                             "provider has no bf16 convolution; ExecuTorch's XNNPACK does not delegate bf16)")
        if not bf16_supported():
            raise UsageError("bf16 needs a CPU with bf16 instructions (avx512_bf16 or AMX) and OpenVINO reporting "
                             "BF16 among its CPU capabilities; this machine has neither: use fp32 or int8")
    calib = None
    if int8:
        if fmt not in INT8_FORMATS:
            raise UsageError(f"int8 export is available for {', '.join(INT8_FORMATS)}, not {fmt!r}")
        calib = check_calibration(calibration, example)
    elif calibration is not None:
        raise ValueError("calibration images were given but int8=False; pass int8=True to quantize")
    if precision != "fp32":
        if accuracy_check and (check_images is None or check_labels is None):
            raise ValueError(f"{precision} export needs a labelled check set (check_images=, check_labels=) to refuse "
                             f"a model that loses more than max_drop={max_drop} top-1 points")
        if accuracy_check:
            check_images = _check_images("check_images", check_images, example)
            check_labels = torch.as_tensor(check_labels).long().reshape(-1)
            if len(check_labels) != len(check_images):
                raise ValueError(f"check_labels has {len(check_labels)} entries for {len(check_images)} check images")
        if not (isinstance(max_drop, (int, float)) and max_drop >= 0):
            raise ValueError(f"max_drop must be a number >= 0 (top-1 points), got {max_drop!r}")

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
    if fmt == "openvino" and precision == "bf16":
        notes.append("OpenVINO compiles this file with INFERENCE_PRECISION_HINT=bf16 (recorded in the IR)")
    scheme = INT8_SCHEMES[fmt] if int8 else precision

    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    _sweep_stale_stages(out_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.{os.getpid()}.", suffix=".export", dir=out_dir))
    target = stage / out_path.name
    try:
        ref = _logits(reference, verify)
        check_preds = None
        if precision != "fp32" and accuracy_check:
            check_preds = _logits(reference, check_images).argmax(1)

        def write(method: str | None = None, exclude: tuple[str, ...] = ()) -> int:
            for p in stage.iterdir():
                if p.is_file():
                    p.unlink()
            work = Path(tempfile.mkdtemp(prefix="work-", dir=stage))
            if fmt == "onnx":
                if int8:
                    fp32_path = work / "fp32.onnx"
                    _write_onnx(net, example, fp32_path, opset)
                    quantize_onnx(fp32_path, target, calib, method=method, exclude=exclude)
                else:
                    _write_onnx(net, example, target, opset)
            elif fmt == "torchscript":
                _write_torchscript(net, example, target)
            elif fmt == "openvino":
                _write_openvino(net, example, target, work, opset, calib, method, exclude, precision)
            else:
                extra: list[str] = []
                _write_executorch(net, example, target, max_batch, calib, extra, method, exclude)
                notes.extend(n for n in extra if n not in notes)
            shutil.rmtree(work)
            return sum(p.stat().st_size for p in stage.iterdir() if p.is_file())

        def verify_file(file_bytes: int) -> tuple[Any, ExportReport]:
            runtime = load_runtime(target, threads=threads, trusted=True)  # the file this process just wrote
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
            report = _report(out_path, fmt, int8, max_abs, rel, agreement, file_bytes, notes, dynamic, static_batch,
                             scheme)
            report.precision = precision
            if not np.isfinite(out).all():
                raise ExportVerificationError(f"{out_path.name}: the {fmt} {precision} file returned non-finite "
                                              "logits; the file was deleted", report)
            tol = BF16_RTOL if precision == "bf16" else rtol
            gated = precision == "fp32" or (precision == "bf16" and not accuracy_check)
            if gated and not rel <= tol:
                raise ExportVerificationError(
                    f"{out_path.name}: the {fmt} {precision} file disagrees with PyTorch on {len(verify)} verification "
                    f"images: max |diff| {max_abs:.3g}, relative {rel:.3g} > rtol {tol:g}, top-1 agreement "
                    f"{100 * agreement:.1f}%; the file was deleted", report)
            return runtime, report

        def check(runtime: Any) -> Int8Report:
            return evaluate_int8(None, runtime, check_images, check_labels, fp32_preds=check_preds)

        if not int8:
            runtime, report = verify_file(write())
            if precision == "bf16":
                if not accuracy_check:
                    notes.append("bf16 accuracy NOT checked (latency measurement only)")
                else:
                    acc = check(runtime)
                    report.int8_report = acc
                    if acc.drop > max_drop:
                        raise Int8AccuracyError(f"{out_path.name}: {fmt} bf16 refused: {acc} exceeds max_drop "
                                                f"{max_drop:g} pt; the file was deleted", acc)
                    notes.append(f"bf16 check: {acc}".replace("int8 top-1", "bf16 top-1"))
        elif not accuracy_check:
            runtime, report = verify_file(write())
            report.calibration = INT8_CALIBRATIONS[fmt][0]
            notes.append("int8 accuracy NOT checked (latency measurement only)")
        else:
            runtime, report = _int8_search(fmt, net, calib, write, verify_file, check, max_drop, int8_fallback,
                                           out_path, notes)
        del runtime
        if sidecar is not None:
            report.path = out_path
            text = json.dumps({**sidecar, "precision": precision, "report": report.to_dict()}, indent=2,
                              default=str) + "\n"
            (stage / (out_path.name + SIDECAR_SUFFIX)).write_text(text)
        _commit(stage, out_dir, out_path.name)
        report.path = out_path
        return report
    except OSError as exc:  # disk full, read-only...: say which file could not be written
        if exc.filename or not exc.errno:
            raise
        raise OSError(exc.errno, f"{exc.strerror}: could not write {out_path}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _int8_search(fmt: str, net: nn.Module, calib: torch.Tensor, write: Any, verify_file: Any, check: Any,
                 max_drop: float, fallback: bool, out_path: Path, notes: list[str]) -> tuple[Any, ExportReport]:
    """int8 that tries before it refuses: every calibration method of ``fmt`` in order, then (with the best
    method) the most sensitive layers kept in float, 1, 2, 4, ... of them, until the drop is within
    ``max_drop``. Raises :class:`Int8AccuracyError` with every attempt when none is."""
    attempts: list[dict[str, Any]] = []
    best: tuple[float, str] | None = None

    def attempt(method: str, exclude: tuple[str, ...]) -> tuple[Any, ExportReport, Int8Report]:
        runtime, report = verify_file(write(method, exclude))
        acc = check(runtime)
        attempts.append({"calibration": method, "float_layers": list(exclude), "drop": acc.drop,
                         "int8_top1": acc.int8_top1, "agreement": acc.agreement})
        report.int8_report, report.calibration, report.float_layers = acc, method, list(exclude)
        return runtime, report, acc

    def accept(runtime: Any, report: ExportReport, acc: Int8Report) -> tuple[Any, ExportReport]:
        report.attempts = attempts
        kept = f"; {len(report.float_layers)} layer(s) kept in float: {', '.join(report.float_layers)}" \
            if report.float_layers else ""
        notes.append(f"int8 check: {acc} (calibration {report.calibration}{kept}; attempt {len(attempts)})")
        return runtime, report

    methods = INT8_CALIBRATIONS[fmt] if fallback else INT8_CALIBRATIONS[fmt][:1]
    last: Int8Report | None = None
    for method in methods:
        runtime, report, acc = attempt(method, ())
        last = acc
        if acc.drop <= max_drop:
            return accept(runtime, report, acc)
        del runtime
        if best is None or acc.drop < best[0]:
            best = (acc.drop, method)
    if fallback and best is not None:
        ranked = [name for name, _ in int8_sensitivity(net, calib)]
        k = 1
        for _ in range(MAX_EXCLUDE_STEPS):
            if k > max(1, len(ranked) // 2):
                break
            runtime, report, acc = attempt(best[1], tuple(ranked[:k]))
            last = acc
            if acc.drop <= max_drop:
                return accept(runtime, report, acc)
            del runtime
            k *= 2
    tried = "; ".join(f"{a['calibration']}" + (f" + {len(a['float_layers'])} float" if a["float_layers"] else "")
                      + f": drop {a['drop']:+.2f}" for a in attempts)
    hint = ""
    risky = openvino_int8_risky_convs(net) if fmt == "openvino" else []
    if risky:
        hint = (f"; this model has {len(risky)} grouped 1x1 convs with 20/30 channels per group (e.g. {risky[0]}), "
                "a suspected OpenVINO int8 weak spot (docs/deployment.md): try onnx or executorch")
    raise Int8AccuracyError(
        f"{out_path.name}: {fmt} int8 refused: {last} exceeds max_drop {max_drop:g} pt after {len(attempts)} "
        f"attempt(s) ({tried}); the file was deleted{hint}", last)


def _report(path: Path, fmt: str, int8: bool, max_abs: float, rel: float, agreement: float, file_bytes: int,
            notes: list[str], dynamic: bool, static_batch: int | None, scheme: str) -> ExportReport:
    return ExportReport(path=path, format=fmt, int8=int8, max_abs_diff=max_abs, rel_diff=rel, top1_agreement=agreement,
                        file_bytes=file_bytes, notes=notes, dynamic_batch=dynamic, static_batch=static_batch,
                        scheme=scheme)



def sample_images(data: str, *, data_dir: str | None, resolution: int, split: str, count: int, seed: int = 0,
                  with_labels: bool = False, preprocessing: Preprocessing | dict | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``count`` preprocessed real images (and labels) of a dataset split ("train" or "val");
    ``preprocessing``: a fine-tuned run's own (see :func:`mobilecnn.data.load_data`)."""
    # batch 1 for the training split: any dataset with at least one image can be sampled
    train_loader, val_loader, _ = load_data(data, data_dir=data_dir, resolution=resolution, batch_size=1,
                                            eval_batch_size=256, seed=seed, val_subset=count if split == "val" else None,
                                            workers=0, preprocessing=preprocessing)
    loader = val_loader if split == "val" else train_loader
    xs, ys, n = [], [], 0
    for x, y in loader.batches(0):
        xs.append(x)
        ys.append(y)
        n += len(y)
        if n >= count:
            break
    return torch.cat(xs)[:count], torch.cat(ys)[:count]


def export_run(
    run: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    int8: bool = False,
    calibration_data: str | None = None,
    data_dir: str | None = None,
    calibration_count: int = 512,
    check_count: int = 2000,
    max_drop: float = 0.5,
    threads: int = 1,
    precision: str | None = None,
    batch: int = 1,
    seconds: float = 2.0,
    candidates: list[str] | None = None,
) -> dict[str, Any]:
    """Export a trained run; returns the export report plus the sidecar path. Raises on failure (nothing left).

    ``fmt="auto"``: every installed runtime x precision, verified and timed; the fastest verified file is
    kept and the candidates table written beside it (:func:`mobilecnn.deploy.auto.auto_export`; ``batch``
    and ``seconds`` of timing per candidate apply to it; ``candidates``: only these formats, default every
    installed one).
    """
    if precision is None:
        precision = "int8" if int8 else "fp32"
    elif int8 and precision != "int8":
        raise UsageError(f"--int8 contradicts --precision {precision}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    auto = fmt == "auto"
    fmt_info = None if auto else format_named(fmt)
    if candidates is not None and not auto:
        raise UsageError("--candidates applies to --format auto only")
    quantized = precision == "int8" or auto
    checked = precision != "fp32" or auto
    if quantized and (isinstance(calibration_count, bool) or not isinstance(calibration_count, int)
                      or not 32 <= calibration_count <= MAX_CALIBRATION):  # calibration keeps every activation: OOM
        raise UsageError(f"--calibration-count {calibration_count!r} is not accepted: it must be an integer in "
                         f"[32, {MAX_CALIBRATION}] (256-512 recommended)")
    loaded = load_trained(run)
    info = loaded.data
    dataset, data_dir = locate_dataset(info.get("name") or "fashion-mnist", data_dir)
    preprocessing = Preprocessing.for_dataset(info, f"{loaded.weights_file} metadata")
    resolution = preprocessing.resolution
    if out is None:
        base = loaded.run_dir if loaded.run_dir is not None else Path(run).parent
        tag = "_auto" if auto else ("" if precision == "fp32" else f"_{precision}")
        out = Path(base) / "export" / f"{loaded.model_name}{tag}{'' if auto else fmt_info.suffix}"
    out = Path(out)
    own = info.get("preprocessing")  # a fine-tuned run: its init weights' normalisation
    verify, verify_labels = sample_images(dataset, data_dir=data_dir, resolution=resolution, split="val",
                                          count=check_count if checked else 256, preprocessing=own)
    calibration = None
    if quantized:
        calibration, _ = sample_images(calibration_data or dataset, data_dir=data_dir, resolution=resolution,
                                       split="train", count=calibration_count,
                                       preprocessing=own)
    sidecar = {"model": loaded.model_name, "weights": loaded.weights, "source": str(loaded.weights_file),
               "format": fmt, "int8": precision == "int8", "data": info, "preprocessing": preprocessing.to_dict()}
    notes = []
    if calibration is not None and len(calibration) < 32:
        notes.append(f"int8 calibrated on only {len(calibration)} training images (the dataset has no more): "
                     "ranges may be poor, the accuracy check decides")
    if auto:
        from .auto import auto_candidates, auto_export

        if out.suffix.lower() in {s for f in FORMATS.values() for s in f.suffixes}:
            out = out.with_suffix("")
        result = auto_export(loaded.model, out, example=verify[:1], verify_images=verify[:256],
                             calibration=calibration, check_images=verify, check_labels=verify_labels,
                             max_drop=max_drop, threads=threads, batch=batch, seconds=seconds, sidecar=sidecar,
                             candidates=None if candidates is None else auto_candidates(candidates))
        result["notes"] = notes
        if result["kept"]:
            result["sidecar"] = result["kept"] + SIDECAR_SUFFIX
        return result
    report = export_model(
        loaded.model, fmt, out, example=verify[:1], verify_images=verify[:256], precision=precision,
        calibration=calibration, check_images=verify if checked else None,
        check_labels=verify_labels if checked else None, max_drop=max_drop, threads=threads, sidecar=sidecar,
    )
    report.notes.extend(notes)
    result = report.to_dict()
    result["sidecar"] = str(Path(str(report.path) + SIDECAR_SUFFIX))
    return result
