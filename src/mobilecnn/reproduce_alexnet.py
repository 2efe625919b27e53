"""The ShuffleNet-vs-AlexNet claim of ``mobilecnn reproduce``, measured on this CPU (batch 1, paired timing).

ShuffleNet 0.5x vs AlexNet (ShuffleNet, arXiv 1707.01083, section 4.5 / Table 8): ShuffleNet 0.5x reaches
AlexNet's accuracy with about 18x fewer MFLOPs (720 vs 40) and runs about 13x faster on an ARM phone.
MFLOPs are counted the same way; each network's best file is found by ``export --format auto``
(:func:`~mobilecnn.deploy.auto.auto_export`: every installed format x precision asked for, fp32 verified
against PyTorch; bf16/int8 accuracy is not judged since the networks are untrained and the images random),
and AlexNet's best file is timed paired against each ShuffleNet's. The accuracy half is not tested:
torchvision's AlexNet needs inputs of at least 63 px (its 11x11 stride-4 stem and three 3x3 stride-2
max-pools take a 32 px Fashion-MNIST image below one pixel), and an AlexNet cut down to 32 px is no longer the
paper's 720-MFLOPs network.

Library code: returns a JSON-serialisable dict and Markdown, never prints; ``progress(event, info)`` gets
``alexnet:best_file`` and ``alexnet:paired``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .analysis.complexity import count_macs
from .deploy.timing import bootstrap_ratio, machine_info
from .models import create_model, published
from .reproduce_cost import check_plan, conditions, ratio_text
from .reproduce_measure import FilesPlan, best_files_paired

__all__ = ["AlexNetPlan", "ALEXNET_QUICK", "ALEXNET_FULL", "run_alexnet", "alexnet_markdown"]

Progress = Callable[[str, dict[str, Any]], None] | None

#: AlexNet's complexity as the ShuffleNet paper (arXiv 1707.01083) gives it in section 4.5 / Table 8.
ALEXNET_PAPER_MFLOPS = 720.0
#: Same section: ShuffleNet 0.5x runs "~13x" faster than AlexNet on an ARM phone; the theoretical speed-up is 18x.
ALEXNET_PAPER_SPEEDUP, ALEXNET_PAPER_FLOPS_RATIO = 13.0, 18.0
SPEEDUP_TOLERANCE = 1.25  # "about 13x" is judged held within this factor either way
SHUFFLENETS = ("shufflenet_v1_g3_x0_5", "shufflenet_v1_g8_x0_5")


@dataclass(frozen=True)
class AlexNetPlan:
    """AlexNet against ``shufflenets``: each network's best file and the paired timing as ``files`` says (its
    ``resolution`` is the side the files are timed at; the MFLOPs are counted at the paper's 224)."""

    name: str
    shufflenets: tuple[str, ...] = SHUFFLENETS
    files: FilesPlan = FilesPlan(calibration_images=32)


#: onnxruntime fp32 only (int8 calibration of AlexNet would double the time): about 20 s on 2 cores.
ALEXNET_QUICK = AlexNetPlan("quick", files=FilesPlan(("onnx",), ("fp32",), seconds=0.5, pair_seconds=1.0))
#: Every installed format and precision.
ALEXNET_FULL = AlexNetPlan("full", files=FilesPlan(seconds=1.0, pair_seconds=2.0, calibration_images=32))


def _alexnet_sides(net: nn.Module, sides: tuple[int, ...] = (32, 62, 63, 64)) -> dict[str, str]:
    """What torchvision's AlexNet does with a few input sides: its output shape, or the error it raises."""
    found = {}
    for side in sides:
        try:
            with torch.no_grad():  # 62 px still fails (the last pool sees 2x2), 63 px is the least that runs
                found[str(side)] = f"runs: output {tuple(net(torch.zeros(1, 3, side, side)).shape)}"
        except RuntimeError as exc:
            found[str(side)] = f"fails: {str(exc).splitlines()[0][:160]}"
    return found


