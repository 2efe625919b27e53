"""``mobilecnn train``, ``eval`` and ``reproduce``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..evaluate import EvalConfig, run_eval
from ..reproduce_plan import ReproduceConfig
from ..train import TrainConfig, train
from .commands import help_of
from .console import err, out, safe
from .options import add_config_arguments, add_json_option, config_from_args

__all__ = ["add_parsers"]


class _TrainProgress:
    """Rich progress bar fed by :func:`mobilecnn.train.train`'s callback."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=err, transient=False,
        )
        self.task: TaskID | None = None

    def __call__(self, event: str, info: dict) -> None:
        if event == "start":
            s = info["settings"]
            data = info["info"]
            err.print(Text(
                f"{safe(data.name)}: {data.train_size} train / {data.val_size} val images, {data.num_classes} classes, "
                f"{data.resolution}px | recipe {s['recipe']}: lr {s['lr']:.4g} {s['schedule']}, "
                f"wd {s['weight_decay']:g}, "
                f"label smoothing {s['label_smoothing']:g}, EMA {s['ema'] or 'off'} | {s['world_size']} process(es) x "
                f"{s['threads_per_process']} thread(s) | device {s.get('device', 'cpu')}"
                f"{' AMP ' + s['amp_dtype'] if s.get('amp_dtype') else ''}{' compiled' if s.get('compile') else ''}"))
            if info.get("resumed_from"):
                err.print(Text(f"resuming from {safe(info['resumed_from'])} (step {info['step']})"))
            self.progress.start()
            self.task = self.progress.add_task("train", total=info["total_steps"], completed=info["step"], stats="")
        elif event == "step" and self.task is not None:
            self.progress.update(
                self.task, completed=info["step"], description=f"epoch {info['epoch'] + 1}",
                stats=f"loss {info['loss']:.3f} acc {info['accuracy']:.1f}% {info['img_per_s']:.0f} img/s",
            )
        elif event == "epoch":
            self.progress.console.print(
                f"epoch {info['epoch']:.2f}: train loss {info['train_loss']:.4f}, acc {info['train_accuracy']:.2f}%"
                f"{_val_text(info)}, {info['train_img_per_s']:.0f} img/s", highlight=False)
        elif event == "end":
            self.progress.stop()

    def close(self) -> None:
        self.progress.stop()


