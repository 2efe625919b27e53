"""The runtimes that run exported files: ``Runtime(path, threads)(x) -> logits``.

Each class loads one kind of file and runs float32 NCHW batches through it; which class serves which
suffix is the format table's business (:mod:`mobilecnn.deploy.formats`, whose ``load_runtime`` is the
entry point). Settings (measured in docs/deployment.md): onnxruntime gets
``session.intra_op.allow_spinning=0`` (spinning threads hurt on a busy box); OpenVINO defaults to bf16
on AMX CPUs, so fp32 files are compiled with ``INFERENCE_PRECISION_HINT=f32`` for parity with PyTorch
(int8 files keep the plugin's default for their remaining float ops); ExecuTorch's thread pool must be
sized before the program is loaded.

A corrupt or truncated file raises ``ValueError`` naming the file; a runtime that is not installed
raises :class:`MissingBackendError`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends import require_backend

__all__ = ["Runtime", "OnnxRuntime", "TorchScriptRuntime", "OpenVINORuntime", "ExecuTorchRuntime"]


class Runtime:
    """A loaded model: ``runtime(x)`` with ``x`` a float32 NCHW array returns float32 logits (N, classes).

    ``static_batch`` is the batch size baked into the file (ExecuTorch programs exported without a
    dynamic batch) or ``None``; larger or smaller batches are split and padded transparently.
    """

    backend: str = ""

    def __init__(self, path: Path, threads: int, trusted: bool = False) -> None:
        self.path = path
        self.threads = threads
        self.static_batch: int | None = None
        self.int8 = False
        #: The file's input (channels, height, width) where it fixes them, else None (a dynamic side is None).
        self.input_chw: tuple[int | None, ...] | None = None

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"{self.path.name}: expected a 4-D float32 batch (N, C, H, W), got shape {x.shape}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _chunked(self, x: np.ndarray, step: int) -> np.ndarray:
        """Run ``x`` in chunks of exactly ``step`` images, zero-padding the last one."""
        outs = []
        for start in range(0, x.shape[0], step):
            chunk = x[start:start + step]
            n = chunk.shape[0]
            if n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), np.float32)])
            outs.append(self._run(chunk)[:n])
        return np.concatenate(outs)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        if self.static_batch is None or x.shape[0] == self.static_batch:
            return self._run(x)
        return self._chunked(x, self.static_batch)

    def __repr__(self) -> str:
        batch = f", static_batch={self.static_batch}" if self.static_batch else ""
        return f"{type(self).__name__}({str(self.path)!r}, threads={self.threads}{batch})"


class OnnxRuntime(Runtime):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int, trusted: bool = False) -> None:
        super().__init__(path, threads)
        ort = require_backend("onnxruntime", "running .onnx files")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_chw = _static_dims(self.session.get_inputs()[0].shape[1:])
        self.int8 = any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in _onnx_nodes(path))

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def _static_dims(dims: Any) -> tuple[int | None, ...] | None:
    """(C, H, W) with ``None`` for a symbolic or dynamic side; ``None`` unless three dimensions are given."""
    dims = list(dims)
    return tuple(d if isinstance(d, int) and d > 0 else None for d in dims) if len(dims) == 3 else None


def _onnx_nodes(path: Path) -> list:
    try:
        import onnx
    except ImportError:
        return []
    return list(onnx.load(str(path), load_external_data=False).graph.node)


class TorchScriptRuntime(Runtime):
    """TorchScript via ``torch.jit.load``.

    ``torch.jit.load`` can execute arbitrary code paths stored in the archive: use it only on files
    you exported yourself, never on untrusted files. The thread count is process-wide
    (``torch.set_num_threads``) and is re-applied before each call.
    """

    backend = "torchscript"

    def __init__(self, path: Path, threads: int, trusted: bool = False) -> None:
        super().__init__(path, threads)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
            self.module = torch.jit.load(str(path), map_location="cpu")
        self.module.eval()
        self._torch = torch

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).float().numpy().copy()


class OpenVINORuntime(Runtime):
    """OpenVINO IR. fp32 files run with ``INFERENCE_PRECISION_HINT=f32``; files exported as bf16 carry
    ``mobilecnn/inference_precision=bf16`` in their rt_info and run with that hint; int8 files keep the
    plugin's default. A dynamic-batch model is also compiled for a static batch of 1 on the first
    single-image call (research q2: a static shape runs ~8% faster than the dynamic one)."""

    backend = "openvino"

    def __init__(self, path: Path, threads: int, trusted: bool = False) -> None:
        super().__init__(path, threads)
        ov = require_backend("openvino", "running OpenVINO .xml files")
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise ValueError(f"{path}: the OpenVINO weights file {weights.name} is missing beside it")
        self.core = core = ov.Core()
        model = core.read_model(str(path), str(weights))
        self.int8 = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        self.precision = "int8" if self.int8 else "fp32"
        if model.has_rt_info(["mobilecnn", "inference_precision"]):
            value = model.get_rt_info(["mobilecnn", "inference_precision"])
            self.precision = str(value.astype(str) if hasattr(value, "astype") else value)
        self.config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if not self.int8:
            self.config["INFERENCE_PRECISION_HINT"] = "bf16" if self.precision == "bf16" else "f32"
        self.model = model
        self.compiled = core.compile_model(model, "CPU", self.config)
        self.request = self.compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        self._single: Any = None if (shape.rank.is_dynamic or shape[0].is_static) else False
        if not shape.rank.is_dynamic:
            self.input_chw = _static_dims([d.get_length() if d.is_static else None for d in list(shape)[1:]])

    def _single_request(self) -> Any:
        if self._single is False:
            try:
                one = self.model.clone()
                shape = one.inputs[0].get_partial_shape()
                shape[0] = 1
                one.reshape({one.inputs[0]: shape})
                self._single = self.core.compile_model(one, "CPU", self.config).create_infer_request()
            except Exception:  # noqa: BLE001 - keep the dynamic model
                self._single = None
        return self._single

    def _run(self, x: np.ndarray) -> np.ndarray:
        request = self.request
        if x.shape[0] == 1 and self._single is not None:
            request = self._single_request() or self.request
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)


def _standard_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


_PTE_FILE_ID = b"ET"
_PTE_HEADER_MAGIC = b"eh00"


def _check_pte_file(path: Path) -> None:
    """Reject files whose ExecuTorch headers are absent or promise more bytes than the file has.

    The pybindings load lazily and accept garbage (checked here: a truncated .pte "loads" and fails
    later), so the flatbuffer identifier (``ET`` + 2 digits at offset 4) and the extended header
    (``eh00`` at offset 8: program size, segment offset and size, little-endian u64) are checked.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(40)
    if len(head) < 16 or head[4:6] != _PTE_FILE_ID or not head[6:8].isdigit():
        raise ValueError(f"{path}: not an ExecuTorch program (bad file identifier)")
    if head[8:12] == _PTE_HEADER_MAGIC and len(head) >= 32:
        length = int.from_bytes(head[12:16], "little")
        program_size = int.from_bytes(head[16:24], "little")
        segment_base = int.from_bytes(head[24:32], "little")
        segment_size = int.from_bytes(head[32:40], "little") if length >= 32 and len(head) >= 40 else 0
        needed = max(program_size, segment_base + segment_size if segment_base else 0)
        if needed > size:
            raise ValueError(f"{path}: truncated ExecuTorch program ({size} bytes, header needs {needed})")


