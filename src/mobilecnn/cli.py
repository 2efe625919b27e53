"""``mobilecnn`` command line: a thin layer over the library. Only this module prints."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console

__all__ = ["main", "build_parser", "UserError"]


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit status 2."""


_err = Console(stderr=True, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _cmd_list(args: argparse.Namespace) -> int:
    from . import list_models

    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches {args.pattern!r}; try `mobilecnn list` for all names")
    for name in names:
        print(name)
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from . import create_model, profile, published

    model = create_model(args.name, small_input=args.small_input, in_chans=args.in_chans)
    result = profile(model, args.resolution)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    header = ("layer", "kind", "output", "MACs", "params", "standard conv", "separable", "saving")
    rows = [
        (
            row.name, row.kind, "x".join(map(str, row.output_shape[1:])), f"{row.macs:,}", f"{row.params:,}",
            "" if row.standard_conv_macs is None else f"{row.standard_conv_macs:,}",
            "" if row.separable_conv_macs is None else f"{row.separable_conv_macs:,}",
            "" if row.saving is None else f"{row.saving:.1f}x",
        )
        for row in result.layers
    ]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print(f"{result.model} @ {result.resolution}px (block rows: seed's cost of a standard 3x3 conv F^2 D K^2 C, "
          "of a depthwise separable conv F^2 D (K^2 + C), saving = standard / actual)")
    for r in [header] + rows:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    pub = published(args.name)
    ref = pub.macs.get(args.resolution) if (pub and not args.small_input) else None
    print(f"MACs: {result.macs / 1e6:.2f} M" + (f" (published {ref:g} M)" if ref else ""))
    print(f"params: {result.params / 1e6:.3f} M, without BN {result.params_without_bn / 1e6:.3f} M")
    print(f"peak activation memory (batch 1, fp32): {result.peak_activation_bytes / 2**20:.2f} MiB")
    return 0


def _cmd_tables(args: argparse.Namespace) -> int:
    from .tables import tables_markdown

    text = tables_markdown()
    if args.out:
        from .utils import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


class _TrainProgress:
    """Rich progress bar fed by :func:`mobilecnn.train.train`'s callback."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=_err, transient=False,
        )
        self.task = None

    def __call__(self, event: str, info: dict) -> None:
        if event == "start":
            s = info["settings"]
            data = info["info"]
            _err.print(
                f"{data.name}: {data.train_size} train / {data.val_size} val images, {data.num_classes} classes, "
                f"{data.resolution}px | recipe {s['recipe']}: lr {s['lr']:.4g} {s['schedule']}, wd {s['weight_decay']:g}, "
                f"label smoothing {s['label_smoothing']:g}, EMA {s['ema'] or 'off'} | {s['world_size']} process(es) x "
                f"{s['threads_per_process']} thread(s)", highlight=False,
            )
            if info.get("resumed_from"):
                _err.print(f"resuming from {info['resumed_from']} (step {info['step']})", highlight=False)
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
    from .train import TrainConfig, train

    cfg = TrainConfig(
        model=args.model, data=args.data, data_dir=args.data_dir, out=args.out or f"runs/{args.model}",
        recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        schedule=args.schedule, warmup=args.warmup, label_smoothing=args.label_smoothing, ema=args.ema,
        channels_last=args.channels_last, amp=args.amp, seed=args.seed, resume=args.resume, subset=args.subset,
        val_subset=args.val_subset, resolution=args.resolution, checkpoint_every=args.checkpoint_every,
        workers=args.workers, on_corrupt=args.on_corrupt, threads=args.threads, max_steps=args.max_steps,
        small_input=args.small_input, crop_padding=args.crop_padding,
    )
    bar = _TrainProgress()
    try:
        result = train(cfg, callback=bar)
    finally:
        bar.close()
    if result.get("val_top1") is not None:
        print(f"done: val top-1 {result['val_top1']:.2f}% (top-5 {result['val_top5']:.2f}%); run directory {result['run_dir']}")
    else:
        print(f"done: run directory {result['run_dir']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    result = evaluate_run(args.run, data=args.data, data_dir=args.data_dir, batch_size=args.batch_size,
                          subset=args.subset, out_dir=args.out, prefer_ema=not args.no_ema, workers=args.workers)
    if args.json:
        print(json.dumps({k: v for k, v in result.items()}, indent=2))
        return 0
    print(f"{result['model']} ({result['weights']} weights) on {result['data']}: {result['samples']} images")
    print(f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    width = max(len(c) for c in result["class_names"])
    for name, acc in zip(result["class_names"], result["per_class_accuracy"]):
        print(f"  {name.ljust(width)}  {acc:6.2f}%")
    print(f"wrote {result['outputs']['json']} and {result['outputs']['confusion_png']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .deploy import export_run

    with _err.status(f"exporting {args.run} to {args.format}{' int8' if args.int8 else ''} and verifying it"):
        result = export_run(args.run, args.format, args.out, int8=args.int8, calibration_data=args.calibration_data,
                            data_dir=args.data_dir, calibration_count=args.calibration_count, max_drop=args.max_drop,
                            threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"wrote {result['path']} ({result['file_bytes'] / 2**20:.2f} MiB, {args.format}{', int8' if args.int8 else ''})")
    print(f"verified against PyTorch on real images: max |logit diff| {result['max_abs_diff']:.3g}, "
          f"relative {result['rel_diff']:.3g}, top-1 agreement {100 * result['top1_agreement']:.2f}%")
    int8 = result.get("int8_report")
    if int8:
        print(f"int8 accuracy check: fp32 top-1 {int8['fp32_top1']:.2f}%, int8 top-1 {int8['int8_top1']:.2f}% "
              f"(drop {int8['drop']:.2f} pt) on {int8['images']} test images")
    for note in result.get("notes") or []:
        print(f"note: {note}")
    print(f"preprocessing and labels: {result['sidecar']}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    with _err.status("benchmarking (warm-up, then timed runs)"):
        rows, outputs = run_bench(args.targets, backends=args.backend, threads=args.threads, batches=args.batch,
                                  resolution=args.resolution, small_input=args.small_input, out_dir=args.out,
                                  repeats=args.repeats)
    print(Path(outputs["md"]).read_text(), end="")
    print(f"wrote {outputs['json']}, {outputs['md']} and {outputs['png']}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .reproduce import FULL, QUICK, rebuild_report, run_reproduce

    plan = FULL if args.full else QUICK
    if args.report_only:
        summary = rebuild_report(args.out or f"reports/{plan.name}")
        print(f"report: {summary['report']}")
        return 0
    plan = dataclasses.replace(plan, seeds=args.seeds or plan.seeds, threads=args.threads)
    out = args.out or f"reports/{plan.name}"
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=_err)
    tasks: dict[str, int] = {}

    def on_event(event: str, info: dict) -> None:
        if event == "model":
            if "models" not in tasks:
                tasks["models"] = progress.add_task("models", total=info["total"], stats="")
            progress.update(tasks["models"], completed=info["index"], stats=f"{info['key']} seed {info['seed']}")
        elif event == "train:start":
            if "train" in tasks:
                progress.remove_task(tasks["train"])
            tasks["train"] = progress.add_task("  training", total=info["total_steps"], completed=info["step"], stats="")
        elif event == "train:step" and "train" in tasks:
            progress.update(tasks["train"], completed=info["step"],
                            stats=f"loss {info['loss']:.3f} {info['img_per_s']:.0f} img/s")
        elif event == "done":
            progress.update(tasks["models"], advance=1, stats=f"{info['key']}: {info['top1']:.2f}%")

    with progress:
        summary = run_reproduce(plan, out, progress=on_event)
    print(Path(summary["report"]).read_text(), end="")
    print(f"\nreport: {summary['report']}")
    for name, path in summary["plots"].items():
        print(f"plot ({name}): {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import load_predictor, predict_files

    predictor = load_predictor(args.model, threads=args.threads)
    results = predict_files(args.images, predictor, topk=args.topk)
    if not results:
        raise UserError(f"no image files found in {', '.join(args.images)}")
    failed = [r for r in results if r.error]
    if args.json:
        print(json.dumps({"model": predictor.source, "predictions": [r.to_dict() for r in results]}, indent=2))
    else:
        for r in results:
            if r.error:
                continue
            best = ", ".join(f"{label} {p:.1%}" for label, p in r.top)
            print(f"{r.path}: {best}")
    for r in failed:
        _err.print(f"[bold red]error:[/] {_escape(r.error)}", highlight=False)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="mobilecnn", description="ShuffleNet v1, MobileNetV2 and MobileNet V1: exact models, complexity, training, export."
    )
    parser.add_argument("--version", action="version", version=f"mobilecnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list registered models (optionally matching a wildcard PATTERN)")
    p.add_argument("pattern", nargs="?", default=None, metavar="PATTERN")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("profile", help="MACs, params, peak activation memory and per-layer table of a model")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--resolution", type=int, default=None, help="input side in pixels (224, or 32 with --small-input)")
    p.add_argument("--small-input", action="store_true", help="the 28-64 px stem of SPEC.md")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("tables", help="regenerate the papers' complexity tables beside the published figures")
    p.add_argument("--out", default=None, help="write the Markdown to this file instead of stdout")
    p.set_defaults(func=_cmd_tables)

    p = sub.add_parser("train", help="train a model (Fashion-MNIST by default); works under torchrun")
    p.add_argument("--model", required=True, help="registered model name (see `mobilecnn list`)")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, cifar10, cifar100, or a folder with train/ and val/")
    p.add_argument("--data-dir", default=None, help="where Fashion-MNIST/CIFAR live (default: $MOBILECNN_DATA_DIR or "
                   "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--out", default=None, help="run directory (default runs/MODEL)")
    p.add_argument("--recipe", default=None, help="fast (default on small datasets), shufflenet, mobilenetv2")
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch, kept under torchrun (default: the recipe's: fast 64, shufflenet/mobilenetv2 256)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's, scaled by batch)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--schedule", default=None, choices=["linear", "cosine", "onecycle", "exponential", "constant"])
    p.add_argument("--warmup", type=float, default=None, help="warm-up epochs")
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--ema", type=float, default=None, help="EMA decay (0 = off)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --out")
    p.add_argument("--subset", type=int, default=None, help="train on N images (a seeded random subset)")
    p.add_argument("--val-subset", type=int, default=None)
    p.add_argument("--resolution", type=int, default=None, help="image side (default 32 for small datasets, 224 for folders)")
    p.add_argument("--small-input", action=argparse.BooleanOptionalAction, default=None,
                   help="small-image stem (default: on for resolution <= 64)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--crop-padding", type=int, default=None, help="random-crop padding in pixels (small datasets)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for image folders")
    p.add_argument("--on-corrupt", choices=["skip", "error"], default="skip", help="corrupt images in a folder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (smoke runs)")
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
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="fold BN, export, and verify against PyTorch on real images")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "openvino", "executorch"])
    p.add_argument("--int8", action="store_true", help="post-training int8, calibrated on real training images")
    p.add_argument("--calibration-data", default=None, help="dataset for calibration (default: the training set)")
    p.add_argument("--calibration-count", type=int, default=512)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-drop", type=float, default=0.5, help="refuse int8 losing more top-1 points than this")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="output file (default RUN_DIR/export/MODEL[_int8].EXT)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="latency/throughput on each backend, torchvision reference rows included")
    p.add_argument("targets", nargs="*", metavar="MODEL_OR_RUN_DIR",
                   help="registered names and/or run directories (default: shufflenet_v1_g3_x1_0 mobilenet_v2_x1_0)")
    p.add_argument("--backend", nargs="+", default=["eager", "onnxruntime"],
                   help="eager compiled onnxruntime openvino executorch (and *_int8 variants)")
    p.add_argument("--threads", type=_int_list, default=[1], help="comma-separated, e.g. 1,2")
    p.add_argument("--batch", type=_int_list, default=[1], help="comma-separated, e.g. 1,32")
    p.add_argument("--resolution", type=int, default=None, help="default 224 (a run directory: its training resolution)")
    p.add_argument("--small-input", action="store_true")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default="bench", help="output directory for JSON, Markdown and PNG")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("reproduce", help="test the papers' claims (Tables 3 and 5) on Fashion-MNIST; writes a report")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a reduced set that finishes in minutes (default)")
    mode.add_argument("--full", action="store_true", help="3 levels of Table 5, Table 3, 3 seeds (about 85 min on 2 cores)")
    p.add_argument("--seeds", type=_positive_int, default=None, help="override the number of seeds")
    p.add_argument("--threads", type=_positive_int, default=None, help="training threads (default: the free cores)")
    p.add_argument("--out", default=None, help="output directory (default reports/quick or reports/full)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite report.md and the plots from OUT/results.json without training")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("predict", help="top-k labels of image files (a directory: every image in it)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, help="run directory, .safetensors, or an exported file")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "profile" and args.resolution is None:
        args.resolution = 32 if args.small_input else 224
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UserError, ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError) as exc:
        _err.print(f"[bold red]error:[/] {_escape(str(exc))}", highlight=False, markup=True)
        return 2
    except OSError as exc:  # disk full, read-only output...
        _err.print(f"[bold red]error:[/] {_escape(str(exc))}", highlight=False, markup=True)
        return 1
    except RuntimeError as exc:
        from .train import NonFiniteLossError

        if isinstance(exc, NonFiniteLossError):
            _err.print(f"[bold red]error:[/] {_escape(str(exc))}", highlight=False, markup=True)
            return 3
        raise
    except ImportError as exc:  # an optional backend that is not installed: its message says what to install
        from .runtime import MissingBackendError

        if not isinstance(exc, MissingBackendError):
            raise
        _err.print(f"[bold red]error:[/] {_escape(str(exc))}", highlight=False, markup=True)
        return 2
    except KeyboardInterrupt:
        _err.print("interrupted")
        return 130
    except BrokenPipeError:  # `mobilecnn tables | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
