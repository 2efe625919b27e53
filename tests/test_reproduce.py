"""reproduce: a miniature plan runs end to end and writes the report, the claims and the plots."""

from pathlib import Path

import pytest

from mobilecnn.reproduce import QUICK, ReproducePlan, plan_models, run_reproduce

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def test_plans_cover_the_issue():
    quick = {k for k, _, _ in plan_models(QUICK)}
    assert {"mobilenet_v1_x0_25", "shufflenet_v1_g4_x0_5", "shufflenet_v1_g3_x0_5_shallow"} <= quick
    assert {"shufflenet_v1_g8_x0_5", "shufflenet_v1_g8_x0_5+noshuffle"} <= quick
    assert any(k.startswith("mobilenet_v2") for k in quick)
    from mobilecnn.reproduce import FULL

    full = {k for k, _, _ in plan_models(FULL)}
    assert {"mobilenet_v1_x0_5", "shufflenet_v1_g8_x1_0", "mobilenet_v1_x0_75", "shufflenet_v1_g3_x1_5"} <= full
    for name in ("shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x1_0", "shufflenet_v1_g3_x0_5", "shufflenet_v1_g8_x0_5"):
        assert {name, name + "+noshuffle"} <= full


@pytest.mark.skipif(not FASHION.is_file(), reason="Fashion-MNIST not installed")
def test_miniature_reproduce_writes_report(tmp_path, monkeypatch):
    import mobilecnn.reproduce as rep

    # one Table 5 level with one ShuffleNet, which is also the Table 3 pair: 4 tiny runs
    monkeypatch.setattr(rep, "TABLE5_LEVELS", [("0.25 MobileNet (41 MFLOPs)", "mobilenet_v1_x0_25", ["shufflenet_v1_g8_x0_5"])])
    plan = ReproducePlan("test", levels=1, table3=["shufflenet_v1_g8_x0_5"], seeds=1, epochs=1, subset=256,
                         bench_repeats=2, int8_check_images=300)
    summary = run_reproduce(plan, tmp_path)
    text = Path(summary["report"]).read_text()
    assert "mobilecnn reproduce --test" in text and "## Claims" in text
    assert "Table 5, 0.25 MobileNet" in text and "Table 3, shufflenet_v1_g8_x0_5" in text
    assert ("held" in text) and "| `shufflenet_v1_g8_x0_5+noshuffle` |" in text
    for png in summary["plots"].values():
        assert Path(png).stat().st_size > 1000
    # a second run resumes the finished runs instead of training again
    again = run_reproduce(plan, tmp_path)
    assert again["elapsed_s"] < summary["elapsed_s"] * 2 + 60
