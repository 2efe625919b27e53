"""The MobileNetV2 section of ``mobilecnn reproduce``: the paper's own claims (arXiv 1801.04381) tested here.

* **Figure 6a and 6b**: MobileNetV2 trained as published and as its ablations (options of the builder, same
  parameters: ``linear_bottleneck=False`` puts a ReLU6 after each projection; ``shortcut="expansion"`` joins the
  residuals between the expanded tensors, ``"none"`` drops them) on Fashion-MNIST at 32 px with the fast recipe,
  evaluated after every epoch: top-1 against training step for each variant, like the paper's figure. The
  paper: the linear bottleneck beats ReLU6, and the shortcut between bottlenecks beats both others.
* **Table 4**: MobileNetV2 1.0 against MobileNet V1 1.0 and ShuffleNet (g=3) 1.5x and 2x. Top-1 comes from the
  classification section's runs of the same models (Fashion-MNIST, its budget and seeds); MAdds and params are
  counted on the ImageNet networks at 224 px; latency is each ImageNet network's best file (``export --format
  auto`` on this CPU, batch 1, 1 thread; untrained weights, so the fp32 files are verified against PyTorch but
  bf16/int8 accuracy cannot be judged), the best files timed against each other paired and interleaved.
* The cost claims (depthwise-separable convolution, ShuffleNet vs AlexNet) are :mod:`mobilecnn.reproduce_cost`
  and :mod:`mobilecnn.reproduce_alexnet`.

A verdict says whether the difference has the paper's sign; with several seeds, a difference under two standard
errors is marked as within seed noise (:func:`mobilecnn.reproduce_measure.verdict`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .analysis.complexity import profile
from .deploy.timing import bootstrap_ratio
from .files import atomic_write_text
from .models import create_model, published
from .plots import plot_curves, read_metrics
from .reproduce_alexnet import ALEXNET_FULL, ALEXNET_QUICK, AlexNetPlan, alexnet_markdown, run_alexnet
from .reproduce_cost import COST_FULL, COST_QUICK, CostPlan, cost_markdown, run_cost
from .reproduce_measure import FilesPlan, best_files_paired, train_classifier, verdict
from .runs.layout import METRICS_FILE

__all__ = ["V2Plan", "V2_QUICK", "V2_FULL", "ABLATIONS", "FIGURE6", "TABLE4", "run_mobilenet_v2", "run_figure6",
           "run_table4", "figure6_markdown", "table4_markdown"]

#: Figure 6's variants of MobileNetV2: key -> builder options (the first is the published network).
ABLATIONS: dict[str, dict[str, Any]] = {
    "linear bottleneck, shortcut between bottlenecks": {},
    "relu6 in bottleneck": {"linear_bottleneck": False},
    "shortcut between expansions": {"shortcut": "expansion"},
    "no residual": {"shortcut": "none"},
}
_PUBLISHED = next(iter(ABLATIONS))
#: Figure 6's panels: (title, the variant the paper finds best, the variants it beats).
FIGURE6: dict[str, tuple[str, tuple[str, ...]]] = {
    "6a": ("the impact of non-linearities", ("relu6 in bottleneck",)),
    "6b": ("the impact of residual blocks", ("shortcut between expansions", "no residual")),
}
#: MobileNetV2 paper Table 4 (ImageNet): top-1 %, params (M), MAdds (M), CPU ms on a Google Pixel 1 (None: not
#: published); the MAdds are also stored beside each model (:func:`mobilecnn.models.published`).
TABLE4: dict[str, tuple[float, float, int, int | None]] = {
    "mobilenet_v2_x1_0": (72.0, 3.4, 300, 75),
    "mobilenet_v1_x1_0": (70.6, 4.2, 575, 113),
    "shufflenet_v1_g3_x1_5": (71.5, 3.4, 292, None),
    "shufflenet_v1_g3_x2_0": (73.7, 5.4, 524, None),
}
_V2 = "mobilenet_v2_x1_0"


@dataclass(frozen=True)
class V2Plan:
    """Figure 6: ``model`` trained ``seeds`` times per variant for ``epochs`` epochs of ``images_per_epoch``
    training images (one curve point per epoch, each on ``val_subset`` test images; None: all 10,000), batch and
    peak lr of the fast recipe. Table 4: how each network's best file is found and timed (``files``). ``cost`` and
    ``alexnet``: the plans of the two cost claims."""

    name: str
    model: str
    seeds: int
    epochs: int
    images_per_epoch: int
    val_subset: int | None
    batch_size: int = 128
    lr: float = 0.1
    files: FilesPlan = FilesPlan()
    cost: CostPlan = COST_FULL
    alexnet: AlexNetPlan = ALEXNET_FULL
    threads: int | None = None
    device: str = "auto"


#: The demo's: MobileNetV2 0.35 (a fifth of 1.0's MAdds), 1 seed, 2 epochs of 1,500 images at batch 32 (94 steps:
#: 70% top-1 where batch 64's 47 steps stayed near chance, measured); Table 4's best files among ONNX fp32 only. Too
#: small a budget to separate the variants: the report says so.
V2_QUICK = V2Plan("quick", "mobilenet_v2_x0_35", seeds=1, epochs=2, images_per_epoch=1500, val_subset=1000,
                  batch_size=32, lr=0.15, files=FilesPlan(formats=("onnx",), precisions=("fp32",), seconds=0.3,
                                                         pair_seconds=1.0),
                  cost=COST_QUICK, alexnet=ALEXNET_QUICK)
#: MobileNetV2 1.0 as in the paper, 3 seeds, 4 epochs of 5,000 images (the classification section's 20,000
#: images, seen as 4 curve points), every installed runtime and precision for Table 4's files.
V2_FULL = V2Plan("full", _V2, seeds=3, epochs=4, images_per_epoch=5000, val_subset=5000)


def _run_dir(out: Path, variant: str, seed: int) -> Path:
    slug = {v: f"fig6-{i}" for i, v in enumerate(ABLATIONS)}[variant]
    return out / "runs" / f"{slug}-seed{seed}"


def run_figure6(plan: V2Plan, out: str | Path, notify: Callable[[str, dict], None]) -> dict[str, Any]:
    """Train every variant (finished runs are resumed as they are), then read their curves and last top-1."""
    out = Path(out)
    variants: dict[str, dict[str, Any]] = {}
    for variant, options in ABLATIONS.items():
        prof = profile(create_model(plan.model, num_classes=10, in_chans=1, small_input=True, **options), 32)
        runs = []
        for seed in range(plan.seeds):
            notify("mobilenet_v2:figure6", {"variant": variant, "seed": seed})
            run_dir = _run_dir(out, variant, seed)
            train_classifier(run_dir, plan.model, seed, _figure6_training(plan), options, notify)
            records = [r for r in read_metrics(run_dir / METRICS_FILE) if "val_top1" in r]
            runs.append({"curve": [[r["step"], r["val_top1"]] for r in records], "top1": records[-1]["val_top1"]})
        variants[variant] = {"options": options, "macs_32": prof.macs, "params": prof.params, "runs": runs,
                             "top1": [r["top1"] for r in runs]}
    return {"model": plan.model, "variants": variants}


def _figure6_training(plan: V2Plan) -> dict[str, Any]:
    """The training options of Figure 6's runs (:func:`~mobilecnn.reproduce_measure.train_classifier`)."""
    return {"epochs": plan.epochs, "subset": plan.images_per_epoch, "val_subset": plan.val_subset,
            "batch_size": plan.batch_size, "lr": plan.lr, "threads": plan.threads, "device": plan.device}


