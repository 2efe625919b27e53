"""LiteRT (``.tflite``) files: written by litert-torch, int8 by ai-edge-quantizer, run by the LiteRT Interpreter.

Why (numbers: benchmarks/results/litert_check.md):

* fp32: ``litert_torch.convert`` of the deploy form at the example's shape: the batch is static (the
  flatten and shuffle reshapes carry it). The shuffle stays reshape/transpose (3 TRANSPOSE + 5-D RESHAPE,
  delegated to XNNPACK; a Gather split the graph into 34 partitions).
* int8: litert-torch's own PT2E path gave wrong logits; ai-edge-quantizer's static recipe on the fp32 file
  (per-channel int8 weights, int8 activations) runs in XNNPACK at 0.52x fp32 (ShuffleNet's padded average
  pools only as depthwise convs: :func:`~mobilecnn.deploy.fold.avgpool_to_depthwise`). Its input and output
  tensors are int8: :class:`LiteRTRuntime` quantizes the images and dequantizes the logits.
* :func:`zero_pad_maxpool`: PyTorch's -inf max-pool padding becomes a PADV2 that XNNPACK does not take;
  zero padding keeps ShuffleNet in one partition, but was not faster (fp32 1.02x, int8 1.00x).
* Metadata: a JSON buffer in the flatbuffer's own ``metadata`` list (entry ``mobilecnn``), readable on
  Android with the standard TFLite accessors.
* A crafted file can crash the interpreter (an activation pointing at a weight buffer segfaulted it), so a
  file from outside is first loaded and run once in a child process, as for ExecuTorch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..device import available_cpus
from .backends import require_backend
from .runtimes import Runtime, probe_in_child
from .writers import WriteJob

__all__ = ["write", "write_litert", "read_litert_metadata", "LiteRTRuntime", "zero_pad_maxpool", "xnnpack_partitions",
           "LITERT_INT8_CALIBRATIONS", "METADATA_NAME"]

#: Activation range estimators of ai-edge-quantizer's calibrator (the first is the default): the min/max
#: over all calibration images, or the quantizer's own default, an exponential moving average (0.95) of
#: each image's min/max (the file's batch is 1), which clips more. Agreement with fp32 on 1000
#: Fashion-MNIST test images (ShuffleNet g=3 0.25x): 96.2% vs 88.6% after 60 training steps (64
#: calibration images), 97.7% vs 98.4% after 300 steps (256 images).
LITERT_INT8_CALIBRATIONS = ("minmax", "moving_average")
#: Name of the flatbuffer ``Metadata`` entry holding mobilecnn's JSON.
METADATA_NAME = "mobilecnn"
_IDENTIFIER = b"TFL3"
PROBE_TIMEOUT_S = 120


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep litert-torch's progress tree, ai-edge-quantizer's tqdm bars and deprecation chatter out."""
    saved = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category)
            yield
    finally:
        if saved is None:
            del os.environ["LITERT_TORCH_SHOW_PROGRESS"]
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved


def _called_modules(net: nn.Module, example: torch.Tensor) -> set[str]:
    """Names of the modules one forward of ``net`` calls; a container only iterated (a ``ModuleList``, a
    ``Sequential`` walked by hand) is not among them."""
    called: set[str] = set()
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=name: called.add(n)) for name, m in net.named_modules()]
    try:
        with torch.no_grad():
            net(example)
    finally:
        for handle in handles:
            handle.remove()
    return called


