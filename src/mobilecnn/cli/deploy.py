"""``mobilecnn export``, ``predict`` and ``bench``: from a run to a verified device file and its predictions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..bench import run_bench
from ..deploy.export import PRECISIONS, export_run
from ..deploy.formats import FORMATS
from ..deploy.predict import iter_predictions, load_predictor
from ..errors import UsageError
from .console import err, error, out, safe
from .options import int_list, number, positive_int

__all__ = ["add_parsers"]


def _cmd_export(args: argparse.Namespace) -> int:
    if args.int8 and args.precision not in (None, "int8"):
        raise UsageError(f"--int8 contradicts --precision {args.precision}")
    precision = "int8" if args.int8 else (args.precision or "fp32")
    what = "every runtime x precision (auto)" if args.format == "auto" else f"{args.format} {precision}"
    with err.status(f"exporting {safe(args.run)} to {what} and verifying it"):
        result = export_run(args.run, args.format, args.out, precision=precision,
                            calibration_data=args.calibration_data, data_dir=args.data_dir,
                            calibration_count=args.calibration_count, max_drop=args.max_drop,
                            threads=args.threads, batch=args.batch, seconds=args.seconds,
                            candidates=args.candidates)
    if args.json:
        out(json.dumps(result, indent=2, default=str))
        return 0
    if args.format == "auto":
        out(Path(result["table_md"]).read_text(), end="")
        if not result["kept"]:
            error("no candidate passed verification; see the table")
            return 1
        out(f"kept {safe(result['kept'])}; candidates table: {safe(result['table_json'])}, {safe(result['table_md'])}")
        return 0
    out(f"wrote {safe(result['path'])} ({result['file_bytes'] / 2**20:.2f} MiB, {args.format}, {precision})")
    out(f"verified against PyTorch on real images: max |logit diff| {result['max_abs_diff']:.3g}, "
          f"relative {result['rel_diff']:.3g}, top-1 agreement {100 * result['top1_agreement']:.2f}%")
    int8 = result.get("int8_report")
    if int8:
        out(f"{precision} accuracy check: fp32 top-1 {int8['fp32_top1']:.2f}%, {precision} top-1 "
            f"{int8['int8_top1']:.2f}% (drop {int8['drop']:.2f} pt) on {int8['images']} test images")
    if result.get("calibration") and precision == "int8":
        floats = result.get("float_layers") or []
        out(f"int8 calibration: {result['calibration']}" + (f"; kept in float: {', '.join(floats)}" if floats else ""))
    for note in result.get("notes") or []:
        out(f"note: {safe(note)}")
    out(f"preprocessing and labels: {safe(result['sidecar'])}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.auto:
        from ..bench import run_bench_auto

        with err.status("auto: exporting and timing every runtime x precision"):
            results = run_bench_auto(args.targets, threads=args.threads[0], batch=args.batch[0],
                                     resolution=args.resolution, small_input=args.small_input, out_dir=args.out)
        for r in results:
            out(Path(r["table_md"]).read_text(), end="")
            out(f"wrote {r['table_json']} and {r['table_md']}")
        return 0
    with err.status("benchmarking (warm-up, then timed runs)"):
        rows, outputs = run_bench(args.targets, backends=args.backend, threads=args.threads, batches=args.batch,
                                  resolution=args.resolution, small_input=args.small_input, out_dir=args.out,
                                  repeats=args.repeats, device=args.device)
    out(Path(outputs["md"]).read_text(), end="")
    out(f"wrote {outputs['json']}, {outputs['md']} and {outputs['png']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    predictor = load_predictor(args.model, threads=args.threads, device=args.device)
    count, failed, records = 0, 0, []
    for r in iter_predictions(args.images, predictor, topk=args.topk):
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
        raise UsageError(f"no image files found in {', '.join(safe(i) for i in args.images)}")
    if args.json:
        out(json.dumps({"model": predictor.source, "predictions": records}, indent=2))
    return 1 if failed else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="fold BN, export, and verify against PyTorch on real images")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=[*FORMATS, "auto"],
                   help="auto: every installed runtime x precision, verified and timed; keeps the fastest")
    p.add_argument("--precision", choices=list(PRECISIONS), default=None,
                   help="fp32 (default), bf16 (openvino, CPUs with bf16), int8 (calibrated on real training images)")
    p.add_argument("--int8", action="store_true", help="same as --precision int8")
    p.add_argument("--batch", type=int, default=1, help="auto: batch size the candidates are timed at")
    p.add_argument("--seconds", type=float, default=2.0, help="auto: seconds of timing per candidate")
    p.add_argument("--candidates", nargs="+", choices=list(FORMATS), default=None, metavar="FORMAT",
                   help=f"auto: try only these formats ({', '.join(FORMATS)}; default: every installed one), "
                        "e.g. the runtimes the target device has")
    p.add_argument("--calibration-data", default=None, help="dataset for calibration (default: the training set)")
    p.add_argument("--calibration-count", type=int, default=512)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-drop", type=float, default=0.5,
                   help="refuse bf16/int8 losing more top-1 points than this (int8 first tries other calibrations "
                        "and keeps the most sensitive layers in float)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="output file (default RUN_DIR/export/MODEL[_int8].EXT)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="latency/throughput on each backend, torchvision reference rows included")
    p.add_argument("targets", nargs="*", metavar="MODEL_OR_RUN_DIR",
                   help="registered names and/or run directories (default: shufflenet_v1_g3_x1_0 mobilenet_v2_x1_0)")
    p.add_argument("--backend", nargs="+", default=["eager", "onnxruntime"],
                   help="eager compiled onnxruntime openvino executorch (and *_int8 variants)")
    p.add_argument("--threads", type=int_list, default=[1], help="comma-separated, e.g. 1,2")
    p.add_argument("--batch", type=int_list, default=[1], help="comma-separated, e.g. 1,32")
    p.add_argument("--resolution", type=int, default=None, help="default 224 (a run directory: its training resolution)")
    p.add_argument("--small-input", action="store_true")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--auto", action="store_true",
                   help="the export --format auto table (every runtime x precision, paired timing) for each target")
    p.add_argument("--out", default="bench", help="output directory for JSON, Markdown and PNG")
    p.add_argument("--device", default="cpu", help="where the eager/compiled rows run: auto, cpu, cuda, cuda:N or "
                   "mps (default: cpu; exported files always run on the CPU)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("predict", help="top-k labels of image files (a directory: every image in it)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, help="run directory, .safetensors, or an exported file")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="auto", help="run directories and .safetensors: auto, cpu, cuda, cuda:N or "
                   "mps (default: auto; exported files run on the CPU)")
    p.set_defaults(func=_cmd_predict)
