"""The depthwise-separable cost claim of ``mobilecnn reproduce``, measured on this CPU (batch 1, fp32 files,
paired timing).

* **Depthwise-separable cost** (MobileNetV2, arXiv 1801.04381, section 3.1, after MobileNet V1, arXiv
  1704.04861, section 3.1): a standard K x K conv costs ``h w d_i d_j K^2`` multiply-adds, a K x K depthwise
  conv followed by a 1x1 pointwise one ``h w d_i (K^2 + d_j)``; with K = 3 that is "8 to 9 times less
  computation". The papers count MAdds; what is tested here is whether the *time* follows, i.e. whether the
  speed-up is about the cost ratio. Each distinct layer shape of MobileNet V1 1.0 at 224 px (derived from the
  built model: the input side of every depthwise conv, its channels, stride and the following pointwise conv's
  output channels) becomes three bare modules (no BN, ReLU or bias): the standard conv, the separable pair and
  its depthwise conv alone. Their MAdds are counted with :func:`~mobilecnn.analysis.complexity.count_macs` and
  checked against the formula; each module is exported fp32 to every runtime asked for by the project's
  exporter (which verifies the file against PyTorch) and the three files of one shape and runtime are timed
  paired and interleaved (:func:`~mobilecnn.deploy.timing.paired_times`), so a background load hits them
  alike. The depthwise conv's share of the separable time, set against its share of the MAdds, says why a
  speed-up falls short of the cost ratio (the pointwise time is taken as separable minus depthwise).
The ShuffleNet-vs-AlexNet claim is :mod:`mobilecnn.reproduce_alexnet`.

Library code: returns JSON-serialisable dicts and Markdown, never prints; ``progress(event, info)`` gets the events
``cost:shape``, ``cost:runtime`` and ``cost:timed``.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .analysis.complexity import conv_kind, count_macs
from .deploy.export import ExportConfig, ExportImages, export_model
from .deploy.formats import FORMATS, installed_formats, load_runtime
from .deploy.timing import bootstrap_ratio, machine_info, paired_times
from .errors import UsageError
from .models import create_model

__all__ = ["CostPlan", "COST_QUICK", "COST_FULL", "run_cost", "cost_markdown", "conditions", "ratio_text", "check_plan"]

Progress = Callable[[str, dict[str, Any]], None] | None

MNV1 = "mobilenet_v1_x1_0"
#: MobileNetV2 section 3.1: a 3x3 depthwise separable conv is "8 to 9 times" cheaper than a standard one.
PAPER_COST_RATIO = (8.0, 9.0)
EAGER = "pytorch eager"  # the runtime name of eager PyTorch in the cost table (not an exported format)



@dataclass(frozen=True)
class CostPlan:
    """Which MobileNet V1 shapes (indices into the 9 distinct ones, None: all), which fp32 formats (None: every
    installed one), whether eager PyTorch is timed too, ``seconds`` of paired timing per module, ``threads``."""

    name: str
    shapes: tuple[int, ...] | None = None
    formats: tuple[str, ...] | None = None
    eager: bool = True
    seconds: float = 1.0
    threads: int = 1


#: Three shapes (d_j = 64, 256, 1024), onnxruntime and eager PyTorch: about 30 s on 2 cores.
COST_QUICK = CostPlan("quick", shapes=(0, 4, 8), formats=("onnx",), seconds=0.5)
#: All 9 shapes, every installed fp32 runtime and eager PyTorch.
COST_FULL = CostPlan("full", seconds=1.0)


# --- depthwise-separable cost ---------------------------------------------------------------------------------


def _mnv1_shapes() -> list[dict[str, Any]]:
    """The distinct (input side, d_i, d_j, stride) of MobileNet V1 1.0's depthwise-separable layers at 224 px, in
    network order, with how many layers share each: read off the built model, not typed in."""
    model = create_model(MNV1).eval().to("meta")  # shapes only: nothing is computed
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    sides: dict[int, int] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        sides[id(module)] = int(inputs[0].shape[-1])

    hooks = [c.register_forward_hook(hook) for c in convs if conv_kind(c) == "depthwise"]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 224, 224, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    shapes: dict[tuple[int, int, int, int], int] = {}
    for conv, after in zip(convs, convs[1:]):
        if conv_kind(conv) == "depthwise" and conv_kind(after) == "pointwise":
            key = (sides[id(conv)], conv.in_channels, after.out_channels, conv.stride[0])
            shapes[key] = shapes.get(key, 0) + 1
    return [{"index": i, "side": s, "d_in": di, "d_out": dj, "stride": st, "layers": n}
            for i, ((s, di, dj, st), n) in enumerate(shapes.items())]


def _modules(shape: dict[str, Any]) -> dict[str, nn.Module]:
    """Bare standard conv, separable pair and its depthwise conv alone (same weights), seeded."""
    d_i, d_j, stride = shape["d_in"], shape["d_out"], shape["stride"]
    with torch.random.fork_rng():  # fixed weights without touching the caller's generator
        torch.manual_seed(shape["index"])
        standard = nn.Conv2d(d_i, d_j, 3, stride, 1, bias=False)
        depthwise = nn.Conv2d(d_i, d_i, 3, stride, 1, groups=d_i, bias=False)
        separable = nn.Sequential(depthwise, nn.Conv2d(d_i, d_j, 1, bias=False))
    mods = {"standard": standard, "separable": separable, "depthwise": nn.Sequential(copy.deepcopy(depthwise))}
    for m in mods.values():
        m.in_chans = d_i  # count_macs builds its input with this many channels
    return {k: m.eval() for k, m in mods.items()}


def _counts(shape: dict[str, Any]) -> dict[str, Any]:
    """Counted MAdds of the three modules, the formula's, and the arithmetic intensity of dw and pw convs."""
    mods = _modules(shape)
    side, d_i, d_j = shape["side"], shape["d_in"], shape["d_out"]
    out = (side - 1) // shape["stride"] + 1  # h = w of the output (3x3, padding 1)
    counted = {k: count_macs(m.to("meta"), side)[0] for k, m in mods.items()}  # from shapes alone
    formula = {"standard": out * out * d_i * d_j * 9, "separable": out * out * d_i * (9 + d_j),
               "depthwise": out * out * d_i * 9}
    # MAdds per byte moved, fp32, each tensor (input, output, weights) read or written once
    dw_bytes = 4 * (side * side * d_i + out * out * d_i + 9 * d_i)
    pw_bytes = 4 * (out * out * d_i + out * out * d_j + d_i * d_j)
    return {**shape, "out_side": out, "madds": counted, "formula_madds": formula, "formula_ok": counted == formula,
            "cost_ratio": counted["standard"] / counted["separable"],
            "intensity": {"depthwise": formula["depthwise"] / dw_bytes,
                          "pointwise": (formula["separable"] - formula["depthwise"]) / pw_bytes}}


