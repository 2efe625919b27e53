"""The report of ``mobilecnn reproduce``: the classification section's results (:class:`ModelResult`, kept in
``results.json``), the verdicts on the ShuffleNet paper's claims, and ``report.md``, which joins the classification
section with the other sections' markdown found in the same folder. A section run alone (``--task``) rewrites only
its own files, so the report keeps every section measured there, each stating its budget and its time."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import DataError
from .files import atomic_write_text
from .models.shufflenet_v1 import TABLE3_TOP1_ERROR
from .plots import plot_reproduce
from .reproduce_plan import FULL, MOBILENET_V2, OPTION_FIELDS, QUICK, TABLE5_LEVELS, ReproducePlan
from .validators import is_number

__all__ = ["ModelResult", "Classification", "SECTION_FILES", "load_classification", "write_report",
           "nearest_v2"]

#: The other sections' markdown, in the report's order (each written by its own module).
SECTION_FILES = ("segmentation", "detection", "mobilenet_v2")
RESULTS_FILE = "results.json"


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
    cpu: str = ""  # the machine its latency and int8 check were measured on (deploy.timing.machine_label)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.top1) if self.top1 else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.top1) if len(self.top1) > 1 else 0.0


@dataclass
class Classification:
    """The classification section: its plan, its models' results and how long it took (its long budget included)."""

    plan: ReproducePlan
    results: dict[str, ModelResult]
    elapsed_s: float
    longer_s: float = 0.0  # the longer budget's training (a section of its own: ``--task longer``)


def nearest_v2(macs: int, cache: dict[str, int]) -> str:
    """The MobileNetV2 width whose MACs (``cache``: name -> MACs) are nearest ``macs`` in ratio."""
    return min(cache, key=lambda n: abs(math.log(cache[n] / macs)))


def load_classification(out: Path) -> Classification | None:
    """The classification section recorded in ``out/results.json``; None when there is none."""
    source = out / RESULTS_FILE
    if not source.is_file():
        return None

    def refuse_constant(name: str) -> float:
        raise ValueError(f"it holds {name}, which is not a measured number")

    try:
        payload = json.loads(source.read_text(), parse_constant=refuse_constant)
        plan = ReproducePlan(**payload["plan"])
        plan = replace(plan, long_keys=tuple(plan.long_keys))  # JSON gives a list
        names = {f.name for f in fields(ModelResult)}
        results = {m["key"]: ModelResult(**{k: v for k, v in m.items() if k in names}) for m in payload["models"]}
        elapsed, longer_s = float(payload["elapsed_s"]), float(payload.get("longer_elapsed_s", 0.0))
        for r in results.values():
            if not all(is_number(v) for v in r.top1) or not r.top1:
                raise ValueError(f"model {r.key!r} has no finite top-1 results")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{source} is not a reproduce results file ({exc}); run `mobilecnn reproduce` again") from None
    return Classification(plan, results, elapsed, longer_s)


def _command(plan: ReproducePlan, out: Path, task: str = "all") -> str:
    base = FULL if plan.name == "full" else QUICK
    seeds = f" --seeds {plan.seeds}" if plan.seeds != base.seeds else ""
    threads = f" --threads {plan.threads}" if plan.threads else ""
    device = f" --device {plan.device}" if plan.device != base.device else ""
    auto = " --auto" if plan.auto and not base.auto else ""
    section = "" if task == "all" else f" --task {task}"
    return f"mobilecnn reproduce --{plan.name}{section}{seeds}{threads}{device}{auto} --out {out}"


def write_report(plan: ReproducePlan | None, out: Path, classification: Classification | None) -> dict[str, Any]:
    """``report.md`` in ``out``: ``classification`` (measured now, written to ``results.json`` too; else the one
    recorded there) and every other section's markdown present in ``out``; ``plan``: the one run now (None: only
    rewriting)."""
    if classification is None:
        classification = load_classification(out)
    else:
        atomic_write_text(out / RESULTS_FILE, json.dumps(_payload(classification), indent=2, allow_nan=False) + "\n")
    sections = [(out / f"{t}.md").read_text() for t in SECTION_FILES if (out / f"{t}.md").is_file()]
    main = classification.plan if classification else plan
    everything = _command(main, out) if main else f"mobilecnn reproduce --{_section_plan_name(out)} --out {out}"
    parts = ["# mobilecnn reproduce", "",
             f"Regenerate every section: `{everything}`. One section alone: add `--task` with `classification`, "
             "`longer`, `segmentation`, `detection` or `mobilenet_v2`; it rewrites only its own part of this report "
             "(docs/reproduce.md). Each section states its budget and how long it took.", ""]
    plots: dict[str, Path] = {}
    if classification is not None:
        text, plots = _classification_text(classification, out)
        parts.append(text)
    parts += [s.rstrip("\n") + "\n" for s in sections]
    atomic_write_text(out / "report.md", "\n".join(parts))
    answer: dict[str, Any] = {"report": str(out / "report.md"), "plots": {k: str(v) for k, v in plots.items()},
                              "elapsed_s": classification.elapsed_s if classification else None}
    if classification is not None:
        answer["results"] = str(out / RESULTS_FILE)
    return answer


