"""``mobilecnn reproduce``: test the papers' claims on Fashion-MNIST (small-input stems, 32 px); the
MobileNetV2 sections are :mod:`mobilecnn.reproduce_segmentation`, :mod:`mobilecnn.reproduce_detection` and
:mod:`mobilecnn.reproduce_mobilenet_v2` (Figure 6, Table 4 and the cost claims). Claims (ShuffleNet, arXiv 1707.01083):

* Table 5: at matched complexity ShuffleNet is more accurate than MobileNet V1, and the margin grows
  as the models shrink;
* Table 3: without the channel shuffle, group convolutions lose accuracy (1x g=8: +5.2 error).

Every model is trained with the same recipe and budget, evaluated on the 10,000 test images (the quick plan: 2,000
of them), exported to int8 (onnxruntime, accuracy-checked) and timed at batch 1 on one thread.
The report says whether each claim held.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .analysis.complexity import profile
from .deploy.run_export import export_run
from .deploy.timing import machine_label
from .errors import DataError
from .files import atomic_write_text, read_json_object
from .models import create_model, published
from .models.shufflenet_v1 import TABLE3_TOP1_ERROR
from .reproduce_detection import DET_FULL, DET_QUICK, rewrite_detection_report, run_detection
from .reproduce_measure import auto_latency, onnx_latency, train_classifier, training_seconds
from .reproduce_mobilenet_v2 import V2_FULL, V2_QUICK, run_mobilenet_v2, write_mobilenet_v2_report
from .reproduce_plan import (
    FULL,
    MOBILENET_V2,
    QUICK,
    TABLE3_MODELS,
    TABLE5_LEVELS,
    TASK_SECTIONS,
    UNMEASURED_FIELDS,
    ReproduceConfig,
    ReproducePlan,
)
from .reproduce_report import Classification, ModelResult, load_classification, nearest_v2, write_report
from .reproduce_segmentation import SEG_FULL, SEG_QUICK, rewrite_segmentation_report, run_segmentation
from .runs.layout import CONFIG_FILE
from .train import default_threads

__all__ = ["ReproducePlan", "ReproduceConfig", "QUICK", "FULL", "run_reproduce", "rebuild_report", "TABLE5_LEVELS",
           "TABLE3_MODELS"]


def _macs32(name: str) -> int:
    return profile(create_model(name, num_classes=10, in_chans=1, small_input=True), 32).macs


def plan_models(plan: ReproducePlan) -> list[tuple[str, str, bool]]:
    """(key, model, shuffle) of every model the plan trains, in order."""
    v2_macs = {n: _macs32(n) for n in MOBILENET_V2} if plan.nearest_v2 else {}
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
        if plan.nearest_v2:
            add(nearest_v2(_macs32(baseline), v2_macs))
    for name in plan.table3:
        add(name, True)
        add(name, False)
    return out


def _options(plan: ReproducePlan) -> dict[str, Any]:
    return {"epochs": plan.epochs, "batch_size": plan.batch_size, "lr": plan.lr, "subset": plan.subset,
            "val_subset": plan.val_subset, "threads": plan.threads, "device": plan.device}


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
    reused_s = 0.0  # time an earlier invocation spent on what this one reuses, counted in the report's total
    for index, (key, name, shuffle) in enumerate(models):
        cached = _finished_model(out, key, plan)
        if cached is not None:
            results[key], seconds = cached
            reused_s += seconds
            notify("done", {"index": index, "total": len(models), "key": key, "top1": results[key].mean,
                            "reused": True})
            continue
        model_started = time.perf_counter()
        earlier_s = 0.0  # the training an interrupted invocation recorded in this model's runs, resumed below
        res = _model_result(key, name, shuffle)
        for seed in range(plan.seeds):
            notify("model", {"index": index, "total": len(models), "key": key, "seed": seed})
            earlier_s += training_seconds(out / "runs" / f"{key}-seed{seed}")
            run = _train_eval(name, shuffle, seed, plan, out / "runs" / f"{key}-seed{seed}", notify)
            res.top1.append(run["val_top1"])
            res.train_time_s.append(training_seconds(out / "runs" / f"{key}-seed{seed}"))
        _measure(res, out / "runs" / f"{key}-seed0", plan)
        results[key] = res
        reused_s += earlier_s
        # the record carries the earlier training too, so that a later invocation reusing it counts all of it
        _record_finished_model(out, res, plan, time.perf_counter() - model_started + earlier_s)
        notify("done", {"index": index, "total": len(models), "key": key, "top1": res.mean, "reused": False})
    classification = None
    if plan.classification:
        classification = Classification(plan, results, time.perf_counter() - started + reused_s)
        write_report(plan, out, classification)  # written now: the sections below take hours in the full plan
    else:
        classification = load_classification(out)
    if plan.longer and plan.long_epochs:
        classification = _train_longer(plan, classification, out, notify)
        write_report(plan, out, classification)
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
        # Table 4's top-1: this plan's classification runs, else the ones recorded in OUT under the same plan name
        trained = classification.results if classification and classification.plan.name == plan.name else {}
        run_mobilenet_v2(replace(v2, seeds=plan.dense_seeds or v2.seeds, threads=plan.threads, device=plan.device),
                         out, {r.model: r.top1 for r in trained.values() if r.shuffle}, notify)
    _refresh_sections(out, classification, dense=False)
    # the classification section, when run now, is already in results.json: this joins the sections written since
    return write_report(plan, out, None)


def _refresh_sections(out: Path, classification: Classification | None, dense: bool = True) -> None:
    """The sections' markdown written again from their JSON (``dense``: segmentation and detection too), with
    Table 4's top-1 taken from the classification section recorded beside it under the same plan, so that a
    section regenerated alone leaves no other section stale."""
    try:
        if dense and (out / "segmentation.json").is_file():
            rewrite_segmentation_report(out)
        if dense and (out / "detection.json").is_file():
            rewrite_detection_report(out)
        if (out / "mobilenet_v2.json").is_file():
            result = read_json_object(out / "mobilenet_v2.json", "mobilecnn reproduce --task mobilenet_v2")
            if classification is not None and classification.plan.name == result["plan"]["name"]:
                trained = {r.model: r.top1 for r in classification.results.values() if r.shuffle}
                for name, row in result["table4"]["models"].items():
                    row["top1"] = trained.get(name, [])
            write_mobilenet_v2_report(result, out)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"a section's JSON in {out} is not what `mobilecnn reproduce` wrote ({exc}); run that "
                        "section again") from None


def _train_eval(model: str, shuffle: bool, seed: int, plan: ReproducePlan, run_dir: Path,
                callback: Callable[[str, dict], None] | None) -> dict[str, Any]:
    return train_classifier(run_dir, model, seed, _options(plan), _kwargs(shuffle), callback)


def _kwargs(shuffle: bool) -> dict[str, Any]:
    return {} if shuffle else {"shuffle": False}


def _model_result(key: str, name: str, shuffle: bool) -> ModelResult:
    """A model's counts at 32 px and its paper figures, before any run's results."""
    prof = profile(create_model(name, num_classes=10, in_chans=1, small_input=True, **_kwargs(shuffle)), 32)
    pub = published(name)
    return ModelResult(key, name, shuffle, prof.macs, prof.params, prof.peak_activation_bytes,
                       paper_mflops=pub.macs.get(224) if pub else None,
                       paper_top1_error=(TABLE3_TOP1_ERROR[name][0 if shuffle else 1]
                                         if name in TABLE3_TOP1_ERROR else (pub.top1_error if pub else None)))


def _measure(res: ModelResult, first_run: Path, plan: ReproducePlan) -> None:
    """The seed-0 run's ONNX latency, int8 accuracy and best file, as the plan asks."""
    res.cpu = machine_label()
    res.latency_ms = onnx_latency(first_run, 32, plan.bench_repeats)
    if plan.int8:
        res.int8_top1, res.int8_fp32_top1, res.int8_note = _int8(first_run, plan)
    if plan.auto:
        auto = auto_latency(first_run, plan.int8_check_images, plan.auto_seconds)
        res.auto_latency_ms, res.auto_choice, res.auto_time_s = auto.latency_ms, auto.choice, auto.time_s


