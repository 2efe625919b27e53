"""Issue 22 aim: the deployed OS 16 MobileNetV2 segmenter from ``export --format auto`` at most 0.55x the plain
ONNX export of the same architecture in onnxruntime fp32 (batch 1, 1 thread, paired on one machine).

``RUN`` is a trained ``deeplabv3_mobilenet_v2_x1_0`` run (``make demo`` leaves one at
``runs/demo/runs/seg-mnv2_os16-seed0``). ``auto`` goes the user's road: :func:`export_run` with ``fmt="auto"``
(every installed runtime x precision, each verified per pixel against PyTorch, bf16/int8 judged by their mIoU
drop on the run's val scenes, the fastest kept). The plain path is ``torch.onnx.export`` of the same trained
model as it is (BN unfolded, no mobilecnn transform) in an onnxruntime session with default options. A second
plain copy is the control: its ratio to the first shows the resolution of a file-vs-file ratio.

    python benchmarks/seg_deploy_speed.py RUN [--seconds 20] [--out benchmarks/results/seg_deploy_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from mobilecnn.data.images import Preprocessing
from mobilecnn.data.names import segmentation_folder
from mobilecnn.data.segmentation_samples import segmentation_samples
from mobilecnn.deploy.formats import load_runtime
from mobilecnn.deploy.run_export import export_run
from mobilecnn.deploy.timing import bootstrap_ratio, machine_info, paired_times
from mobilecnn.files import atomic_write_text
from mobilecnn.runs.rundir import load_trained

AIM = 0.55
THREADS = 1


def plain_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path):
    import onnxruntime as ort

    with torch.no_grad():
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda a: session.run(None, {name: a})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seconds", type=float, default=20.0, help="paired timing budget per candidate")
    parser.add_argument("--auto-seconds", type=float, default=1.0, help="auto's timing budget per candidate")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/seg_deploy_speed.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(THREADS)
    loaded = load_trained(args.run)
    pre = Preprocessing.for_dataset(loaded.data)
    folder = segmentation_folder(str(loaded.data.get("name")))
    x = segmentation_samples(folder, pre.resolution, "val", 1, preprocessing=pre)[0]
    a = x.numpy()
    start_load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        auto = export_run(args.run, "auto", Path(tmp) / "auto", threads=THREADS, seconds=args.auto_seconds)
        auto_s = time.time() - t0
        if not auto.get("kept"):
            raise SystemExit(f"auto kept no file: {auto.get('candidates')}")
        fns = {"plain onnx fp32": plain_onnx(loaded.model, x, Path(tmp) / "plain.onnx"),
               "plain onnx fp32, second copy": plain_onnx(loaded.model, x, Path(tmp) / "plain2.onnx")}
        runtime = load_runtime(Path(auto["kept"]), threads=THREADS, trusted=True)
        fns["mobilecnn auto"] = lambda arr: runtime(arr)
        t = paired_times({k: (lambda f=f: f(a)) for k, f in fns.items()}, seconds=args.seconds,
                         max_other_load=0.15)
    per = t["per_round_ms"]

    def ratio(num: str, den: str) -> dict:
        med, lo, hi = bootstrap_ratio(per[num], per[den])
        return {"median": med, "ci95": [lo, hi]}

    best = auto.get("best") or {}
    result = {"run": str(args.run), "model": loaded.model_name, "resolution": pre.resolution,
              "auto_choice": best.get("candidate"), "auto_miou": best.get("miou"), "auto_drop": best.get("drop"),
              "auto_seconds": round(auto_s, 1), "rounds": t["rounds"], "median_ms": t["median_ms"],
              "auto_vs_plain": ratio("mobilecnn auto", "plain onnx fp32"),
              "control": ratio("plain onnx fp32, second copy", "plain onnx fp32"),
              "candidates": [{k: r.get(k) for k in ("candidate", "status", "latency_ms", "miou", "drop", "why")}
                             for r in auto["candidates"]],
              "loadavg_start": start_load, "machine": machine_info()}
    result["aim_held"] = result["auto_vs_plain"]["ci95"][1] <= AIM
    atomic_write_text(args.out, json.dumps(result, indent=2, default=str) + "\n")
    text = markdown(result, str(args.run))
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict, run: str) -> str:
    r, c = result["auto_vs_plain"], result["control"]
    medians = ", ".join(f"{k} {v:.2f}" for k, v in result["median_ms"].items())
    lines = [f"# Segmentation deploy speed: {result['model']} at {result['resolution']} px, batch 1, {THREADS} thread",
             "", f"{result['machine'].get('cpu')}; load average at start {result['loadavg_start'][0]:.2f}; "
             f"{result['rounds']} paired rounds. Command: `python benchmarks/seg_deploy_speed.py {run}`.", "",
             f"- auto kept **{result['auto_choice']}** (val mIoU {_num(result['auto_miou'])}%, drop "
             f"{_num(result['auto_drop'])} pt) after {result['auto_seconds']:.0f} s",
             f"- median ms: {medians}",
             f"- auto / plain ONNX fp32: **{r['median']:.3f}** [95% CI {r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]; "
             f"aim <= {AIM}: {'held' if result['aim_held'] else 'not held'}",
             f"- control (second plain copy / plain): {c['median']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]", "",
             "| candidate | status | latency (ms) | mIoU (%) | drop (pt) | why |", "|---|---|---:|---:|---:|---|"]
    for row in result["candidates"]:
        lines.append(f"| {row['candidate']} | {row['status']} | {_num(row.get('latency_ms'))} | "
                     f"{_num(row.get('miou'))} | {_num(row.get('drop'))} | {(row.get('why') or '')[:80]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
