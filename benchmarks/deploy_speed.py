"""Issue 4 performance check: batch 1, one thread, 224 px, every deployment path.

Targets, each as the ratio of medians to torchvision ``mobilenet_v2()`` in plain eager mode (BN
unfolded, NCHW) measured in the same run:

* best fp32 deployed path (compiled / onnxruntime / OpenVINO / ExecuTorch) of ``mobilenet_v2_x1_0``
  <= 0.30x;
* best fp32 deployed path of ``shufflenet_v1_g3_x1_0`` <= 0.25x;
* best valid int8 path of ``mobilenet_v2_x1_0`` <= 0.15x (int8 files calibrated on random images:
  latency only; OpenVINO int8 is invalid for ShuffleNet g=3, see MEASURED.md);
* achieved GFLOP/s of the best fp32 MobileNetV2 path (2 x 300.8 M MACs = 601.5 MFLOP per image)
  >= 50% of this core's fp32 GEMM peak, measured here with ``torch.mm`` 2048^3 on one thread;
* ShuffleNet 1x g=3 vs MobileNetV2 1.0 vs MobileNet V1 0.5 on each backend (ShuffleNet Table 5
  compares against MobileNet V1; the papers' phone latencies are in SPEC.md).

Writes ``benchmarks/results/deploy_speed.{json,md,png}``. Runs in < 10 min on 2 cores; ``--quick``
(no torch.compile, shorter timing) in ~3-5 min. Numbers on a shared VM move +-30% between runs
(MEASURED.md): the load average is recorded with every row; rerun on an idle machine for final figures.

Usage: ``python benchmarks/deploy_speed.py [--quick] [--out-dir DIR] [--min-time S]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's GEMM yardstick on one thread, set before import
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from mobilecnn.bench import (  # noqa: E402
    REFERENCE_BACKEND,
    REFERENCE_MODEL,
    BenchRow,
    bench_markdown,
    benchmark,
    time_callable,
    write_bench_outputs,
)
from mobilecnn.runs.files import atomic_write_text  # noqa: E402

MODELS = ["mobilenet_v2_x1_0", "shufflenet_v1_g3_x1_0", "mobilenet_v1_x0_5"]
FP32_DEPLOYED = ["compiled", "onnxruntime", "openvino", "executorch"]
INT8 = ["onnxruntime_int8", "openvino_int8", "executorch_int8"]
TARGETS = {"mobilenet_v2_fp32": 0.30, "shufflenet_g3_fp32": 0.25, "mobilenet_v2_int8": 0.15, "gemm_fraction": 0.50}


def gemm_peak(repeats: int) -> dict[str, float]:
    """fp32 GFLOP/s of a 2048^3 GEMM on one thread: ``torch.mm`` (MKL; MEASURED.md: 159 on its Intel
    Xeon) and, as a second yardstick, numpy's ``@`` (OpenBLAS): MKL is known to pick slow code paths on
    AMD CPUs, where it can fall well below what the core does. ``best_gflops`` is the higher of the two."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    flop = 2.0 * n ** 3
    mm = time_callable(lambda: torch.mm(a, b), warmup=2, repeats=repeats, min_time_s=0.0)
    npm = time_callable(lambda: an @ bn, warmup=2, repeats=repeats, min_time_s=0.0)
    torch_best, numpy_best = flop / min(mm) / 1e9, flop / min(npm) / 1e9
    return {"torch_mm_gflops": torch_best, "torch_mm_median_gflops": flop / statistics.median(mm) / 1e9,
            "numpy_matmul_gflops": numpy_best, "best_gflops": max(torch_best, numpy_best), "runs": len(mm)}


def best(rows: list[BenchRow], model: str, backends: list[str]) -> BenchRow | None:
    cands = [r for r in rows if r.model == model and r.backend in backends and r.median_ms is not None and r.valid]
    return min(cands, key=lambda r: r.median_ms) if cands else None


