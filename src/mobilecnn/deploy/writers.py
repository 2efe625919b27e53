"""One writer per format: the deploy form in, one file (and its companions) out.

Every writer has the signature of :data:`Writer`: ``write(net, example, target, job) -> notes``, where
``net`` is the deploy form (:func:`mobilecnn.deploy.fold.deploy_form`, with the format's own transforms
applied), ``example`` fixes C, H, W (and the batch of a static-batch format), ``target`` is the file to
write inside the export's staging folder and ``job`` carries the precision, the int8 calibration and the
scratch folder. The format table (:mod:`mobilecnn.deploy.formats`) names each format's writer; nothing
here knows which formats exist.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backends import require_backend
from .quantize import quantize_executorch_program, quantize_onnx, quantize_openvino

__all__ = ["WriteJob", "Writer", "write_onnx", "write_torchscript", "write_openvino", "write_executorch",
           "DYNAMIC_BATCH_MAX", "batch2"]

#: Upper bound of a dynamic batch dimension in the traced graphs.
DYNAMIC_BATCH_MAX = 4096


@dataclass(frozen=True)
class WriteJob:
    """What a writer needs beside the network: ``calibration`` (int8 only) with its ``method`` and the
    module names kept in float (``exclude``); ``max_batch``: a dynamic batch 1..max_batch for a
    static-batch format; ``work``: a scratch folder inside the staging folder; ``metadata``: the sidecar's
    facts (model, labels, preprocessing), for formats that carry them inside the file (LiteRT)."""

    work: Path
    precision: str = "fp32"
    calibration: torch.Tensor | None = None
    method: str | None = None
    exclude: tuple[str, ...] = ()
    max_batch: int | None = None
    opset: int | None = None
    metadata: dict[str, Any] | None = None


Writer = Callable[[nn.Module, torch.Tensor, Path, WriteJob], list[str]]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Exporters print progress to stdout and deprecation chatter as warnings; keep both out."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
        yield


def batch2(example: torch.Tensor) -> torch.Tensor:
    """Trace with batch 2: a traced batch of 1 would be specialised as a constant by torch.export."""
    return example[:1].expand(2, *example.shape[1:]).contiguous()


def _onnx_fp32(net: nn.Module, example: torch.Tensor, target: Path, opset: int | None) -> None:
    require_backend("onnxscript", "ONNX export (torch's dynamo exporter)")
    require_backend("onnx", "ONNX export")
    batch = torch.export.Dim("batch", min=1, max=DYNAMIC_BATCH_MAX)
    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    with quiet():
        program = torch.onnx.export(net, (batch2(example),), None, dynamo=True, verbose=False,
                                    dynamic_shapes=({0: batch},), input_names=["input"], output_names=["logits"],
                                    **kwargs)
        if program is None:  # the dynamo exporter returns the program; None only when it wrote nothing
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(target))


def write_onnx(net: nn.Module, example: torch.Tensor, target: Path, job: WriteJob) -> list[str]:
    """Dynamo exporter, dynamic batch; int8: onnxruntime's static QDQ quantization of that fp32 file."""
    if job.calibration is None:
        _onnx_fp32(net, example, target, job.opset)
        return []
    fp32_path = job.work / "fp32.onnx"
    _onnx_fp32(net, example, fp32_path, job.opset)
    quantize_onnx(fp32_path, target, job.calibration, method=job.method, exclude=job.exclude)
    return []


def write_torchscript(net: nn.Module, example: torch.Tensor, target: Path, job: WriteJob) -> list[str]:
    """Traced and frozen; the batch stays dynamic (traced shapes)."""
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(net, (batch2(example),), check_trace=False)
        frozen = torch.jit.freeze(traced)
        buffer = io.BytesIO()  # torch.jit.save to a path aborts the process (C++ terminate) when the disk is full
        torch.jit.save(frozen, buffer)
    target.write_bytes(buffer.getvalue())
    return []


def write_openvino(net: nn.Module, example: torch.Tensor, target: Path, job: WriteJob) -> list[str]:
    """``ov.convert_model`` straight from the deploy form (dynamic batch, static C/H/W): as fast as or faster
    than the model converted from ONNX, and op names carry the module names (for ``exclude``). Falls back
    to the ONNX route when the torch frontend fails. bf16 is recorded in the IR's rt_info
    (``mobilecnn/inference_precision``), which :class:`mobilecnn.deploy.runtimes.OpenVINORuntime` reads."""
    ov = require_backend("openvino", "OpenVINO export")
    notes = []
    try:
        with quiet(), torch.no_grad():
            model = ov.convert_model(net, example_input=batch2(example), input=[-1, *example.shape[1:]])
    except Exception:  # noqa: BLE001 - the torch frontend's many failure types; ONNX is the proven route
        onnx_path = job.work / "fp32.onnx"
        _onnx_fp32(net, example, onnx_path, job.opset)
        model = ov.convert_model(str(onnx_path))
    if job.calibration is not None:
        model = quantize_openvino(model, job.calibration, method=job.method, exclude=job.exclude)
    if job.precision == "bf16":
        model.set_rt_info("bf16", ["mobilecnn", "inference_precision"])
        notes.append("OpenVINO compiles this file with INFERENCE_PRECISION_HINT=bf16 (recorded in the IR)")
    ov.save_model(model, str(target), compress_to_fp16=False)
    return notes


def _undelegated_ops(edge: Any) -> list[str]:
    skip = ("executorch_call_delegate", "getitem", "sym_size")
    ops = []
    for node in edge.exported_program().graph_module.graph.nodes:
        if node.op == "call_function" and not any(s in str(node.target) for s in skip):
            ops.append(str(getattr(node.target, "__name__", node.target)))
    return ops


def write_executorch(net: nn.Module, example: torch.Tensor, target: Path, job: WriteJob) -> list[str]:
    """torch.export + XNNPACK partitioner; int8 by PT2E before the export. The batch is the example's
    (memory is planned for one shape) unless ``job.max_batch`` asks for a dynamic one."""
    xnn = require_backend("executorch.backends.xnnpack.partition.xnnpack_partitioner", "ExecuTorch export")
    exir = require_backend("executorch.exir", "ExecuTorch export")
    with quiet():
        module: nn.Module = net
        if job.calibration is not None:
            module = quantize_executorch_program(net, example, job.calibration, method=job.method,
                                                 exclude=job.exclude)
        if job.max_batch is None:
            program = torch.export.export(module, (example.contiguous(),))
        else:
            batch = torch.export.Dim("batch", min=1, max=job.max_batch)
            program = torch.export.export(module, (batch2(example),), dynamic_shapes=({0: batch},))
        edge = exir.to_edge_transform_and_lower(program, partitioner=[xnn.XnnpackPartitioner()])
        leftover = _undelegated_ops(edge)
        buffer = edge.to_executorch().buffer
    with open(target, "wb") as fh:
        fh.write(buffer)
    if leftover:
        return [f"ops not delegated to XNNPACK (run by the portable kernels): {', '.join(sorted(set(leftover)))}"]
    return []
