"""Latency benchmark of the zoo on the deployment paths, with torchvision references in the same run.

Backends (``BACKENDS``):

* ``eager`` -- PyTorch eager, BN folded (:func:`mobilecnn.export.fold_batchnorm`) + channels_last
  (unfused BN was ~22% of eager time; NCHW depthwise 2.4x slower at batch 32: docs/deployment.md);
* ``compiled`` -- ``torch.compile`` with inductor freezing, channels_last; a failure gives a row
  with no timings and the error in ``notes``;
* ``onnxruntime``, ``openvino``, ``executorch`` -- the file :func:`mobilecnn.export.export_model`
  writes (verified against PyTorch), run through :func:`mobilecnn.runtime.load_runtime`;
* ``onnxruntime_int8``, ``openvino_int8``, ``executorch_int8`` -- int8 files for *latency only*:
  calibrated on the images given (random ones by default), accuracy NOT checked. OpenVINO int8 rows
  of models with grouped 1x1 convs of 20/30 channels per group carry ``valid=False`` (the output is
  wrong there, docs/deployment.md; ``export_model`` refuses such files).

Every run also times torchvision's ``mobilenet_v2()`` and ``shufflenet_v2_x1_0()`` (random
weights) on the requested backends, plus ``mobilenet_v2`` on ``eager_reference`` (plain eval mode,
BN unfolded, NCHW), timed first and again last: ``ratio_to_reference`` of each row is its median over
the faster of those two medians at the same threads, batch and resolution (medians moved
+-30% between passes on a shared VM, so only ratios measured in one run are comparable).

Thread counts above the available CPUs are refused (oversubscription: 12 ms -> 2.2 s).
Library code: returns values and raises, never prints.
"""

from __future__ import annotations

import copy
import json
from importlib.metadata import version
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch._inductor.config as inductor_config
import torchvision
from torch import nn

from .analysis.complexity import count_macs
from .deploy.export import export_model
from .deploy.fold import fold_batchnorm
from .deploy.formats import format_for_runtime
from .deploy.quantize import openvino_int8_risky_convs
from .deploy.runtime import check_threads, load_runtime
from .errors import UsageError
from .device import resolve_device, synchronize
from .models import create_model, get_model_entry
from .plots import plot_bench
from .runs.files import atomic_write, atomic_write_text
from .runs.rundir import load_trained

__all__ = [
    "BACKENDS",
    "INT8_BACKENDS",
    "REFERENCE_BACKEND",
    "REFERENCE_MODEL",
    "BenchRow",
    "benchmark",
    "time_callable",
    "write_bench_outputs",
]

BACKENDS = ("eager", "compiled", "onnxruntime", "openvino", "executorch")
INT8_BACKENDS = ("onnxruntime_int8", "openvino_int8", "executorch_int8")
REFERENCE_BACKEND = "eager_reference"
REFERENCE_MODEL = "torchvision.mobilenet_v2"
REFERENCE_MODELS = (REFERENCE_MODEL, "torchvision.shufflenet_v2_x1_0")


@dataclass
class BenchRow:
    """One (model, backend, threads, batch) measurement; times in ms, ``macs`` per image."""

    model: str
    backend: str
    threads: int
    batch: int
    resolution: int
    median_ms: float | None
    p90_ms: float | None
    min_ms: float | None
    throughput_img_s: float | None
    macs: int
    params: int
    loadavg: tuple[float, float, float] | None = None
    runs: int = 0
    ratio_to_reference: float | None = None
    reference: bool = False
    valid: bool = True
    accuracy: float | None = None
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"  # where the eager/compiled rows ran (exported files always run on the CPU)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_callable(fn: Callable[[], Any], *, warmup: int = 5, repeats: int = 30, min_time_s: float = 1.0,
                  max_runs: int = 10_000) -> list[float]:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then at least ``repeats`` timed calls and
    at least ``min_time_s`` of timed calls (at most ``max_runs``)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < repeats or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def _stats_ms(samples: list[float], batch: int) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples)
    median = statistics.median(ms)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return {"median_ms": median, "p90_ms": p90, "min_ms": ms[0], "throughput_img_s": 1e3 * batch / median}


def _reference_model(name: str) -> nn.Module:
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


