"""``mobilecnn export``, ``predict`` and ``bench``: from a run to a verified device file and its predictions.

Each command's options come from its config dataclass (:class:`~mobilecnn.deploy.run_export.RunExportConfig`,
:class:`~mobilecnn.deploy.predict.PredictConfig`, :class:`~mobilecnn.deploy.bench.BenchConfig`); the
command line adds only presentation (``--json``) and the ``--int8`` alias of ``--precision int8``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.text import Text

from ..deploy.bench import BenchConfig, run_bench, run_bench_auto
from ..deploy.predict import PredictConfig, Predictor, iter_predictions, load_predictor
from ..deploy.predict_boxes import DEFAULT_SCORE, RESULTS_FILE, check_score_threshold, iter_box_predictions
from ..deploy.predict_masks import DEFAULT_OUT, iter_mask_predictions
from ..deploy.run_export import RunExportConfig, export_run
from ..errors import UsageError
from .commands import help_of
from .console import err, error, out, safe
from .options import add_config_arguments, add_json_option, config_from_args

__all__ = ["add_parsers"]


def _export_config(args: argparse.Namespace) -> RunExportConfig:
    config: RunExportConfig = config_from_args(RunExportConfig, args)
    if args.int8:
        if config.precision not in (None, "int8"):
            raise UsageError(f"--int8 contradicts --precision {config.precision}")
        config = dataclasses.replace(config, precision="int8")
    return config


def _print_agreement(result: dict[str, Any]) -> None:
    boxes = result.get("box_agreement")
    if boxes:
        out(f"verified against PyTorch on real images: max |raw output diff| {result['max_abs_diff']:.3g}, relative "
            f"{result['rel_diff']:.3g}; detections scoring >= {boxes['score_threshold']:g}: PyTorch "
            f"{boxes['reference']}, file {boxes['file']}, {boxes['matched']} paired (same class, IoU >= "
            f"{boxes['iou_threshold']:g}) on {boxes['images']} images")
        return
    per = "per-pixel class" if result.get("pixel_agreement") is not None else "top-1"
    out(f"verified against PyTorch on real images: max |logit diff| {result['max_abs_diff']:.3g}, "
        f"relative {result['rel_diff']:.3g}, {per} agreement {100 * result['top1_agreement']:.2f}%")


def _print_export(result: dict[str, Any], fmt: str, precision: str) -> None:
    out(f"wrote {safe(result['path'])} ({result['file_bytes'] / 2**20:.2f} MiB, {fmt}, {precision})")
    _print_agreement(result)
    check = result.get("int8_report")
    if check and "fp32_map" in check:
        out(f"{precision} accuracy check: fp32 mAP {check['fp32_map']:.2f}%, {precision} mAP {check['int8_map']:.2f}% "
            f"(drop {check['drop']:.2f} pt) on {check['images']} val images")
    elif check and "fp32_miou" in check:
        out(f"{precision} accuracy check: fp32 mIoU {check['fp32_miou']:.2f}%, {precision} mIoU "
            f"{check['int8_miou']:.2f}% (drop {check['drop']:.2f} pt) on {check['images']} val images")
    elif check:
        out(f"{precision} accuracy check: fp32 top-1 {check['fp32_top1']:.2f}%, {precision} top-1 "
            f"{check['int8_top1']:.2f}% (drop {check['drop']:.2f} pt) on {check['images']} test images")
    if result.get("calibration") and precision == "int8":
        floats = result.get("float_layers") or []
        out(f"int8 calibration: {result['calibration']}" + (f"; kept in float: {', '.join(floats)}" if floats else ""))
    for note in result.get("notes") or []:
        out(f"note: {safe(note)}")
    out(f"preprocessing and labels: {safe(result['sidecar'])}")


def _cmd_export(args: argparse.Namespace) -> int:
    config = _export_config(args)
    precision = config.precision or "fp32"
    what = "every runtime x precision (auto)" if config.format == "auto" else f"{config.format} {precision}"
    options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if f.name not in ("run", "format", "out")}
    with err.status(f"exporting {safe(config.run)} to {what} and verifying it"):
        result = export_run(config.run, config.format, config.out, **options)
    if args.json:
        out(json.dumps(result, indent=2, default=str))
        return 0
    if config.format != "auto":
        _print_export(result, config.format, precision)
        return 0
    out(Path(result["table_md"]).read_text(), end="")
    if not result["kept"]:
        error("no candidate passed verification; see the table")
        return 1
    out(f"kept {safe(result['kept'])}; candidates table: {safe(result['table_json'])}, {safe(result['table_md'])}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    config: BenchConfig = config_from_args(BenchConfig, args)
    if config.auto:
        with err.status("auto: exporting and timing every runtime x precision"):
            results = run_bench_auto(config)
        for r in results:
            out(Path(r["table_md"]).read_text(), end="")
            out(f"wrote {safe(r['table_json'])} and {safe(r['table_md'])}")
        return 0
    with err.status("benchmarking (warm-up, then timed runs)"):
        _, outputs = run_bench(config)
    out(Path(outputs["md"]).read_text(), end="")
    out(f"wrote {safe(outputs['json'])}, {safe(outputs['md'])} and {safe(outputs['png'])}")
    return 0


def _each_prediction(config: PredictConfig, results: Iterable[Any], as_json: bool,
                     show: Callable[[Any], None]) -> tuple[list[dict], int]:
    """Per image of a dense prediction (masks or boxes): its error or note, ``show`` unless ``--json``; returns the
    records (``--json``) and the count of failed images. No image at all is a usage error."""
    count, failed, records = 0, 0, []
    for r in results:
        count += 1
        if as_json:
            records.append(r.to_dict())
        if r.error:
            failed += 1
            error(r.error)
            continue
        if r.note:
            err.print(Text("note: " + safe(r.note)))
        if not as_json:
            show(r)
    if count == 0:
        raise UsageError(f"no image files found in {', '.join(safe(i) for i in config.images)}")
    return records, failed


def _predict_masks(config: PredictConfig, predictor: Predictor, as_json: bool) -> int:
    """``predict`` with a segmentation model: per image its class shares and the mask and overlay written."""
    out_dir = config.out or DEFAULT_OUT

    def show(r: Any) -> None:
        shares = ", ".join(f"{safe(label)} {share:.1%}" for label, share in r.shares)
        out(f"{safe(r.path)}: {shares} -> {safe(r.mask)}, {safe(r.overlay)}")

    records, failed = _each_prediction(config, iter_mask_predictions(config.images, predictor, out_dir), as_json, show)
    if as_json:
        out(json.dumps({"model": predictor.source, "task": "segmentation", "out": out_dir,
                        "predictions": records}, indent=2))
    return 1 if failed else 0


def _predict_boxes(config: PredictConfig, predictor: Predictor, as_json: bool) -> int:
    """``predict`` with a detector: per image its detections and the box image written, then detections.json."""
    out_dir = config.out or DEFAULT_OUT

    def show(r: Any) -> None:
        out(f"{safe(r.path)}: {len(r.detections)} detection(s) scoring >= {config.score_threshold:g} -> "
            f"{safe(r.boxes)}")
        for label, score, (x1, y1, x2, y2) in r.detections:
            out(f"  {safe(label)} {score:.3f} [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")

    predictions = iter_box_predictions(config.images, predictor, out_dir, config.score_threshold)
    records, failed = _each_prediction(config, predictions, as_json, show)
    results = str(Path(out_dir) / RESULTS_FILE)
    if as_json:
        out(json.dumps({"model": predictor.source, "task": "detection", "out": out_dir, "results": results,
                        "score_threshold": config.score_threshold, "predictions": records}, indent=2))
    else:
        out(f"boxes are x1, y1, x2, y2 in each image's pixels; COCO results: {safe(results)}")
    return 1 if failed else 0


def _cmd_predict(args: argparse.Namespace) -> int:
    config: PredictConfig = config_from_args(PredictConfig, args)
    check_score_threshold(config.score_threshold)
    predictor = load_predictor(config.model, threads=config.threads, device=config.device)
    if predictor.task == "segmentation":
        return _predict_masks(config, predictor, args.json)
    if predictor.task == "detection":
        return _predict_boxes(config, predictor, args.json)
    if config.out is not None:
        err.print(Text("note: --out is for segmentation and detection models; " + safe(predictor.source) + " is a "
                       "classifier: nothing is written"))
    if config.score_threshold != DEFAULT_SCORE:
        err.print(Text("note: --score-threshold is for detection models; " + safe(predictor.source) + " is a "
                       "classifier"))
    count, failed, records = 0, 0, []
    for r in iter_predictions(config.images, predictor, topk=config.topk):
        count += 1
        if args.json:
            records.append(r.to_dict())
        if r.error:
            failed += 1
            error(r.error)
        elif not args.json:
            best = ", ".join(f"{safe(label)} {p:.1%}" for label, p in r.top)
            out(f"{safe(r.path)}: {best}")
    if count == 0:
        raise UsageError(f"no image files found in {', '.join(safe(i) for i in config.images)}")
    if args.json:
        out(json.dumps({"model": predictor.source, "predictions": records}, indent=2))
    return 1 if failed else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help=help_of("export"))
    add_config_arguments(p, RunExportConfig)
    p.add_argument("--int8", action="store_true", help="same as --precision int8")
    add_json_option(p, "the export report")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help=help_of("bench"))
    add_config_arguments(p, BenchConfig)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("predict", help=help_of("predict"))
    add_config_arguments(p, PredictConfig)
    add_json_option(p, "the predictions")
    p.set_defaults(func=_cmd_predict)
