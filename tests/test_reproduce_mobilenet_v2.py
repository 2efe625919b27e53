"""The MobileNetV2 section of ``mobilecnn reproduce``: Figure 6's ablations trained for real (tiny budget), Table 4's
counts and best files, the verdicts, and the whole section written as a report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from mobilecnn.reproduce_alexnet import AlexNetPlan
from mobilecnn.reproduce_cost import CostPlan
from mobilecnn.reproduce_measure import FilesPlan
from mobilecnn.reproduce_mobilenet_v2 import (
    ABLATIONS,
    TABLE4,
    V2_FULL,
    V2_QUICK,
    V2Plan,
    figure6_markdown,
    run_figure6,
    run_mobilenet_v2,
    table4_markdown,
)

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion = pytest.mark.skipif(not FASHION.is_file(), reason="Fashion-MNIST not installed")
#: Two epochs of 128 images, ONNX fp32 files at 64 px timed for a fraction of a second, no cost-claim timing.
TINY = V2Plan("tiny", "mobilenet_v2_x0_35", seeds=1, epochs=2, images_per_epoch=128, val_subset=128, batch_size=64,
              lr=0.3, files=FilesPlan(formats=("onnx",), precisions=("fp32",), seconds=0.1, pair_seconds=0.2,
                                                         resolution=64),
              cost=CostPlan("count", shapes=(8,), formats=(), eager=False),
              alexnet=AlexNetPlan("tiny", shufflenets=("shufflenet_v1_g3_x0_5",),
                                  files=FilesPlan(("onnx",), ("fp32",), seconds=0.1, pair_seconds=0.2, resolution=64)),
              threads=1)


def test_the_plans():
    assert V2_FULL.model == "mobilenet_v2_x1_0" and V2_FULL.seeds >= 3  # the paper's network, seed noise weighed
    assert V2_FULL.epochs * V2_FULL.images_per_epoch == 20000  # the classification section's budget
    assert V2_QUICK.files.formats == ("onnx",) and V2_QUICK.cost.formats == ("onnx",)
    assert set(TABLE4) == {"mobilenet_v2_x1_0", "mobilenet_v1_x1_0", "shufflenet_v1_g3_x1_5", "shufflenet_v1_g3_x2_0"}


def _fake_figure6(top1: dict[str, list[float]]) -> dict:
    return {"model": "mobilenet_v2_x1_0", "variants": {
        v: {"options": ABLATIONS[v], "macs_32": 87 * 10**6, "params": 2236682,
            "runs": [{"curve": [[10, a - 5], [20, a]], "top1": a} for a in accs], "top1": accs}
        for v, accs in top1.items()}}


def test_figure6_verdicts_follow_the_paper_ranking():
    published, relu6, expansion, none = ABLATIONS
    fig = _fake_figure6({published: [86.0, 86.1, 85.9], relu6: [84.0, 84.2, 83.8],  # clear win
                         expansion: [86.1, 85.8, 86.0],  # within noise
                         none: [87.0, 87.1, 86.9]})  # the paper's ranking reversed
    lines = figure6_markdown(fig, V2_FULL).splitlines()
    a = next(x for x in lines if "Figure 6a" in x)
    assert "relu6 in bottleneck 84.00 ± 0.20%" in a and "**held** (+2.00 pt)" in a
    assert "within seed noise" in next(x for x in lines if "shortcut between expansions" in x and "6b" in x)
    assert "**did not hold** (-1.00 pt)" in next(x for x in lines if "no residual" in x and "6b" in x)
    assert not any("cannot be told from seed noise" in x for x in lines)
    one_seed = figure6_markdown(_fake_figure6({v: [80.0] for v in ABLATIONS}), replace(V2_FULL, seeds=1))
    assert "cannot be told from seed noise" in one_seed


@needs_fashion
def test_figure6_trains_every_variant_and_reads_its_curve(tmp_path):
    fig = run_figure6(TINY, tmp_path, lambda event, info: None)
    variants = fig["variants"]
    assert list(variants) == list(ABLATIONS)
    # the ablations keep the published network's parameters and MAdds (the paper's fair comparison)
    assert len({v["params"] for v in variants.values()}) == 1 and len({v["macs_32"] for v in variants.values()}) == 1
    for v in variants.values():
        (run,) = v["runs"]
        steps = [p[0] for p in run["curve"]]
        assert len(steps) == 2 and steps[0] < steps[1]  # one point per epoch
        assert 0 <= run["top1"] <= 100 and v["top1"] == [run["curve"][-1][1]]
    # the runs recorded their options: the relu6 variant was built as such
    config = json.loads((tmp_path / "runs" / "fig6-1-seed0" / "config.json").read_text())
    assert config["model_kwargs"]["linear_bottleneck"] is False and "shortcut" not in config["model_kwargs"]
    again = run_figure6(TINY, tmp_path, lambda event, info: None)  # finished runs are resumed as they are
    assert again == fig


def test_table4_claims_read_the_counts_and_the_paired_ratios():
    models = {name: {"macs": madds * 10**6, "params": params * 10**6, "top1": [], "paired_median_ms": 1.0,
                     "best": "onnxruntime fp32",
                     "paper": dict(zip(("top1", "params_m", "madds_m", "pixel1_ms"), TABLE4[name]))}
              for name, madds, params in (("mobilenet_v2_x1_0", 301, 3.47), ("mobilenet_v1_x1_0", 569, 4.2),
                                          ("shufflenet_v1_g3_x1_5", 292, 3.4), ("shufflenet_v1_g3_x2_0", 524, 5.4))}
    models["mobilenet_v1_x1_0"]["v2_time_ratio"] = [0.8, 0.78, 0.83]
    text = table4_markdown({"models": models, "rounds": 12}, V2_QUICK)
    assert "MAdds** (paper 292 < 300 < 524): counted 292 < 301 < 524: **held**" in text
    assert "0.80x [0.78, 0.83] of MNV1's: **held**" in text
    assert "More accurate than MobileNet V1**: not tested by this plan" in text
    models["mobilenet_v1_x1_0"]["v2_time_ratio"] = [1.1, 1.05, 1.2]
    for name, accs in (("mobilenet_v2_x1_0", [86.0, 86.2]), ("mobilenet_v1_x1_0", [83.0, 83.2]),
                       ("shufflenet_v1_g3_x1_5", [85.0, 85.2]), ("shufflenet_v1_g3_x2_0", [85.5, 85.7])):
        models[name]["top1"] = accs
    text = table4_markdown({"models": models, "rounds": 12}, V2_FULL)
    assert "of MNV1's: **did not hold**" in text
    assert "(paper 72.0 vs 70.6): 86.10 ± 0.14 vs 83.10 ± 0.14: **held**" in text
    assert "MNV2 above 1.5x **held** (+1.00 pt); 2x above MNV2 **did not hold** (-0.50 pt)" in text


@needs_fashion
def test_the_section_runs_end_to_end_and_writes_its_report(tmp_path):
    top1 = {"mobilenet_v2_x1_0": [85.0], "mobilenet_v1_x1_0": [83.0]}
    result = run_mobilenet_v2(TINY, tmp_path, top1)
    t4 = result["table4"]["models"]
    assert t4["mobilenet_v2_x1_0"]["macs"] == pytest.approx(300e6, rel=0.01)  # the ImageNet network at 224 px
    assert all(m["paired_median_ms"] > 0 for m in t4.values()) and result["table4"]["rounds"] > 0
    ratio = t4["mobilenet_v1_x1_0"]["v2_time_ratio"]
    assert ratio[1] <= ratio[0] <= ratio[2]
    assert t4["shufflenet_v1_g3_x2_0"]["top1"] == []  # not trained by this plan: said so, not invented
    text = (tmp_path / "mobilenet_v2.md").read_text()
    for part in ("### Figure 6", "### Table 4", "### Depthwise-separable", "### ShuffleNet 0.5x vs AlexNet",
                 "![figure6](figure6.png)", "not tested by this plan"):
        assert part in text, part
    assert (tmp_path / "figure6.png").stat().st_size > 1000
    recorded = json.loads((tmp_path / "mobilenet_v2.json").read_text())
    assert recorded["table4"]["models"]["mobilenet_v1_x1_0"]["top1"] == [83.0]
    # the classification section regenerated later beside it: rebuilding the report takes Table 4's top-1 from it
    from mobilecnn.reproduce import ReproducePlan, rebuild_report
    from mobilecnn.reproduce_report import Classification, ModelResult, write_report

    plan = ReproducePlan("tiny", levels=1, table3=[], seeds=2, epochs=1, subset=64, threads=1)
    later = {"mobilenet_v1_x1_0": ModelResult("mobilenet_v1_x1_0", "mobilenet_v1_x1_0", True, 10**8, 10**6, 2**18,
                                              top1=[81.0, 82.0], latency_ms=0.5)}
    write_report(plan, tmp_path, Classification(plan, later, 60.0))
    text = Path(rebuild_report(tmp_path)["report"]).read_text()
    assert "| `mobilenet_v1_x1_0` | 81.50 ± 0.71 |" in text and "## MobileNetV2 claims" in text
    assert json.loads((tmp_path / "mobilenet_v2.json").read_text())["table4"]["models"]["mobilenet_v2_x1_0"]["top1"] == []
