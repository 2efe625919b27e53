"""The depthwise-separable cost claim of ``mobilecnn reproduce``: MobileNet V1's layer shapes and their MAdds, and the
speed-up measured on real exported files (and its verdicts on known timings)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mobilecnn.errors import ExportVerificationError, UsageError
from mobilecnn.reproduce_cost import COST_FULL, COST_QUICK, CostPlan, cost_markdown, run_cost

#: MobileNet V1 Table 1 at 224 px: (input side, d_i, d_j, stride, how many layers) of its 13 separable layers.
MNV1_SHAPES = [(112, 32, 64, 1, 1), (112, 64, 128, 2, 1), (56, 128, 128, 1, 1), (56, 128, 256, 2, 1),
               (28, 256, 256, 1, 1), (28, 256, 512, 2, 1), (14, 512, 512, 1, 5), (14, 512, 1024, 2, 1),
               (7, 1024, 1024, 1, 1)]


@pytest.fixture(scope="module")
def counted():
    """Counting only: no runtime, so no timing rows."""
    return run_cost(CostPlan("count", formats=(), eager=False))


def _json(result):
    return json.loads(json.dumps(result, allow_nan=False))


def test_the_nine_shapes_come_from_mobilenet_v1(counted):
    shapes = counted["shapes"]
    assert [(s["side"], s["d_in"], s["d_out"], s["stride"], s["layers"]) for s in shapes] == MNV1_SHAPES
    assert sum(s["layers"] for s in shapes) == 13 and counted["rows"] == []
    assert [s["out_side"] for s in shapes] == [112, 56, 56, 28, 28, 14, 14, 7, 7]


def test_counted_madds_equal_the_formula_and_the_ratio_is_about_8_to_9(counted):
    assert counted["all_formula_ok"]
    for s in counted["shapes"]:
        hw, d_i, d_j = s["out_side"] ** 2, s["d_in"], s["d_out"]
        assert s["madds"]["standard"] == hw * d_i * d_j * 9
        assert s["madds"]["separable"] == hw * d_i * (9 + d_j)
        assert s["cost_ratio"] == pytest.approx(9 * d_j / (9 + d_j))
        # 9 d_j / (9 + d_j): 7.89 for the first layer's d_j = 64, 8 to 9 from d_j = 128 on, near 9 for 1024
        assert 7.8 < s["cost_ratio"] < 9 and (d_j < 128 or s["cost_ratio"] >= 8)
    assert counted["shapes"][-1]["cost_ratio"] > 8.9
    ratios = [s["cost_ratio"] for s in counted["shapes"]]
    assert ratios == sorted(ratios)  # d_j never shrinks along the network
    assert counted["band"] == [pytest.approx(min(ratios)), 9.0]
    # a depthwise conv does ~1 MAdd per byte it moves, a pointwise one many more
    assert all(s["intensity"]["depthwise"] < 1.2 < 5 < s["intensity"]["pointwise"] for s in counted["shapes"])


def test_a_tiny_plan_times_real_files_paired(one_thread):
    result = _json(run_cost(CostPlan("tiny", shapes=(0,), formats=("onnx",), seconds=0.2)))
    assert [r["runtime"] for r in result["rows"]] == ["pytorch eager", "onnxruntime"]
    for row in result["rows"]:
        assert row["status"] == "timed", row.get("why")
        for key in ("speedup", "depthwise_time_share"):
            median, lo, hi = row[key]
            assert all(math.isfinite(v) and v > 0 for v in row[key]) and lo <= median <= hi
        assert row["speedup"][0] > 1  # 8x fewer MAdds is faster on any runtime
        assert row["verdict"] in ("held", "below the cost ratio", "above the cost ratio") and row["why"]
    text = cost_markdown(result)
    assert text.startswith("### ") and "onnxruntime" in text and "batch 1" in text and "paired" in text
    assert all(f"**{r['verdict']}**" in text for r in result["rows"])
    assert torch.get_num_threads() == 1  # the caller's thread count is restored


def _fake_timing(standard: float, separable: float, depthwise: float):
    def paired_times(fns, **options):
        assert set(fns) == {"standard", "separable", "depthwise"}
        per = {"standard": [standard] * 8, "separable": [separable] * 8, "depthwise": [depthwise] * 8}
        return {"rounds": 8, "per_round_ms": per, "median_ms": {k: v[0] for k, v in per.items()}}
    return paired_times


@pytest.mark.parametrize("standard, verdict, phrase", [
    (8.5, "held", "time follows MAdds"),
    (3.0, "below the cost ratio", "the depthwise conv takes 50% of the separable time for"),
    (20.0, "above the cost ratio", "the standard conv takes"),
])
def test_verdicts_follow_the_measured_speed_up(monkeypatch, standard, verdict, phrase):
    monkeypatch.setattr("mobilecnn.reproduce_cost.paired_times", _fake_timing(standard, 1.0, 0.5))
    result = run_cost(CostPlan("fake", shapes=(8,), formats=(), seconds=0.1))
    row = result["rows"][0]
    assert row["speedup"][0] == pytest.approx(standard) and row["verdict"] == verdict and phrase in row["why"]
    if verdict.startswith("below"):  # half the time for 9 / 1033 of the MAdds: 1024 / 9 times the pointwise's per MAdd
        assert row["dw_vs_pw_time_per_madd"] == pytest.approx(1024 / 9)
    assert f"**{verdict}**" in cost_markdown(result)


def test_a_failed_export_is_a_row_with_its_reason(monkeypatch):
    def refuse(*args, **kwargs):
        raise ExportVerificationError("the file disagreed with PyTorch")

    monkeypatch.setattr("mobilecnn.reproduce_cost.export_model", refuse)
    result = _json(run_cost(CostPlan("broken", shapes=(8,), formats=("onnx",), eager=False, seconds=0.1)))
    (row,) = result["rows"]
    assert row["status"] == "failed" and "disagreed with PyTorch" in row["why"]
    assert "not measured: ExportVerificationError" in cost_markdown(result)


def test_plans_are_checked():
    with pytest.raises(UsageError, match="indices"):
        run_cost(CostPlan("bad", shapes=(9,), formats=()))
    with pytest.raises(UsageError, match="not installed"):
        run_cost(CostPlan("bad", formats=("no_such_format",)))
    with pytest.raises(UsageError, match="seconds"):
        run_cost(CostPlan("bad", seconds=0))
    assert COST_QUICK.formats == ("onnx",) and len(COST_QUICK.shapes or ()) == 3 and COST_FULL.shapes is None