def _litert_path(name: str, modules: dict[str, nn.Module], called: set[str]) -> tuple[str, ...]:
    """How litert-torch names module ``name``'s ops: ``Type_part`` for each *called* module on its path, Type the
    class's full name (``Root/Type_part/Type_part/...``); a container iterated rather than called leaves no
    trace."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i + 1]) for i in range(len(parts))]
    return tuple(f"{type(modules[p]).__module__}.{type(modules[p]).__qualname__}_{p.rsplit('.', 1)[-1]}"
                 for p in prefixes if p in called)


def _module_regexes(net: nn.Module, example: torch.Tensor, names: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """({module: regex over ai-edge-quantizer's op scope for the modules of ``names`` that can be told apart, notes
    on those that cannot).

    litert-torch names a tensor by the modules that called it, ``Root/Type_child/Type_grandchild/...``, fused ops
    joining several such paths with ``;``. Only the first path is the op's own (the later ones name
    fused producers, sometimes of the previous block), so the match is anchored at the start. A module whose path
    is also another's (``features.14.block.0`` and ``features.0`` where ``features`` and ``features.14`` are
    walked by hand: both ``ConvBNAct_0``) cannot be kept in float alone: it is left out, with a note.
    """
    called, modules = _called_modules(net, example), dict(net.named_modules())
    paths = {m: _litert_path(m, modules, called) for m in called if m}
    regexes: dict[str, str] = {}
    notes = []
    for name in names:
        path = paths.get(name)
        others = [m for m, p in paths.items() if path and p[:len(path)] == path and m != name
                  and not m.startswith(name + ".")]
        if not path or others:
            clash = f"also those of {min(others, key=len)!r}" if others else "its children's"
            notes.append(f"int8: module {name!r} cannot be kept in float in LiteRT: its ops' names are {clash} (a "
                         "container walked by hand, not called); kept int8")
            continue
        regexes[name] = r"^[^;/]*/" + "/".join(re.escape(part) for part in path) + r"(/|;|$)"
    return regexes, notes


def _recipe(exclude: list[str]) -> Any:
    """Static int8 everywhere (per-channel int8 weights, asymmetric int8 activations), float for ``exclude``."""
    rm = require_backend("ai_edge_quantizer.recipe_manager", "LiteRT int8 quantization", extra="litert")
    from ai_edge_quantizer import algorithm_manager, qtyping

    manager = rm.RecipeManager()
    manager.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                              activation_num_bits=8, weight_num_bits=8,
                              weight_granularity=qtyping.QuantGranularity.CHANNELWISE)
    for regex in exclude:  # later entries win over ".*"
        manager.add_quantization_config(regex=regex, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                        algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    return manager


def _quantize(fp32: bytes, calibration: torch.Tensor, batch: int, method: str, exclude: list[str]) -> bytes:
    """ai-edge-quantizer static int8 of the fp32 flatbuffer, activation ranges from ``calibration``."""
    from ai_edge_quantizer import calibrator, quantizer
    from ai_edge_quantizer.utils import qsv_utils

    images = calibration.detach().float().cpu().numpy()
    if images.ndim != 4 or images.shape[0] < batch:
        raise ValueError(f"calibration must be at least {batch} (N, C, H, W) images, got shape {images.shape}")
    update = qsv_utils.min_max_update if method == "minmax" else qsv_utils.moving_average_update
    manager = _recipe(exclude)
    calib = calibrator.Calibrator(fp32, num_threads=available_cpus(), qsv_update_func=update)
    key, signature = next(iter(calib.get_signature_list().items()))  # litert-torch: serving_default(args_0)
    steps = [{signature["inputs"][0]: images[i:i + batch]} for i in range(0, len(images) - batch + 1, batch)]
    calib.calibrate({key: steps}, manager)
    q = quantizer.Quantizer(fp32, manager.get_quantization_recipe())
    return bytes(q.quantize(calib.get_model_qsvs(), enable_progress_report=False).quantized_model)


def _kept_float(content: bytes, regexes: dict[str, str]) -> list[str]:
    """Notes on the ops of each excluded module: how many matched and stayed float."""
    schema = require_backend("ai_edge_litert.schema_py_generated", "reading .tflite files", extra="litert")
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    graph = model.subgraphs[0]
    ops = schema.BuiltinOperator
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    compute = [op for op in graph.operators if len(op.outputs) and codes[op.opcodeIndex] not in
               (ops.QUANTIZE, ops.DEQUANTIZE)]  # the converters the quantizer adds carry their op's name
    notes = []
    for name, regex in regexes.items():
        outs = [graph.tensors[op.outputs[0]] for op in compute
                if re.search(regex, graph.tensors[op.outputs[0]].name.decode(errors="replace"))]
        floats = sum(t.type == schema.TensorType.FLOAT32 for t in outs)
        notes.append(f"int8: module {name!r} kept in float ({floats} of {len(outs)} ops with float outputs)"
                     if outs else f"int8: module {name!r} matched no LiteRT op (fused away?); nothing kept in float")
    return notes


def xnnpack_partitions(interpreter: Any) -> tuple[int, list[str]]:
    """(XNNPACK partitions, names of the ops left outside them) of an allocated interpreter.

    The interpreter lists the file's ops followed by one ``DELEGATE`` node per partition; an op is
    delegated when it lies between a partition's outputs and its inputs (walked back through producers).
    """
    ops = interpreter._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    plain = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer = {int(t): i for i, o in enumerate(plain) for t in o["outputs"]}
    inside: set[int] = set()
    for node in delegates:
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            op = producer.get(tensor)
            if tensor in boundary or op is None or op in inside:
                continue
            inside.add(op)
            stack.extend(int(t) for t in plain[op]["inputs"] if t >= 0)
    return len(delegates), [o["op_name"] for i, o in enumerate(plain) if i not in inside]


def _file_notes(content: bytes) -> list[str]:
    """The written file as the interpreter sees it: input/output types, XNNPACK partitions."""
    interp = require_backend("ai_edge_litert.interpreter", "running LiteRT .tflite files", extra="litert")
    interpreter = interp.Interpreter(model_content=content, num_threads=1)
    interpreter.allocate_tensors()
    partitions, outside = xnnpack_partitions(interpreter)
    note = f"XNNPACK: {partitions} partition(s)"
    if outside:
        note += f"; {len(outside)} op(s) outside XNNPACK: {', '.join(sorted(set(outside)))}"
    kinds = [np.dtype(d[0]["dtype"]).name for d in (interpreter.get_input_details(), interpreter.get_output_details())]
    return [f"LiteRT: {kinds[0]} input, {kinds[1]} output", note]


def write_litert(net: nn.Module, example: torch.Tensor, target: Path, *, calibration: torch.Tensor | None = None,
                 method: str | None = None, exclude: tuple[str, ...] = (), metadata: dict | None = None) -> list[str]:
    """Convert ``net`` (the deploy form, eval mode) to a ``.tflite`` at ``target``; returns notes.

    The batch of ``example`` is baked into the file. With ``calibration`` (N, C, H, W float images) the
    file is static int8 (``method``: one of :data:`LITERT_INT8_CALIBRATIONS`); ``exclude``: dotted
    module names of ``net`` whose ops stay float. ``metadata`` is stored as JSON (:func:`read_litert_metadata`).
    """
    litert_torch = require_backend("litert_torch", "LiteRT export", extra="litert")
    if method is not None and method not in LITERT_INT8_CALIBRATIONS:
        raise ValueError(f"unknown LiteRT int8 calibration {method!r}; accepted: {', '.join(LITERT_INT8_CALIBRATIONS)}")
    if calibration is None and (method is not None or exclude):
        raise ValueError("method and exclude apply to int8 only: pass calibration images")
    unknown = [n for n in exclude if not n or n not in dict(net.named_modules())]
    if unknown or example.ndim != 4:
        raise ValueError(f"exclude names modules the network does not have: {unknown}" if unknown else
                         f"example must be an (N, C, H, W) tensor, got shape {tuple(example.shape)}")
    net = net.eval()
    notes = [f"LiteRT: static batch {example.shape[0]} at {tuple(example.shape[1:])}"]
    regexes, unmatched = _module_regexes(net, example.detach().float(), tuple(exclude)) if exclude else ({}, [])
    with _quiet(), torch.no_grad():
        content = bytes(litert_torch.convert(net, (example.detach().float(),)).model_content())
        if calibration is not None:
            chosen = method or LITERT_INT8_CALIBRATIONS[0]
            content = _quantize(content, calibration, int(example.shape[0]), chosen, list(regexes.values()))
            notes.append(f"int8: ai-edge-quantizer static int8 (per-channel weights), calibration {chosen!r} "
                         f"on {calibration.shape[0]} images")
            notes += unmatched + _kept_float(content, regexes)
        if metadata is not None:
            content = _with_metadata(content, metadata)
        notes += _file_notes(content)
    Path(target).write_bytes(content)
    return notes


def write(net: nn.Module, example: torch.Tensor, target: Path, job: WriteJob) -> list[str]:
    """:func:`write_litert` as the format table's writer (:data:`mobilecnn.deploy.writers.Writer`)."""
    if job.max_batch is not None:
        raise ValueError("LiteRT files have a static batch (litert-torch bakes it into the reshapes); max_batch "
                         "is not supported")
    return write_litert(net, example, target, calibration=job.calibration, method=job.method, exclude=job.exclude,
                        metadata=job.metadata)


