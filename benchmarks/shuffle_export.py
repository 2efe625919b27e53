"""How should an exported ShuffleNet spell its channel shuffle, and what does the shuffle cost there?

``shufflenet_v1_g3_x1_0`` (random weights, non-trivial BN) is exported with
:func:`mobilecnn.deploy.export.export_model` in four spellings per runtime and precision:

* ``reshape``: the shuffle traced as reshape/transpose;
* ``gather``: one Gather with the constant permutation (:func:`mobilecnn.layers.shuffle.shuffle_traced_as_gather`);
* ``folded``: no shuffle op at all, the same function: the permutation is moved through the depthwise
  conv (a per-channel op: its weights and BN are permuted) into the next 1x1, which becomes a dense
  conv with permuted input columns (3x that conv's MACs at g=3; :func:`fold_shuffle_into_expand`);
* ``none``: the shuffle deleted -- a different function, timed only as the lower bound of what any
  spelling of the shuffle could reach.

The files are loaded side by side and timed in interleaved rounds (batch 1, one thread); each spelling
is reported as the median of its per-round ratios to the format's default spelling (Gather for ONNX
and OpenVINO, reshape/transpose for ExecuTorch) with a bootstrap 95% interval.

Writes ``benchmarks/results/shuffle_export.{json,md}``. About 10 minutes on two idle cores.

Usage: ``python benchmarks/shuffle_export.py [--resolution 224] [--seconds 8] [--out-dir DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import mobilecnn.deploy.export as export_module  # noqa: E402
from deploy_speed import _nontrivial_bn  # noqa: E402 - this folder's benchmark, beside this script
from mobilecnn import create_model  # noqa: E402
from mobilecnn.deploy.backends import bf16_supported  # noqa: E402
from mobilecnn.deploy.export import ExportConfig, ExportImages  # noqa: E402
from mobilecnn.deploy.formats import load_runtime  # noqa: E402
from mobilecnn.deploy.timing import bootstrap_ratio, paired_times  # noqa: E402
from mobilecnn.files import atomic_write_text  # noqa: E402
from mobilecnn.layers.blocks import ShuffleNetUnit  # noqa: E402
from mobilecnn.layers.shuffle import ChannelShuffle, shuffle_order, shuffle_traced_as_gather  # noqa: E402

MODEL = "shufflenet_v1_g3_x1_0"
CASES = [("onnx", ".onnx", "fp32"), ("onnx", ".onnx", "int8"), ("openvino", ".xml", "fp32"),
         ("openvino", ".xml", "bf16"), ("openvino", ".xml", "int8"), ("executorch", ".pte", "fp32"),
         ("executorch", ".pte", "int8")]


SPELLINGS = ("reshape", "gather", "folded", "none")
DEFAULT_SPELLING = {"onnx": "gather", "openvino": "gather", "executorch": "reshape"}


def fold_shuffle_into_expand(model: nn.Module) -> nn.Module:
    """A copy of ``model`` computing the same function with no channel shuffle op.

    In each unit, shuffle -> depthwise(+BN) -> grouped 1x1 expand(+BN) becomes depthwise'(+BN') ->
    dense 1x1 expand'(+BN): shuffled channel i is input channel ``shuffle_order(...)[i]``, so the
    depthwise conv and its BN (per-channel) take their parameters through the inverse permutation, and
    the expand conv reads its input through the permutation, which a grouped conv cannot, hence dense
    (zeros off its groups).
    """
    model = copy.deepcopy(model).eval()
    for unit in model.modules():
        if not isinstance(unit, ShuffleNetUnit) or not isinstance(unit.shuffle, ChannelShuffle):
            continue
        groups, conv, bn, expand = unit.shuffle.groups, unit.depthwise.conv, unit.depthwise.bn, unit.expand.conv
        channels = conv.in_channels
        inverse = torch.argsort(shuffle_order(channels, groups))
        dense = nn.Conv2d(channels, expand.out_channels, 1, bias=expand.bias is not None)
        with torch.no_grad():
            for tensor in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var):
                if tensor is not None:
                    tensor.copy_(tensor[inverse])
            # the grouped weights as one block-diagonal matrix, its columns read through the permutation
            block = torch.block_diag(*expand.weight[:, :, 0, 0].split(expand.out_channels // groups))
            dense.weight.copy_(block[:, inverse, None, None])
            if expand.bias is not None:
                dense.bias.copy_(expand.bias)
        unit.expand.conv = dense
        unit.shuffle = nn.Identity()
    return model


def without_shuffle(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model).eval()
    for unit in model.modules():
        if isinstance(unit, ShuffleNetUnit):
            unit.shuffle = nn.Identity()
    return model


def export(model: torch.nn.Module, fmt: str, path: Path, precision: str, spelling: str, x: torch.Tensor,
           images: torch.Tensor) -> None:
    """Export with the shuffle traced as ``spelling`` ("reshape" or "gather") whatever the format's default."""
    default = export_module.shuffle_traced_as_gather
    export_module.shuffle_traced_as_gather = contextlib.nullcontext  # the format's own choice is off
    try:
        with shuffle_traced_as_gather() if spelling == "gather" else contextlib.nullcontext():
            export_module.export_model(model, path,
                                       ExportImages(x, images[:8], images if precision == "int8" else None),
                                       ExportConfig(fmt, precision, check_accuracy=False, int8_fallback=False))
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
    models = {"reshape": model, "gather": model, "folded": fold_shuffle_into_expand(model),
              "none": without_shuffle(model)}
    x = torch.randn(1, 3, args.resolution, args.resolution)
    with torch.no_grad():
        reference = model(x)
        drift = float((models["folded"](x) - reference).abs().max() / reference.abs().max())
    if not drift < 1e-4:
        raise SystemExit(f"fold_shuffle_into_expand changed the logits ({drift:.2g} relative)")
    images = torch.randn(64, 3, args.resolution, args.resolution)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, suffix, precision in CASES:
            if precision == "bf16" and not bf16_supported():
                continue
            files = {}
            for spelling in SPELLINGS:
                path = Path(tmp) / f"{fmt}_{precision}_{spelling}{suffix}"
                traced = spelling if spelling in ("reshape", "gather") else DEFAULT_SPELLING[fmt]
                export(models[spelling], fmt, path, precision, traced, x, images)
                files[spelling] = load_runtime(path, threads=1, trusted=True)
            xn = x.numpy()
            t = paired_times({s: (lambda r: lambda: r(xn))(r) for s, r in files.items()}, seconds=args.seconds,
                             min_rounds=30)
            default = DEFAULT_SPELLING[fmt]
            row = {"format": fmt, "precision": precision, "default": default, "rounds": t["rounds"],
                   "median_ms": t["median_ms"], "vs_default": {}}
            for spelling in SPELLINGS:
                if spelling != default:
                    row["vs_default"][spelling] = list(bootstrap_ratio(t["per_round_ms"][spelling],
                                                                       t["per_round_ms"][default]))
            rows.append(row)
            print(f"{fmt} {precision}: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in row["vs_default"].items()),
                  file=sys.stderr)
            del files
    meta = {"model": MODEL, "cpu": cpu, "resolution": args.resolution, "batch": 1, "threads": 1,
            "loadavg": open("/proc/loadavg").read().split()[:3], "torch": torch.__version__}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "shuffle_export.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# shuffle_export: ShuffleNet's channel shuffle in each runtime, four spellings, paired", "",
             f"{MODEL}, {cpu}, batch 1, one thread, {args.resolution} px; load average at the end {meta['loadavg']}.",
             "Ratios are to the format's default spelling (marked *); `folded` is the same function with no shuffle "
             "op (dense expand conv), `none` deletes the shuffle (a lower bound, not the same model).", "",
             "| runtime | precision | " + " | ".join(f"{s} (ms)" for s in SPELLINGS) + " | "
             + " | ".join(f"{s} / default [95% CI]" for s in SPELLINGS) + " |",
             "|---|---|" + "---|" * (2 * len(SPELLINGS))]
    for r in rows:
        times = " | ".join(f"{r['median_ms'][s]:.3f}" + ("*" if s == r["default"] else "") for s in SPELLINGS)
        ratios = " | ".join("1 (default)" if s == r["default"] else "{:.3f} [{:.3f}, {:.3f}]".format(*r["vs_default"][s])
                            for s in SPELLINGS)
        lines.append(f"| {r['format']} | {r['precision']} | {times} | {ratios} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out_dir / "shuffle_export.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
