"""Latency benchmark of the zoo on every deployment path, with torchvision references in the same run.

Backends: ``eager`` (PyTorch, BN folded + channels_last: unfused BN was ~22% of eager time, NCHW
depthwise 2.4x slower at batch 32), ``compiled`` (``torch.compile`` with inductor freezing; a failure is a
row with the error in its notes), and every format's runtime (:data:`mobilecnn.deploy.formats.FORMATS`:
the file :func:`mobilecnn.deploy.export.export_model` writes, verified against PyTorch), plus an ``_int8``
variant for each format offering int8: calibrated on the images given (random ones by default), for
*latency only*, accuracy NOT checked.

Every run also times torchvision's ``mobilenet_v2()`` and ``shufflenet_v2_x1_0()`` (random weights) on
the requested backends, plus ``mobilenet_v2`` on ``eager_reference`` (plain eval mode, BN unfolded,
NCHW), timed first and again last: ``ratio_to_reference`` of each row is its median over the faster of
those two medians at the same threads, batch and resolution (only ratios measured in one run compare).
Library code: returns values and raises, never prints.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.complexity import count_macs
from ..device import resolve_device, synchronize
from ..errors import UsageError
from ..fields import cli, int_list, positive_int
from ..models import create_model, get_model_entry
from ..runs.layout import METRICS_FILE
from ..runs.rundir import load_trained
from ..validators import check_int, check_positive_int, check_threads
from .bench_report import BenchRow, check_output_dir, write_bench_outputs
from .export import ExportConfig, ExportImages, export_model
from .fold import fold_batchnorm
from .formats import FORMATS, format_for_runtime, load_runtime
from .timing import time_callable

__all__ = ["BACKENDS", "INT8_BACKENDS", "REFERENCE_BACKEND", "REFERENCE_MODEL", "BenchRow", "BenchSpec", "BenchConfig",
           "benchmark", "run_bench", "run_bench_auto"]

#: eager and compiled PyTorch, then every format's runtime, then the int8 variants of those offering it.
BACKENDS = ("eager", "compiled", *(f.runtime for f in FORMATS.values()))
INT8_BACKENDS = tuple(f"{f.runtime}_int8" for f in FORMATS.values() if "int8" in f.precisions)
REFERENCE_BACKEND = "eager_reference"
REFERENCE_MODEL = "torchvision.mobilenet_v2"
REFERENCE_MODELS = (REFERENCE_MODEL, "torchvision.shufflenet_v2_x1_0")
DEFAULT_TARGETS = ("shufflenet_v1_g3_x1_0", "mobilenet_v2_x1_0")


@dataclass(frozen=True)
class BenchSpec:
    """What :func:`benchmark` measures: every backend x thread count x batch at ``resolution``; models given
    by name are built with ``num_classes``/``in_chans``/``small_input``; ``references`` adds the torchvision
    rows (``reference_backends``: on which backends; default all requested); ``device``: where the PyTorch
    backends run (exported files run in their runtimes on the CPU)."""

    backends: tuple[str, ...] = ("eager",)
    threads: tuple[int, ...] = (1,)
    batches: tuple[int, ...] = (1,)
    resolution: int = 224
    small_input: bool = False
    num_classes: int = 1000
    in_chans: int = 3
    warmup: int = 5
    repeats: int = 30
    min_time_s: float = 1.0
    references: bool = True
    reference_backends: tuple[str, ...] | None = None
    seed: int = 0
    device: str = "cpu"


def _stats_ms(samples: list[float], batch: int) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples)
    median = statistics.median(ms)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return {"median_ms": median, "p90_ms": p90, "min_ms": ms[0], "throughput_img_s": 1e3 * batch / median}


def _reference_model(name: str) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name.split(".", 1)[1])
    model = builder(weights=None)
    model.model_name = name
    return model.eval()


def _resolve(model: str | nn.Module, small_input: bool, num_classes: int, in_chans: int) -> tuple[str, nn.Module]:
    if isinstance(model, str):
        if model in REFERENCE_MODELS:
            return model, _reference_model(model)
        return model, create_model(model, num_classes=num_classes, in_chans=in_chans, small_input=small_input).eval()
    if isinstance(model, nn.Module):
        return str(getattr(model, "model_name", type(model).__name__)), model.eval()
    raise TypeError(f"benchmark: models must be registered names or nn.Modules, got {type(model).__name__}")


class _Skip(Exception):
    """A backend could not run this model; the row records why."""


def _eager_fn(model: nn.Module, x: torch.Tensor, reference: bool) -> Callable[[], Any]:
    if reference:
        net, inp = model.eval(), x.contiguous()
    else:
        net = fold_batchnorm(model).to(memory_format=torch.channels_last)
        inp = x.contiguous(memory_format=torch.channels_last)

    def run() -> Any:
        with torch.inference_mode():
            return net(inp)

    return run


def _compiled_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    net = fold_batchnorm(model).to(memory_format=torch.channels_last)
    inp = x.contiguous(memory_format=torch.channels_last)
    import torch._inductor.config as inductor_config  # only the compiled rows pay for inductor's import

    try:
        with inductor_config.patch(freezing=True), torch.no_grad():
            compiled = torch.compile(net, dynamic=False)
            compiled(inp)  # compile now, inside the freezing patch
    except Exception as exc:  # compile failures are reported in the row, not raised
        raise _Skip(f"torch.compile failed: {type(exc).__name__}: {str(exc)[:300]}") from exc

    def run() -> Any:
        with torch.no_grad():
            return compiled(inp)

    return run


def _device_fn(model: nn.Module, x: torch.Tensor, backend: str, dev: torch.device) -> Callable[[], Any]:
    """An eager/compiled call on an accelerator, waiting for the device so wall time is device time."""
    model, x = copy.deepcopy(model).to(dev), x.to(dev)
    inner = _compiled_fn(model, x) if backend == "compiled" else _eager_fn(model, x, backend == REFERENCE_BACKEND)

    def run() -> Any:
        out = inner()
        synchronize(dev)
        return out

    return run


def _check_spec(spec: BenchSpec) -> BenchSpec:
    unknown = [b for b in spec.backends if b not in BACKENDS + INT8_BACKENDS]
    if unknown or not spec.backends:
        raise UsageError(f"unknown backend(s) {unknown}; accepted: {', '.join(BACKENDS + INT8_BACKENDS)}")
    if not spec.threads or not spec.batches:
        raise UsageError("threads and batches must each list at least one value")
    for b in spec.batches:
        check_positive_int(b, "batch")
    check_int(spec.resolution, "resolution", minimum=8, accepted="an integer >= 8 (pixels)")
    return replace(spec, threads=tuple(check_threads(t) for t in spec.threads))


@dataclass
class _Target:
    """One model to time, with what every backend of it shares."""

    name: str
    module: nn.Module
    backends: list[str]
    reference: bool
    chans: int = 3
    macs: int = 0
    params: int = 0
    calibration: torch.Tensor | None = None
    exported: dict[tuple[str, int | None], tuple[Path, list[str]]] = field(default_factory=dict)


def _targets(models: Sequence[str | nn.Module], spec: BenchSpec) -> list[_Target]:
    targets = [_Target(*_resolve(m, spec.small_input, spec.num_classes, spec.in_chans), list(spec.backends), False)
               for m in models]
    if spec.references:
        # The ratio base is timed first and again last; the faster of the two is used, so a load
        # change during the run cannot flatter the ratios.
        ref_module = _reference_model(REFERENCE_MODEL)
        targets.insert(0, _Target(REFERENCE_MODEL, ref_module, [REFERENCE_BACKEND], True))
        ref_backends = [b for b in (spec.backends if spec.reference_backends is None else spec.reference_backends)
                        if b != REFERENCE_BACKEND]
        for name in REFERENCE_MODELS if ref_backends else ():
            module = ref_module if name == REFERENCE_MODEL else _reference_model(name)
            targets.append(_Target(name, module, ref_backends, True))
        targets.append(_Target(REFERENCE_MODEL, ref_module, [REFERENCE_BACKEND], True))
    return targets


def benchmark(models: Sequence[str | nn.Module], spec: BenchSpec, *, calibration: torch.Tensor | None = None,
              work_dir: str | Path | None = None) -> list[BenchRow]:
    """Time every model on every backend, thread count and batch size (module docstring).

    ``models``: registered names or modules. ``calibration``: images for the ``*_int8`` backends (default:
    random normal images, latency only). ``work_dir``: where exported files go (a temporary folder by
    default). Returns rows in measurement order.
    """
    spec = _check_spec(spec)
    if not models:
        raise UsageError("benchmark needs at least one model")
    dev = resolve_device(spec.device)
    targets = _targets(models, spec)
    saved_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="mobilecnn-bench-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(spec.seed)
        ctx = _Context(spec, work, gen, dev, calibration is None)
        rows: list[BenchRow] = []
        try:
            for target in targets:
                target.chans = 3 if target.reference else int(getattr(target.module, "in_chans", spec.in_chans))
                target.macs = count_macs(target.module, spec.resolution)[0]
                target.params = sum(p.numel() for p in target.module.parameters())
                size = (target.chans, spec.resolution, spec.resolution)
                ok = calibration is not None and calibration.shape[1] == target.chans
                target.calibration = calibration if ok else torch.randn(64, *size, generator=gen)
                for backend in target.backends:
                    for t in spec.threads:
                        for batch in spec.batches:
                            rows.append(_bench_one(target, backend, t, batch, ctx))
        finally:
            torch.set_num_threads(saved_threads)
    _add_ratios(rows)
    return rows


def _exported_file(target: _Target, backend: str, batch: int, work: Path, gen: torch.Generator,
                   resolution: int) -> tuple[Path, list[str]]:
    """The file a runtime backend times, exported once per target (per batch for static-batch formats)."""
    int8 = backend.endswith("_int8")
    fmt = format_for_runtime(backend[:-5] if int8 else backend)
    key = (backend, batch if fmt.static_batch else None)
    if key not in target.exported:
        safe = target.name.replace("/", "_").replace(".", "_")
        path = work / f"{safe}_{backend}{'' if key[1] is None else f'_b{batch}'}{fmt.suffix}"
        example = torch.randn(batch, target.chans, resolution, resolution, generator=gen)
        verify = torch.randn(4, target.chans, resolution, resolution, generator=gen)
        images = ExportImages(example, verify, target.calibration if int8 else None)
        report = export_model(target.module, path, images, ExportConfig(fmt.name, "int8" if int8 else "fp32",
                                                                         check_accuracy=False))
        target.exported[key] = (path, [f"export: {n}" for n in report.notes
                                       if not n.startswith(("BatchNorm folded", "head exported"))])
    return target.exported[key]


def _timed_fn(target: _Target, backend: str, threads: int, x: torch.Tensor, notes: list[str],
              ctx: tuple[Path, torch.Generator, int]) -> Callable[[], Any]:
    if backend in ("eager", REFERENCE_BACKEND):
        return _eager_fn(target.module, x, reference=backend == REFERENCE_BACKEND)
    if backend == "compiled":
        return _compiled_fn(target.module, x)
    path, export_notes = _exported_file(target, backend, x.shape[0], *ctx)
    notes.extend(n for n in export_notes if n not in notes)
    runtime = load_runtime(path, threads=threads, trusted=True)  # exported by this run
    arr = x.numpy()
    return lambda: runtime(arr)


@dataclass
class _Context:
    """What every row of one :func:`benchmark` call shares."""

    spec: BenchSpec
    work: Path
    gen: torch.Generator
    dev: torch.device
    random_calibration: bool


def _bench_one(target: _Target, backend: str, threads: int, batch: int, ctx: _Context) -> BenchRow:
    """One row: the backend's callable timed; a failing backend is a row with the reason, not an exception."""
    notes: list[str] = []
    if backend.endswith("_int8"):
        notes.append("int8 latency only: accuracy not checked"
                     + (" (random calibration)" if ctx.random_calibration else ""))
        fmt = format_for_runtime(backend[:-len("_int8")])
        warning = fmt.int8_warning(target.module) if fmt.int8_warning is not None else None
        if warning:
            notes.append(warning)
    row = BenchRow(target.name, backend, threads, batch, ctx.spec.resolution, None, None, None, None, target.macs,
                   target.params, reference=target.reference, notes=notes)
    x = torch.randn(batch, target.chans, ctx.spec.resolution, ctx.spec.resolution, generator=ctx.gen)
    try:
        torch.set_num_threads(threads)
        if ctx.dev.type != "cpu" and backend in ("eager", REFERENCE_BACKEND, "compiled"):
            row.device = str(ctx.dev)
            fn = _device_fn(target.module, x, backend, ctx.dev)
        else:
            fn = _timed_fn(target, backend, threads, x, notes, (ctx.work, ctx.gen, ctx.spec.resolution))
        load_before = os.getloadavg()
        samples = time_callable(fn, warmup=ctx.spec.warmup, repeats=ctx.spec.repeats,
                                min_time_s=ctx.spec.min_time_s)
        row.loadavg = tuple(round(max(a, b), 2) for a, b in zip(load_before, os.getloadavg()))
        row.runs = len(samples)
        for key, value in _stats_ms(samples, batch).items():
            setattr(row, key, value)
    except _Skip as exc:
        notes.append(str(exc))
    except ImportError as exc:
        notes.append(f"skipped: {exc}")
    except Exception as exc:  # noqa: BLE001 - one failing backend must not lose the rest of the run
        notes.append(f"failed: {type(exc).__name__}: {str(exc)[:300]}")
    return row