def summarise(rows: list[BenchRow], peak: dict[str, float]) -> dict:
    refs = [r for r in rows if r.model == REFERENCE_MODEL and r.backend == REFERENCE_BACKEND and r.median_ms]
    ref = min(refs, key=lambda r: r.median_ms) if refs else None  # timed first and last; the faster is the base
    ref_min = min(r.min_ms for r in refs) if refs else None

    def entry(row: BenchRow | None, target: float) -> dict:
        if row is None or ref is None:
            return {"backend": None, "ratio": None, "target": target, "met": None}
        return {"backend": row.backend, "median_ms": row.median_ms, "min_ms": row.min_ms,
                "ratio": row.ratio_to_reference, "ratio_of_min": row.min_ms / ref_min, "target": target,
                "met": row.ratio_to_reference <= target}

    mnv2 = best(rows, "mobilenet_v2_x1_0", FP32_DEPLOYED)
    summary = {
        "reference": {"model": REFERENCE_MODEL, "backend": REFERENCE_BACKEND,
                      "median_ms": ref.median_ms if ref else None, "min_ms": ref_min,
                      "medians_first_last": [r.median_ms for r in refs]},
        "mobilenet_v2_fp32": entry(mnv2, TARGETS["mobilenet_v2_fp32"]),
        "shufflenet_g3_fp32": entry(best(rows, "shufflenet_v1_g3_x1_0", FP32_DEPLOYED), TARGETS["shufflenet_g3_fp32"]),
        "mobilenet_v2_int8": entry(best(rows, "mobilenet_v2_x1_0", INT8), TARGETS["mobilenet_v2_int8"]),
        "gemm_peak": peak,
    }
    if mnv2 is not None:
        flop = 2.0 * mnv2.macs
        achieved = flop / (mnv2.median_ms / 1e3) / 1e9
        achieved_min = flop / (mnv2.min_ms / 1e3) / 1e9
        summary["mobilenet_v2_gflops"] = {
            "mflop_per_image": flop / 1e6, "backend": mnv2.backend, "gflops_at_median": achieved,
            "gflops_at_min": achieved_min, "fraction_of_peak": achieved / peak["best_gflops"],
            "fraction_of_peak_at_min": achieved_min / peak["best_gflops"], "target": TARGETS["gemm_fraction"],
            "met": achieved / peak["best_gflops"] >= TARGETS["gemm_fraction"]}
    per_backend: dict[str, dict[str, float | None]] = {}
    for r in rows:
        if r.model in MODELS:
            per_backend.setdefault(r.backend, {})[r.model] = r.median_ms if r.valid else None
    summary["per_backend_median_ms"] = per_backend
    return summary


