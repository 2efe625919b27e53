"""The segmentation section of ``mobilecnn reproduce``: MobileNetV2 paper section 6.3 (Table 7) on scenes.

Two parts:

* **Table 7 regenerated**: every published row beside our params and MAdds at 513 x 513 (counted, not
  trained: :func:`mobilecnn.analysis.tables.segmentation_table`).
* **The paper's observations tested on the Fashion-MNIST scenes** (docs/scenes.md), each variant trained with
  the same fast recipe and budget, mIoU on the scenes val set (mean over seeds), MAdds at the scenes' side:
  MobileNetV2* (OS 16, no ASPP) against MobileNet V1 (OS 16, ASPP: Table 7's row) -- "about the same mIoU
  at about 5x fewer MAdds"; ASPP against none ("slight performance degradation" without it); output stride
  8 against 16; multi-scale + flip (MF) against a single scale. The latency is the seed-0 run's ONNX fp32
  file (verified per pixel against PyTorch) in onnxruntime, batch 1, 1 thread; with ``--auto`` also its best
  verified file's (``export --format auto``: every installed runtime x precision, bf16 and int8 gated on the
  mIoU drop).

A verdict says whether the difference has the paper's sign; with several seeds, a difference under two
standard errors is marked as within seed noise.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .analysis.complexity import evaluation_macs, profile
from .analysis.tables import segmentation_markdown, segmentation_table
from .evaluate import evaluate_run
from .files import atomic_write_text, read_json_object
from .models import create_model
from .reproduce_measure import auto_latency, onnx_latency, training_seconds, verdict
from .runs.layout import CONFIG_FILE
from .train import TrainConfig, train

__all__ = ["SegPlan", "SEG_QUICK", "SEG_FULL", "SEG_VARIANTS", "SegResult", "run_segmentation", "segmentation_report",
           "rewrite_segmentation_report"]

#: The variants compared: (registered model, its options). Keys name them in runs/ and the report.
SEG_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mnv2_os16": ("deeplabv3_mobilenet_v2_x1_0", {}),
    "mnv1_os16_aspp": ("deeplabv3_mobilenet_v1_x1_0", {"aspp": True}),
    "mnv2_os16_aspp": ("deeplabv3_mobilenet_v2_x1_0", {"aspp": True}),
    "mnv2_os8": ("deeplabv3_mobilenet_v2_x1_0", {"output_stride": 8}),
}
#: The scenes side the variants are trained and counted at (the default scenes cache).
SCENES_SIDE = 128


@dataclass(frozen=True)
class SegPlan:
    """Which variants, how many seeds, how long each trains (epochs over the 2,000 train scenes), on how many
    val scenes they are measured (None: all 500), and whether the seed-0 runs' best verified files are searched
    (``auto``: ``auto_seconds`` of timing per candidate, the mIoU gate on ``check_count`` val scenes)."""

    name: str
    variants: tuple[str, ...]
    seeds: int
    epochs: float
    val_subset: int | None = None
    multi_scale: bool = True
    bench_repeats: int = 10
    threads: int | None = None
    device: str = "auto"
    data: str = "scenes"  # the default scenes cache; a folder for a test or another dataset
    auto: bool = False
    auto_seconds: float = 1.0
    check_count: int = 200


#: The demo's: the paper's on-device candidate alone, one seed, 2 epochs (11.4% mIoU; 3 gave 13.0% for 50 s more),
#: single scale (MF on its 200 val scenes took 1.5 of the section's 4.4 min in `make demo` on 2 cores; the full
#: plan measures it).
SEG_QUICK = SegPlan("quick", ("mnv2_os16",), seeds=1, epochs=2, val_subset=200, multi_scale=False)
#: Every variant, 2 seeds.
SEG_FULL = SegPlan("full", tuple(SEG_VARIANTS), seeds=2, epochs=6)


@dataclass
class SegResult:
    key: str
    model: str
    options: dict[str, Any]
    macs: int  # plain count at SCENES_SIDE
    mf_macs: int  # multi-scale + flip at SCENES_SIDE
    params: int
    miou: list[float] = field(default_factory=list)
    mf_miou: float | None = None  # seed 0
    latency_ms: float | None = None  # seed 0, ONNX fp32 in onnxruntime
    auto_latency_ms: float | None = None  # seed 0, the best verified file (plan.auto)
    auto_choice: str = ""  # "runtime precision" of that file, or why none
    train_time_s: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.miou) if self.miou else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.miou) if len(self.miou) > 1 else 0.0


def _complexity(key: str) -> SegResult:
    name, options = SEG_VARIANTS[key]
    prof = profile(name, SCENES_SIDE, num_classes=11, **options)
    mf = evaluation_macs(create_model(name, num_classes=11, **options), SCENES_SIDE, multi_scale_flip=True)
    return SegResult(key, name, dict(options), prof.macs, mf, prof.params)


def _train(key: str, seed: int, plan: SegPlan, run_dir: Path, callback: Callable[[str, dict], None]) -> dict:
    name, options = SEG_VARIANTS[key]
    cfg = TrainConfig(model=name, data=plan.data, out=str(run_dir), epochs=plan.epochs, seed=seed,
                      val_subset=plan.val_subset, checkpoint_every=10**9, threads=plan.threads, device=plan.device,
                      resume=(run_dir / CONFIG_FILE).exists(), **options)
    return train(cfg, callback=callback)


def run_segmentation(plan: SegPlan, out_dir: str | Path,
                     progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train, evaluate (single scale and MF) and time every variant of ``plan``; write ``segmentation.md`` and
    ``segmentation.json`` into ``out_dir`` (runs under ``out_dir/runs/seg-<key>-seed<n>``, resumed if there)."""
    out = Path(out_dir)
    notify = progress or (lambda event, info: None)
    started = time.perf_counter()
    results: list[SegResult] = []
    for index, key in enumerate(plan.variants):
        res = _complexity(key)
        for seed in range(plan.seeds):
            notify("model", {"index": index, "total": len(plan.variants), "key": f"seg {key}", "seed": seed})
            run = _train(key, seed, plan, out / "runs" / f"seg-{key}-seed{seed}",
                         lambda ev, info: notify("train:" + ev, info))
            res.miou.append(float(run.get("val_miou") or 0.0))
            res.train_time_s.append(training_seconds(out / "runs" / f"seg-{key}-seed{seed}"))
        first = out / "runs" / f"seg-{key}-seed0"
        if plan.multi_scale:
            mf = evaluate_run(first, multi_scale=True, subset=plan.val_subset, out_dir=first / "eval-mf")
            res.mf_miou = mf["miou"]
        res.latency_ms = onnx_latency(first, SCENES_SIDE, plan.bench_repeats)
        if plan.auto:
            auto = auto_latency(first, plan.check_count, plan.auto_seconds)
            res.auto_latency_ms, res.auto_choice = auto.latency_ms, auto.choice
        results.append(res)
        notify("done", {"index": index, "total": len(plan.variants), "key": f"seg {key}", "top1": res.mean})
    elapsed = time.perf_counter() - started
    payload = {"plan": asdict(plan), "elapsed_s": elapsed, "side": SCENES_SIDE,
               "variants": [{**asdict(r), "mean": r.mean, "std": r.std} for r in results]}
    atomic_write_text(out / "segmentation.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    text = segmentation_report(plan, results, elapsed)
    atomic_write_text(out / "segmentation.md", text)
    return {"report": str(out / "segmentation.md"), "results": str(out / "segmentation.json"), "elapsed_s": elapsed}


def _claims(by: dict[str, SegResult]) -> list[str]:
    lines = []
    v2, v1, aspp, os8 = (by.get(k) for k in ("mnv2_os16", "mnv1_os16_aspp", "mnv2_os16_aspp", "mnv2_os8"))
    if v2 and v1:
        lines.append(f"- **MNV2\\* vs MobileNet V1** (paper: 75.32 vs 75.29 mIoU at 2.75 vs 14.25 B MAdds, 5.2x "
                     f"fewer): {v2.mean:.2f} vs {v1.mean:.2f} at {v1.macs / v2.macs:.1f}x fewer MAdds; \"about the "
                     f"same\" (within 1 pt) {verdict(v2.miou, v1.miou, margin=1.0)}.")
    if v2 and aspp:
        lines.append(f"- **ASPP vs none** (paper: 75.70 vs 75.32, x2.1 MAdds): {aspp.mean:.2f} vs {v2.mean:.2f} at "
                     f"x{aspp.macs / v2.macs:.1f} MAdds; ASPP better {verdict(aspp.miou, v2.miou)}.")
    if v2 and os8:
        lines.append(f"- **Output stride 8 vs 16** (paper: OS 8 only with MF, 77.33 vs 75.32): {os8.mean:.2f} vs "
                     f"{v2.mean:.2f} single scale at x{os8.macs / v2.macs:.1f} MAdds; OS 8 better "
                     f"{verdict(os8.miou, v2.miou)}.")
    if v2 and v2.mf_miou is not None and v2.miou:
        diff = v2.mf_miou - v2.miou[0]
        lines.append(f"- **MF vs single scale** (paper: MF raises mIoU at many times the MAdds): seed-0 "
                     f"{v2.mf_miou:.2f} vs {v2.miou[0]:.2f} at x{v2.mf_macs / v2.macs:.1f} MAdds; "
                     + (f"**held** ({diff:+.2f} pt)." if diff > 0 else f"**did not hold** ({diff:+.2f} pt)."))
    return lines or ["- (this plan trains one variant: the comparisons need `--full`)"]


def rewrite_segmentation_report(out_dir: str | Path) -> str:
    """``segmentation.md`` written again from ``segmentation.json`` (nothing trained or measured); returns its path."""
    out = Path(out_dir)
    payload = read_json_object(out / "segmentation.json", "mobilecnn reproduce --task segmentation")
    recorded: dict[str, Any] = dict(payload["plan"])
    plan = SegPlan(**{**recorded, "variants": tuple(recorded["variants"])})
    names = {f.name for f in fields(SegResult)}
    results = [SegResult(**{k: v for k, v in row.items() if k in names}) for row in payload["variants"]]
    atomic_write_text(out / "segmentation.md", segmentation_report(plan, results, float(payload["elapsed_s"])))
    return str(out / "segmentation.md")


def segmentation_report(plan: SegPlan, results: list[SegResult], elapsed: float) -> str:
    """The Markdown section: Table 7 regenerated, the claims on the scenes, one row per variant."""
    by = {r.key: r for r in results}
    lines = [
        "## Segmentation: Mobile DeepLabv3 (MobileNetV2 paper section 6.3)",
        "",
        f"Budget: {plan.epochs:g} epoch(s) of the 2,000 train scenes ({SCENES_SIDE} px), the fast_segmentation "
        f"recipe, {plan.seeds} seed(s); mIoU on {plan.val_subset or 500} val scenes, mean over seeds. MAdds at "
        f"{SCENES_SIDE} px, 11 classes. This section took {elapsed / 60:.1f} min.",
        *[line.replace("## ", "### ", 1) for line in segmentation_markdown(segmentation_table())],
        "",
        "### Observations of section 6.3 on the scenes",
        "",
        *_claims(by),
        "",
        f"| variant | model | MAdds @{SCENES_SIDE} (M) | MF MAdds (M) | params (M) | mIoU (%) | MF mIoU (seed 0) | "
        "latency ONNX fp32 (ms) |" + (" best verified file (ms) |" if plan.auto else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---|" if plan.auto else ""),
    ]
    for r in results:
        spread = f" ± {r.std:.2f}" if len(r.miou) > 1 else ""
        mf = "-" if r.mf_miou is None else f"{r.mf_miou:.2f}"
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.2f}"
        if plan.auto:
            lat += " | " + ("-" if r.auto_latency_ms is None else f"{r.auto_latency_ms:.2f}") + f" ({r.auto_choice})"
        lines.append(f"| `{r.key}` | `{r.model}` | {r.macs / 1e6:.1f} | {r.mf_macs / 1e6:.1f} | {r.params / 1e6:.3f} | "
                     f"{r.mean:.2f}{spread} | {mf} | {lat} |")
    return "\n".join(lines) + "\n"