def _add_ratios(rows: list[BenchRow]) -> None:
    ref: dict[tuple[int, int, int], float] = {}
    for r in rows:
        if r.model == REFERENCE_MODEL and r.backend == REFERENCE_BACKEND and r.median_ms:
            key = (r.threads, r.batch, r.resolution)
            ref[key] = min(ref.get(key, r.median_ms), r.median_ms)
    for r in rows:
        base = ref.get((r.threads, r.batch, r.resolution))
        if base and r.median_ms is not None:
            r.ratio_to_reference = r.median_ms / base


@dataclass(frozen=True)
class BenchConfig:
    """``mobilecnn bench``: every option, its default and help (the CLI is generated from it)."""

    targets: tuple[str, ...] = field(default=(), metadata=cli(
        f"registered names and/or run directories (default: {' '.join(DEFAULT_TARGETS)})", positional=True,
        nargs="*", metavar="MODEL_OR_RUN_DIR"))
    backend: tuple[str, ...] = field(default=("eager", "onnxruntime"), metadata=cli(
        "backends to time", nargs="+", choices=list(BACKENDS + INT8_BACKENDS)))
    threads: tuple[int, ...] = field(default=(1,), metadata=cli("thread counts, comma-separated, e.g. 1,2",
                                                                type=int_list))
    batch: tuple[int, ...] = field(default=(1,), metadata=cli("batch sizes, comma-separated, e.g. 1,32", type=int_list))
    resolution: int | None = field(default=None, metadata=cli(
        "input size (default 224, 32 with --small-input; a run directory: its training resolution)",
        type=positive_int))
    small_input: bool = field(default=False, metadata=cli("registered names built with the small-input stem"))
    repeats: int = field(default=30, metadata=cli("timed calls per row (at least)", type=positive_int))
    auto: bool = field(default=False, metadata=cli(
        "the export --format auto table (every runtime x precision, paired timing) for each target"))
    out: str = field(default="bench", metadata=cli("output directory for JSON, Markdown and PNG"))
    device: str = field(default="cpu", metadata=cli(
        "where the eager/compiled rows run: auto, cpu, cuda, cuda:N or mps (exported files always run on the CPU)"))


