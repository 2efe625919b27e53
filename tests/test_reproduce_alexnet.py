"""The ShuffleNet-vs-AlexNet claim of ``mobilecnn reproduce``: MFLOPs, the AlexNet input-side limit, a real narrowed
auto search and paired timing."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from mobilecnn.errors import ExportVerificationError
from mobilecnn.reproduce_alexnet import ALEXNET_QUICK, AlexNetPlan, alexnet_markdown, run_alexnet
from mobilecnn.reproduce_measure import FilesPlan


def _json(result):
    return json.loads(json.dumps(result, allow_nan=False))


def test_the_quick_plan_times_onnx_fp32_only():
    assert ALEXNET_QUICK.files.formats == ("onnx",) and ALEXNET_QUICK.files.precisions == ("fp32",)


def test_torchvision_alexnet_needs_63_px():
    net = torchvision.models.alexnet(weights=None).eval()
    with torch.no_grad():
        for side in (32, 62):
            with pytest.raises(RuntimeError, match="too small"):
                net(torch.zeros(1, 3, side, side))
        for side in (63, 64):
            assert net(torch.zeros(1, 3, side, side)).shape == (1, 1000)


def test_mflops_and_a_failed_search(monkeypatch):
    def no_runtime(*args, **kwargs):
        raise ExportVerificationError("no runtime here")

    monkeypatch.setattr("mobilecnn.reproduce_measure.export_model", no_runtime)  # the one candidate
    result = _json(run_alexnet(AlexNetPlan("none", files=FilesPlan(("onnx",), ("fp32",)))))
    alexnet, g3, g8 = result["models"]
    assert alexnet["mflops"] == pytest.approx(720, rel=0.01) and alexnet["paper_mflops"] == 720
    assert (g3["paper_mflops"], g8["paper_mflops"]) == (38, 40)  # the figures stored beside the models
    assert g3["mflops"] == pytest.approx(38, rel=0.02) and g8["mflops"] == pytest.approx(40, rel=0.02)
    for pair in result["pairs"]:
        assert 17 < pair["mflops_ratio"] < 20 and 17.5 < pair["paper_mflops_ratio"] < 19.5
        assert pair["verdict"] == "not measured"
    assert alexnet["best"] is None and "no runtime here" in alexnet["why"]
    assert result["alexnet_input_sides"]["32"].startswith("fails") and result["alexnet_input_sides"]["63"].startswith(
        "runs") and not result["accuracy_tested"]
    text = alexnet_markdown(result)
    assert "not tested" in text and "63 px" in text and "not measured" in text


def test_alexnet_against_shufflenet_on_a_tiny_plan(one_thread):
    plan = AlexNetPlan("tiny", shufflenets=("shufflenet_v1_g3_x0_5",), files=FilesPlan(("onnx",), ("fp32",),
                                                                                        seconds=0.2, pair_seconds=0.3))
    result = _json(run_alexnet(plan))
    (pair,) = result["pairs"]
    median, lo, hi = pair["speedup"]
    assert median > 1 and lo <= median <= hi and pair["files"] == ["onnxruntime fp32", "onnxruntime fp32"]
    assert pair["verdict"] in ("held", "below", "above") and pair["why"]
    assert all(m["paired_median_ms"] > 0 and "kept" not in m for m in result["models"])
    text = alexnet_markdown(result)
    assert f"**{pair['verdict']}**" in text and "NOT judged" in text and "batch 1" in text