# Loads the program and runs one forward on zeros of its planned shape, in a child process: a crafted
# .pte can crash the ExecuTorch loader (a segfault, not an exception), which must not take us down.
_PTE_PROBE = """
import sys
import torch
from executorch.extension.pybindings import portable_lib as p
p._unsafe_reset_threadpool(1)
m = p._load_for_executorch(sys.argv[1])
meta = m.method_meta("forward")
sizes = tuple(meta.input_tensor_meta(0).sizes())
m.forward((torch.zeros(sizes),))
"""
PTE_PROBE_TIMEOUT_S = 300


def probe_in_child(path: Path, script: str, what: str, timeout: float) -> None:
    """Run ``script`` (which loads ``path`` and runs it once) in a child process: a crafted file can crash a
    native loader (a segfault, not an exception), which must refuse the file, not take the caller down.
    ``what`` names the file kind in the one-line ``ValueError``."""
    try:
        done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        raise ValueError(f"{path}: the {what} loader did not finish loading and running this file in {timeout:g} s; "
                         f"it is corrupt or not {what}") from None
    if done.returncode != 0:
        how = (f"the loader crashed with signal {-done.returncode}" if done.returncode < 0 else
               (done.stderr.strip().splitlines() or ["it failed"])[-1][:300])
        raise ValueError(f"{path}: this file cannot be run ({how}); it is corrupt or not {what}: export it again")


class ExecuTorchRuntime(Runtime):
    """ExecuTorch program; the XNNPACK thread pool is process-wide, sized before loading.

    A file from outside (``trusted=False``) is first loaded and run once in a child process.
    """

    backend = "executorch"

    def __init__(self, path: Path, threads: int, trusted: bool = False) -> None:
        super().__init__(path, threads)
        _check_pte_file(path)
        if not trusted:
            require_backend("executorch.extension.pybindings.portable_lib", "running ExecuTorch .pte files")
            probe_in_child(path, _PTE_PROBE, "an ExecuTorch program", PTE_PROBE_TIMEOUT_S)
        portable = require_backend("executorch.extension.pybindings.portable_lib", "running ExecuTorch .pte files")
        portable._unsafe_reset_threadpool(threads)
        self.module = portable._load_for_executorch(str(path))
        meta = self.module.method_meta("forward")  # raises on a corrupt program
        sizes = tuple(meta.input_tensor_meta(0).sizes())
        #: Planned input shape: the static shape, or the upper bound of a dynamic batch.
        self.input_sizes = sizes
        self.input_chw = _static_dims(sizes[1:])
        self._planned = int(sizes[0]) if sizes else None
        self._dynamic: bool | None = None  # probed on the first call with another batch size
        self._torch = torch

    def _run(self, x: np.ndarray) -> np.ndarray:
        t = self._torch.from_numpy(x)
        if t.stride() != _standard_strides(x.shape):  # size-1 dims may carry odd strides; ExecuTorch needs real ones
            t = t.clone(memory_format=self._torch.contiguous_format)
        return self.module.forward((t,))[0].numpy().copy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        n, planned = x.shape[0], self._planned
        if planned is None or n == planned:
            return self._run(x)
        if self._dynamic is None:  # a static program refuses other batch sizes with a RuntimeError
            try:
                probe = self._run(x[:1])
                self._dynamic = True
            except RuntimeError:
                self._dynamic = False
                self.static_batch = planned
            else:
                if n == 1:
                    return probe
        if self._dynamic and n <= planned:
            return self._run(x)
        return self._chunked(x, planned)