def _run_dir_accuracy(path: Path) -> float | None:
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        return None
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return next((r["val_top1"] for r in reversed(lines) if "val_top1" in r), None)


def run_bench(config: BenchConfig) -> tuple[list[BenchRow], dict[str, Path]]:
    """``mobilecnn bench``: registered names and/or run directories, outputs written to ``config.out``.

    A run directory is measured with its trained weights at its training resolution, and its
    validation top-1 is attached to its rows (the accuracy-vs-latency plot).
    """
    check_output_dir(config.out)  # before minutes of timing, not after
    targets = list(config.targets) or list(DEFAULT_TARGETS)
    groups: dict[int, list[tuple[str | nn.Module, float | None]]] = {}
    for target in targets:
        path = Path(target)
        if path.is_dir():
            loaded = load_trained(path)
            res = config.resolution or int(loaded.data.get("resolution") or 224)
            groups.setdefault(res, []).append((loaded.model, _run_dir_accuracy(path)))
        else:
            get_model_entry(target)  # unknown names fail before any timing, with the closest names
            groups.setdefault(config.resolution or (32 if config.small_input else 224), []).append((target, None))
    rows: list[BenchRow] = []
    for res, items in groups.items():
        spec = BenchSpec(tuple(config.backend), tuple(config.threads), tuple(config.batch), res,
                         small_input=config.small_input, repeats=config.repeats, device=config.device)
        group_rows = benchmark([m for m, _ in items], spec)
        named_accuracy = {m if isinstance(m, str) else getattr(m, "model_name", m): a for m, a in items}
        for row in group_rows:
            if not row.reference and named_accuracy.get(row.model) is not None:
                row.accuracy = named_accuracy[row.model]
        rows.extend(group_rows)
    return rows, write_bench_outputs(rows, config.out, meta={"targets": targets})


