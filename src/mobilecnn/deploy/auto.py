"""``export --format auto``: the fastest verified file for this machine.

For every installed runtime x every precision it supports here (fp32; bf16 on OpenVINO where the CPU
has bf16 instructions; int8 on onnxruntime, OpenVINO and ExecuTorch) :func:`auto_export`:

1. exports and verifies the candidate with :func:`mobilecnn.deploy.export.export_model` (fp32 against
   PyTorch's logits; bf16 and int8 by their top-1 drop on real held-out images -- a segmentation model's
   fp32 also by its per-pixel classes, its bf16/int8 by their mIoU drop on (image, mask) pairs; a detector's
   fp32 by its detections, its bf16/int8 by their COCO mAP drop -- int8 with its calibration / float-layer
   fallback), into a staging folder, each in its own child process;
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
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ExportVerificationError, Int8AccuracyError, MissingBackendError, UsageError
from ..files import atomic_write_text
from ..validators import check_number, check_positive_int
from .boxes import MapReport
from .dense import MiouReport
from .export import ExportConfig, ExportImages, export_model
from .formats import FORMATS, SIDECAR_SUFFIX, Format, installed_formats
from .precision import DEFAULT_MAX_DROP
from .staging import staging_folder
from .timing import bootstrap_ratio, paired_rounds
from .workers import ChildCrashed, TimingWorker, call_in_child, shared_copy

__all__ = ["AutoConfig", "auto_candidates", "auto_export", "auto_markdown"]


#: Seconds of paired timing per candidate.
DEFAULT_SECONDS = 2.0


@dataclass(frozen=True)
class AutoConfig:
    """``--format auto``: candidates judged with ``max_drop`` and verified at ``threads``, timed at ``batch``
    for about ``seconds`` each; ``candidates``: (format, precision) pairs (default: :func:`auto_candidates`);
    ``check_accuracy=False``: latency only (bf16/int8 not judged); ``keep=False``: the table only."""

    max_drop: float = DEFAULT_MAX_DROP
    threads: int = 1
    batch: int = 1
    seconds: float = DEFAULT_SECONDS
    candidates: tuple[tuple[str, str], ...] | None = None
    check_accuracy: bool = True
    keep: bool = True


def auto_candidates(formats: list[str] | None = None) -> list[tuple[str, str]]:
    """(format, precision) pairs worth trying on this machine, in table order; ``formats``: only these."""
    installed = installed_formats()
    if formats is not None:
        unknown = [f for f in formats if f not in FORMATS]
        if unknown:
            raise UsageError(f"unknown format {unknown[0]!r}; accepted: {', '.join(FORMATS)}")
        names = [f.name for f in installed]
        missing = [f for f in formats if f not in names]
        if missing:
            raise MissingBackendError(f"{missing[0]} is not installed here (installed: {', '.join(names) or 'none'}); "
                                      "pip install 'mobilecnn[deploy]'")
    return [(fmt.name, p) for fmt in installed if formats is None or fmt.name in formats for p in fmt.precisions_here()]


def _export_candidate(model: nn.Module, path: Path, images: ExportImages, config: ExportConfig,
                      sidecar: dict[str, Any]) -> dict[str, Any]:
    """One candidate's export and verification (run in a child process); the row fields it settles."""
    try:
        report = export_model(model, path, images, config, sidecar=sidecar)
    except (ExportVerificationError, Int8AccuracyError, MissingBackendError, UsageError) as exc:
        row: dict[str, Any] = {"status": "refused", "why": str(exc)[:600]}
        acc = getattr(exc, "report", None)
        if acc is not None and hasattr(acc, "drop"):
            row["drop"] = acc.drop
        return row
    row = {"status": "verified", "file_bytes": report.file_bytes, "rel_diff": report.rel_diff,
           "top1_agreement": report.top1_agreement, "calibration": report.calibration,
           "float_layers": report.float_layers}
    if report.pixel_agreement is not None:  # a segmentation model: top1_agreement is per pixel
        row["pixel_agreement"] = report.pixel_agreement
    if report.box_agreement is not None:  # a detector: top1_agreement is the share of detections paired
        row["box_agreement"] = report.box_agreement["agreement"]
    acc = report.int8_report
    if isinstance(acc, MiouReport):
        row.update(miou=acc.int8_miou, fp32_miou=acc.fp32_miou, drop=acc.drop)
    elif isinstance(acc, MapReport):
        row.update(map=acc.int8_map, fp32_map=acc.fp32_map, drop=acc.drop)
    elif acc is not None:
        row.update(top1=acc.int8_top1, fp32_top1=acc.fp32_top1, drop=acc.drop)
    return row


