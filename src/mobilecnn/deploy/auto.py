"""``export --format auto``: the fastest verified file for this machine.

For every installed runtime x every precision it supports here (fp32; bf16 on OpenVINO where the CPU
has bf16 instructions; int8 on onnxruntime, OpenVINO and ExecuTorch) :func:`auto_export`:

1. exports and verifies the candidate with :func:`mobilecnn.deploy.export.export_model` (fp32 against
   PyTorch's logits; bf16 and int8 by their top-1 drop on real held-out images, int8 with its
   calibration / float-layer fallback), into a staging folder, each in its own child process;
2. times every verified candidate *paired*: each file is loaded by its own timing process, and every
   round asks each of them for a burst of about 30 ms in a freshly shuffled order, so a background load hits all
   of them alike; a candidate's latency is the
   median over rounds of its per-round median, and its ratio to the fastest comes with a bootstrap 95%
   interval over rounds;
3. keeps the fastest candidate that passed (moved next to where the user asked, with its sidecar) and
   writes the table of every candidate -- latency, accuracy, size, or why it was refused -- as JSON and
   Markdown beside it (``<name>.auto.json`` / ``.auto.md``).

Runtimes are native code: a candidate whose export or runtime crashes its process is refused with the
signal named, and the others go on (:mod:`mobilecnn.deploy.workers`).

Timing is bounded: about ``seconds`` per candidate in all (2 s default), so a whole ``auto`` on two
cores takes export time plus ~20 s, plus a few seconds per candidate to start its processes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import ExportVerificationError, Int8AccuracyError, MissingBackendError, UsageError
from ..runs.files import atomic_write_text
from .export import BF16_FORMATS, export_model
from .formats import FORMATS, SIDECAR_SUFFIX
from .quantize import INT8_FORMATS
from .runtime import bf16_supported, require_backend
from .workers import ChildCrashed, TimingWorker, call_in_child, shared_copy

__all__ = ["auto_candidates", "auto_export", "paired_rounds", "paired_times", "bootstrap_ratio", "auto_markdown",
           "installed_formats"]

_BACKEND_MODULES = {
    "onnx": ("onnxruntime", "onnxscript"),
    "torchscript": (),
    "openvino": ("openvino",),
    "executorch": ("executorch.extension.pybindings.portable_lib",),
}
_INT8_MODULES = {"onnx": ("onnxruntime.quantization",), "openvino": ("nncf",),
                 "executorch": ("torchao.quantization.pt2e.quantize_pt2e",)}


def installed_formats() -> list[str]:
    """Formats whose runtime (and exporter) is importable here."""
    found = []
    for name in FORMATS:
        try:
            for module in _BACKEND_MODULES.get(name, ()):
                require_backend(module, name)
        except MissingBackendError:
            continue
        found.append(name)
    return found


def auto_candidates(formats: list[str] | None = None) -> list[tuple[str, str]]:
    """(format, precision) pairs worth trying on this machine, in a fixed order; ``formats``: only these."""
    installed = installed_formats()
    if formats is not None:
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise UsageError(f"unknown format {unknown[0]!r}; accepted: {', '.join(FORMATS)}")
        missing = [f for f in formats if f not in installed]
        if missing:
            raise MissingBackendError(f"{missing[0]} is not installed here (installed: {', '.join(installed) or 'none'}); "
                                      "pip install 'mobilecnn[deploy]'")
    out = []
    for fmt in installed:
        if formats is not None and fmt not in formats:
            continue
        out.append((fmt, "fp32"))
        if fmt in BF16_FORMATS and bf16_supported():
            out.append((fmt, "bf16"))
        if fmt in INT8_FORMATS:
            try:
                for module in _INT8_MODULES[fmt]:
                    require_backend(module, f"{fmt} int8")
            except MissingBackendError:
                continue
            out.append((fmt, "int8"))
    return out


def paired_rounds(bursts: dict[str, Callable[[int], list[float]]], *, seconds: float = 2.0, min_rounds: int = 5,
                  max_rounds: int = 200, calls_per_round: int | None = None, burst_s: float = 0.03,
                  seed: int = 0) -> dict[str, Any]:
    """Paired latency: each round asks every ``burst(n)`` (seconds of ``n`` calls) once, in a shuffled order.

    Each candidate's burst lasts about ``burst_s`` (5 to 50 calls; ``calls_per_round`` fixes it for all):
    the first calls after another process ran find the caches cold, so short bursts read slow
    (docs/deployment.md), and the fast candidates, those that decide, get the longest bursts.

    Returns ``{"rounds", "calls_per_round": {name: n}, "median_ms": {name: ...}, "per_round_ms": {name: [...]},
    "failed": {name: why}}``; a candidate's latency is the median over rounds of its per-round median.
    A burst that raises :class:`ChildCrashed` drops that candidate (its reason lands in ``failed``) and
    the others go on, their rounds still aligned. The budget is about ``seconds`` per candidate.
    """
    live = list(bursts)
    failed: dict[str, str] = {}

    def run(name: str, n: int) -> list[float] | None:
        try:
            return bursts[name](n)
        except ChildCrashed as exc:
            failed[name] = str(exc)
            live.remove(name)
            return None

    probe = {}
    for name in list(live):
        out = run(name, 4)  # the first calls compile and allocate; the last one is the probe
        if out is not None:
            probe[name] = max(out[-1], 1e-6)
    if not live:
        return {"rounds": 0, "calls_per_round": {}, "median_ms": {}, "per_round_ms": {}, "failed": failed}
    per_round = {n: calls_per_round or max(5, min(50, round(burst_s / probe[n]))) for n in live}
    round_cost = sum(probe[n] * per_round[n] for n in live)
    rounds = int(min(max_rounds, max(min_rounds, seconds * len(live) / max(round_cost, 1e-6))))
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {n: [] for n in live}
    for _ in range(rounds):
        order = live[:]
        rng.shuffle(order)
        for name in order:
            times = run(name, per_round[name])
            if times is not None:
                samples[name].append(1e3 * statistics.median(times))
    samples = {n: v for n, v in samples.items() if n in live}
    return {"rounds": rounds, "calls_per_round": {n: per_round[n] for n in live},
            "median_ms": {n: statistics.median(v) for n, v in samples.items()}, "per_round_ms": samples,
            "failed": failed}


def paired_times(fns: dict[str, Callable[[], Any]], **options: Any) -> dict[str, Any]:
    """:func:`paired_rounds` for in-process callables (each ``fn()`` is one call)."""
    def burst_of(fn: Callable[[], Any]) -> Callable[[int], list[float]]:
        def burst(n: int) -> list[float]:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return times
        return burst
    return paired_rounds({name: burst_of(fn) for name, fn in fns.items()}, **options)


def bootstrap_ratio(a: list[float], b: list[float], *, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of the paired per-round ratios a/b with a bootstrap 95% interval."""
    r = np.asarray(a) / np.asarray(b)
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(r, size=(reps, len(r)), replace=True), axis=1)
    return float(np.median(r)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def _export_candidate(model: nn.Module, fmt: str, path: Path, **options: Any) -> dict[str, Any]:
    """One candidate's export and verification (run in a child process); the row fields it settles."""
    try:
        report = export_model(model, fmt, path, **options)
    except (ExportVerificationError, Int8AccuracyError, MissingBackendError, UsageError) as exc:
        row: dict[str, Any] = {"status": "refused", "why": str(exc)[:600]}
        acc = getattr(exc, "report", None)
        if acc is not None and hasattr(acc, "drop"):
            row["drop"] = acc.drop
        return row
    row = {"status": "verified", "file_bytes": report.file_bytes, "rel_diff": report.rel_diff,
           "top1_agreement": report.top1_agreement, "calibration": report.calibration,
           "float_layers": report.float_layers}
    if report.int8_report is not None:
        row.update(top1=report.int8_report.int8_top1, fp32_top1=report.int8_report.fp32_top1,
                   drop=report.int8_report.drop)
    return row


def auto_export(
    model: nn.Module,
    out_path: str | Path,
    *,
    example: torch.Tensor,
    verify_images: torch.Tensor,
    calibration: torch.Tensor | None,
    check_images: torch.Tensor | None,
    check_labels: torch.Tensor | None,
    max_drop: float = 0.5,
    threads: int = 1,
    batch: int = 1,
    seconds: float = 2.0,
    sidecar: dict[str, Any] | None = None,
    candidates: list[tuple[str, str]] | None = None,
    check_accuracy: bool = True,
    keep: bool = True,
) -> dict[str, Any]:
    """Export every candidate, time the verified ones, keep the fastest (module docstring).

    ``out_path``: the kept file's path without suffix (the suffix of the winner's format is added), e.g.
    ``export/mobilenet_v2_x1_0_auto``. ``batch``: timing batch size. Returns the table as a dict with
    ``kept`` (path or None), ``best`` (row) and ``candidates`` (rows); writes ``.auto.json``/``.auto.md``.
    ``keep=False`` (``bench --auto``): the table only, no file kept.
    """
    out_path = Path(out_path)
    out_dir = out_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(f"--batch must be an integer >= 1, got {batch!r}")
    pairs = candidates if candidates is not None else auto_candidates()
    if not pairs:
        raise MissingBackendError("no deployment runtime is installed: pip install 'mobilecnn[deploy]'")
    started = time.time()
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.{os.getpid()}.", suffix=".auto", dir=out_dir))
    x_time = verify_images[:1].expand(batch, *verify_images.shape[1:]).numpy().copy()  # owns its memory
    # one shared-memory copy of the model and the images for all the candidates' processes
    model, example, verify_images, calibration, check_images, check_labels = (
        None if v is None else shared_copy(v) for v in (model, example, verify_images, calibration, check_images,
                                                     check_labels))
    workers: dict[str, TimingWorker] = {}
    try:
        for fmt, precision in pairs:
            name = f"{FORMATS[fmt].runtime} {precision}"
            row: dict[str, Any] = {"candidate": name, "format": fmt, "runtime": FORMATS[fmt].runtime,
                                   "precision": precision, "status": "refused"}
            path = work / f"{fmt}_{precision}{FORMATS[fmt].suffix}"
            log = work / f"{fmt}_{precision}.log"
            t0 = time.time()
            ex = example[:1].expand(batch, *example.shape[1:]).contiguous() if fmt == "executorch" else example
            try:
                row.update(call_in_child(
                    _export_candidate, model, fmt, path, log=log, example=ex, verify_images=verify_images,
                    precision=precision, calibration=calibration if precision == "int8" else None,
                    check_images=check_images if precision != "fp32" else None,
                    check_labels=check_labels if precision != "fp32" else None,
                    max_drop=max_drop, threads=threads, check_accuracy=check_accuracy,
                    sidecar={**(sidecar or {}), "format": fmt, "int8": precision == "int8"}))
            except ChildCrashed as exc:
                row["why"] = f"the export process {exc}"[:600]
            except RuntimeError as exc:  # an unexpected error in one exporter must not stop the others
                row["why"] = f"export failed: {str(exc)[:400]}"
            if row["status"] != "refused":
                row["path"] = str(path)
                # without the labelled check (bench --auto on untrained names) bf16/int8 are timed, not verified
                if not check_accuracy and precision != "fp32":
                    row["status"] = "accuracy not checked"
                try:
                    workers[name] = TimingWorker(path, threads=threads, x=x_time, log=log)
                except (ChildCrashed, RuntimeError) as exc:
                    row.update(status="refused", why=f"could not be loaded for timing: {exc}"[:600])
            if row["status"] == "refused":
                row["why"] = row.get("why", "").replace(str(work) + os.sep, "")
            row["export_s"] = round(time.time() - t0, 1)
            rows.append(row)
        timing = paired_rounds({n: w.burst for n, w in workers.items()}, seconds=seconds)
        per_round = timing["per_round_ms"]
        for worker in workers.values():
            worker.close()
        workers.clear()
        for r in rows:
            if r["candidate"] in timing["failed"]:
                r.update(status="refused", why=f"the runtime process {timing['failed'][r['candidate']]} while timing")
        verified = [r for r in rows if r["status"] in ("verified", "accuracy not checked")]
        for r in verified:
            r["latency_ms"] = timing["median_ms"][r["candidate"]]
        verified.sort(key=lambda r: r["latency_ms"])
        best = verified[0] if verified else None
        fp32 = [r for r in verified if r["precision"] == "fp32"]
        for r in verified:
            r["ratio_to_best"] = list(bootstrap_ratio(per_round[r["candidate"]], per_round[best["candidate"]]))
            if fp32:
                r["ratio_to_best_fp32"] = list(bootstrap_ratio(per_round[r["candidate"]],
                                                               per_round[fp32[0]["candidate"]]))
        kept = None
        if best is not None and keep:
            fmt = FORMATS[best["format"]]
            src = Path(best["path"])
            kept = out_path.with_name(out_path.name + fmt.suffix)
            for f in [src.with_suffix(c) for c in fmt.companions]:
                os.replace(f, kept.with_suffix(f.suffix))
            side = Path(str(src) + SIDECAR_SUFFIX)
            if side.is_file():
                data = json.loads(side.read_text())
                data.setdefault("report", {})["path"] = str(kept)
                data["auto"] = {k: best.get(k) for k in ("candidate", "runtime", "precision", "latency_ms",
                                                         "calibration", "float_layers")}
                atomic_write_text(str(kept) + SIDECAR_SUFFIX, json.dumps(data, indent=2, default=str) + "\n")
            os.replace(src, kept)
        for r in rows:
            r.pop("path", None)
        result = {"model": (sidecar or {}).get("model", ""), "kept": str(kept) if kept else None, "best": best, "threads": threads, "batch": batch,
                  "max_drop": max_drop, "timing_rounds": timing["rounds"], "seconds": round(time.time() - started, 1),
                  "candidates": rows}
        table = out_path.with_name(out_path.name + ".auto")
        atomic_write_text(str(table) + ".json", json.dumps(result, indent=2, default=str) + "\n")
        atomic_write_text(str(table) + ".md", auto_markdown(result))
        result["table_json"], result["table_md"] = str(table) + ".json", str(table) + ".md"
        return result
    finally:
        for worker in workers.values():
            worker.close()
        shutil.rmtree(work, ignore_errors=True)


def auto_markdown(result: dict[str, Any]) -> str:
    lines = [f"# export --format auto: {result.get('model', '')}".rstrip(), "",
             f"batch {result['batch']}, {result['threads']} thread(s), max drop {result['max_drop']:g} pt, "
             f"{result['timing_rounds']} paired timing rounds, {result['seconds']:.0f} s in all.", ""]
    best = result.get("best")
    if best:
        lines += [f"Kept: **{best['candidate']}** ({best['latency_ms']:.3f} ms)"
                  + (f" -> `{Path(result['kept']).name}`" if result.get("kept") else ""), ""]
    else:
        lines += ["No candidate passed verification: nothing kept.", ""]
    lines += ["| candidate | status | latency (ms) | x best [95% CI] | x fp32 | top-1 (drop) | size (KiB) | "
              "calibration / float layers | why refused |", "|---|---|---|---|---|---|---|---|---|"]
    def key(r: dict[str, Any]) -> float:
        return r.get("latency_ms", float("inf"))
    for r in sorted(result["candidates"], key=key):
        lat = f"{r['latency_ms']:.3f}" if "latency_ms" in r else "-"
        rb = r.get("ratio_to_best")
        ratio = f"{rb[0]:.2f} [{rb[1]:.2f}, {rb[2]:.2f}]" if rb else "-"
        rf = r.get("ratio_to_best_fp32")
        rfp = f"{rf[0]:.2f}" if rf else "-"
        acc = f"{r['top1']:.2f} ({r['drop']:+.2f})" if "top1" in r else (f"drop {r['drop']:+.2f}" if "drop" in r else "-")
        size = f"{r['file_bytes'] / 1024:.0f}" if "file_bytes" in r else "-"
        cal = r.get("calibration") or ""
        if r.get("float_layers"):
            cal += f" + {len(r['float_layers'])} float: {', '.join(r['float_layers'])}"
        why = (r.get("why") or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['candidate']} | {r['status']} | {lat} | {ratio} | {rfp} | {acc} | {size} | {cal or '-'} | "
                     f"{why or '-'} |")
    return "\n".join(lines) + "\n"
