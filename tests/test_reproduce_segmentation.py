"""The segmentation section of reproduce: verdicts, the report, and the plan wiring (the runs are in the demo)."""

from __future__ import annotations

from mobilecnn.reproduce import QUICK, ReproduceConfig
from mobilecnn.reproduce_segmentation import SEG_FULL, SEG_QUICK, SEG_VARIANTS, SegResult, segmentation_report


def _res(key: str, miou: list[float], macs: int, mf: float | None = None) -> SegResult:
    name, options = SEG_VARIANTS[key]
    return SegResult(key, name, options, macs, macs * 17, 2_000_000, miou=miou, mf_miou=mf, latency_ms=3.0)


def test_report_has_table7_and_every_claim_with_its_verdict():
    results = [_res("mnv2_os16", [40.0, 41.0], 160, mf=43.0), _res("mnv1_os16_aspp", [40.8, 41.2], 900),
               _res("mnv2_os16_aspp", [30.0, 31.0], 310), _res("mnv2_os8", [48.0, 49.0], 450)]
    text = segmentation_report(SEG_FULL, results, 60.0)
    assert "MobileNetV2 Table 7" in text and "| MNV2* | `deeplabv3_mobilenet_v2_x1_0` | 16 |  |  | 75.32 |" in text
    claims = {line.split("**")[1]: line for line in text.splitlines() if line.startswith("- **")}
    assert "within 1 pt) **held** (-0.50 pt)" in claims["MNV2\\* vs MobileNet V1"]
    assert "5.6x fewer MAdds" in claims["MNV2\\* vs MobileNet V1"]
    assert "**did not hold** (-10.00 pt)" in claims["ASPP vs none"]
    assert "**held** (+8.00 pt)" in claims["Output stride 8 vs 16"]
    assert "**held** (+3.00 pt)" in claims["MF vs single scale"]
    assert "| `mnv2_os16` | `deeplabv3_mobilenet_v2_x1_0` | 0.0 | 0.0 | 2.000 | 40.50 ± 0.71 | 43.00 | 3.00 |" in text


def test_small_differences_between_seeds_are_called_noise():
    results = [_res("mnv2_os16", [40.0, 44.0], 160), _res("mnv2_os16_aspp", [41.0, 45.0], 310)]
    assert "within seed noise (+1.00 pt" in segmentation_report(SEG_FULL, results, 1.0)


def test_one_variant_says_the_comparisons_need_the_full_plan():
    assert "need `--full`" in segmentation_report(SEG_QUICK, [_res("mnv2_os16", [40.0], 160)], 1.0)


def test_task_option_picks_the_sections():
    assert QUICK.segmentation and QUICK.classification and QUICK.detection
    only = ReproduceConfig(task="segmentation").plan()
    assert only.segmentation and not only.classification
    assert not ReproduceConfig(task="classification").plan().segmentation
    assert set(SEG_FULL.variants) == set(SEG_VARIANTS) and SEG_QUICK.variants == ("mnv2_os16",)


def test_auto_adds_the_best_verified_file_column():
    from dataclasses import replace

    row = _res("mnv2_os16", [40.0], 160)
    row.auto_latency_ms, row.auto_choice = 1.25, "openvino int8"
    assert "best verified file" not in segmentation_report(SEG_QUICK, [row], 1.0)
    text = segmentation_report(replace(SEG_QUICK, auto=True), [row], 1.0)
    assert "| 3.00 | 1.25 (openvino int8) |" in text and "best verified file (ms) |" in text
