"""reproduce_report: report.md joins the classification section with every other section found in the folder, so
that a section run alone (``--task``) replaces only its own part and loses nothing."""

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest

from mobilecnn.errors import DataError
from mobilecnn.reproduce import rebuild_report, run_reproduce
from mobilecnn.reproduce_plan import FULL, OPTION_FIELDS, ReproduceConfig, ReproducePlan
from mobilecnn.reproduce_report import (
    Classification,
    ModelResult,
    _command,
    _plan_changed,
    load_classification,
    write_report,
)
from mobilecnn.reproduce_segmentation import SEG_FULL, SegResult

PLAN = ReproducePlan("full", levels=1, table3=["shufflenet_v1_g8_x0_5"], seeds=2, epochs=1, subset=256, threads=2)


def _classification() -> Classification:
    def result(key: str, model: str, shuffle: bool, top1: list[float]) -> ModelResult:
        return ModelResult(key, model, shuffle, 11_000_000, 250_000, 4096, top1=top1, latency_ms=0.3)

    results = {r.key: r for r in (
        result("mobilenet_v1_x0_25", "mobilenet_v1_x0_25", True, [80.0, 81.0]),
        result("shufflenet_v1_g8_x0_5", "shufflenet_v1_g8_x0_5", True, [83.0, 84.0]),
        result("shufflenet_v1_g8_x0_5+noshuffle", "shufflenet_v1_g8_x0_5", False, [82.0, 82.5]),
    )}
    return Classification(PLAN, results, 600.0)


def test_sections_are_joined_and_results_recorded(tmp_path):
    (tmp_path / "detection.md").write_text("## Detection: SSDLite\n\nThis section took 3.0 min.\n")
    summary = write_report(PLAN, tmp_path, _classification())
    text = Path(summary["report"]).read_text()
    assert text.startswith("# mobilecnn reproduce\n")
    assert "`mobilecnn reproduce --full --seeds 2 --threads 2 --out" in text  # every section
    assert "`mobilecnn reproduce --full --task classification --seeds 2 --threads 2 --out" in text
    assert "(it took 10.0 min)" in text and "### Claims" in text and "Table 3, shufflenet_v1_g8_x0_5" in text
    assert text.index("## Classification") < text.index("## Detection: SSDLite")
    recorded = load_classification(tmp_path)
    assert recorded is not None and recorded.results["shufflenet_v1_g8_x0_5"].top1 == [83.0, 84.0]
    assert recorded.elapsed_s == 600.0 and recorded.plan == PLAN


def test_a_section_run_alone_keeps_the_classification_section(tmp_path, monkeypatch):
    import mobilecnn.reproduce as rep

    write_report(PLAN, tmp_path, _classification())
    before = (tmp_path / "results.json").read_text()
    given = {}

    def fake_v2(v2_plan, out, top1, notify):
        given.update(top1=top1)
        (Path(out) / "mobilenet_v2.md").write_text("## MobileNetV2 claims\n\n### Figure 6\n")

    monkeypatch.setattr(rep, "run_mobilenet_v2", fake_v2)
    alone = replace(PLAN, classification=False, segmentation=False, detection=False)
    summary = run_reproduce(alone, tmp_path)
    text = Path(summary["report"]).read_text()
    assert "## Classification" in text and "## MobileNetV2 claims" in text and "Table 3, shufflenet_v1_g8_x0_5" in text
    assert (tmp_path / "results.json").read_text() == before  # the recorded section is read, not rewritten
    # Table 4 reads the recorded classification runs of the same plan (shuffled models only)
    assert given["top1"] == {"mobilenet_v1_x0_25": [80.0, 81.0], "shufflenet_v1_g8_x0_5": [83.0, 84.0]}
    # a quick section does not borrow a full plan's accuracy
    run_reproduce(replace(alone, name="quick"), tmp_path)
    assert given["top1"] == {}