def _mflops(name: str, net: nn.Module) -> dict[str, Any]:
    """Counted MFLOPs (multiply-adds, the paper's convention) beside the paper's figure."""
    pub = published(name) if name != "alexnet" else None
    paper = ALEXNET_PAPER_MFLOPS if name == "alexnet" else (pub.macs.get(224) if pub else None)
    return {"model": name, "mflops": count_macs(net, 224)[0] / 1e6, "paper_mflops": paper,
            "paper_source": "ShuffleNet paper section 4.5 / Table 8" if name == "alexnet" else
            (pub.source if pub else None), "params_m": sum(p.numel() for p in net.parameters()) / 1e6}


def _pair(per: dict[str, list[float]], info: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """AlexNet's best over one ShuffleNet's best: MFLOPs ratio, measured speed-up and the verdict."""
    ratio, paper = info["alexnet"]["mflops"] / s["mflops"], s["paper_mflops"]
    pair: dict[str, Any] = {"shufflenet": s["model"], "mflops_ratio": ratio, "files": [info["alexnet"]["best"],
                            s["best"]], "paper_mflops_ratio": ALEXNET_PAPER_MFLOPS / paper if paper else None}
    if "alexnet" not in per or s["model"] not in per:
        return {**pair, "speedup": None, "verdict": "not measured", "why": "a best file is missing"}
    speedup = bootstrap_ratio(per["alexnet"], per[s["model"]])
    lo, hi = ALEXNET_PAPER_SPEEDUP / SPEEDUP_TOLERANCE, ALEXNET_PAPER_SPEEDUP * SPEEDUP_TOLERANCE
    verdict = "held" if lo <= speedup[0] <= hi else "above" if speedup[0] > hi else "below"
    # AlexNet's time per MFLOP relative to ShuffleNet's: the speed-up is the MFLOPs ratio times this
    per_mflop = speedup[0] / ratio
    why = (f"AlexNet takes {per_mflop:.2f}x ShuffleNet's time per MFLOP, so the speed-up is {100 * per_mflop:.0f}% of "
           "the MFLOPs ratio" + (": its dense convs do more MAdds per second than ShuffleNet's depthwise and grouped "
                                 "ones" if per_mflop < 1 else ""))
    return {**pair, "speedup": list(speedup), "alexnet_time_per_mflop": per_mflop, "verdict": verdict, "why": why,
            "held_band": [lo, hi]}


def run_alexnet(plan: AlexNetPlan = ALEXNET_QUICK, progress: Progress = None) -> dict[str, Any]:
    """The ShuffleNet-vs-AlexNet claim (module docstring): MFLOPs, each network's best file, the paired speed-up."""
    check_plan(min(plan.files.seconds, plan.files.pair_seconds), plan.files.threads)
    notify = progress or (lambda event, info: None)
    started = time.perf_counter()
    import torchvision  # only this claim needs it (importing it costs 1.5 s)

    nets = {"alexnet": torchvision.models.alexnet(weights=None).eval(),
            **{n: create_model(n, num_classes=1000).eval() for n in plan.shufflenets}}
    info = {name: _mflops(name, net) for name, net in nets.items()}
    sides = _alexnet_sides(nets["alexnet"])
    files = best_files_paired(nets, plan.files,
                              lambda event, data: notify("alexnet:" + event, data))
    for name, found in files["models"].items():
        info[name].update(found)
    pairs = [_pair(files["per_round_ms"], info, info[n]) for n in plan.shufflenets]
    return {"claim": "shufflenet_vs_alexnet", "plan": asdict(plan), "resolution": plan.files.resolution,
            "paper": {"alexnet_mflops": ALEXNET_PAPER_MFLOPS, "speedup": ALEXNET_PAPER_SPEEDUP,
                      "flops_ratio": ALEXNET_PAPER_FLOPS_RATIO},
            "models": list(info.values()), "pairs": pairs, "rounds": files["rounds"], "alexnet_input_sides": sides,
            "accuracy_tested": False, "machine": machine_info(), "elapsed_s": round(time.perf_counter() - started, 1)}


def alexnet_markdown(result: dict[str, Any]) -> str:
    """The ``### ShuffleNet 0.5x vs AlexNet`` section: MFLOPs, best files, the paired speed-ups and verdicts."""
    plan, paper = result["plan"], result["paper"]
    formats = ", ".join(plan["files"]["formats"] or ["every installed format"])
    precisions = ", ".join(plan["files"]["precisions"] or ["every precision offered"])
    lines = ["### ShuffleNet 0.5x vs AlexNet: MFLOPs and speed (ShuffleNet paper section 4.5, Table 8)", "",
             f"Paper: ShuffleNet 0.5x matches AlexNet's accuracy with ~{paper['flops_ratio']:g}x fewer MFLOPs "
             f"(AlexNet {paper['alexnet_mflops']:g}) and runs ~{paper['speedup']:g}x faster on an ARM phone. "
             "Measured: MFLOPs counted by `count_macs` at 224 px (multiply-adds of convs and linears, the paper's "
             f"convention); each network's best file from `export --format auto` over {formats} x {precisions} "
             "(fp32 files verified against PyTorch; untrained weights and random-normal images, so bf16/int8 "
             f"accuracy is NOT judged); AlexNet's best timed against each ShuffleNet's best; "
             f"{conditions(result, plan['files']['threads'], 'each best file at its own precision')}, "
             f"{result['resolution']} px inputs. "
             f"\"About {paper['speedup']:g}x\" is held within {ALEXNET_PAPER_SPEEDUP / SPEEDUP_TOLERANCE:.1f}x-"
             f"{ALEXNET_PAPER_SPEEDUP * SPEEDUP_TOLERANCE:.1f}x. Took {result['elapsed_s']:.0f} s.", "",
             "| model | MFLOPs counted | MFLOPs paper | params (M) | candidates (auto's latency, ms) | best file | "
             "paired latency (ms) |", "|---|---:|---:|---:|---|---|---:|"]
    for m in result["models"]:
        paper_mf = "-" if m["paper_mflops"] is None else f"{m['paper_mflops']:g}"
        best = m.get("best") or f"none ({m.get('why')})"
        lat = m.get("paired_median_ms")
        tried = ", ".join(f"{c['candidate']} " + (f"{c['latency_ms']:.2f}" if "latency_ms" in c else c["status"])
                          for c in m.get("candidates", [])) or "-"
        lines.append(f"| `{m['model']}` | {m['mflops']:.1f} | {paper_mf} | {m['params_m']:.2f} | {tried} | {best} | "
                     f"{'-' if lat is None else f'{lat:.3f}'} |")
    lines += ["", f"| pair | MFLOPs ratio (paper) | speed-up [95% CI] (paper ~{paper['speedup']:g}x) | verdict |",
              "|---|---|---|---|"]
    verdicts = []
    for p in result["pairs"]:
        paper_ratio = "-" if p["paper_mflops_ratio"] is None else f"{p['paper_mflops_ratio']:.1f}x"
        lines.append(f"| AlexNet / `{p['shufflenet']}` | {p['mflops_ratio']:.1f}x ({paper_ratio}) | "
                     f"{ratio_text(p['speedup'])} | {p['verdict']} |")
        verdicts.append(f"- **AlexNet vs `{p['shufflenet']}`** ({p['files'][0]} vs {p['files'][1]}): "
                        f"{p['mflops_ratio']:.1f}x fewer MFLOPs, speed-up {ratio_text(p['speedup'])}: "
                        f"**{p['verdict']}** "
                        f"(paper ~{paper['speedup']:g}x; {p['why']}).")
    sides = result["alexnet_input_sides"]
    verdicts.append("- **Accuracy (AlexNet level): not tested.** torchvision's AlexNet needs inputs of at least "
                    "63 px: its 11x11 stride-4 stem and three 3x3 stride-2 max-pools take a 32 px Fashion-MNIST "
                    f"image below one pixel (checked here: 32 px {sides['32']}; "
                    + ", ".join(f"{s} px {v.split(':')[0]}" for s, v in sides.items() if s != "32")
                    + "), and an AlexNet adapted to 32 px is no longer the paper's 720-MFLOPs network.")
    return "\n".join(lines + [""] + verdicts) + "\n"