def _eager_fns(mods: dict[str, nn.Module], x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """Eager PyTorch calls, channels_last (the faster layout for depthwise convs on CPU, as ``bench`` runs it)."""
    inp = x.contiguous(memory_format=torch.channels_last)

    def call(net: nn.Module) -> Callable[[], Any]:
        @torch.inference_mode()
        def run() -> Any:
            return net(inp)
        return run

    return {k: call(copy.deepcopy(m).to(memory_format=torch.channels_last)) for k, m in mods.items()}


def _file_fns(mods: dict[str, nn.Module], x: torch.Tensor, fmt: str, work: Path,
              threads: int) -> dict[str, Callable[[], Any]]:
    """Each module exported fp32 as ``fmt`` (verified against PyTorch by the exporter), loaded in its runtime."""
    verify = torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    arr = x.numpy()
    fns = {}
    for key, mod in mods.items():
        path = work / f"{key}{FORMATS[fmt].suffix}"
        export_model(mod, path, ExportImages(x, verify), ExportConfig(fmt, "fp32", threads=threads,
                                                                      check_accuracy=False))
        runtime = load_runtime(path, threads=threads, trusted=True)  # written just now by this process
        fns[key] = (lambda rt: lambda: rt(arr))(runtime)
    return fns


def _timed_row(shape: dict[str, Any], fns: dict[str, Callable[[], Any]], plan: CostPlan,
               band: tuple[float, float]) -> dict[str, Any]:
    """Paired timing of standard, separable and depthwise: the speed-up, the depthwise share and the verdict."""
    timing = paired_times(fns, seconds=plan.seconds, seed=shape["index"])
    per = timing["per_round_ms"]
    speedup = bootstrap_ratio(per["standard"], per["separable"])
    share = bootstrap_ratio(per["depthwise"], per["separable"])
    madds = shape["madds"]
    dw_madds, pw_madds = madds["depthwise"], madds["separable"] - madds["depthwise"]
    per_madd = share[0] * pw_madds / ((1 - share[0]) * dw_madds) if share[0] < 1 else None
    row = {"status": "timed", "rounds": timing["rounds"], "median_ms": timing["median_ms"],
           "speedup": list(speedup), "depthwise_time_share": list(share),
           "depthwise_madds_share": dw_madds / madds["separable"], "dw_vs_pw_time_per_madd": per_madd}
    row["verdict"], row["why"] = _cost_verdict(speedup[0], shape, row, band)
    return row


def _cost_verdict(speedup: float, shape: dict[str, Any], row: dict[str, Any],
                  band: tuple[float, float]) -> tuple[str, str]:
    """"held" inside the band of cost ratios, else below/above with one measured reason."""
    cost, intensity = shape["cost_ratio"], shape["intensity"]
    if band[0] <= speedup <= band[1]:
        return "held", f"time follows MAdds within {max(speedup / cost, cost / speedup):.2f}x"
    if speedup > band[1]:
        return "above the cost ratio", f"the standard conv takes {speedup / cost:.1f}x the pair's time per MAdd"
    if row["dw_vs_pw_time_per_madd"] is not None:
        return "below the cost ratio", (
            f"the depthwise conv takes {100 * row['depthwise_time_share'][0]:.0f}% of the separable time for "
            f"{100 * row['depthwise_madds_share']:.0f}% of its MAdds: {row['dw_vs_pw_time_per_madd']:.1f}x the "
            f"pointwise's time per MAdd, at {intensity['depthwise']:.1f} MAdds/byte vs {intensity['pointwise']:.0f}")
    return "below the cost ratio", f"the separable pair takes {cost / speedup:.1f}x the standard conv's time per MAdd"


def _runtimes(plan: CostPlan) -> list[str]:
    """The formats to time: the plan's (each must be installed) or every installed one; fp32 is always offered."""
    names = [f.name for f in installed_formats()]
    missing = [f for f in plan.formats or () if f not in names]
    if missing:
        raise UsageError(f"format {missing[0]!r} is unknown or not installed here (installed: {', '.join(names)})")
    return names if plan.formats is None else list(plan.formats)


def check_plan(seconds: float, threads: int) -> None:
    if not (seconds > 0 and isinstance(threads, int) and threads >= 1):
        raise UsageError(f"a plan needs seconds > 0 and threads >= 1, got {seconds!r} and {threads!r}")


def _shape_rows(shape: dict[str, Any], formats: list[str], plan: CostPlan, band: tuple[float, float],
                work: Path, notify: Callable[[str, dict[str, Any]], None]) -> list[dict[str, Any]]:
    """One row per runtime for one shape; an export or runtime failure is a row with its reason."""
    x = torch.randn(1, shape["d_in"], shape["side"], shape["side"], generator=torch.Generator().manual_seed(0))
    mods, rows = _modules(shape), []
    for fmt in ([None] if plan.eager else []) + formats:
        runtime = EAGER if fmt is None else FORMATS[fmt].runtime
        notify("cost:runtime", {"shape": shape["index"], "runtime": runtime})
        row: dict[str, Any] = {"shape": shape["index"], "runtime": runtime, "format": fmt}
        try:
            if fmt is None:
                fns = _eager_fns(mods, x)
            else:
                (work / f"{shape['index']}_{fmt}").mkdir()
                fns = _file_fns(mods, x, fmt, work / f"{shape['index']}_{fmt}", plan.threads)
            torch.set_num_threads(plan.threads)
            row.update(_timed_row(shape, fns, plan, band))
        except Exception as exc:  # noqa: BLE001 - one runtime failing (export, load, run) must not lose the others
            row.update(status="failed", why=f"{type(exc).__name__}: {str(exc)[:300]}".replace(str(work), "<tmp>"))
        rows.append(row)
        notify("cost:timed", dict(row))
    return rows


def run_cost(plan: CostPlan = COST_QUICK, progress: Progress = None) -> dict[str, Any]:
    """The depthwise-separable claim on ``plan``'s shapes and runtimes (module docstring); a JSON-ready dict with
    every shape's counts (``shapes``), one row per (shape, runtime) (``rows``) and the verdict band."""
    check_plan(plan.seconds, plan.threads)
    formats = _runtimes(plan)
    notify = progress or (lambda event, info: None)
    started = time.perf_counter()
    every = [_counts(s) for s in _mnv1_shapes()]
    if plan.shapes is not None and not set(plan.shapes) <= set(range(len(every))):
        raise UsageError(f"shapes must be indices 0..{len(every) - 1} of MobileNet V1's distinct layers")
    chosen = [every[i] for i in (plan.shapes if plan.shapes is not None else range(len(every)))]
    # "about the same speed-up": the paper's 8-9x widened to every cost ratio MobileNet V1's layers have
    band = (min(PAPER_COST_RATIO[0], *(s["cost_ratio"] for s in every)),
            max(PAPER_COST_RATIO[1], *(s["cost_ratio"] for s in every)))
    saved = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mobilecnn-cost-") as tmp:
            for shape in chosen:
                notify("cost:shape", {k: shape[k] for k in ("index", "side", "d_in", "d_out", "stride")})
                rows += _shape_rows(shape, formats, plan, band, Path(tmp), notify)
    finally:
        torch.set_num_threads(saved)
    return {"claim": "depthwise_separable_cost", "plan": asdict(plan), "model": MNV1, "resolution": 224,
            "paper_cost_ratio": list(PAPER_COST_RATIO), "band": list(band), "shapes": chosen,
            "all_formula_ok": all(s["formula_ok"] for s in every), "all_cost_ratios": [s["cost_ratio"] for s in every],
            "rows": rows, "machine": machine_info(), "elapsed_s": round(time.perf_counter() - started, 1)}


def ratio_text(r: list[float] | None) -> str:
    return "-" if not r else f"{r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}]"


def conditions(result: dict[str, Any], threads: int, precision: str = "fp32") -> str:
    m = result["machine"]
    cpu = m.get("cpu") or m.get("platform")
    return (f"batch 1, {threads} thread(s), {precision}, this CPU ({cpu}, load average "
            f"{m['loadavg'][0]:.2f} at the end), paired interleaved timing (shuffled rounds of short "
            "bursts; ratio = median over rounds with a 95% bootstrap interval); indicative only on a shared machine")


def cost_markdown(result: dict[str, Any]) -> str:
    """The ``### Depthwise-separable cost`` section: counts per shape, timings per runtime, one verdict each."""
    band, shapes = result["band"], {s["index"]: s for s in result["shapes"]}
    lines = ["### Depthwise-separable convolution: MAdds and speed (MobileNetV2 section 3.1)", "",
             f"Paper: a 3x3 depthwise + 1x1 pointwise conv costs h w d_i (9 + d_j) MAdds instead of h w d_i d_j 9, "
             f"\"8 to 9 times less computation\"; tested: whether the time follows (speed-up within {band[0]:.2f}x"
             f"-{band[1]:.2f}x, the paper's 8-9x widened to the cost ratios of MobileNet V1's layers). Shapes: the "
             f"distinct depthwise-separable layers of `{result['model']}` at 224 px, as bare convs (no BN/ReLU/bias); "
             "files written by the project's exporter and verified against PyTorch; "
             f"{conditions(result, result['plan']['threads'])}. MAdds counted by `count_macs` "
             f"{'equal' if result['all_formula_ok'] else 'DIFFER from'} the formula on every shape; took "
             f"{result['elapsed_s']:.0f} s. h, w: the output side; MAdds/byte: fp32 arithmetic intensity, each tensor "
             "moved once; the depthwise conv alone is timed in the same rounds (pointwise = separable - depthwise).",
             "",
             "| # | input | d_i -> d_j | stride | layers | MAdds standard (M) | MAdds separable (M) | cost ratio | "
             "MAdds/byte dw, pw |", "|---|---|---|---|---|---:|---:|---:|---|"]
    for s in result["shapes"]:
        lines.append(f"| {s['index']} | {s['side']}x{s['side']} | {s['d_in']} -> {s['d_out']} | {s['stride']} | "
                     f"{s['layers']} | {s['madds']['standard'] / 1e6:.1f} | {s['madds']['separable'] / 1e6:.2f} | "
                     f"{s['cost_ratio']:.2f}x | {s['intensity']['depthwise']:.1f}, {s['intensity']['pointwise']:.0f} |")
    lines += ["", "| # | runtime | standard (ms) | separable (ms) | depthwise (ms) | speed-up [95% CI] | cost ratio | "
              "dw share of time / MAdds | verdict |", "|---|---|---:|---:|---:|---|---:|---|---|"]
    verdicts = []
    for r in result["rows"]:
        s = shapes[r["shape"]]
        label = f"shape {s['index']} ({s['side']} px, {s['d_in']}->{s['d_out']}, s{s['stride']}), {r['runtime']}"
        if r["status"] != "timed":
            lines.append(f"| {s['index']} | {r['runtime']} | - | - | - | - | {s['cost_ratio']:.2f}x | - | failed |")
            verdicts.append(f"- {label}: not measured: {r['why']}")
            continue
        ms = r["median_ms"]
        lines.append(f"| {s['index']} | {r['runtime']} | {ms['standard']:.3f} | {ms['separable']:.3f} | "
                     f"{ms['depthwise']:.3f} | {ratio_text(r['speedup'])} | {s['cost_ratio']:.2f}x | "
                     f"{100 * r['depthwise_time_share'][0]:.0f}% / {100 * r['depthwise_madds_share']:.0f}% | "
                     f"{r['verdict']} |")
        verdicts.append(f"- {label}: speed-up {ratio_text(r['speedup'])} vs cost ratio {s['cost_ratio']:.2f}x: "
                        f"**{r['verdict']}** ({r['why']}).")
    held = sum(r.get("verdict") == "held" for r in result["rows"])
    timed = sum(r["status"] == "timed" for r in result["rows"])
    return "\n".join(lines + ["", f"About the same speed-up as MAdds saved held on {held} of {timed} (shape, "
                              "runtime) pairs measured:", ""] + verdicts) + "\n"
