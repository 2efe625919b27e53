"""``mobilecnn reproduce``: test the papers' claims on Fashion-MNIST (small-input stems, 32 px); the
MobileNetV2 sections are :mod:`mobilecnn.reproduce_segmentation`, :mod:`mobilecnn.reproduce_detection` and
:mod:`mobilecnn.reproduce_mobilenet_v2` (Figure 6, Table 4 and the cost claims). Claims (ShuffleNet, arXiv 1707.01083):

* Table 5: at matched complexity ShuffleNet is more accurate than MobileNet V1, and the margin grows
  as the models shrink;
* Table 3: without the channel shuffle, group convolutions lose accuracy (1x g=8: +5.2 error).

Every model is trained with the same recipe and budget, evaluated on the 10,000 test images, exported to int8
(onnxruntime, accuracy-checked) and timed at batch 1 on one thread. The report says whether each claim held.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .analysis.complexity import profile
from .deploy.run_export import export_run
from .errors import DataError
from .files import atomic_write_text
from .models import create_model, published
from .models.shufflenet_v1 import TABLE3_TOP1_ERROR
from .plots import plot_reproduce
from .reproduce_detection import DET_FULL, DET_QUICK, run_detection
from .reproduce_measure import auto_latency, onnx_latency, train_classifier, training_seconds
from .reproduce_mobilenet_v2 import V2_FULL, V2_QUICK, run_mobilenet_v2
from .reproduce_plan import (
    FULL,
    MOBILENET_V2,
    QUICK,
    TABLE3_MODELS,
    TABLE5_LEVELS,
    TASK_SECTIONS,
    ReproduceConfig,
    ReproducePlan,
)
from .reproduce_segmentation import SEG_FULL, SEG_QUICK, run_segmentation
from .runs.layout import CONFIG_FILE
from .train import default_threads
from .validators import is_number

__all__ = ["ReproducePlan", "ReproduceConfig", "QUICK", "FULL", "run_reproduce", "rebuild_report", "TABLE5_LEVELS",
           "TABLE3_MODELS"]


@dataclass
class ModelResult:
    key: str
    model: str
    shuffle: bool
    macs_32: int
    params: int
    peak_activation_bytes: int
    top1: list[float] = field(default_factory=list)
    int8_top1: float | None = None
    int8_fp32_top1: float | None = None  # fp32 top-1 on the images the int8 check used
    int8_note: str = ""
    latency_ms: float | None = None
    auto_latency_ms: float | None = None
    auto_choice: str = ""  # "runtime precision" of the file auto kept, or why none
    auto_time_s: float | None = None
    train_time_s: list[float] = field(default_factory=list)
    long_top1: list[float] = field(default_factory=list)  # at the plan's long_epochs (its long_keys only)
    paper_mflops: float | None = None
    paper_top1_error: float | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.top1) if self.top1 else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.top1) if len(self.top1) > 1 else 0.0


def _nearest_v2(macs: int, cache: dict[str, int]) -> str:
    return min(cache, key=lambda n: abs(math.log(cache[n] / macs)))


def _macs32(name: str) -> int:
    return profile(create_model(name, num_classes=10, in_chans=1, small_input=True), 32).macs


def plan_models(plan: ReproducePlan) -> list[tuple[str, str, bool]]:
    """(key, model, shuffle) of every model the plan trains, in order."""
    v2_macs = {n: _macs32(n) for n in MOBILENET_V2}
    out: list[tuple[str, str, bool]] = []
    seen: set[str] = set()

    def add(name: str, shuffle: bool = True) -> None:
        key = name if shuffle else f"{name}+noshuffle"
        if key not in seen:
            seen.add(key)
            out.append((key, name, shuffle))

    for _, baseline, shufflenets in TABLE5_LEVELS[: plan.levels]:
        add(baseline)
        for s in shufflenets:
            add(s)
        add(_nearest_v2(_macs32(baseline), v2_macs))
    for name in plan.table3:
        add(name, True)
        add(name, False)
    return out


def _train_eval(model: str, shuffle: bool, seed: int, plan: ReproducePlan, run_dir: Path,
                callback: Callable[[str, dict], None] | None) -> dict[str, Any]:
    return train_classifier(run_dir, model, seed, _options(plan), {} if shuffle else {"shuffle": False}, callback)


def _options(plan: ReproducePlan) -> dict[str, Any]:
    return {"epochs": plan.epochs, "batch_size": plan.batch_size, "lr": plan.lr, "subset": plan.subset,
            "threads": plan.threads, "device": plan.device}


def run_reproduce(plan: ReproducePlan, out_dir: str | Path,
                  progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train, evaluate, quantize and time every model of ``plan``; write ``report.md``, JSON and plots.

    Finished runs are kept under ``out_dir/runs``: running again resumes instead of starting over, and a
    model whose runs and measurements finished under the same plan is taken as recorded
    (``runs/<key>.result.json``; delete it to measure that model again).
    """

    out = Path(out_dir)
    notify = progress or (lambda event, info: None)
    # decided once: the load average during the run counts this process's own training threads
    plan = replace(plan, threads=plan.threads or default_threads())
    models = plan_models(plan) if plan.classification else []
    results: dict[str, ModelResult] = {}
    started = time.perf_counter()
    reused_s = 0.0  # measuring time of the models taken from an earlier invocation, counted in the report's total
    for index, (key, name, shuffle) in enumerate(models):
        cached = _finished_model(out, key, plan)
        if cached is not None:
            results[key], seconds = cached
            reused_s += seconds
            notify("done", {"index": index, "total": len(models), "key": key, "top1": results[key].mean,
                            "reused": True})
            continue
        model_started = time.perf_counter()
        no_shuffle: dict[str, Any] = {} if shuffle else {"shuffle": False}
        small = create_model(name, num_classes=10, in_chans=1, small_input=True, **no_shuffle)
        prof = profile(small, 32)
        pub = published(name)
        res = ModelResult(key, name, shuffle, prof.macs, prof.params, prof.peak_activation_bytes,
                          paper_mflops=pub.macs.get(224) if pub else None,
                          paper_top1_error=(TABLE3_TOP1_ERROR[name][0 if shuffle else 1]
                                            if name in TABLE3_TOP1_ERROR else (pub.top1_error if pub else None)))
        for seed in range(plan.seeds):
            notify("model", {"index": index, "total": len(models), "key": key, "seed": seed})
            run = _train_eval(name, shuffle, seed, plan, out / "runs" / f"{key}-seed{seed}", notify)
            res.top1.append(run["val_top1"])
            res.train_time_s.append(training_seconds(out / "runs" / f"{key}-seed{seed}"))
        first_run = out / "runs" / f"{key}-seed0"
        res.latency_ms = onnx_latency(first_run, 32, plan.bench_repeats)
        if plan.int8:
            res.int8_top1, res.int8_fp32_top1, res.int8_note = _int8(first_run, plan)
        if plan.auto:
            auto = auto_latency(first_run, plan.int8_check_images, plan.auto_seconds)
            res.auto_latency_ms, res.auto_choice, res.auto_time_s = auto.latency_ms, auto.choice, auto.time_s
        results[key] = res
        _record_finished_model(out, res, plan, time.perf_counter() - model_started)
        notify("done", {"index": index, "total": len(models), "key": key, "top1": res.mean, "reused": False})
    _train_longer(plan, models, results, out, notify)
    if plan.segmentation:
        seg = SEG_FULL if plan.name == "full" else SEG_QUICK
        run_segmentation(replace(seg, seeds=plan.dense_seeds or seg.seeds, threads=plan.threads, device=plan.device,
                                 auto=plan.auto or seg.auto), out, notify)
    if plan.detection:
        det = DET_FULL if plan.name == "full" else DET_QUICK
        run_detection(replace(det, seeds=plan.dense_seeds or det.seeds, threads=plan.threads, device=plan.device,
                              auto=plan.auto or det.auto), out, notify)
    if plan.mobilenet_v2:
        v2 = V2_FULL if plan.name == "full" else V2_QUICK
        run_mobilenet_v2(replace(v2, seeds=plan.dense_seeds or v2.seeds, threads=plan.threads, device=plan.device),
                         out, {r.model: r.top1 for r in results.values() if r.shuffle}, notify)
    elapsed = time.perf_counter() - started + reused_s
    return _write_report(plan, results, out, elapsed)