def summary_markdown(s: dict, meta: dict) -> str:
    def line(key: str, label: str) -> str:
        e = s[key]
        if e.get("ratio") is None:
            return f"| {label} | - | - | <= {e['target']:.2f}x | not measured |"
        return (f"| {label} | {e['backend']} | {e['median_ms']:.2f} ms ({e['ratio']:.3f}x; min {e['ratio_of_min']:.3f}x) "
                f"| <= {e['target']:.2f}x | {'met' if e['met'] else 'NOT met'} |")

    ref = s["reference"]
    out = [
        "# Deployment speed (issue 4): batch 1, 1 thread, 224 px",
        "",
        f"Machine: {meta.get('cpu')}; torch {meta.get('torch')}, onnxruntime {meta.get('onnxruntime')}, "
        f"openvino {meta.get('openvino')}, executorch {meta.get('executorch')}. Load average before/after: "
        f"{meta.get('loadavg_start')} / {meta.get('loadavg_end')}. Mode: {meta.get('mode')}, wall {meta.get('wall_s'):.0f} s.",
        "",
        "Ratios are medians over the median of torchvision mobilenet_v2 eager (BN unfolded, NCHW) in the same run, "
        "timed first and last, the faster used "
        f"({' / '.join(f'{v:.2f}' for v in ref['medians_first_last'])} ms median, {ref['min_ms']:.2f} ms min)."
        if ref["median_ms"] else "Reference missing.",
        "",
        "| check | best path | time (ratio) | target | |",
        "|---|---|---|---|---|",
        line("mobilenet_v2_fp32", "MobileNetV2 1.0 fp32"),
        line("shufflenet_g3_fp32", "ShuffleNet 1x g=3 fp32"),
        line("mobilenet_v2_int8", "MobileNetV2 1.0 int8 (latency only)"),
    ]
    g = s.get("mobilenet_v2_gflops")
    peak = s["gemm_peak"]
    if g:
        out.append(f"| MobileNetV2 fp32 GFLOP/s vs GEMM peak | {g['backend']} | {g['gflops_at_median']:.1f} GFLOP/s = "
                   f"{100 * g['fraction_of_peak']:.0f}% of {peak['best_gflops']:.0f} (at min: "
                   f"{100 * g['fraction_of_peak_at_min']:.0f}%) | >= 50% | {'met' if g['met'] else 'NOT met'} |")
        out += ["", f"GEMM yardsticks (2048^3 fp32, 1 thread, best of runs before/after): torch.mm (MKL) "
                f"{peak['torch_mm_gflops']:.1f}/{peak.get('torch_mm_gflops_after', float('nan')):.1f} GFLOP/s, numpy "
                f"(OpenBLAS) {peak['numpy_matmul_gflops']:.1f}/{peak.get('numpy_matmul_gflops_after', float('nan')):.1f}. "
                "Above 100% means the yardstick GEMM is below this core's real peak (MKL on AMD CPUs), not that "
                "the network beats it."]
    out += ["", "## ShuffleNet 1x g=3 vs MobileNetV2 1.0 vs MobileNet V1 0.5 (median ms)", "",
            "| backend | " + " | ".join(MODELS) + " |", "|---|" + "---|" * len(MODELS)]
    for backend, vals in s["per_backend_median_ms"].items():
        out.append(f"| {backend} | " + " | ".join("-" if vals.get(m) is None else f"{vals[m]:.2f}" for m in MODELS) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip torch.compile, shorter timing (~3-5 min)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--min-time", type=float, default=None, help="seconds of timed calls per row")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f}: another process is using a core; timings are provisional",
              file=sys.stderr)
    t0 = time.time()
    backends = ["eager"] + (FP32_DEPLOYED[1:] if args.quick else FP32_DEPLOYED) + INT8
    min_time = args.min_time if args.min_time is not None else (0.5 if args.quick else 2.0)
    repeats = 20 if args.quick else 50
    peak = gemm_peak(5 if args.quick else 10)
    print(f"fp32 GEMM (1 thread): torch.mm {peak['torch_mm_gflops']:.1f} GFLOP/s, numpy {peak['numpy_matmul_gflops']:.1f}",
          flush=True)
    rows = benchmark(MODELS, backends, [1], [1], 224, warmup=5, repeats=repeats, min_time_s=min_time,
                     reference_backends=["eager"])
    peak_after = gemm_peak(5 if args.quick else 10)
    peak = {**peak, "torch_mm_gflops_after": peak_after["torch_mm_gflops"],
            "numpy_matmul_gflops_after": peak_after["numpy_matmul_gflops"],
            "best_gflops": max(peak["best_gflops"], peak_after["best_gflops"])}
    meta = {"mode": "quick" if args.quick else "full", "loadavg_start": [round(v, 2) for v in load_start],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()], "wall_s": time.time() - t0,
            "batch": 1, "threads": 1, "resolution": 224}
    summary = summarise(rows, peak)
    paths = write_bench_outputs(rows, args.out_dir, stem="deploy_speed", meta={**meta, "summary": summary})
    info = json.loads(paths["json"].read_text())["meta"]
    text = summary_markdown(summary, info) + "\n## All rows\n\n" + bench_markdown(rows)
    atomic_write_text(paths["md"], text)
    print(summary_markdown(summary, info))
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