def run_table4(plan: V2Plan, top1: dict[str, list[float]], notify: Callable[[str, dict], None]) -> dict[str, Any]:
    """Counted MAdds and params of the ImageNet networks, their best files timed paired, and ``top1`` (the
    classification section's Fashion-MNIST results, by model; missing models were not trained by the plan)."""
    nets = {name: create_model(name, num_classes=1000).eval() for name in TABLE4}
    models: dict[str, dict[str, Any]] = {}
    for name, net in nets.items():
        prof = profile(net, 224)
        pub = published(name)
        models[name] = {"macs": prof.macs, "params": prof.params_without_bn, "top1": top1.get(name, []),
                        "paper": dict(zip(("top1", "params_m", "madds_m", "pixel1_ms"), TABLE4[name])),
                        "published_madds_m": pub.macs.get(224) if pub else None}
    files = best_files_paired(nets, plan.files, notify)
    for name, info in files["models"].items():
        models[name].update(info)
    per = files["per_round_ms"]
    for name in models:
        if name != _V2 and name in per and _V2 in per:
            models[name]["v2_time_ratio"] = list(bootstrap_ratio(per[_V2], per[name]))
    return {"models": models, "rounds": files["rounds"], "files_plan": asdict(plan.files)}


def run_mobilenet_v2(plan: V2Plan, out: str | Path, top1: dict[str, list[float]],
                     notify: Callable[[str, dict], None] | None = None) -> dict[str, Any]:
    """Every claim of the section; writes ``mobilenet_v2.md``, ``mobilenet_v2.json`` and ``figure6.png``."""
    out = Path(out)
    say = notify or (lambda event, info: None)
    started = time.perf_counter()
    result: dict[str, Any] = {"plan": asdict(plan), "figure6": run_figure6(plan, out, say),
                              "table4": run_table4(plan, top1, say),
                              "cost": run_cost(plan.cost, say), "alexnet": run_alexnet(plan.alexnet, say)}
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_mobilenet_v2_report(result, out)
    return result