def benchmark(
    models: Sequence[str | nn.Module],
    backends: Sequence[str],
    threads: Sequence[int],
    batches: Sequence[int],
    resolution: int,
    *,
    small_input: bool = False,
    num_classes: int = 1000,
    in_chans: int = 3,
    warmup: int = 5,
    repeats: int = 30,
    min_time_s: float = 1.0,
    references: bool = True,
    reference_backends: Sequence[str] | None = None,
    calibration: torch.Tensor | None = None,
    work_dir: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[BenchRow]:
    """Time every model on every backend, thread count and batch size (module docstring).

    ``models``: registered names (built with ``num_classes``, ``in_chans``, ``small_input``) or modules.
    ``references``: add the torchvision rows (always on for ``ratio_to_reference``; ``reference_backends``
    limits which backends they run on, default: all requested). ``calibration``: images for the
    ``*_int8`` backends (default: random normal images, latency only). ``work_dir``: where exported
    files go (a temporary folder by default). ``device``: where the PyTorch backends (eager, compiled,
    eager_reference) run; exported files run in their runtimes on the CPU. Returns rows in measurement order.
    """
    dev = resolve_device(device)
    unknown = [b for b in backends if b not in BACKENDS + INT8_BACKENDS]
    if unknown or not backends:
        raise ValueError(f"unknown backend(s) {unknown}; accepted: {', '.join(BACKENDS + INT8_BACKENDS)}")
    if not threads or not batches:
        raise ValueError("threads and batches must each list at least one value")
    threads = [check_threads(t) for t in threads]
    for b in batches:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"batch sizes must be integers >= 1, got {b!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an integer >= 8 (pixels), got {resolution!r}")
    if not models:
        raise ValueError("benchmark needs at least one model")

    entries: list[tuple[str, nn.Module, list[str], bool]] = []
    for m in models:
        name, module = _resolve(m, small_input, num_classes, in_chans)
        entries.append((name, module, list(backends), False))
    if references:
        # The ratio base is timed first and again last; the faster of the two is used, so a load
        # change during the run cannot flatter the ratios.
        ref_module = _reference_model(REFERENCE_MODEL)
        entries.insert(0, (REFERENCE_MODEL, ref_module, [REFERENCE_BACKEND], True))
        ref_backends = [b for b in (backends if reference_backends is None else reference_backends)
                        if b != REFERENCE_BACKEND]
        for name in REFERENCE_MODELS:
            if ref_backends:
                entries.append((name, ref_module if name == REFERENCE_MODEL else _reference_model(name), ref_backends,
                                True))
        entries.append((REFERENCE_MODEL, ref_module, [REFERENCE_BACKEND], True))

    saved_threads = torch.get_num_threads()
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mobilecnn-bench-")
        work = Path(tmp.name)
    else:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
    rows: list[BenchRow] = []
    try:
        for name, module, model_backends, is_ref in entries:
            chans = 3 if is_ref else int(getattr(module, "in_chans", in_chans))
            macs, _ = count_macs(module, resolution)
            params = sum(p.numel() for p in module.parameters())
            gen = torch.Generator().manual_seed(seed)
            verify = torch.randn(4, chans, resolution, resolution, generator=gen)
            calib = calibration if calibration is not None and calibration.shape[1] == chans else \
                torch.randn(64, chans, resolution, resolution, generator=gen)
            for backend in model_backends:
                rows.extend(_bench_backend(name, module, backend, threads, batches, resolution, chans, macs, params,
                                           verify, calib, calibration is None, is_ref, work, warmup, repeats,
                                           min_time_s, gen, dev))
    finally:
        torch.set_num_threads(saved_threads)
        if tmp is not None:
            tmp.cleanup()
    _add_ratios(rows)
    return rows


