"""``mobilecnn train``, ``eval`` and ``reproduce``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ..evaluate import evaluate_run
from ..reproduce import FULL, QUICK, rebuild_report, run_reproduce
from ..train import TrainConfig, train
from rich.text import Text

from .console import err, out, safe
from .options import add_config_arguments, config_from_args, positive_int

__all__ = ["add_parsers"]


class _TrainProgress:
    """Rich progress bar fed by :func:`mobilecnn.train.train`'s callback."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=False,
        )
        self.task = None

    def __call__(self, event: str, info: dict) -> None:
        if event == "start":
            s = info["settings"]
            data = info["info"]
            err.print(Text(
                f"{safe(data.name)}: {data.train_size} train / {data.val_size} val images, {data.num_classes} classes, "
                f"{data.resolution}px | recipe {s['recipe']}: lr {s['lr']:.4g} {s['schedule']}, wd {s['weight_decay']:g}, "
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
            val = f", val top-1 {info['val_top1']:.2f}%" if "val_top1" in info else ""
            self.progress.console.print(
                f"epoch {info['epoch']:.2f}: train loss {info['train_loss']:.4f}, acc {info['train_accuracy']:.2f}%"
                f"{val}, {info['train_img_per_s']:.0f} img/s", highlight=False)
        elif event == "end":
            self.progress.stop()

    def close(self) -> None:
        self.progress.stop()


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
    else:
        out(f"done: run directory {safe(result['run_dir'])}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_run(args.run, data=args.data, data_dir=args.data_dir, batch_size=args.batch_size,
                          subset=args.subset, out_dir=args.out, prefer_ema=not args.no_ema, workers=args.workers,
                          device=args.device)
    if args.json:
        out(json.dumps({k: v for k, v in result.items()}, indent=2))
        return 0
    out(f"{result['model']} ({result['weights']} weights) on {safe(result['data'])}: {result['samples']} images")
    out(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    names = [safe(c) for c in result["class_names"]]
    width = max(len(c) for c in names)
    for name, acc in zip(names, result["per_class_accuracy"]):
        out(f"  {name.ljust(width)}  {acc:6.2f}%")
    out("wrote " + " and ".join(safe(p) for p in result["outputs"].values()))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    plan = FULL if args.full else QUICK
    if args.report_only:
        summary = rebuild_report(args.out or f"reports/{plan.name}")
        out(f"report: {summary['report']}")
        return 0
    plan = dataclasses.replace(plan, seeds=args.seeds or plan.seeds, threads=args.threads, device=args.device,
                               auto=args.auto or plan.auto)
    out_dir = args.out or f"reports/{plan.name}"
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=err)
    tasks: dict[str, int] = {}

    def on_event(event: str, info: dict) -> None:
        if event in ("model", "done") and "models" not in tasks:
            tasks["models"] = progress.add_task("models", total=info["total"], stats="")
        if event == "model":
            progress.update(tasks["models"], completed=info["index"], stats=f"{info['key']} seed {info['seed']}")
        elif event == "train:start":
            if "train" in tasks:
                progress.remove_task(tasks["train"])
            tasks["train"] = progress.add_task("  training", total=info["total_steps"], completed=info["step"], stats="")
        elif event == "train:step" and "train" in tasks:
            progress.update(tasks["train"], completed=info["step"],
                            stats=f"loss {info['loss']:.3f} {info['img_per_s']:.0f} img/s")
        elif event == "done":
            reused = " (recorded earlier)" if info.get("reused") else ""
            progress.update(tasks["models"], completed=info["index"] + 1, stats=f"{info['key']}: {info['top1']:.2f}%{reused}")

    with progress:
        summary = run_reproduce(plan, out_dir, progress=on_event)
    out(Path(summary["report"]).read_text(), end="")
    out(f"\nreport: {summary['report']}")
    for name, path in summary["plots"].items():
        out(f"plot ({name}): {path}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (Fashion-MNIST by default); works under torchrun")
    add_config_arguments(p, TrainConfig)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5/per-class accuracy and confusion matrix of a trained run")
    p.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--data", default=None, help="dataset (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--subset", type=int, default=None, help="evaluate on N validation images")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/eval)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even when EMA weights exist")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("reproduce", help="test the papers' claims (Tables 3 and 5) on Fashion-MNIST; writes a report")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a reduced set that finishes in minutes (default)")
    mode.add_argument("--full", action="store_true", help="3 levels of Table 5, Table 3, 3 seeds (about 85 min on 2 cores)")
    p.add_argument("--seeds", type=positive_int, default=None, help="override the number of seeds")
    p.add_argument("--auto", action="store_true",
                   help="also `export --format auto` each seed-0 run: the fastest verified file's latency, runtime and "
                        "precision beside fp32's (adds ~5 min per model on 2 busy cores; measured 4.8 min)")
    p.add_argument("--threads", type=positive_int, default=None, help="training threads (default: the free cores)")
    p.add_argument("--out", default=None, help="output directory (default reports/quick or reports/full)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite report.md and the plots from OUT/results.json without training")
    p.add_argument("--device", default="auto", help="training device: auto, cpu, cuda, cuda:N or mps (default: auto; "
                   "latency is always measured on the CPU)")
    p.set_defaults(func=_cmd_reproduce)