def _candidate_images(images: ExportImages, fmt: Format, precision: str, config: AutoConfig) -> ExportImages:
    """What one candidate's export gets: a static-batch format is traced at the timing batch."""
    ex = images.example[:1].expand(config.batch, *images.example.shape[1:]).contiguous() if fmt.static_batch \
        else images.example
    judged = precision != "fp32" and config.check_accuracy
    return ExportImages(ex, images.verify, images.calibration if precision == "int8" else None,
                        images.check if judged else None, images.check_labels if judged else None)


def _export_all(model: nn.Module, images: ExportImages, config: AutoConfig, work: Path,
                sidecar: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Export and verify every candidate, each in its own process; the rows and the verified files."""
    rows, files = [], {}
    for name, precision in config.candidates or ():
        fmt = FORMATS[name]
        label = f"{fmt.runtime} {precision}"
        row: dict[str, Any] = {"candidate": label, "format": name, "runtime": fmt.runtime, "precision": precision,
                               "status": "refused"}
        path = work / f"{name}_{precision}{fmt.suffix}"
        export_config = ExportConfig(name, precision, max_drop=config.max_drop, threads=config.threads,
                                     check_accuracy=config.check_accuracy)
        t0 = time.time()
        try:
            row.update(call_in_child(_export_candidate, model, path, _candidate_images(images, fmt, precision, config),
                                     export_config, {**sidecar, "format": name}, log=path.with_suffix(".log")))
        except ChildCrashed as exc:
            row["why"] = f"the export process {exc}"[:600]
        except RuntimeError as exc:  # an unexpected error in one exporter must not stop the others
            row["why"] = f"export failed: {str(exc)[:400]}"
        if row["status"] != "refused":
            files[label] = path
            if not config.check_accuracy and precision != "fp32":  # bench --auto on untrained names
                row["status"] = "accuracy not checked"
        else:
            row["why"] = row.get("why", "").replace(str(work) + os.sep, "")
        row["export_s"] = round(time.time() - t0, 1)
        rows.append(row)
    return rows, files


def _time_all(rows: list[dict[str, Any]], files: dict[str, Path], x: Any, config: AutoConfig) -> dict[str, Any]:
    """Load every verified file in its own timing process and time them paired; fill the rows' latency."""
    workers: dict[str, TimingWorker] = {}
    try:
        for r in rows:
            if r["candidate"] in files:
                try:
                    workers[r["candidate"]] = TimingWorker(files[r["candidate"]], threads=config.threads, x=x,
                                                           log=files[r["candidate"]].with_suffix(".log"))
                except (ChildCrashed, RuntimeError) as exc:
                    r.update(status="refused", why=f"could not be loaded for timing: {exc}"[:600])
        timing = paired_rounds({n: w.burst for n, w in workers.items()}, seconds=config.seconds)
    finally:
        for worker in workers.values():
            worker.close()
    for r in rows:
        if r["candidate"] in timing["failed"]:
            r.update(status="refused", why=f"the runtime process {timing['failed'][r['candidate']]} while timing")
        elif r["candidate"] in timing["median_ms"]:
            r["latency_ms"] = timing["median_ms"][r["candidate"]]
    return timing


def _rank(rows: list[dict[str, Any]], per_round: dict[str, list[float]]) -> dict[str, Any] | None:
    """Sort the timed rows, add their ratios to the best and to the best fp32; the best row."""
    timed = sorted((r for r in rows if "latency_ms" in r), key=lambda r: r["latency_ms"])
    if not timed:
        return None
    best = timed[0]
    fp32 = [r for r in timed if r["precision"] == "fp32"]
    for r in timed:
        r["ratio_to_best"] = list(bootstrap_ratio(per_round[r["candidate"]], per_round[best["candidate"]]))
        if fp32:
            r["ratio_to_best_fp32"] = list(bootstrap_ratio(per_round[r["candidate"]], per_round[fp32[0]["candidate"]]))
    return best


def _keep(best: dict[str, Any], src: Path, out_path: Path) -> Path:
    """Move the best candidate's file(s) and sidecar next to where the user asked."""
    fmt = FORMATS[best["format"]]
    kept = out_path.with_name(out_path.name + fmt.suffix)
    for companion in fmt.companions:
        os.replace(src.with_suffix(companion), kept.with_suffix(companion))
    side = Path(str(src) + SIDECAR_SUFFIX)
    if side.is_file():
        data = json.loads(side.read_text())
        data.setdefault("report", {})["path"] = str(kept)
        data["auto"] = {k: best.get(k) for k in ("candidate", "runtime", "precision", "latency_ms", "calibration",
                                                 "float_layers")}
        atomic_write_text(str(kept) + SIDECAR_SUFFIX, json.dumps(data, indent=2, default=str) + "\n")
    os.replace(src, kept)
    return kept


def _check_auto(config: AutoConfig) -> AutoConfig:
    check_positive_int(config.batch, "--batch")
    check_number(config.seconds, "--seconds", above=0)
    check_number(config.max_drop, "--max-drop", minimum=0)
    pairs = config.candidates if config.candidates is not None else tuple(auto_candidates())
    if not pairs:
        raise MissingBackendError("no deployment runtime is installed: pip install 'mobilecnn[deploy]'")
    return replace(config, candidates=tuple(pairs))


def auto_export(model: nn.Module, out_path: str | Path, images: ExportImages, config: AutoConfig,
                sidecar: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export every candidate, time the verified ones, keep the fastest (module docstring).

    ``out_path``: the kept file's path without suffix (the suffix of the winner's format is added), e.g.
    ``export/mobilenet_v2_x1_0_auto``. Returns the table as a dict with ``kept`` (path or None), ``best``
    (row) and ``candidates`` (rows); writes ``.auto.json``/``.auto.md`` beside the kept file
    (``.auto.refused.json``/``.md`` when none was kept: an earlier table stays with its file).
    """
    out_path = Path(out_path)
    config = _check_auto(config)
    started = time.time()
    x = images.verify[:1].expand(config.batch, *images.verify.shape[1:]).numpy().copy()  # owns its memory
    # one shared-memory copy of the model and the images for all the candidates' processes
    model = shared_copy(model)
    images = ExportImages(shared_copy(images.example), shared_copy(images.verify), *(
        None if v is None else shared_copy(v) for v in (images.calibration, images.check, images.check_labels)))
    with staging_folder(out_path, "auto") as work:
        rows, files = _export_all(model, images, config, work, sidecar or {})
        timing = _time_all(rows, files, x, config)
        best = _rank(rows, timing["per_round_ms"])
        kept = _keep(best, files[best["candidate"]], out_path) if best is not None and config.keep else None
    result = {"model": (sidecar or {}).get("model", ""), "kept": str(kept) if kept else None, "best": best,
              "threads": config.threads, "batch": config.batch, "max_drop": config.max_drop,
              "timing_rounds": timing["rounds"], "seconds": round(time.time() - started, 1), "candidates": rows}
    # a search that kept nothing must not replace the table of the file an earlier search kept beside it
    table = out_path.with_name(out_path.name + (".auto" if kept or not config.keep else ".auto.refused"))
    atomic_write_text(str(table) + ".json", json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(str(table) + ".md", auto_markdown(result))
    result["table_json"], result["table_md"] = str(table) + ".json", str(table) + ".md"
    return result


def auto_markdown(result: dict[str, Any]) -> str:
    seg = any("miou" in r or "pixel_agreement" in r for r in result["candidates"])
    det = any("map" in r or "box_agreement" in r for r in result["candidates"])
    metric = "mIoU" if seg else "mAP" if det else "top-1"
    lines = [f"# export --format auto: {result.get('model', '')}".rstrip(), "",
             f"batch {result['batch']}, {result['threads']} thread(s), max drop {result['max_drop']:g} "
             f"{'pt' if metric == 'top-1' else metric + ' pt'}, "
             f"{result['timing_rounds']} paired timing rounds, {result['seconds']:.0f} s in all.", ""]
    best = result.get("best")
    if best:
        lines += [f"Kept: **{best['candidate']}** ({best['latency_ms']:.3f} ms)"
                  + (f" -> `{Path(result['kept']).name}`" if result.get("kept") else ""), ""]
    else:
        lines += ["No candidate passed verification: nothing kept.", ""]
    lines += [f"| candidate | status | latency (ms) | x best [95% CI] | x fp32 | {metric} (drop) | "
              "size (KiB) | calibration / float layers | why refused |", "|---|---|---|---|---|---|---|---|---|"]
    def key(r: dict[str, Any]) -> float:
        return r.get("latency_ms", float("inf"))
    for r in sorted(result["candidates"], key=key):
        lat = f"{r['latency_ms']:.3f}" if "latency_ms" in r else "-"
        rb = r.get("ratio_to_best")
        ratio = f"{rb[0]:.2f} [{rb[1]:.2f}, {rb[2]:.2f}]" if rb else "-"
        rf = r.get("ratio_to_best_fp32")
        rfp = f"{rf[0]:.2f}" if rf else "-"
        score = r.get("miou", r.get("map", r.get("top1")))
        acc = f"{score:.2f} ({r['drop']:+.2f})" if score is not None else \
            (f"drop {r['drop']:+.2f}" if "drop" in r else "-")
        size = f"{r['file_bytes'] / 1024:.0f}" if "file_bytes" in r else "-"
        cal = r.get("calibration") or ""
        if r.get("float_layers"):
            cal += f" + {len(r['float_layers'])} float: {', '.join(r['float_layers'])}"
        why = (r.get("why") or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {r['candidate']} | {r['status']} | {lat} | {ratio} | {rfp} | {acc} | {size} | {cal or '-'} | "
                     f"{why or '-'} |")
    return "\n".join(lines) + "\n"