def _section_plan_name(out: Path) -> str:
    """The plan name a section recorded in its JSON (``quick`` when none says)."""
    for t in SECTION_FILES:
        try:
            name = json.loads((out / f"{t}.json").read_text())["plan"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if name in ("quick", "full"):
            return str(name)
    return "quick"


def _plan_changed(plan: ReproducePlan) -> str:
    """A note when the recorded section was measured under an earlier definition of its plan."""
    current = FULL if plan.name == "full" else QUICK if plan.name == "quick" else None
    defined = [f.name for f in fields(ReproducePlan) if f.name not in (*OPTION_FIELDS, "name")]
    changed = [k for k in defined if current is not None and getattr(plan, k) != getattr(current, k)]
    if not changed:
        return ""
    shown = {k: getattr(current, k) for k in changed}
    now = ", ".join(f"{k} {v!r}" if len(repr(v)) <= 60 else f"{k} ({len(v)} entries)" for k, v in shown.items())
    return (f" It was measured under an earlier definition of the {plan.name} plan; the command now runs {now} "
            "(`reproduce_plan.py`).")


def _payload(c: Classification) -> dict[str, Any]:
    return {"plan": asdict(c.plan), "elapsed_s": c.elapsed_s, "longer_elapsed_s": c.longer_s,
            "models": [{**asdict(r), "mean": r.mean, "std": r.std} for r in c.results.values()]}


def _classification_text(c: Classification, out: Path) -> tuple[str, dict[str, Path]]:
    """The classification section's markdown and its plots (written into ``out``)."""
    plan, results, elapsed = c.plan, c.results, c.elapsed_s
    rows = list(results.values())
    plots = plot_reproduce(rows, out)
    budget = (f"{plan.epochs:g} epoch(s) over {plan.subset or 60000} training images, batch {plan.batch_size}, fast "
              f"recipe (SGD Nesterov, one-cycle lr {plan.lr:g}), {plan.seeds} seed(s) per model, "
              f"{plan.threads} training thread(s)")
    cmd = _command(plan, out, "classification")
    lines = [
        "## Classification: the ShuffleNet claims on Fashion-MNIST",
        "",
        f"Regenerate this section: `{cmd}` (it took {elapsed / 60:.1f} min).{_plan_changed(plan)}",
        "",
        f"Data: Fashion-MNIST (real, 60k/10k, resized to 32 px), small-input stems. Budget: {budget}. "
        + ("Top-1 on the full 10,000-image test set" if plan.val_subset is None
           else f"Top-1 on {plan.val_subset:,} of the 10,000 test images (a seeded random subset per run)")
        + ", mean ± std over seeds. "
        + (f"int8: the seed-0 run through onnxruntime static QDQ, calibrated on {plan.int8_calibration_images:,} "
           f"training images, beside that run's fp32 top-1, both on {plan.int8_check_images:,} test images. "
           if plan.int8 else "int8: not in this plan (`export --int8` quantizes a run; --full each model). ")
        + "Latency: the seed-0 "
        "run in onnxruntime fp32, batch 1, 1 thread, median." + _machines(rows) + " Complexity at 32 px (small-input "
        "stem); the papers' figures are ImageNet at 224 px.",
        "",
        "### Claims",
        "",
        "A claim holds when the mean top-1 difference has the paper's sign. With several seeds, a difference smaller "
        "than 2 standard errors (from the seed-to-seed spread) is marked as within seed noise.",
        "",
        *_claims(results, plan),
        *_long_claims(c, out),
        "",
        "### Models",
        "",
        "| model | MACs @32 (M) | params (M) | peak act. (KiB) | top-1 (%) | int8 top-1 (seed-0 fp32) | latency (ms) | "
        + ("auto latency (ms) | " if plan.auto else "") + "paper MFLOPs @224 | paper top-1 err |",
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if plan.auto else "") + "---:|---:|",
    ]
    if plan.auto:
        lines[lines.index("### Models") + 1:lines.index("### Models") + 1] = [
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
    lines += ["", "### Plots", ""] + [f"![{k}]({Path(p).name})" for k, p in plots.items()]
    return "\n".join(lines) + "\n", plots


def _machines(rows: list[ModelResult]) -> str:
    """The machine the latencies were measured on; when a section was resumed on another one, which models each
    measured, since latencies do not compare across machines."""
    by_cpu: dict[str, list[str]] = {}
    for r in rows:
        by_cpu.setdefault(r.cpu or "not recorded", []).append(r.key)
    if set(by_cpu) == {"not recorded"}:
        return ""
    if len(by_cpu) == 1:
        return f" Measured on {next(iter(by_cpu))}."
    parts = "; ".join(f"{cpu}: {', '.join(f'`{k}`' for k in keys)}" for cpu, keys in by_cpu.items())
    return (f" **The models were measured on {len(by_cpu)} machines** (the section was resumed on another), so "
            f"their latencies compare only within one machine: {parts}.")


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
                v2 = results[nearest_v2(base.macs_32, v2_macs)]
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


def _long_claims(c: Classification, out: Path) -> list[str]:
    """The Table 3 and margin claims again at the longer budget: does more training change the verdict?"""
    plan = c.plan
    longer = {k: replace(r, top1=r.long_top1, latency_ms=None) for k, r in c.results.items() if r.long_top1}
    if not longer:
        return []
    lines = [line for line in _claims(longer, plan) if not line.startswith("  ")]
    return ["", f"#### The same claims at {plan.long_epochs:g} epochs over the same {plan.subset or 60000:,} images",
            "", f"Budget: {plan.long_epochs:g}x the one above, same recipe and seeds, for {len(longer)} models (the "
            "Table 3 pairs and levels listed); the verdicts above are at 1x. Regenerate these alone: "
            f"`{_command(plan, out, 'longer')}` (it took {c.longer_s / 60:.1f} min).", "", *lines]