def write_mobilenet_v2_report(result: dict[str, Any], out: Path) -> Path:
    """``mobilenet_v2.md`` (with ``figure6.png``) and ``mobilenet_v2.json`` from a :func:`run_mobilenet_v2` result."""
    import json

    plot = plot_curves({v: [r["curve"] for r in d["runs"]] for v, d in result["figure6"]["variants"].items()},
                       {k: (title, (_PUBLISHED, *others)) for k, (title, others) in FIGURE6.items()},
                       out / "figure6.png", f"Figure 6 on Fashion-MNIST ({result['figure6']['model']})")
    recorded, alexnet = result["plan"], result["plan"]["alexnet"]
    plan = V2Plan(**{**recorded, "files": FilesPlan(**recorded["files"]), "cost": CostPlan(**recorded["cost"]),
                     "alexnet": AlexNetPlan(**{**alexnet, "files": FilesPlan(**alexnet["files"])})})
    text = "\n".join([
        "## MobileNetV2 claims (MobileNetV2 paper, arXiv 1801.04381)", "",
        f"This section took {result['elapsed_s'] / 60:.1f} min.", "",
        figure6_markdown(result["figure6"], plan), "", f"![figure6]({plot.name})", "",
        table4_markdown(result["table4"], plan), "",
        cost_markdown(result["cost"]), "", alexnet_markdown(result["alexnet"])]) + "\n"
    atomic_write_text(out / "mobilenet_v2.md", text)
    atomic_write_text(out / "mobilenet_v2.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    return out / "mobilenet_v2.md"


def _acc(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.fmean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def figure6_markdown(fig: dict[str, Any], plan: V2Plan) -> str:
    """The ``### Figure 6`` part: the variants' params, MAdds and final top-1, one verdict per comparison."""
    variants = fig["variants"]
    lines = [f"### Figure 6: linear bottlenecks and inverted residuals ({fig['model']})", "",
             f"Budget: {plan.epochs} epoch(s) of {plan.images_per_epoch:,} Fashion-MNIST training images at 32 px "
             f"(small-input stem), batch {plan.batch_size}, fast recipe (peak lr {plan.lr:g}), {plan.seeds} seed(s); "
             f"top-1 on {plan.val_subset or 10000:,} test images after each epoch (the curves), the last one "
             "compared. The paper's figure is ImageNet training curves of MobileNetV2 1.0.", "",
             "| variant | options | params (M) | MAdds @32 (M) | top-1 (%) |", "|---|---|---:|---:|---:|"]
    for name, d in variants.items():
        options = ", ".join(f"{k}={v!r}" for k, v in d["options"].items()) or "as published"
        lines.append(f"| {name} | `{options}` | {d['params'] / 1e6:.3f} | {d['macs_32'] / 1e6:.2f} | "
                     f"{_acc(d['top1'])} |")
    lines.append("")
    best = variants[_PUBLISHED]["top1"]
    for panel, (title, others) in FIGURE6.items():
        for other in others:
            worse = variants[other]["top1"]
            lines.append(f"- **Figure {panel}, {title}**: {_PUBLISHED} {_acc(best)}% vs {other} {_acc(worse)}%: "
                         f"the paper's ranking {verdict(best, worse)} here.")
    if plan.seeds < 2:
        lines.append(f"- With {plan.seeds} seed at this budget the differences cannot be told from seed noise: "
                     "the verdicts above are not evidence either way (run `--full`).")
    return "\n".join(lines)


def _latency(m: dict[str, Any]) -> str:
    if m.get("paired_median_ms") is None:
        return f"- ({m.get('why') or 'not timed'})"
    return f"{m['paired_median_ms']:.2f} ({m.get('best')})"


def table4_markdown(t4: dict[str, Any], plan: V2Plan) -> str:
    """The ``### Table 4`` part: ours beside the paper's, then the accuracy and speed verdicts."""
    models = t4["models"]
    lines = ["### Table 4: MobileNetV2 against MobileNet V1 and ShuffleNet", "",
             "Top-1: the classification section's Fashion-MNIST runs of each model (its budget and seeds). MAdds "
             "and params (without BN): the ImageNet networks at 224 px. Latency: each ImageNet network's best file "
             f"at {plan.files.resolution} px (`export --format auto` on this CPU, batch 1, {plan.files.threads} "
             "thread(s); the fp32 files verified against PyTorch, "
             "bf16/int8 timed but not judged: no ImageNet weights here), then the best files timed against each "
             f"other, paired and interleaved ({t4['rounds']} rounds). Paper: ImageNet top-1 and Google Pixel 1 "
             "CPU time.", "",
             "| model | top-1 (%) | paper top-1 | params (M) | paper | MAdds (M) | paper | best file: ms (choice) | "
             "MNV2 time / this | paper ms |", "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name, m in models.items():
        p = m["paper"]
        ratio = m.get("v2_time_ratio")
        lines.append(f"| `{name}` | {_acc(m['top1'])} | {p['top1']:g} | {m['params'] / 1e6:.2f} | {p['params_m']:g} | "
                     f"{m['macs'] / 1e6:.0f} | {p['madds_m']} | {_latency(m)} | "
                     f"{'-' if not ratio else f'{ratio[0]:.2f}x [{ratio[1]:.2f}, {ratio[2]:.2f}]'} | "
                     f"{p['pixel1_ms'] or '-'} |")
    lines += ["", *_table4_claims(models, plan)]
    return "\n".join(lines)


#: the section whose runs fill Table 4's top-1 (recorded in the same folder; docs/reproduce.md)
_CLASSIFICATION_CMD = "mobilecnn reproduce --full --task classification"


def _table4_claims(models: dict[str, dict[str, Any]], plan: V2Plan) -> list[str]:
    v2, v1 = models[_V2], models["mobilenet_v1_x1_0"]
    sn15, sn2 = models["shufflenet_v1_g3_x1_5"], models["shufflenet_v1_g3_x2_0"]
    lines = []
    if v2["top1"] and v1["top1"]:
        lines.append(f"- **More accurate than MobileNet V1** (paper 72.0 vs 70.6): {_acc(v2['top1'])} vs "
                     f"{_acc(v1['top1'])}: {verdict(v2['top1'], v1['top1'])}.")
    else:
        lines.append("- **More accurate than MobileNet V1**: not tested by this plan (MobileNet V1 1.0 is trained by "
                     f"the full plan's fourth Table 5 level; run `{_CLASSIFICATION_CMD}`).")
    ratio = v1.get("v2_time_ratio")
    if ratio:
        held = "**held**" if ratio[2] < 1 else "**did not hold**" if ratio[1] > 1 else "within timing noise"
        lines.append(f"- **Faster than MobileNet V1** (paper 75 vs 113 ms, 0.66x): MNV2's best file takes "
                     f"{ratio[0]:.2f}x [{ratio[1]:.2f}, {ratio[2]:.2f}] of MNV1's: {held} (95% interval below 1).")
    if v2["top1"] and sn15["top1"] and sn2["top1"]:
        low = verdict(v2["top1"], sn15["top1"])
        high = verdict(sn2["top1"], v2["top1"])
        lines.append(f"- **Between ShuffleNet 1.5x and 2x in accuracy** (paper 71.5 < 72.0 < 73.7): "
                     f"MNV2 above 1.5x {low}; 2x above MNV2 {high}.")
    else:
        lines.append("- **Between ShuffleNet 1.5x and 2x in accuracy**: not tested by this plan (ShuffleNet 2x is "
                     f"trained by the full plan's fourth Table 5 level; run `{_CLASSIFICATION_CMD}`).")
    lines.append(f"- **MAdds** (paper 292 < 300 < 524): counted {sn15['macs'] / 1e6:.0f} < {v2['macs'] / 1e6:.0f} < "
                 f"{sn2['macs'] / 1e6:.0f}: "
                 f"{'**held**' if sn15['macs'] < v2['macs'] < sn2['macs'] else '**did not hold**'}.")
    return lines