def _val_text(info: dict) -> str:
    """The validation figures of an epoch record: top-1 (classifiers) or mIoU and pixel accuracy (segmenters)."""
    if info.get("val_top1") is not None:
        return f", val top-1 {info['val_top1']:.2f}%"
    if info.get("val_miou") is not None:
        return f", val mIoU {info['val_miou']:.2f}% (pixel accuracy {info['val_pixel_accuracy']:.2f}%)"
    if info.get("val_mAP") is not None:
        return f", val mAP {info['val_mAP']:.2f}% (AP50 {info['val_AP50']:.2f}%)"
    return ""


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(TrainConfig, args)
    bar = _TrainProgress()
    try:
        result = train(cfg, callback=bar)
    finally:
        bar.close()
    if result.get("note"):
        out(f"note: {result['note']}")
    if result.get("compile_time_s") is not None:
        out(f"torch.compile took {result['compile_time_s']:.1f} s (the first step; not counted in the training time)")
    if result.get("val_top1") is not None:
        out(f"done: val top-1 {result['val_top1']:.2f}% (top-5 {result['val_top5']:.2f}%); run directory "
            f"{safe(result['run_dir'])}")
    elif result.get("val_miou") is not None:
        out(f"done: val mIoU {result['val_miou']:.2f}% (pixel accuracy {result['val_pixel_accuracy']:.2f}%); run "
            f"directory {safe(result['run_dir'])}")
    elif result.get("val_mAP") is not None:
        out(f"done: val mAP {result['val_mAP']:.2f}% (AP50 {result['val_AP50']:.2f}%); run directory "
            f"{safe(result['run_dir'])}")
    else:
        out(f"done: run directory {safe(result['run_dir'])}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    result = run_eval(config_from_args(EvalConfig, args))
    if args.json:
        out(json.dumps({k: v for k, v in result.items()}, indent=2))
        return 0
    if result.get("task") == "segmentation":
        return _print_segmentation_eval(result)
    if result.get("task") == "detection":
        return _print_detection_eval(result)
    out(f"{result['model']} ({result['weights']} weights) on {safe(result['data'])}: {result['samples']} images")
    out(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    names = [safe(c) for c in result["class_names"]]
    width = max(len(c) for c in names)
    for name, acc in zip(names, result["per_class_accuracy"]):
        out(f"  {name.ljust(width)}  {acc:6.2f}%")
    out("wrote " + " and ".join(safe(p) for p in result["outputs"].values()))
    return 0


def _print_segmentation_eval(result: dict) -> int:
    scales = "multi-scale + flip" if result["flip"] or len(result["scales"]) > 1 else "single scale"
    out(f"{result['model']} ({result['weights']} weights) on {safe(result['data'])}: {result['images']} images, "
        f"{scales}")
    miou = "n/a" if result["miou"] is None else f"{result['miou']:.2f}%"
    out(f"mIoU {miou}  pixel accuracy {result['pixel_accuracy']:.2f}%  loss {result['loss']:.4f}")
    names = [safe(c) for c in result["class_names"]]
    width = max(len(c) for c in names)
    for name, iou in zip(names, result["per_class_iou"]):
        out(f"  {name.ljust(width)}  " + ("   n/a" if iou is None else f"{iou:6.2f}%"))
    out("wrote " + " and ".join(safe(p) for p in result["outputs"].values()))
    return 0


def _print_detection_eval(result: dict) -> int:
    out(f"{result['model']} ({result['weights']} weights) on {safe(result['data'])}: {result['images']} images at "
        f"{result['resolution']} px, {result['detections']} detections")
    out(f"mAP {result['mAP']:.2f}%  AP50 {result['AP50']:.2f}%  AP75 {result['AP75']:.2f}%  AP small "
        f"{result['AP_small']:.2f}%  medium {result['AP_medium']:.2f}%  large {result['AP_large']:.2f}%  "
        f"loss {result['loss']:.4f}")
    names = [safe(c) for c in result["per_class_ap"]]
    width = max((len(c) for c in names), default=1)
    for name, ap in zip(names, result["per_class_ap"].values()):
        out(f"  {name.ljust(width)}  " + ("   n/a" if ap is None else f"{ap:6.2f}%"))
    out("wrote " + " and ".join(safe(p) for p in result["outputs"].values()))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from ..reproduce import rebuild_report, run_reproduce  # the sections load when the command runs

    cfg = config_from_args(ReproduceConfig, args)
    if cfg.report_only:
        summary = rebuild_report(cfg.out_dir)
        out(f"report: {summary['report']}")
        return 0
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=err)
    tasks: dict[str, TaskID] = {}

    def on_event(event: str, info: dict) -> None:
        if event in ("model", "done") and "models" not in tasks:
            tasks["models"] = progress.add_task("models", total=info["total"], stats="")
        if event == "model":
            progress.update(tasks["models"], completed=info["index"], stats=f"{info['key']} seed {info['seed']}")
        elif event == "train:start":
            if "train" in tasks:
                progress.remove_task(tasks["train"])
            tasks["train"] = progress.add_task("  training", total=info["total_steps"], completed=info["step"],
                                               stats="")
        elif event == "train:step" and "train" in tasks:
            progress.update(tasks["train"], completed=info["step"],
                            stats=f"loss {info['loss']:.3f} {info['img_per_s']:.0f} img/s")
        elif event == "done":
            reused = " (recorded earlier)" if info.get("reused") else ""
            progress.update(tasks["models"], completed=info["index"] + 1,
                            stats=f"{info['key']}: {info['top1']:.2f}%{reused}")

    with progress:
        summary = run_reproduce(cfg.plan(), cfg.out_dir, progress=on_event)
    out(Path(summary["report"]).read_text(), end="")
    out(f"\nreport: {summary['report']}")
    for name, path in summary["plots"].items():
        out(f"plot ({name}): {path}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=help_of("train"))
    add_config_arguments(p, TrainConfig)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help=help_of("eval"))
    add_config_arguments(p, EvalConfig)
    add_json_option(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("reproduce", help=help_of("reproduce"))
    add_config_arguments(p, ReproduceConfig)
    p.set_defaults(func=_cmd_reproduce)