def _bench_backend(name: str, module: nn.Module, backend: str, threads: list[int], batches: Sequence[int],
                   resolution: int, chans: int, macs: int, params: int, verify: torch.Tensor, calib: torch.Tensor,
                   random_calib: bool, is_ref: bool, work: Path, warmup: int, repeats: int, min_time_s: float,
                   gen: torch.Generator, dev: torch.device = torch.device("cpu")) -> list[BenchRow]:
    rows: list[BenchRow] = []
    int8 = backend.endswith("_int8")
    base = backend[:-5] if int8 else backend
    exported: dict[int | None, tuple[Path, list[str]]] = {}
    notes_common: list[str] = []
    valid = True
    if int8:
        notes_common.append("int8 latency only: accuracy not checked" + (" (random calibration)" if random_calib else ""))
        if base == "openvino" and openvino_int8_risky_convs(module):
            notes_common.append("grouped 1x1 convs with 20/30 channels per group (a suspected OpenVINO int8 weak spot, "
                                "docs/deployment.md): export checks the accuracy and keeps sensitive layers in float")

    def export_for(batch: int) -> tuple[Path, list[str]]:
        key = batch if base == "executorch" else None  # ExecuTorch files have a static batch
        if key not in exported:
            fmt = format_for_runtime(base)
            safe = name.replace("/", "_").replace(".", "_")
            path = work / f"{safe}_{backend}{'' if key is None else f'_b{key}'}{fmt.suffix}"
            example = torch.randn(batch, chans, resolution, resolution, generator=gen)
            report = export_model(module, fmt.name, path, example=example, verify_images=verify, int8=int8,
                                  calibration=calib if int8 else None, check_accuracy=False)
            exported[key] = (path, [f"export: {n}" for n in report.notes
                                    if not n.startswith(("BatchNorm folded", "head exported"))])
        return exported[key]

    for t in threads:
        for batch in batches:
            notes = list(notes_common)
            row = BenchRow(name, backend, t, batch, resolution, None, None, None, None, macs, params,
                           reference=is_ref, valid=valid, notes=notes)
            x = torch.randn(batch, chans, resolution, resolution, generator=gen)
            try:
                torch.set_num_threads(t)
                if dev.type != "cpu" and backend in ("eager", REFERENCE_BACKEND, "compiled"):
                    row.device = str(dev)
                    fn = _device_fn(module, x, backend, dev)
                elif backend in ("eager", REFERENCE_BACKEND):
                    fn = _eager_fn(module, x, reference=backend == REFERENCE_BACKEND)
                elif backend == "compiled":
                    fn = _compiled_fn(module, x)
                else:
                    path, export_notes = export_for(batch)
                    notes.extend(n for n in export_notes if n not in notes)
                    runtime = load_runtime(path, threads=t, trusted=True)  # exported by this run
                    arr = x.numpy()

                    def fn(runtime=runtime, arr=arr) -> Any:
                        return runtime(arr)

                load_before = os.getloadavg()
                samples = time_callable(fn, warmup=warmup, repeats=repeats, min_time_s=min_time_s)
                load_after = os.getloadavg()
                row.loadavg = tuple(round(max(a, b), 2) for a, b in zip(load_before, load_after))
                row.runs = len(samples)
                for key, value in _stats_ms(samples, batch).items():
                    setattr(row, key, value)
            except _Skip as exc:
                notes.append(str(exc))
            except ImportError as exc:
                notes.append(f"skipped: {exc}")
            except Exception as exc:  # one failing backend must not lose the rest of the run
                notes.append(f"failed: {type(exc).__name__}: {str(exc)[:300]}")
            rows.append(row)
    return rows


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


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def bench_markdown(rows: Sequence[BenchRow]) -> str:
    """The rows as a Markdown table (times in ms, MACs in millions)."""
    has_acc = any(r.accuracy is not None for r in rows)
    head = ["model", "backend", "threads", "batch", "res", "median ms", "p90 ms", "min ms", "img/s", "MMACs",
            "params (M)", "x ref", "load avg"] + (["accuracy"] if has_acc else []) + ["notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.model + (" (ref)" if r.reference else ""), r.backend + ("" if r.valid else " (INVALID)"),
                 str(r.threads), str(r.batch), str(r.resolution), _fmt(r.median_ms), _fmt(r.p90_ms), _fmt(r.min_ms),
                 _fmt(r.throughput_img_s, 1), f"{r.macs / 1e6:.1f}", f"{r.params / 1e6:.2f}",
                 _fmt(r.ratio_to_reference, 3), "/".join(f"{v:.2f}" for v in r.loadavg) if r.loadavg else "-"]
        if has_acc:
            cells.append(_fmt(r.accuracy))
        cells.append("; ".join(r.notes).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU, versions, load average now."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:
        pass
    for mod in ("onnxruntime", "openvino", "executorch"):
        try:
            info[mod] = version(mod)
        except Exception:
            info[mod] = None
    return info


def check_output_dir(out_dir: str | Path) -> Path:
    """``out_dir`` must be a directory (or not exist yet) that can be written; checked before any work."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a directory for bench.json, bench.md and bench.png")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {probe} is not writable")
    return out


def write_bench_outputs(rows: Sequence[BenchRow], out_dir: str | Path, *, stem: str = "bench",
                        meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<stem>.json`` (rows + machine info), ``<stem>.md`` (table) and ``<stem>.png`` (latency vs
    MACs; accuracy vs latency when rows carry ``accuracy``) into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {**machine_info(), **(meta or {})}
    payload = {"meta": info, "rows": [r.to_dict() for r in rows]}
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    atomic_write_text(paths["json"], json.dumps(payload, indent=1, default=_json_default) + "\n")
    header = (f"# Benchmark ({info.get('cpu') or 'CPU'}, torch {info['torch']}, load average at write "
              f"{'/'.join(f'{v:.2f}' for v in info['loadavg'])})\n\n"
              "Times per batch; `x ref` = median / torchvision mobilenet_v2 eager (BN unfolded) median at the "
              "same threads and batch.\n\n")
    atomic_write_text(paths["md"], header + bench_markdown(rows))
    plot_bench(rows, paths["png"])
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def run_bench(
    targets: Sequence[str],
    *,
    backends: Sequence[str],
    threads: Sequence[int],
    batches: Sequence[int],
    resolution: int | None = None,
    small_input: bool = False,
    out_dir: str | Path = "bench",
    repeats: int = 30,
    device: str = "cpu",
) -> tuple[list[BenchRow], dict[str, Path]]:
    """``mobilecnn bench``: registered names and/or run directories, outputs written to ``out_dir``.

    A run directory is measured with its trained weights at its training resolution, and its
    validation top-1 is attached to its rows (the accuracy-vs-latency plot).
    """
    check_output_dir(out_dir)  # before minutes of timing, not after
    targets = list(targets) or ["shufflenet_v1_g3_x1_0", "mobilenet_v2_x1_0"]
    groups: dict[int, list[tuple[str | nn.Module, float | None]]] = {}
    for target in targets:
        path = Path(target)
        if path.is_dir():
            loaded = load_trained(path)
            res = resolution or int(loaded.data.get("resolution") or 224)
            accuracy = None
            metrics = path / "metrics.jsonl"
            if metrics.is_file():
                lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
                accuracy = next((r["val_top1"] for r in reversed(lines) if "val_top1" in r), None)
            groups.setdefault(res, []).append((loaded.model, accuracy))
        else:
            get_model_entry(target)  # unknown names fail before any timing, with the closest names
            groups.setdefault(resolution or (32 if small_input else 224), []).append((target, None))
    rows: list[BenchRow] = []
    for res, items in groups.items():
        group_rows = benchmark([m for m, _ in items], backends, threads, batches, res, small_input=small_input,
                               repeats=repeats, device=device)
        named_accuracy = {getattr(m, "model_name", m) if not isinstance(m, str) else m: a for m, a in items}
        for row in group_rows:
            if not row.reference and named_accuracy.get(row.model) is not None:
                row.accuracy = named_accuracy[row.model]
        rows.extend(group_rows)
    outputs = write_bench_outputs(rows, out_dir, meta={"targets": list(targets)})
    return rows, outputs


def run_bench_auto(targets: Sequence[str], *, threads: int = 1, batch: int = 1, resolution: int | None = None,
                   small_input: bool = False, out_dir: str | Path = "bench", seconds: float = 2.0,
                   max_drop: float = 0.5) -> list[dict[str, Any]]:
    """``bench --auto``: the ``export --format auto`` candidates table for each target.

    A run directory gets the real thing (its test images, its training images for calibration; the
    fastest file is kept in ``out_dir``). A registered name is measured untrained on random normal images:
    latency only -- bf16/int8 accuracy is NOT checked (an untrained model's near-tied logits make any
    agreement figure meaningless) -- and nothing is kept (``<name>.auto.json``/``.md`` only).
    """
    from .deploy.auto import auto_export
    from .deploy.export import export_run

    check_output_dir(out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for target in list(targets) or ["shufflenet_v1_g3_x1_0", "mobilenet_v2_x1_0"]:
        if Path(target).is_dir():
            loaded = load_trained(target)
            results.append(export_run(target, "auto", out / f"{loaded.model_name}_auto", threads=threads,
                                      batch=batch, seconds=seconds, max_drop=max_drop))
            continue
        get_model_entry(target)
        res = resolution or (32 if small_input else 224)
        torch.manual_seed(0)
        model = create_model(target, small_input=small_input).eval()
        images = torch.randn(64, 3, res, res)
        result = auto_export(model, out / target, example=images[:1], verify_images=images[:32],
                             calibration=images, check_images=None, check_labels=None, max_drop=max_drop,
                             threads=threads, batch=batch, seconds=seconds, keep=False, check_accuracy=False,
                             sidecar={"model": target})
        results.append(result)
    return results