def test_rebuild_with_sections_only_and_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json not found"):
        rebuild_report(tmp_path)
    row = SegResult("mnv2_os16", "deeplabv3_mobilenet_v2_x1_0", {}, 10**8, 17 * 10**8, 2 * 10**6, miou=[40.0, 41.0])
    payload = {"plan": asdict(replace(SEG_FULL, variants=("mnv2_os16",))), "elapsed_s": 120.0, "side": 128,
               "variants": [asdict(row)]}
    (tmp_path / "segmentation.json").write_text(json.dumps(payload))
    (tmp_path / "segmentation.md").write_text("## Segmentation, old wording\n")
    text = Path(rebuild_report(tmp_path)["report"]).read_text()
    # the section's Markdown is written again from its JSON with this version's wording
    assert "`mobilecnn reproduce --full --out" in text and "old wording" not in text and "## Classification" not in text
    assert "| `mnv2_os16` | `deeplabv3_mobilenet_v2_x1_0` |" in text and "This section took 2.0 min" in text
    (tmp_path / "segmentation.json").write_text(json.dumps({"plan": {"name": "full"}}))
    with pytest.raises(DataError, match="not what `mobilecnn reproduce` wrote"):
        rebuild_report(tmp_path)
    (tmp_path / "results.json").write_text('{"plan": {"name": "full"}, "models": [], "elapsed_s": NaN}')
    with pytest.raises(DataError, match="not a reproduce results file"):
        rebuild_report(tmp_path)


def test_the_longer_budget_alone_needs_the_classification_section(tmp_path):
    longer_only = replace(PLAN, classification=False, segmentation=False, detection=False, mobilenet_v2=False,
                          long_epochs=2, long_keys=("shufflenet_v1_g8_x0_5",))
    with pytest.raises(DataError, match="--task classification"):
        run_reproduce(longer_only, tmp_path)
    quick = replace(PLAN, name="quick")
    write_report(quick, tmp_path, replace(_classification(), plan=quick))  # another plan's section: not borrowed
    with pytest.raises(DataError, match="none of the full plan"):
        run_reproduce(longer_only, tmp_path)


def test_a_recorded_section_names_what_its_plan_now_runs_differently():
    # what the command line sets is exactly OPTION_FIELDS: the rest is the plan's definition
    cfg = ReproduceConfig(full=True, seeds=1, threads=2, device="cpu", auto=True, task="detection")
    changed = {f.name for f in fields(ReproducePlan) if getattr(cfg.plan(), f.name) != getattr(FULL, f.name)}
    assert changed == set(OPTION_FIELDS) - {"detection"}
    # options chosen on the command line are not a new definition, and the printed command repeats them
    chosen = cfg.plan()
    assert _plan_changed(chosen) == ""
    assert _command(chosen, Path("r"), "classification") == (
        "mobilecnn reproduce --full --task classification --seeds 1 --threads 2 --device cpu --auto --out r")
    # a section measured under an earlier definition is told what the command runs now (long values summarised)
    note = _plan_changed(replace(FULL, levels=3, long_epochs=0.0, long_keys=()))
    assert "earlier definition of the full plan" in note and "levels 4" in note and "long_epochs 3" in note
    assert f"long_keys ({len(FULL.long_keys)} entries)" in note


def test_the_section_names_the_machine_its_latencies_were_measured_on(tmp_path):
    c = _classification()
    for r in c.results.values():
        r.cpu = "AMD EPYC, 2 CPUs, avx512_bf16"
    text = Path(write_report(PLAN, tmp_path, c)["report"]).read_text()
    assert "median. Measured on AMD EPYC, 2 CPUs, avx512_bf16." in text and "machines" not in text
    # resumed on another machine: said, with the models each one measured
    c.results["mobilenet_v1_x0_25"].cpu = "Intel Xeon, 2 CPUs, amx_bf16"
    text = Path(write_report(PLAN, tmp_path, c)["report"]).read_text()
    assert "**The models were measured on 2 machines**" in text
    assert "Intel Xeon, 2 CPUs, amx_bf16: `mobilenet_v1_x0_25`;" in text
    assert load_classification(tmp_path).results["mobilenet_v1_x0_25"].cpu.startswith("Intel")
