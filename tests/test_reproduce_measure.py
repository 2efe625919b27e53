"""What the reproduce sections share: the best verified file's latency (a real, narrowed auto search), its
failure path, and the seed-noise verdict."""

from __future__ import annotations

from mobilecnn.reproduce_measure import auto_latency, verdict


def test_auto_latency_keeps_a_verified_file_and_names_it(tiny_run):
    found = auto_latency(tiny_run, check_count=200, seconds=0.2, formats=["onnx"])
    assert found.latency_ms is not None and found.latency_ms > 0
    runtime, precision = found.choice.split()
    assert runtime == "onnxruntime" and precision in {"fp32", "bf16", "int8"} and found.time_s > 0


def test_auto_latency_of_a_folder_that_is_no_run_says_why(tmp_path):
    found = auto_latency(tmp_path, check_count=200, seconds=0.2)
    assert found.latency_ms is None and found.choice.startswith("auto failed: ") and str(tmp_path) in found.choice


def test_verdict_separates_a_margin_a_sign_and_seed_noise():
    assert verdict([20.0], [20.5], margin=1.0).startswith("**held**")
    assert verdict([18.0], [20.5], margin=1.0).startswith("**did not hold**")
    assert verdict([20.0, 20.4], [20.1, 20.5]).startswith("within seed noise")
    assert verdict([25.0, 25.1], [20.0, 20.1]).startswith("**held**")


def test_training_seconds_sums_every_epoch_once(tmp_path):
    import json

    from mobilecnn.reproduce_measure import training_seconds

    records = [{"epoch": e, "train_time_s": t} for e, t in ((0, 10.0), (1, 12.0), (1, 12.5), (2, 11.0))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert training_seconds(tmp_path) == 10.0 + 12.5 + 11.0  # a resumed epoch's record counts once, its last
    assert training_seconds(tmp_path / "nothing") == 0.0


def _tiny_net(width: int):
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 10)).eval()


def test_best_files_paired_searches_times_and_pairs():
    from mobilecnn.deploy.timing import bootstrap_ratio
    from mobilecnn.reproduce_measure import FilesPlan, best_files_paired

    # two candidates each: the auto search chooses; the kept files are then timed against each other
    plan = FilesPlan(formats=("onnx",), precisions=("fp32", "int8"), seconds=0.1, pair_seconds=0.3, resolution=32,
                     calibration_images=16)
    found = best_files_paired({"narrow": _tiny_net(8), "wide": _tiny_net(256)}, plan)
    for name, m in found["models"].items():
        assert m["best"] in ("onnxruntime fp32", "onnxruntime int8") and "kept" not in m, (name, m)
        assert len(m["candidates"]) == 2 and m["paired_median_ms"] > 0
    assert found["rounds"] > 0 and set(found["per_round_ms"]) == {"narrow", "wide"}
    ratio = bootstrap_ratio(found["per_round_ms"]["wide"], found["per_round_ms"]["narrow"])
    assert ratio[1] <= ratio[0] <= ratio[2]


def test_best_files_paired_with_one_candidate_exports_it_and_says_why_when_it_fails(monkeypatch):
    from mobilecnn.errors import ExportVerificationError
    from mobilecnn.reproduce_measure import FilesPlan, best_files_paired

    plan = FilesPlan(formats=("onnx",), precisions=("fp32",), seconds=0.1, pair_seconds=0.2, resolution=32)
    found = best_files_paired({"a": _tiny_net(8), "b": _tiny_net(16)}, plan)
    assert all(m["best"] == "onnxruntime fp32" and m["paired_median_ms"] > 0 for m in found["models"].values())

    def refuse(*args, **kwargs):
        raise ExportVerificationError("the file disagreed with PyTorch")

    monkeypatch.setattr("mobilecnn.reproduce_measure.export_model", refuse)
    found = best_files_paired({"a": _tiny_net(8), "b": _tiny_net(16)}, plan)
    assert found["rounds"] == 0 and found["per_round_ms"] == {}
    assert all(m["best"] is None and "disagreed" in m["why"] for m in found["models"].values())