def _aligned_buffer_type(schema: Any) -> type:
    """A ``BufferT`` that packs its bytes 16-byte aligned, as the schema's ``force_align: 16`` asks and the
    converter wrote them (the generated Python ``Pack`` aligns to 1: weights would land unaligned)."""

    class AlignedBufferT(schema.BufferT):
        def Pack(self, builder: Any) -> int:  # noqa: N802 - flatbuffers' name
            data = None
            if self.data is not None:
                raw = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
                builder.Prep(16, len(raw))
                data = builder.CreateByteVector(raw)
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            schema.BufferAddOffset(builder, self.offset)
            schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    return AlignedBufferT


def _with_metadata(content: bytes, blob: dict) -> bytes:
    """``content`` with ``blob`` as JSON in the Model's metadata list under :data:`METADATA_NAME`.

    The model is repacked with every buffer inline (buffers stored past the flatbuffer are read in), so
    models must stay under flatbuffers' 2 GiB; other metadata (``min_runtime_version``...) are kept.
    """
    schema = require_backend("ai_edge_litert.schema_py_generated", "writing .tflite metadata", extra="litert")
    fbu = require_backend("ai_edge_litert.tools.flatbuffer_utils", "writing .tflite metadata", extra="litert")
    payload = json.dumps(blob, sort_keys=True).encode()
    model = fbu.read_model_from_bytearray(bytearray(content))
    aligned = _aligned_buffer_type(schema)
    for buffer in model.buffers:
        buffer.__class__ = aligned  # same fields, aligned Pack
    entry, holder = schema.MetadataT(), aligned()
    entry.name, entry.buffer, holder.data = METADATA_NAME, len(model.buffers), np.frombuffer(payload, np.uint8)
    model.metadata = [m for m in model.metadata or [] if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    model.metadata.append(entry)
    model.buffers.append(holder)
    return bytes(fbu.convert_object_to_bytearray(model))


def _parse(path: Path) -> tuple[bytes, Any]:
    """The file's bytes and its ``Model`` root, after checks that keep a bad file from the interpreter:
    the ``TFL3`` identifier, a readable table structure, buffers stored past the flatbuffer inside the file."""
    data = Path(path).read_bytes()
    if len(data) < 16 or data[4:8] != _IDENTIFIER:
        raise ValueError(f"{path}: not a LiteRT/TFLite model (no TFL3 file identifier)")
    schema = require_backend("ai_edge_litert.schema_py_generated", "reading .tflite files", extra="litert")
    try:
        model = schema.Model.GetRootAs(data, 0)
        if model.SubgraphsLength() < 1:
            raise ValueError("no subgraph")
        for i in range(model.BuffersLength()):
            buffer = model.Buffers(i)
            if buffer.Offset() > 1 and buffer.Offset() + buffer.Size() > len(data):
                raise ValueError(f"buffer {i} ends at byte {buffer.Offset() + buffer.Size()}")
            if buffer.DataLength():
                buffer.DataAsNumpy()  # a view; raises when the vector runs past the end of the file
    except (IndexError, struct.error, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: corrupt or truncated .tflite file ({exc})") from None
    return data, model


def read_litert_metadata(path: str | Path) -> dict | None:
    """The JSON stored by :func:`write_litert` in ``path``'s metadata, or ``None`` when it has none."""
    path = Path(path)
    data, model = _parse(path)
    try:
        names = [model.Metadata(i).Name() for i in range(model.MetadataLength())]
        if METADATA_NAME.encode() not in names:
            return None
        buffer = model.Buffers(model.Metadata(names.index(METADATA_NAME.encode())).Buffer())
        raw = (data[buffer.Offset():buffer.Offset() + buffer.Size()] if buffer.Offset() > 1
               else buffer.DataAsNumpy().tobytes())
        return json.loads(raw.decode())
    except (IndexError, struct.error, AttributeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable {METADATA_NAME!r} metadata ({exc})") from None


# One forward on zeros in a child process: a crafted .tflite can crash the interpreter (a segfault).
_PROBE = """
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
for d in it.get_input_details():
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
it.invoke()
"""


class LiteRTRuntime(Runtime):
    """A ``.tflite`` file in the LiteRT Interpreter with XNNPACK (``num_threads=threads``).

    The batch is static (``static_batch``: the base class splits and pads; ``resize_tensor_input`` fails on
    the batch constants in the reshapes). int8 input/output tensors are (de)quantized here with their
    scale and zero point. A file from outside (``trusted=False``) is first run once in a child process.
    """

    backend = "litert"

    def __init__(self, path: Path, threads: int, trusted: bool = False) -> None:
        super().__init__(path, threads)
        _parse(path)
        interp = require_backend("ai_edge_litert.interpreter", "running LiteRT .tflite files", extra="litert")
        if not trusted:
            probe_in_child(path, _PROBE, "a LiteRT model", PROBE_TIMEOUT_S)
        try:
            self.interpreter = interp.Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"{path}: LiteRT cannot load this file ({str(exc)[:300]})") from exc
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.static_batch = int(self._input["shape"][0])
        self.input_chw = tuple(int(d) for d in self._input["shape"][1:])  # NCHW: litert-torch keeps torch's layout
        self.int8 = any(d["dtype"] == np.int8 for d in self.interpreter.get_tensor_details())
        #: XNNPACK partitions and the ops left outside them (one partition, none outside, is the fast case).
        self.partitions, self.undelegated = xnnpack_partitions(self.interpreter)

    def _run(self, x: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        if dtype != np.float32:
            scale, zero = self._input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self._input["index"], x)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._output["index"])
        if out.dtype != np.float32:
            scale, zero = self._output["quantization"]
            return (out.astype(np.float32) - zero) * np.float32(scale)
        return out  # get_tensor returns a copy


def _ends_non_negative(module: nn.Module) -> bool:
    """Whether ``module``'s output is >= 0 by construction: a ReLU/ReLU6, or a plain sequential
    (the zoo's ConvBNAct included) whose last non-identity child is one."""
    from ..layers import ConvBNAct

    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return True
    plain = type(module).forward is nn.Sequential.forward or isinstance(module, ConvBNAct)
    if isinstance(module, nn.Sequential) and plain:
        children = [c for c in module if not isinstance(c, nn.Identity)]
        return bool(children) and _ends_non_negative(children[-1])
    return False


def zero_pad_maxpool(net: nn.Module) -> int:
    """Replace, in place, each padded ``nn.MaxPool2d`` that directly follows a ReLU/ReLU6 in an
    ``nn.Sequential`` by ``ZeroPad2d`` + an unpadded max pool; returns how many were replaced.

    PyTorch pads max pooling with -inf, which LiteRT writes as PADV2, an op XNNPACK does not take
    (ShuffleNet's stem pool split the graph in two partitions). On non-negative inputs a zero pad gives
    the same maxima and one partition, for delegates that want the whole graph; on x86 XNNPACK its PAD
    was slower than TFLite's PADV2 (benchmarks/results/litert_check.md). ``ceil_mode`` pools are left alone.
    """
    replaced = 0
    for parent in list(net.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        names = list(parent._modules)
        for prev, name in zip(names, names[1:]):
            pool = parent._modules[name]
            if not (type(pool) is nn.MaxPool2d and not pool.ceil_mode and not pool.return_indices):
                continue
            ph, pw = nn.modules.utils._pair(pool.padding)
            if (ph, pw) == (0, 0) or not _ends_non_negative(parent._modules[prev]):
                continue
            parent._modules[name] = nn.Sequential(
                nn.ZeroPad2d((pw, pw, ph, ph)),
                nn.MaxPool2d(pool.kernel_size, pool.stride, padding=0, dilation=pool.dilation))
            replaced += 1
    return replaced
