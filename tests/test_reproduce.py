"""reproduce: a miniature plan runs end to end and writes the report, the claims and the plots."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from mobilecnn.reproduce import QUICK, ReproducePlan, plan_models, rebuild_report, run_reproduce
from mobilecnn.reproduce_detection import DetPlan
from mobilecnn.reproduce_measure import training_seconds
from mobilecnn.reproduce_mobilenet_v2 import TABLE4
from mobilecnn.reproduce_report import load_classification
from mobilecnn.reproduce_segmentation import SegPlan

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_plans_cover_the_issue():
    quick = {k for k, _, _ in plan_models(QUICK)}
    assert {"mobilenet_v1_x0_25", "shufflenet_v1_g4_x0_5", "shufflenet_v1_g3_x0_5_shallow"} <= quick
    assert {"shufflenet_v1_g8_x0_5", "shufflenet_v1_g8_x0_5+noshuffle"} <= quick
    assert not any(k.startswith("mobilenet_v2") for k in quick)  # the demo's budget leaves MobileNetV2 at chance
    from mobilecnn.reproduce import FULL

    full = {k for k, _, _ in plan_models(FULL)}
    assert {"mobilenet_v1_x0_5", "shufflenet_v1_g8_x1_0", "mobilenet_v1_x0_75", "shufflenet_v1_g3_x1_5"} <= full
    for name in ("shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x1_0", "shufflenet_v1_g3_x0_5", "shufflenet_v1_g8_x0_5"):
        assert {name, name + "+noshuffle"} <= full
    assert set(TABLE4) <= full  # MobileNetV2 Table 4's accuracy comes from these runs
    # the longer budget covers the Table 3 and margin claims, and only models the plan trains
    assert set(FULL.long_keys) <= full and FULL.long_epochs > FULL.epochs and not QUICK.long_epochs
    assert {"shufflenet_v1_g8_x1_0", "shufflenet_v1_g8_x1_0+noshuffle", "mobilenet_v1_x0_25"} <= set(FULL.long_keys)


@pytest.mark.skipif(not FASHION.is_file(), reason="Fashion-MNIST not installed")
def test_miniature_reproduce_writes_report(tmp_path, monkeypatch, seg_scenes, det_scenes):
    import mobilecnn.reproduce as rep

    # one Table 5 level with one ShuffleNet, which is also the Table 3 pair: 4 tiny runs
    import mobilecnn.reproduce_report as report

    level = [("0.25 MobileNet (41 MFLOPs)", "mobilenet_v1_x0_25", ["shufflenet_v1_g8_x0_5"])]
    monkeypatch.setattr(rep, "TABLE5_LEVELS", level)
    monkeypatch.setattr(report, "TABLE5_LEVELS", level)  # the claims are written there
    # and the segmentation section: the on-device candidate for a few steps on the small scenes
    monkeypatch.setattr(rep, "SEG_QUICK", SegPlan("quick", ("mnv2_os16",), seeds=1, epochs=0.5, val_subset=4,
                                                  bench_repeats=2, data=str(seg_scenes)))
    # and the detection section: SSDLite on MobileNetV2 for a few steps on the small scenes
    monkeypatch.setattr(rep, "DET_QUICK", DetPlan("quick", ("mnv2_ssdlite",), seeds=1, epochs=0.5, resolution=64,
                                                  val_subset=4, bench_repeats=2, data=str(det_scenes)))
    # and the MobileNetV2 section (run for real in tests/test_reproduce_mobilenet_v2.py): what it is given and where
    # its report goes
    given = {}

    def fake_v2(v2_plan, out, top1, notify):
        given.update(plan=v2_plan, top1=top1)
        (Path(out) / "mobilenet_v2.md").write_text("## MobileNetV2 claims\n\n### Figure 6\n")

    monkeypatch.setattr(rep, "run_mobilenet_v2", fake_v2)
    plan = ReproducePlan("test", levels=1, table3=["shufflenet_v1_g8_x0_5"], seeds=1, epochs=1, subset=256,
                         bench_repeats=2, int8_check_images=300, int8_calibration_images=64, long_epochs=2,
                         long_keys=("shufflenet_v1_g8_x0_5", "shufflenet_v1_g8_x0_5+noshuffle"))
    summary = run_reproduce(plan, tmp_path)
    seg = (tmp_path / "segmentation.md").read_text()
    assert "MobileNetV2 Table 7" in seg and "| `mnv2_os16` | `deeplabv3_mobilenet_v2_x1_0` |" in seg
    assert "MF vs single scale" in seg and seg in (tmp_path / "report.md").read_text()
    det = (tmp_path / "detection.md").read_text()
    assert "## Detection: SSDLite" in det and det in (tmp_path / "report.md").read_text()
    v2 = (tmp_path / "mobilenet_v2.md").read_text()
    assert v2 in (tmp_path / "report.md").read_text() and given["plan"].name == "quick"
    # Table 4 reads the classification runs' top-1 by model (the shuffled ones only)
    assert set(given["top1"]) == {"mobilenet_v1_x0_25", "shufflenet_v1_g8_x0_5", "mobilenet_v2_x0_35"}
    text = Path(summary["report"]).read_text()
    assert "mobilecnn reproduce --test" in text and "## Claims" in text
    assert "Table 5, 0.25 MobileNet" in text and "Table 3, shufflenet_v1_g8_x0_5" in text
    assert ("held" in text) and "| `shufflenet_v1_g8_x0_5+noshuffle` |" in text
    # the longer budget: the Table 3 pair trained again at 2 epochs, its claim stated at that budget
    longer = text.split("### The same claims at 2 epochs over the same 256 images")[1].split("## Models")[0]
    assert "- **Table 3, shufflenet_v1_g8_x0_5**: with shuffle" in longer and "Table 5" not in longer
    assert (tmp_path / "runs" / "shufflenet_v1_g8_x0_5+noshuffle@2ep-seed0" / "config.json").is_file()
    for png in summary["plots"].values():
        assert Path(png).stat().st_size > 1000
    # a second run takes the finished models as recorded: nothing is trained or measured again
    def measured_again(*args, **kwargs):
        raise AssertionError("a finished model was trained or measured again")

    for step in ("_train_eval", "onnx_latency", "_int8"):
        monkeypatch.setattr(rep, step, measured_again)
    # the other sections do not change what was measured of a classifier: --task mobilenet_v2 off reuses it too
    again = run_reproduce(replace(plan, mobilenet_v2=False), tmp_path)
    recorded = sum(json.loads(f.read_text())["seconds"] for f in (tmp_path / "runs").glob("*.result.json"))
    assert again["elapsed_s"] >= recorded > 0  # the total still counts the recorded work
    # the longer budget's runs were resumed, not trained again: its time still counts their recorded training
    longer_runs = sorted((tmp_path / "runs").glob("*@2ep-seed0"))
    assert len(longer_runs) == 2
    assert load_classification(tmp_path).longer_s >= sum(training_seconds(r) for r in longer_runs) > 0
    # a plan that measures differently measures again
    with pytest.raises(AssertionError, match="measured again"):
        run_reproduce(replace(plan, int8_check_images=200, mobilenet_v2=False), tmp_path)
    # the report can be written again from results.json alone, identically
    before = Path(again["report"]).read_text()
    assert Path(rebuild_report(tmp_path)["report"]).read_text() == before


def test_a_model_resumed_between_seeds_records_its_earlier_training(tmp_path, monkeypatch):
    """A model interrupted after its first seed: its record, and every later total that reuses it, counts the
    training that the interrupted invocation did (seconds from that run's metrics), not only this invocation's."""
    import mobilecnn.reproduce as rep

    key = "mobilenet_v1_x0_25"
    monkeypatch.setattr(rep, "plan_models", lambda plan: [(key, key, True)])
    monkeypatch.setattr(rep, "_measure", lambda res, first_run, plan: None)

    def fake_train(model, shuffle, seed, plan, run_dir, notify):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text("{}")
        if not (run_dir / "metrics.jsonl").is_file():  # a finished run is resumed as it is
            (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_time_s": 5.0}) + "\n")
        return {"val_top1": 50.0}

    monkeypatch.setattr(rep, "_train_eval", fake_train)
    seed0 = tmp_path / "runs" / f"{key}-seed0"  # what the interrupted invocation finished
    seed0.mkdir(parents=True)
    (seed0 / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_time_s": 100.0}) + "\n")
    plan = ReproducePlan("test", levels=1, table3=[], seeds=2, epochs=1, subset=256, longer=False,
                         segmentation=False, detection=False, mobilenet_v2=False)
    first = run_reproduce(plan, tmp_path)
    recorded = json.loads((tmp_path / "runs" / f"{key}.result.json").read_text())["seconds"]
    assert recorded >= 100.0 and first["elapsed_s"] >= 100.0  # seed 1 ran in this invocation: its wall time counts
    assert run_reproduce(plan, tmp_path)["elapsed_s"] >= 100.0  # reused: the record alone carries it


def _fake_results(tmp_path, top1: dict[str, list[float]]) -> None:

    from dataclasses import asdict

    plan = ReproducePlan("full", levels=2, table3=["shufflenet_v1_g8_x1_0"], seeds=3, epochs=1, subset=100, threads=2)
    models = []
    for key, accs in top1.items():
        name = key.split("+")[0]
        models.append({"key": key, "model": name, "shuffle": "+" not in key, "macs_32": 10**7, "params": 10**5,
                       "peak_activation_bytes": 2**18, "top1": accs, "int8_top1": None, "latency_ms": 0.3,
                       "train_time_s": [1.0] * len(accs), "paper_mflops": 40, "paper_top1_error": None})
    (tmp_path / "results.json").write_text(json.dumps({"plan": asdict(plan), "elapsed_s": 4200.0, "models": models}))


def test_report_claims_weigh_seed_noise(tmp_path):
    _fake_results(tmp_path, {
        "mobilenet_v1_x0_25": [80.0, 80.2, 79.8], "shufflenet_v1_g4_x0_5": [84.0, 84.1, 83.9],  # clear win
        "shufflenet_v1_g3_x0_5_shallow": [80.1, 80.3, 79.7],  # within noise
        "mobilenet_v1_x0_5": [85.0, 85.1, 84.9], "shufflenet_v1_g8_x1_0": [86.0, 86.2, 85.8],
        "shufflenet_v1_g8_x1_0+noshuffle": [87.5, 87.4, 87.6],  # shuffle hurts, clearly
        "mobilenet_v2_x0_35": [83.0, 83.0, 83.0],
    })
    text = Path(rebuild_report(tmp_path)["report"]).read_text()
    assert "--task classification --threads 2 --out" in text and "(it took 70.0 min)" in text
    claims = [line for line in text.splitlines() if line.startswith("- **Table 5")]
    assert "shufflenet_v1_g4_x0_5 84.00% ± 0.10" in claims[0] and "**held** here. Batch-1 latency" in claims[0]
    assert "within seed noise" in claims[1]
    margin = next(line for line in text.splitlines() if line.startswith("- **Margin grows"))
    assert "0.25 MobileNet: +4.00 pt" in margin and margin.endswith("**held** here.")  # +4.0 at 0.25 > +1.0 at 0.5
    table3 = next(line for line in text.splitlines() if line.startswith("- **Table 3"))
    assert "-1.50 pt" in table3 and table3.endswith("**did not hold** here.")
    assert "MobileNetV2 at the nearest MACs: mobilenet_v2_x0_35 83.00%" in text


def test_rebuild_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json not found"):
        rebuild_report(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="not a reproduce results file"):
        rebuild_report(tmp_path)


def test_cli_prints_the_report_and_its_plots(tmp_path, monkeypatch, capsys):
    from mobilecnn.cli import main

    _fake_results(tmp_path, {"mobilenet_v1_x0_25": [80.0, 80.2, 79.8], "shufflenet_v1_g4_x0_5": [84.0, 84.1, 83.9]})
    assert main(["reproduce", "--report-only", "--out", str(tmp_path)]) == 0
    assert f"report: {tmp_path / 'report.md'}" in capsys.readouterr().out

    def fake_run(plan, out_dir, progress):
        progress("done", {"index": 0, "total": 1, "key": "mobilenet_v1_x0_25", "top1": 80.0, "reused": True})
        return rebuild_report(out_dir)

    monkeypatch.setattr("mobilecnn.reproduce.run_reproduce", fake_run)  # the command imports it when it runs
    assert main(["reproduce", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "# mobilecnn reproduce" in printed and "plot (" in printed
