"""The detection section of reproduce: verdicts, the report, the plan wiring, and one tiny section end to end."""

from __future__ import annotations

import json

from mobilecnn import reproduce_detection
from mobilecnn.reproduce import QUICK, ReproduceConfig
from mobilecnn.reproduce_detection import (
    DET_FULL,
    DET_QUICK,
    DET_VARIANTS,
    DetPlan,
    DetResult,
    detection_report,
    run_detection,
)
from mobilecnn.reproduce_measure import AutoLatency


def _res(key: str, maps: list[float], macs_320: int, latency: float = 3.0) -> DetResult:
    return DetResult(key, DET_VARIANTS[key], macs_320 // 4, 3_000_000, macs_320, 4_300_000, mAP=maps,
                     AP50=[m * 2 for m in maps], latency_ms=latency)


def test_report_has_tables_5_and_6_and_every_claim_with_its_verdict():
    results = [_res("mnv2_ssdlite", [20.0, 21.0], 789_000_000, latency=5.0),
               _res("mnv1_ssdlite", [21.0, 21.4], 1_309_000_000, latency=8.0),
               _res("mnv2_ssd", [25.0, 26.0], 1_870_000_000)]
    text = detection_report(DET_FULL, results, 60.0)
    assert "Table 6" in text and "Table 5" in text
    claims = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    assert "MNV2 no more than 1 pt below MNV1 **held** (-0.70 pt)." in claims["MNV2 vs MNV1 + SSDLite, accuracy"]
    assert "Caveat" not in text
    assert "0.60x" in claims["MNV2 vs MNV1 + SSDLite, cost"]
    assert "0.62x; **held**." in claims["MNV2 vs MNV1 + SSDLite, time, ONNX fp32 files"]
    assert "MNV2 vs MNV1 + SSDLite, time, best verified files" not in claims  # no auto latencies measured
    assert "**did not hold** (-5.00 pt)" in claims["SSDLite vs SSD heads"]
    assert "| `mnv2_ssdlite` | `ssdlite_mobilenet_v2_x1_0` |" in text and "20.50 ± 0.71" in text


def test_the_time_claim_is_judged_on_the_best_verified_files_when_searched():
    v2, v1 = _res("mnv2_ssdlite", [20.0], 789_000_000, 5.0), _res("mnv1_ssdlite", [21.0], 1_309_000_000, 6.0)
    v2.auto_latency_ms, v2.auto_choice = 2.0, "openvino int8"
    v1.auto_latency_ms, v1.auto_choice = 2.5, "onnxruntime int8"
    text = detection_report(DET_FULL, [v2, v1], 60.0)
    claims = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    best = claims["MNV2 vs MNV1 + SSDLite, time, best verified files"]
    assert "2.00 vs 2.50 ms (openvino int8 vs onnxruntime int8" in best and "0.80x; **did not hold**" in best
    assert "0.83x; **did not hold**" in claims["MNV2 vs MNV1 + SSDLite, time, ONNX fp32 files"]
    assert "| 2.00 (openvino int8) |" in text and "best verified file (ms)" in text


def test_the_full_plan_times_the_best_verified_files():
    assert DET_FULL.auto and not DET_QUICK.auto
    assert ReproduceConfig(task="detection", auto=True).plan().auto


def test_a_variant_that_did_not_learn_is_named_beside_its_comparisons(tmp_path):
    import dataclasses

    from mobilecnn.reproduce_detection import rewrite_detection_report

    results = [_res("mnv2_ssdlite", [15.0, 16.0], 789_000_000), _res("mnv1_ssdlite", [0.02, 0.03], 1_309_000_000)]
    text = detection_report(DET_FULL, results, 60.0)
    accuracy = next(line for line in text.splitlines() if line.startswith("- **MNV2 vs MNV1 + SSDLite, accuracy"))
    assert "Caveat: `mnv1_ssdlite` (0.03 mAP) had not learned at this budget" in accuracy
    payload = {"plan": dataclasses.asdict(DET_FULL), "elapsed_s": 60.0,
               "variants": [{**dataclasses.asdict(r), "mean": r.mean, "std": r.std} for r in results]}
    (tmp_path / "detection.json").write_text(json.dumps(payload))
    assert open(rewrite_detection_report(tmp_path)).read() == text  # nothing measured: the same report


def test_one_variant_says_the_comparisons_need_the_full_plan():
    assert "need `--full`" in detection_report(DET_QUICK, [_res("mnv2_ssdlite", [10.0], 789_000_000)], 1.0)


def test_task_option_picks_the_detection_section():
    assert QUICK.detection
    only = ReproduceConfig(task="detection").plan()
    assert only.detection and not only.segmentation and not only.classification
    assert not ReproduceConfig(task="segmentation").plan().detection
    assert set(DET_FULL.variants) == set(DET_VARIANTS) and DET_QUICK.variants == ("mnv2_ssdlite",)


def test_a_tiny_section_trains_scores_times_and_reports(tmp_path, det_scenes, monkeypatch):
    searched = []

    def fake_auto(run, check_count, seconds):  # the search itself is tested in test_reproduce_measure
        searched.append((run.name, check_count))
        return AutoLatency(1.5, "onnxruntime int8", 9.0)

    monkeypatch.setattr(reproduce_detection, "auto_latency", fake_auto)
    plan = DetPlan("test", ("mnv2_ssdlite",), seeds=1, epochs=1, resolution=64, bench_repeats=2, threads=1,
                   data=str(det_scenes), auto=True, check_count=12)
    out = run_detection(plan, tmp_path)
    assert searched == [("det-mnv2_ssdlite-seed0", 12)]
    payload = json.loads((tmp_path / "detection.json").read_text())
    row = payload["variants"][0]
    assert row["model"] == "ssdlite_mobilenet_v2_x1_0" and len(row["mAP"]) == 1 and 0 <= row["mAP"][0] <= 100
    assert row["latency_ms"] and row["latency_ms"] > 0
    assert row["auto_latency_ms"] == 1.5 and row["auto_choice"] == "onnxruntime int8"
    assert (tmp_path / "runs" / "det-mnv2_ssdlite-seed0" / "model.safetensors").is_file() or \
        any((tmp_path / "runs" / "det-mnv2_ssdlite-seed0").rglob("*.safetensors"))
    assert "## Detection: SSDLite" in (tmp_path / "detection.md").read_text() and out["elapsed_s"] > 0
