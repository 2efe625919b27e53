"""The detection section of ``mobilecnn reproduce``: MobileNetV2 paper section 6.2 (Tables 5 and 6) on scenes.

Two parts:

* **Tables 5 and 6 regenerated**: every published row beside our params and MAdds at 320 x 320 with 81 class
  slots (counted, not trained: :func:`mobilecnn.analysis.tables.detection_markdown`).
* **The paper's claims tested on the Fashion-MNIST scenes** (COCO layout, docs/detection.md), each variant
  trained with the same recipe and budget, COCO mAP@[.5:.95] on the scenes val set (mean over seeds):
  MobileNetV2 + SSDLite against MobileNet V1 + SSDLite -- "about the same mAP" (22.1 vs 22.2) at 0.6x the
  MAdds and 0.74x the time (200 vs 270 ms) -- and SSDLite's separable heads against regular SSD heads (Table 5:
  7x fewer head parameters). The time is that of the seed-0 run's best verified file (``export --format
  auto``: every installed runtime x precision, fp32 verified on the decoded detections, bf16 and int8 gated on
  the mAP drop; batch 1, 1 thread, at the training side), and its ONNX fp32 file in onnxruntime beside it.

A verdict says whether the difference has the paper's sign (or is within its margin); with several seeds, a
difference under two standard errors is marked as within seed noise.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .analysis.complexity import profile
from .analysis.tables import detection_markdown
from .files import atomic_write_text, read_json_object
from .reproduce_measure import auto_latency, onnx_latency, training_seconds, verdict
from .runs.layout import CONFIG_FILE
from .train import TrainConfig, train

__all__ = ["DetPlan", "DET_QUICK", "DET_FULL", "DET_VARIANTS", "DetResult", "run_detection", "detection_report",
           "rewrite_detection_report"]

#: The variants compared: key -> registered model.
DET_VARIANTS: dict[str, str] = {
    "mnv2_ssdlite": "ssdlite_mobilenet_v2_x1_0",
    "mnv1_ssdlite": "ssdlite_mobilenet_v1_x1_0",
    "mnv2_ssd": "ssd_mobilenet_v2_x1_0",
}
#: Classes of the scenes (10 Fashion-MNIST classes + background).
SCENES_CLASSES = 11


@dataclass(frozen=True)
class DetPlan:
    """Which variants, how many seeds, how long each trains (epochs over the 2,000 train scenes) at which input
    side, on how many val scenes they are measured (None: all 500), and whether the seed-0 runs' best verified
    files are searched (``auto``: ``auto_seconds`` of timing per candidate, the mAP gate on ``check_count`` val
    scenes)."""

    name: str
    variants: tuple[str, ...]
    seeds: int
    epochs: float
    resolution: int = 128  # the scenes' side (the fast_detection recipe's)
    val_subset: int | None = None
    bench_repeats: int = 10
    threads: int | None = None
    device: str = "auto"
    data: str = "scenes"  # the default scenes cache; a COCO folder for a test or another dataset
    auto: bool = False
    auto_seconds: float = 1.0
    check_count: int = 200


#: The demo's: MobileNetV2 + SSDLite alone, one seed, 2 epochs: untrained for mAP (3 epochs gave 0.13%, measured; the
#: fast recipe needs about 10), the demo shows the road: train, evaluate, export, draw boxes.
DET_QUICK = DetPlan("quick", ("mnv2_ssdlite",), seeds=1, epochs=2, val_subset=200)
#: Every variant, 2 seeds, 12 epochs each (the fast recipe passes 15% mAP after about 10 epochs: docs/detection.md),
#: and each seed-0 run's best verified file timed (the time claim is about deployed files).
DET_FULL = DetPlan("full", tuple(DET_VARIANTS), seeds=2, epochs=12, auto=True)


@dataclass
class DetResult:
    key: str
    model: str
    macs: int  # at the plan's side, 11 classes
    params: int
    macs_320: int  # the paper's setting: 320 px, 81 classes
    params_320: int
    mAP: list[float] = field(default_factory=list)
    AP50: list[float] = field(default_factory=list)
    latency_ms: float | None = None  # seed 0, ONNX fp32 in onnxruntime
    auto_latency_ms: float | None = None  # seed 0, the best verified file (plan.auto)
    auto_choice: str = ""  # "runtime precision" of that file, or why none
    train_time_s: list[float] = field(default_factory=list)  # per seed, all epochs

    @property
    def mean(self) -> float:
        return statistics.fmean(self.mAP) if self.mAP else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.mAP) if len(self.mAP) > 1 else 0.0


def _complexity(key: str, side: int) -> DetResult:
    name = DET_VARIANTS[key]
    here, paper = profile(name, side, num_classes=SCENES_CLASSES), profile(name, 320, num_classes=81)
    return DetResult(key, name, here.macs, here.params, paper.macs, paper.params)


def _train(key: str, seed: int, plan: DetPlan, run_dir: Path, callback: Callable[[str, dict], None]) -> dict:
    cfg = TrainConfig(model=DET_VARIANTS[key], data=plan.data, out=str(run_dir), epochs=plan.epochs, seed=seed,
                      resolution=plan.resolution, val_subset=plan.val_subset, checkpoint_every=10**9,
                      threads=plan.threads, device=plan.device, resume=(run_dir / CONFIG_FILE).exists())
    return train(cfg, callback=callback)


def run_detection(plan: DetPlan, out_dir: str | Path,
                  progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train, evaluate and time every variant of ``plan``; write ``detection.md`` and ``detection.json`` into
    ``out_dir`` (runs under ``out_dir/runs/det-<key>-seed<n>``, resumed if there)."""
    out = Path(out_dir)
    notify = progress or (lambda event, info: None)
    started = time.perf_counter()
    results: list[DetResult] = []
    for index, key in enumerate(plan.variants):
        res = _complexity(key, plan.resolution)
        for seed in range(plan.seeds):
            notify("model", {"index": index, "total": len(plan.variants), "key": f"det {key}", "seed": seed})
            run = _train(key, seed, plan, out / "runs" / f"det-{key}-seed{seed}",
                         lambda ev, info: notify("train:" + ev, info))
            res.mAP.append(float(run.get("val_mAP") or 0.0))
            res.AP50.append(float(run.get("val_AP50") or 0.0))
            res.train_time_s.append(training_seconds(out / "runs" / f"det-{key}-seed{seed}"))
        first = out / "runs" / f"det-{key}-seed0"
        res.latency_ms = onnx_latency(first, plan.resolution, plan.bench_repeats)
        if plan.auto:
            auto = auto_latency(first, plan.check_count, plan.auto_seconds)
            res.auto_latency_ms, res.auto_choice = auto.latency_ms, auto.choice
        results.append(res)
        notify("done", {"index": index, "total": len(plan.variants), "key": f"det {key}", "top1": res.mean})
    elapsed = time.perf_counter() - started
    payload = {"plan": asdict(plan), "elapsed_s": elapsed,
               "variants": [{**asdict(r), "mean": r.mean, "std": r.std} for r in results]}
    atomic_write_text(out / "detection.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "detection.md", detection_report(plan, results, elapsed))
    return {"report": str(out / "detection.md"), "results": str(out / "detection.json"), "elapsed_s": elapsed}


#: Below this mean mAP a variant has not learned at the plan's budget: a comparison with it tests the recipe.
LEARNED_MAP = 1.0


def _learned(*results: DetResult) -> str:
    """A caveat naming the variants that did not learn at this budget, or ""."""
    stuck = [r for r in results if r.mean < LEARNED_MAP]
    if not stuck:
        return ""
    names = ", ".join(f"`{r.key}` ({r.mean:.2f} mAP)" for r in stuck)
    return (f" Caveat: {names} had not learned at this budget (below {LEARNED_MAP:g} mAP), so this compares the "
            "recipe's speed of learning from scratch, not the architectures.")


def _claims(by: dict[str, DetResult]) -> list[str]:
    lines = []
    v2, v1, ssd = (by.get(k) for k in ("mnv2_ssdlite", "mnv1_ssdlite", "mnv2_ssd"))
    if v2 and v1:
        lines.append(f"- **MNV2 vs MNV1 + SSDLite, accuracy** (paper: 22.1 vs 22.2 mAP, \"about the same\"): "
                     f"{v2.mean:.2f} vs {v1.mean:.2f}; MNV2 no more than 1 pt below MNV1 "
                     f"{verdict(v2.mAP, v1.mAP, margin=1.0)}.{_learned(v2, v1)}")
        lines.append(f"- **MNV2 vs MNV1 + SSDLite, cost** (paper: 0.8 vs 1.3 B MAdds = 0.62x): "
                     f"{v2.macs_320 / 1e9:.3f} vs {v1.macs_320 / 1e9:.3f} B at 320 px = "
                     f"{v2.macs_320 / v1.macs_320:.2f}x (counted; equal to the paper's ratio within its rounding).")
        lines += _time_claims(v2, v1)
    if v2 and ssd:
        lines.append(f"- **SSDLite vs SSD heads** (paper Table 5: 2.1M vs 14.8M head params): whole networks "
                     f"{v2.params_320 / 1e6:.2f}M vs {ssd.params_320 / 1e6:.2f}M, {v2.macs_320 / 1e9:.3f} vs "
                     f"{ssd.macs_320 / 1e9:.3f} B MAdds at 320; mAP {v2.mean:.2f} vs {ssd.mean:.2f}, SSDLite no more "
                     f"than 1 pt below SSD {verdict(v2.mAP, ssd.mAP, margin=1.0)}.{_learned(v2, ssd)}")
    return lines or ["- (this plan trains one variant: the comparisons need `--full`)"]


def rewrite_detection_report(out_dir: str | Path) -> str:
    """``detection.md`` written again from ``detection.json`` (nothing trained or measured); returns its path."""
    out = Path(out_dir)
    payload = read_json_object(out / "detection.json", "mobilecnn reproduce --task detection")
    recorded: dict[str, Any] = dict(payload["plan"])
    plan = DetPlan(**{**recorded, "variants": tuple(recorded["variants"])})
    fields = {f.name for f in dataclasses.fields(DetResult)}
    results = [DetResult(**{k: v for k, v in row.items() if k in fields}) for row in payload["variants"]]
    atomic_write_text(out / "detection.md", detection_report(plan, results, float(payload["elapsed_s"])))
    return str(out / "detection.md")


def _time_claims(v2: DetResult, v1: DetResult) -> list[str]:
    """The 0.74x claim, on the best verified files when the plan searched them, and on ONNX fp32 files."""
    lines, paper = [], "(paper: 200 vs 270 ms on a Pixel 1 = 0.74x)"
    for a, b, files, how in ((v2.auto_latency_ms, v1.auto_latency_ms, "best verified files",
                              f"{v2.auto_choice} vs {v1.auto_choice}"),
                             (v2.latency_ms, v1.latency_ms, "ONNX fp32 files", "onnxruntime")):
        if a and b:
            lines.append(f"- **MNV2 vs MNV1 + SSDLite, time, {files}** {paper}: {a:.2f} vs {b:.2f} ms ({how}; "
                         f"batch 1, 1 thread, this CPU) = {a / b:.2f}x; "
                         + ("**held**." if a / b <= 0.74 else "**did not hold** (> 0.74x)."))
    return lines


def detection_report(plan: DetPlan, results: list[DetResult], elapsed: float) -> str:
    """The Markdown section: Tables 5 and 6 regenerated, the claims on the scenes, one row per variant."""
    by = {r.key: r for r in results}
    lines = [
        "## Detection: SSDLite (MobileNetV2 paper section 6.2)",
        "",
        f"Budget: {plan.epochs:g} epoch(s) of the 2,000 train scenes at {plan.resolution} px, the fast_detection "
        f"recipe, {plan.seeds} seed(s); COCO mAP@[.5:.95] (faster-coco-eval) on {plan.val_subset or 500} val "
        f"scenes, mean over seeds. This section took {elapsed / 60:.1f} min; the runs' training took "
        f"{sum(sum(r.train_time_s) for r in results) / 60:.1f} min (runs already trained are resumed as they are, "
        "so a second pass only measures again).",
        "",
        *[line.replace("## ", "### ", 1) for line in detection_markdown()],
        "",
        "### Claims of section 6.2 on the scenes",
        "",
        *_claims(by),
        "",
        f"| variant | model | MAdds @{plan.resolution} (M) | params (M) | MAdds @320, 81 cl. (B) | "
        "params @81 cl. (M) | mAP (%) | AP50 (%) | latency ONNX fp32 (ms) |"
        + (" best verified file (ms) |" if plan.auto else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if plan.auto else ""),
    ]
    for r in results:
        spread = f" ± {r.std:.2f}" if len(r.mAP) > 1 else ""
        best = f" {_ms(r.auto_latency_ms)} ({r.auto_choice}) |" if plan.auto else ""
        lines.append(f"| `{r.key}` | `{r.model}` | {r.macs / 1e6:.1f} | {r.params / 1e6:.3f} | "
                     f"{r.macs_320 / 1e9:.3f} | {r.params_320 / 1e6:.3f} | {r.mean:.2f}{spread} | "
                     f"{statistics.fmean(r.AP50) if r.AP50 else 0:.2f} | {_ms(r.latency_ms)} |{best}")
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