def _train_longer(plan: ReproducePlan, models: list[tuple[str, str, bool]], results: dict[str, ModelResult],
                  out: Path, notify: Callable[[str, dict[str, Any]], None]) -> None:
    """The plan's ``long_keys`` trained again at ``long_epochs`` (finished runs are resumed as they are)."""
    if not plan.long_epochs:
        return
    longer = replace(plan, epochs=plan.long_epochs)
    for index, (key, name, shuffle) in enumerate(m for m in models if m[0] in plan.long_keys):
        results[key].long_top1 = []
        for seed in range(plan.seeds):
            notify("model", {"index": index, "total": len(plan.long_keys), "key": f"{key} ({plan.long_epochs:g} "
                             "epochs)", "seed": seed})
            run_dir = out / "runs" / f"{key}@{plan.long_epochs:g}ep-seed{seed}"
            run = train_classifier(run_dir, name, seed, _options(longer), {} if shuffle else {"shuffle": False}, notify)
            results[key].long_top1.append(run["val_top1"])


def _finished_model_file(out: Path, key: str) -> Path:
    return out / "runs" / f"{key}.result.json"


def _record_finished_model(out: Path, res: ModelResult, plan: ReproducePlan, seconds: float) -> None:
    """A model's measured results, so that running the same plan again reuses them instead of measuring again."""
    payload = {"plan": asdict(plan), "seconds": seconds, "result": asdict(res)}
    atomic_write_text(_finished_model_file(out, res.key), json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _finished_model(out: Path, key: str, plan: ReproducePlan) -> tuple[ModelResult, float] | None:
    """The recorded results of ``key`` when they were measured under this very plan and its runs still exist."""
    path = _finished_model_file(out, key)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
        recorded, current = payload["plan"], json.loads(json.dumps(asdict(plan)))
        # neither the training threads (latency is timed on one thread) nor the other sections change what is
        # measured of a classifier
        ignored = {"threads", "dense_seeds", *TASK_SECTIONS}
        if ({k: v for k, v in recorded.items() if k not in ignored}
                != {k: v for k, v in current.items() if k not in ignored}):
            return None
        result = ModelResult(**payload["result"])
        seconds = float(payload["seconds"])
    except (ValueError, KeyError, TypeError):
        return None  # unreadable or from another version: measure again
    if not all((out / "runs" / f"{key}-seed{seed}" / CONFIG_FILE).is_file() for seed in range(plan.seeds)):
        return None
    return result, seconds


def rebuild_report(out_dir: str | Path) -> dict[str, Any]:
    """Write ``report.md`` and the plots again from ``results.json`` (no training, no measuring).

    For when the report's wording or plots change: the measured numbers, the plan and the original
    run time are read back unchanged.
    """
    out = Path(out_dir)
    source = out / "results.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: run `mobilecnn reproduce --out {out}` first")
    def refuse_constant(name: str) -> float:
        raise ValueError(f"it holds {name}, which is not a measured number")

    try:
        payload = json.loads(source.read_text(), parse_constant=refuse_constant)
        plan = ReproducePlan(**payload["plan"])
        names = {f.name for f in fields(ModelResult)}
        results = {m["key"]: ModelResult(**{k: v for k, v in m.items() if k in names}) for m in payload["models"]}
        elapsed = float(payload["elapsed_s"])
        for r in results.values():
            if not all(is_number(v) for v in r.top1) or not r.top1:
                raise ValueError(f"model {r.key!r} has no finite top-1 results")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{source} is not a reproduce results file ({exc}); run `mobilecnn reproduce` again") from None
    return _write_report(plan, results, out, elapsed)


