"""The format table: every fact of every deployable format, in one entry each.

A :class:`Format` names its file suffixes, its writer (:mod:`mobilecnn.deploy.writers`) and runtime
(:mod:`mobilecnn.deploy.runtimes`), the modules that make it installed, the precisions it offers and
when, its int8 scheme and calibration methods, whether its files fix the batch size, how it spells
ShuffleNet's channel shuffle, and the deploy-form transforms it needs. Export, ``--format auto``,
``bench``, ``predict`` and :func:`load_runtime` read :data:`FORMATS`; no other module names a format.
Adding a format is adding an entry here plus its writer and runtime.

| format | runtime | thread control |
|---|---|---|
| onnx (.onnx) | onnxruntime, CPU provider | ``intra_op_num_threads``, no spinning |
| torchscript (.pt/.ts) | ``torch.jit.load`` | ``torch.set_num_threads`` (process-wide) |
| openvino (.xml + .bin) | OpenVINO CPU plugin | ``INFERENCE_NUM_THREADS`` |
| executorch (.pte) | ExecuTorch, XNNPACK delegate | ``_unsafe_reset_threadpool`` (process-wide) |
| litert (.tflite) | LiteRT Interpreter, XNNPACK delegate | ``num_threads`` |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingBackendError, UsageError
from ..models.weights_file import SIDECAR_SUFFIX
from ..validators import check_threads
from . import litert, quantize, runtimes, writers
from .backends import bf16_supported, importable
from .fold import pools_as_depthwise

__all__ = ["Format", "FORMATS", "SIDECAR_SUFFIX", "PRECISIONS", "format_named", "format_for_path",
           "format_for_runtime", "installed_formats", "load_runtime"]


#: Every precision an export can have; each format offers some of them (:attr:`Format.precisions`).
PRECISIONS = ("fp32", "bf16", "int8")

#: A deploy-form rewrite a format needs (in place); returns notes for the export report.
Transform = Callable[[nn.Module, torch.Tensor], list[str]]


@dataclass(frozen=True)
class Format:
    """One deployable format. ``suffixes[0]`` is the default; ``companions`` are written beside the file.

    ``requires``: modules needed to export and run it; ``int8_requires``: also needed for int8.
    ``precisions``: offered where installed; bf16 also needs ``bf16_available()`` (the CPU's bf16
    instructions). ``static_batch``: its files fix the batch (the example's) unless a ``max_batch`` is
    asked for. ``int8_warning``: a known int8 weak spot of the runtime that ``net`` hits (None: none).
    ``shuffle``: how the channel shuffle is traced ("gather" or "reshape"; docs/deployment.md measures both
    per runtime).
    """

    name: str
    suffixes: tuple[str, ...]
    runtime: str
    writer: writers.Writer
    loader: type[runtimes.Runtime]
    requires: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32",)
    int8_requires: tuple[str, ...] = ()
    int8_scheme: str | None = None
    int8_calibrations: tuple[str, ...] = ()
    bf16_available: Callable[[], bool] | None = None
    static_batch: bool = False
    int8_warning: Callable[[nn.Module], str | None] | None = None
    shuffle: str = "reshape"
    transforms: tuple[Transform, ...] = ()
    companions: tuple[str, ...] = ()

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    def installed(self) -> bool:
        return importable(*self.requires)

    def why_not(self, precision: str) -> str | None:
        """None when this format offers ``precision`` here, else why not (one line)."""
        if precision not in PRECISIONS:
            return f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}"
        if precision not in self.precisions:
            offering = [f.name for f in FORMATS.values() if precision in f.precisions]
            return f"{precision} export is available for {', '.join(offering)}, not {self.name!r}"
        if precision == "bf16" and not (self.bf16_available is not None and self.bf16_available()):
            return ("bf16 needs a CPU with bf16 instructions (avx512_bf16 or AMX) and a runtime reporting bf16 "
                    "support; this machine has neither: use fp32 or int8")
        if precision == "int8" and not importable(*self.int8_requires):
            return f"{self.name} int8 needs {', '.join(self.int8_requires)}, which is not installed here"
        return None

    def precisions_here(self) -> list[str]:
        """The precisions this format offers on this machine, in table order."""
        return [p for p in self.precisions if self.why_not(p) is None]


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", (".onnx",), "onnxruntime", writers.write_onnx, runtimes.OnnxRuntime,
           requires=("onnxruntime", "onnxscript"), precisions=("fp32", "int8"),
           int8_requires=("onnxruntime.quantization",),
           int8_scheme="onnxruntime quantize_static QDQ: u8 activations (percentile calibration), s8 per-channel "
                       "weights",
           int8_calibrations=quantize.ONNX_CALIBRATIONS, shuffle="gather"),
    Format("torchscript", (".pt", ".ts"), "torchscript", writers.write_torchscript, runtimes.TorchScriptRuntime),
    Format("openvino", (".xml",), "openvino", writers.write_openvino, runtimes.OpenVINORuntime,
           requires=("openvino",), precisions=("fp32", "bf16", "int8"), int8_requires=("nncf",),
           int8_scheme="NNCF quantize, PERFORMANCE preset (symmetric s8 per-channel weights, u8/s8 activations as "
                       "NNCF picks)",
           int8_calibrations=quantize.OPENVINO_CALIBRATIONS, bf16_available=bf16_supported, shuffle="gather",
           int8_warning=quantize.openvino_int8_warning, companions=(".bin",)),
    Format("executorch", (".pte",), "executorch", writers.write_executorch, runtimes.ExecuTorchRuntime,
           requires=("executorch.extension.pybindings.portable_lib",), precisions=("fp32", "int8"),
           int8_requires=("torchao.quantization.pt2e.quantize_pt2e",),
           int8_scheme="PT2E XNNPACKQuantizer: s8 per-channel symmetric weights, static s8 per-tensor activations",
           int8_calibrations=quantize.EXECUTORCH_CALIBRATIONS, static_batch=True, transforms=(pools_as_depthwise,)),
    # LiteRT (TensorFlow Lite): the papers' own phone runtime. Padded average pools as depthwise convs (XNNPACK
    # takes them; fp32 0.976x); ShuffleNet's -inf max-pool padding stays outside XNNPACK: the zero-padded
    # spelling made one partition but ran 1.023x (benchmarks/results/litert_check.md).
    Format("litert", (".tflite",), "litert", litert.write, litert.LiteRTRuntime,
           requires=("litert_torch", "ai_edge_litert"), precisions=("fp32", "int8"),
           int8_requires=("ai_edge_quantizer",),
           int8_scheme="ai-edge-quantizer static int8: s8 per-channel weights, s8 activations (min/max), int8 "
                       "input/output tensors (quantized and dequantized by the runtime)",
           int8_calibrations=litert.LITERT_INT8_CALIBRATIONS, static_batch=True, transforms=(pools_as_depthwise,)),
)}


def format_named(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise UsageError(f"unknown export format {name!r}; accepted: {', '.join(FORMATS)}") from None


def format_for_path(path: str | Path) -> Format:
    """The format of a model file, from its suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    accepted = ", ".join(f"{s} ({f.runtime})" for f in FORMATS.values() for s in f.suffixes)
    raise UsageError(f"{path}: unknown model file suffix {suffix!r}; accepted: {accepted}")


def format_for_runtime(runtime: str) -> Format:
    for fmt in FORMATS.values():
        if fmt.runtime == runtime:
            return fmt
    raise UsageError(f"unknown runtime {runtime!r}; accepted: {', '.join(f.runtime for f in FORMATS.values())}")


def installed_formats() -> list[Format]:
    """Formats whose exporter and runtime import here, in table order."""
    return [f for f in FORMATS.values() if f.installed()]


def load_runtime(path: str | Path, threads: int = 1, trusted: bool = False) -> runtimes.Runtime:
    """Load an exported model file with the runtime its suffix names.

    ``trusted``: the file was written by this process (a runtime that probes outside files in a child
    process, ExecuTorch, skips the probe). Raises ``FileNotFoundError`` for a missing file, ``ValueError``
    naming the file for an unknown suffix or a corrupt/truncated file, :class:`MissingBackendError` when
    the runtime is not installed.
    """
    path = Path(path)
    fmt = format_for_path(path)
    threads = check_threads(threads)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        return fmt.loader(path, threads, trusted=trusted)
    except (MissingBackendError, ValueError, FileNotFoundError):
        raise
    except Exception as exc:  # each runtime has its own exception types for unreadable files
        raise ValueError(f"{path}: {fmt.runtime} could not load this file (corrupt or truncated?): "
                         f"{type(exc).__name__}: {str(exc)[:500]}") from exc