def _train_longer(plan: ReproducePlan, classification: Classification | None, out: Path,
                  notify: Callable[[str, dict[str, Any]], None]) -> Classification:
    """The plan's ``long_keys`` trained again at ``long_epochs`` over the classification section's images
    (finished runs are resumed as they are); their top-1 is added to that section."""
    if classification is None or classification.plan.name != plan.name:
        raise DataError(f"the longer budget trains the claims of the classification section again, and {out} holds "
                        f"none of the {plan.name} plan: run `mobilecnn reproduce --{plan.name} --task classification "
                        f"--out {out}` first")
    started = time.perf_counter()
    earlier_s = 0.0  # the training an interrupted invocation recorded in the runs resumed below
    recorded = replace(classification.plan, long_epochs=plan.long_epochs, long_keys=plan.long_keys)
    longer = replace(recorded, epochs=plan.long_epochs, threads=plan.threads, device=plan.device)
    chosen = [classification.results[k] for k in plan.long_keys if k in classification.results]
    for index, res in enumerate(chosen):
        res.long_top1 = []
        for seed in range(recorded.seeds):
            notify("model", {"index": index, "total": len(chosen), "key": f"{res.key} ({plan.long_epochs:g} epochs)",
                             "seed": seed})
            run_dir = out / "runs" / f"{res.key}@{plan.long_epochs:g}ep-seed{seed}"
            earlier_s += training_seconds(run_dir)
            run = train_classifier(run_dir, res.model, seed, _options(longer), _kwargs(res.shuffle), notify)
            res.long_top1.append(run["val_top1"])
    return replace(classification, plan=recorded, longer_s=time.perf_counter() - started + earlier_s)


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
        if ({k: v for k, v in recorded.items() if k not in UNMEASURED_FIELDS}
                != {k: v for k, v in current.items() if k not in UNMEASURED_FIELDS}):
            return None
        result = ModelResult(**payload["result"])
        seconds = float(payload["seconds"])
    except (ValueError, KeyError, TypeError):
        return None  # unreadable or from another version: measure again
    if not all((out / "runs" / f"{key}-seed{seed}" / CONFIG_FILE).is_file() for seed in range(plan.seeds)):
        return None
    return result, seconds


def rebuild_report(out_dir: str | Path) -> dict[str, Any]:
    """Write ``report.md`` and the plots again from what ``out_dir`` holds (no training, no measuring).

    For when the report's wording or plots change: the measured numbers, the plans and the recorded times are
    read back unchanged.
    """
    out = Path(out_dir)
    if load_classification(out) is None and not any((out / f"{t}.md").is_file() for t in TASK_SECTIONS):
        raise FileNotFoundError(f"{out / 'results.json'} not found: run `mobilecnn reproduce --out {out}` first")
    _refresh_sections(out, load_classification(out))
    return write_report(None, out, None)


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