def _int8(run: Path, plan: ReproducePlan) -> tuple[float | None, float | None, str]:
    """int8 (onnxruntime static QDQ) and fp32 top-1 on the same ``plan.int8_check_images`` test images; a
    refused export is reported as such."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = export_run(run, "onnx", Path(tmp) / "m.onnx", precision="int8", check_count=plan.int8_check_images,
                                calibration_count=plan.int8_calibration_images, max_drop=100.0)
        except (ValueError, ImportError) as exc:
            return None, None, f"int8 export failed: {exc}"
    report = result.get("int8_report") or {}
    return report.get("int8_top1"), report.get("fp32_top1"), ""


def _verdict(diff: float, a: ModelResult, b: ModelResult) -> str:
    """held / did not hold, or within seed noise when |diff| < 2 standard errors of the difference."""
    verdict = "held" if diff > 0 else "did not hold"
    if len(a.top1) < 2 or len(b.top1) < 2:
        return verdict
    se = math.sqrt(a.std ** 2 / len(a.top1) + b.std ** 2 / len(b.top1))
    if abs(diff) < 2 * se:
        return f"{verdict} by the mean, within seed noise (2 SE = {2 * se:.2f} pt)"
    return verdict


def _acc(r: ModelResult) -> str:
    return f"{r.mean:.2f}%" + (f" ± {r.std:.2f}" if len(r.top1) > 1 else "")


def _latency_txt(a: ModelResult, b: ModelResult) -> str:
    if not a.latency_ms or not b.latency_ms:
        return ""
    return (f" Batch-1 latency on this CPU: {a.latency_ms:.2f} vs {b.latency_ms:.2f} ms "
            f"({'faster' if a.latency_ms < b.latency_ms else 'slower'}, {a.latency_ms / b.latency_ms:.2f}x).")


def _claims(results: dict[str, ModelResult], plan: ReproducePlan) -> list[str]:
    lines = []
    level_margins: list[tuple[str, float, float | None]] = []  # (level, ours, paper) in points
    v2_macs = {r.model: r.macs_32 for r in results.values() if r.model in MOBILENET_V2}
    for label, baseline, shufflenets in TABLE5_LEVELS[: plan.levels]:
        if baseline not in results:
            continue
        base = results[baseline]
        best: ModelResult | None = None
        for s in shufflenets:
            if s in results:
                r = results[s]
                margin = r.mean - base.mean
                best = r if best is None or r.mean > best.mean else best
                lines.append(f"- **Table 5, {label}**: {s} {_acc(r)} vs {baseline} {_acc(base)} "
                             f"({margin:+.2f} pt; MACs at 32 px {r.macs_32 / 1e6:.1f} M vs "
                             f"{base.macs_32 / 1e6:.1f} M): "
                             f"the claim that ShuffleNet is more accurate at matched complexity "
                             f"**{_verdict(margin, r, base)}** here.{_latency_txt(r, base)}")
        if best is not None:
            paper_errors = [e for e in (results[s].paper_top1_error for s in shufflenets if s in results)
                            if e is not None]
            paper = (base.paper_top1_error - min(paper_errors)
                     if paper_errors and base.paper_top1_error is not None else None)
            level_margins.append((label, best.mean - base.mean, paper))
            if v2_macs:
                v2 = results[_nearest_v2(base.macs_32, v2_macs)]
                lines.append(f"  MobileNetV2 at the nearest MACs: {v2.model} {_acc(v2)} "
                             f"({v2.macs_32 / 1e6:.1f} M MACs), "
                             f"{v2.mean - best.mean:+.2f} pt against the best ShuffleNet of this level.")
    if len(level_margins) >= 2:
        smallest, largest = level_margins[0], level_margins[-1]
        grows = smallest[1] > largest[1]
        per_level = ", ".join(f"{label.split(' (')[0]}: {m:+.2f} pt"
                              + (f" (paper {p:+.1f})" if p is not None else "") for label, m, p in level_margins)
        lines.append(f"- **Margin grows as models shrink** (best ShuffleNet minus MobileNet per level, from the "
                     f"smallest): {per_level}: **{'held' if grows else 'did not hold'}** here.")
    else:
        lines.append("- **Margin grows as models shrink**: not tested by this plan (one complexity level; "
                     "run --full).")
    for name in plan.table3:
        on, off = results.get(name), results.get(f"{name}+noshuffle")
        if on and off:
            diff = on.mean - off.mean
            table3 = TABLE3_TOP1_ERROR.get(name)
            paper_txt = f" (paper: +{table3[1] - table3[0]:.1f} pt on ImageNet)" if table3 else ""
            lines.append(f"- **Table 3, {name}**: with shuffle {_acc(on)}, without {_acc(off)} "
                         f"({diff:+.2f} pt for the shuffle{paper_txt}): **{_verdict(diff, on, off)}** here.")
    return lines


def _long_claims(results: dict[str, ModelResult], plan: ReproducePlan) -> list[str]:
    """The Table 3 and margin claims again at the longer budget: does more training change the verdict?"""
    longer = {k: replace(r, top1=r.long_top1, latency_ms=None) for k, r in results.items() if r.long_top1}
    if not longer:
        return []
    lines = [line for line in _claims(longer, plan) if not line.startswith("  ")]
    return ["", f"### The same claims at {plan.long_epochs:g} epochs over the same {plan.subset or 60000:,} images",
            "", f"Budget: {plan.long_epochs:g}x the one above, same recipe and seeds, for {len(longer)} models (the "
            "Table 3 pairs and levels listed); the verdicts above are at 1x.", "", *lines]


def _write_report(plan: ReproducePlan, results: dict[str, ModelResult], out: Path, elapsed: float) -> dict[str, Any]:
    seg = "".join((out / f"{t}.md").read_text() + "\n" for t in ("segmentation", "detection", "mobilenet_v2")
                  if getattr(plan, t) and (out / f"{t}.md").is_file())
    if not plan.classification:  # the dense sections alone
        chosen = [t for t in TASK_SECTIONS if getattr(plan, t)]
        task = chosen[0] if len(chosen) == 1 else "all"
        threads = f" --threads {plan.threads}" if plan.threads else ""
        cmd = f"mobilecnn reproduce --{plan.name} --task {task}{threads} --out {out}"
        atomic_write_text(out / "report.md", f"# mobilecnn reproduce\n\nRegenerate: `{cmd}`.\n\n" + seg)
        return {"report": str(out / "report.md"), "plots": {}, "elapsed_s": elapsed}
    rows = list(results.values())
    plots = plot_reproduce(rows, out)
    budget = (f"{plan.epochs:g} epoch(s) over {plan.subset or 60000} training images, batch {plan.batch_size}, fast "
              f"recipe (SGD Nesterov, one-cycle lr {plan.lr:g}), {plan.seeds} seed(s) per model, "
              f"{plan.threads} training thread(s)")
    default_seeds = (FULL if plan.name == "full" else QUICK).seeds
    seeds = f" --seeds {plan.seeds}" if plan.seeds != default_seeds else ""
    cmd = f"mobilecnn reproduce --{plan.name}{seeds} --threads {plan.threads} --out {out}"
    lines = [
        "# mobilecnn reproduce: ShuffleNet claims on Fashion-MNIST",
        "",
        f"Regenerate: `{cmd}` (this run took {elapsed / 60:.1f} min).",
        "",
        f"Data: Fashion-MNIST (real, 60k/10k, resized to 32 px), small-input stems. Budget: {budget}. "
        "Top-1 on the full 10,000-image test set, mean ± std over seeds. "
        + (f"int8: the seed-0 run through onnxruntime static QDQ, calibrated on {plan.int8_calibration_images:,} "
           f"training images, beside that run's fp32 top-1, both on {plan.int8_check_images:,} test images. "
           if plan.int8 else "int8: not in this plan (`export --int8` quantizes a run; --full each model). ")
        + "Latency: the seed-0 "
        "run in onnxruntime fp32, batch 1, 1 thread, median. Complexity at 32 px (small-input stem); "
        "the papers' figures are ImageNet at 224 px.",
        "",
        "## Claims",
        "",
        "A claim holds when the mean top-1 difference has the paper's sign. With several seeds, a difference smaller "
        "than 2 standard errors (from the seed-to-seed spread) is marked as within seed noise.",
        "",
        *_claims(results, plan),
        *_long_claims(results, plan),
        "",
        "## Models",
        "",
        "| model | MACs @32 (M) | params (M) | peak act. (KiB) | top-1 (%) | int8 top-1 (seed-0 fp32) | latency (ms) | "
        + ("auto latency (ms) | " if plan.auto else "") + "paper MFLOPs @224 | paper top-1 err |",
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if plan.auto else "") + "---:|---:|",
    ]
    if plan.auto:
        lines[lines.index("## Models") + 1:lines.index("## Models") + 1] = [
            "", "auto latency: `export --format auto` of the seed-0 run -- every installed runtime x precision "
            "(fp32, bf16 where the CPU has it, int8), each verified on the test images (bf16/int8: top-1 drop "
            "<= 0.5 pt), the fastest kept; batch 1, 1 thread, paired timing; the runtime and precision it chose "
            "in brackets."]
    for r in rows:
        spread = f" ± {r.std:.2f}" if len(r.top1) > 1 else ""
        int8 = "-" if r.int8_top1 is None else f"{r.int8_top1:.2f}"
        if r.int8_top1 is not None and r.top1:
            fp32 = r.int8_fp32_top1 if r.int8_fp32_top1 is not None else r.top1[0]
            int8 += f" ({fp32:.2f})"  # fp32 of the seed-0 run that was quantized, on the same images
        lines.append(f"| `{r.key}` | {r.macs_32 / 1e6:.2f} | {r.params / 1e6:.3f} | "
                     f"{r.peak_activation_bytes / 1024:.0f} | "
                     f"{r.mean:.2f}{spread} | {int8} | {'-' if r.latency_ms is None else f'{r.latency_ms:.2f}'} | "
                     + (f"{'-' if r.auto_latency_ms is None else f'{r.auto_latency_ms:.2f}'} ({r.auto_choice}) | "
                        if plan.auto else "")
                     + f"{'-' if r.paper_mflops is None else f'{r.paper_mflops:g}'} | "
                     f"{'-' if r.paper_top1_error is None else f'{r.paper_top1_error:g}'} |")
    lines += ["", "## Plots", ""] + [f"![{k}]({Path(p).name})" for k, p in plots.items()]
    text = "\n".join(lines) + "\n" + ("\n" + seg if seg else "")
    atomic_write_text(out / "report.md", text)
    payload = {"plan": asdict(plan), "elapsed_s": elapsed,
               "models": [{**asdict(r), "mean": r.mean, "std": r.std} for r in rows]}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return {"report": str(out / "report.md"), "results": str(out / "results.json"),
            "plots": {k: str(v) for k, v in plots.items()}, "elapsed_s": elapsed}