def run_bench_auto(config: BenchConfig) -> list[dict[str, Any]]:
    """``bench --auto``: the ``export --format auto`` candidates table for each target.

    A run directory gets the real thing (its test images, its training images for calibration; the
    fastest file is kept in ``out``). A registered name is measured untrained on random normal images:
    latency only -- bf16/int8 accuracy is NOT checked (an untrained model's near-tied logits make any
    agreement figure meaningless) -- and nothing is kept (``<name>.auto.json``/``.md`` only).
    """
    from .auto import AutoConfig, auto_export
    from .run_export import export_run

    out = check_output_dir(config.out)
    out.mkdir(parents=True, exist_ok=True)
    threads, batch = config.threads[0], config.batch[0]
    results = []
    for target in list(config.targets) or list(DEFAULT_TARGETS):
        if Path(target).is_dir():
            loaded = load_trained(target)
            results.append(export_run(target, "auto", out / f"{loaded.model_name}_auto", threads=threads, batch=batch))
            continue
        get_model_entry(target)
        res = config.resolution or (32 if config.small_input else 224)
        torch.manual_seed(0)
        model = create_model(target, small_input=config.small_input).eval()
        images = torch.randn(64, 3, res, res)
        results.append(auto_export(model, out / target, ExportImages(images[:1], images[:32], images),
                                   AutoConfig(threads=threads, batch=batch, keep=False, check_accuracy=False),
                                   {"model": target}))
    return results
