"""How should an exported ShuffleNet spell its channel shuffle? Reshape/transpose vs one Gather, paired.

``shufflenet_v1_g3_x1_0`` (random weights, non-trivial BN) is exported twice per runtime and precision
with :func:`mobilecnn.deploy.export.export_model`: once with the shuffle traced as reshape/transpose
and once as a Gather with the constant permutation (:func:`mobilecnn.layers.shuffle.shuffle_traced_as_gather`).
Both files of a pair are loaded side by side and timed in interleaved rounds (batch 1, one thread);
the ratio gather/reshape is the median of the per-round ratios with a bootstrap 95% interval. The export
uses the Gather where this ratio is below 1 (ONNX, OpenVINO) and reshape/transpose elsewhere.

Writes ``benchmarks/results/shuffle_export.{json,md}``. About 10 minutes on two idle cores.

Usage: ``python benchmarks/shuffle_export.py [--resolution 224] [--seconds 8] [--out-dir DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import mobilecnn.deploy.export as export_module  # noqa: E402
from deploy_speed import _nontrivial_bn  # noqa: E402 - this folder's benchmark, beside this script
from mobilecnn import create_model  # noqa: E402
from mobilecnn.deploy.auto import bootstrap_ratio, paired_times  # noqa: E402
from mobilecnn.deploy.runtime import bf16_supported, load_runtime  # noqa: E402
from mobilecnn.layers.shuffle import shuffle_traced_as_gather  # noqa: E402
from mobilecnn.runs.files import atomic_write_text  # noqa: E402

MODEL = "shufflenet_v1_g3_x1_0"
CASES = [("onnx", ".onnx", "fp32"), ("onnx", ".onnx", "int8"), ("openvino", ".xml", "fp32"),
         ("openvino", ".xml", "bf16"), ("openvino", ".xml", "int8"), ("executorch", ".pte", "fp32"),
         ("executorch", ".pte", "int8")]


def export(model: torch.nn.Module, fmt: str, path: Path, precision: str, spelling: str, x: torch.Tensor,
           images: torch.Tensor) -> None:
    """Export with the shuffle spelled ``spelling`` ("reshape" or "gather") whatever the format's default."""
    default = export_module.shuffle_traced_as_gather
    export_module.shuffle_traced_as_gather = contextlib.nullcontext  # the format's own choice is off
    try:
        with shuffle_traced_as_gather() if spelling == "gather" else contextlib.nullcontext():
            export_module.export_model(model, fmt, path, example=x, verify_images=images[:8], precision=precision,
                                       calibration=images if precision == "int8" else None, check_accuracy=False,
                                       int8_fallback=False)
    finally:
        export_module.shuffle_traced_as_gather = default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=8.0, help="timing per file")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = _nontrivial_bn(create_model(MODEL))
    x = torch.randn(1, 3, args.resolution, args.resolution)
    images = torch.randn(64, 3, args.resolution, args.resolution)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, suffix, precision in CASES:
            if precision == "bf16" and not bf16_supported():
                continue
            files = {}
            for spelling in ("reshape", "gather"):
                path = Path(tmp) / f"{fmt}_{precision}_{spelling}{suffix}"
                export(model, fmt, path, precision, spelling, x, images)
                files[spelling] = load_runtime(path, threads=1, trusted=True)
            xn = x.numpy()
            t = paired_times({s: (lambda r: lambda: r(xn))(r) for s, r in files.items()}, seconds=args.seconds,
                             min_rounds=30)
            ratio = bootstrap_ratio(t["per_round_ms"]["gather"], t["per_round_ms"]["reshape"])
            rows.append({"format": fmt, "precision": precision, "reshape_ms": t["median_ms"]["reshape"],
                         "gather_ms": t["median_ms"]["gather"], "gather_vs_reshape": list(ratio),
                         "rounds": t["rounds"]})
            print(f"{fmt} {precision}: gather/reshape {ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]", file=sys.stderr)
            del files
    meta = {"model": MODEL, "cpu": cpu, "resolution": args.resolution, "batch": 1, "threads": 1,
            "loadavg": open("/proc/loadavg").read().split()[:3], "torch": torch.__version__}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "shuffle_export.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# shuffle_export: channel shuffle as reshape/transpose vs one Gather, paired", "",
             f"{MODEL}, {cpu}, batch 1, one thread, {args.resolution} px; load average at the end {meta['loadavg']}.",
             "", "| runtime | precision | reshape (ms) | gather (ms) | gather / reshape [95% CI] |", "|---|---|---|---|---|"]
    for r in rows:
        v = r["gather_vs_reshape"]
        lines.append(f"| {r['format']} | {r['precision']} | {r['reshape_ms']:.3f} | {r['gather_ms']:.3f} | "
                     f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}] |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out_dir / "shuffle_export.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
