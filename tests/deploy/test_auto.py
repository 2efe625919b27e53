"""``export --format auto``: every installed runtime x precision exported, verified, timed; the fastest kept."""

import json

import numpy as np
import pytest
from PIL import Image

from mobilecnn.cli import main

pytest.importorskip("onnxruntime")


def test_export_auto_end_to_end(tiny_run, tmp_path, capsys):
    out = tmp_path / "auto" / "m"
    # two runtimes keep it short; every runtime is exercised by benchmarks/auto_on_runs.py and the round trips
    code = main(["export", str(tiny_run), "--format", "auto", "--out", str(out), "--seconds", "0.3", "--threads", "2",
                 "--max-drop", "100", "--calibration-count", "64", "--candidates", "onnx", "torchscript"])
    text = capsys.readouterr().out
    assert code == 0, text
    table = json.loads((tmp_path / "auto" / "m.auto.json").read_text())
    rows = table["candidates"]
    assert {(r["format"], r["precision"]) for r in rows} == {("onnx", "fp32"), ("onnx", "int8"), ("torchscript", "fp32")}
    verified = [r for r in rows if r["status"] == "verified"]
    assert verified and all(r["latency_ms"] > 0 and r["file_bytes"] > 0 for r in verified)
    assert all(r.get("why") for r in rows if r["status"] != "verified")
    best = table["best"]
    assert best["latency_ms"] == min(r["latency_ms"] for r in verified)
    kept = tmp_path / "auto" / ("m" + {"onnx": ".onnx", "torchscript": ".pt", "openvino": ".xml",
                                       "executorch": ".pte"}[best["format"]])
    assert table["kept"] == str(kept) and kept.is_file()
    sidecar = json.loads((kept.parent / (kept.name + ".mobilecnn.json")).read_text())
    assert sidecar["auto"]["precision"] == best["precision"] and sidecar["report"]["path"] == str(kept)
    md = (tmp_path / "auto" / "m.auto.md").read_text()
    assert "Kept:" in md and "| candidate |" in md and "Kept:" in text
    # no staging debris: the kept file, its companions, its sidecar and the two tables
    assert not [p for p in (tmp_path / "auto").iterdir() if p.name.startswith(".")]
    # the kept file predicts
    image = tmp_path / "img" / "shirt.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(image)
    assert main(["predict", str(image), "--model", str(kept)]) == 0
    assert "shirt.png" in capsys.readouterr().out


def test_export_precision_flags(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--format", "onnx", "--precision", "bf16"]) == 2
    assert "bf16" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--format", "onnx", "--int8", "--precision", "fp32"]) == 2
    assert "contradicts" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--format", "onnx", "--candidates", "onnx"]) == 2
    assert "--format auto only" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--format", "auto", "--candidates", "tflite"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_candidates_are_limited_to_the_named_formats():
    from mobilecnn.deploy.auto import auto_candidates

    assert auto_candidates(["onnx"]) == [("onnx", "fp32"), ("onnx", "int8")]
    assert auto_candidates(["torchscript", "onnx"]) == [("onnx", "fp32"), ("onnx", "int8"), ("torchscript", "fp32")]


def test_paired_times_and_bootstrap_ratio():
    import time as _t

    from mobilecnn.deploy.timing import bootstrap_ratio, paired_times

    t = paired_times({"fast": lambda: None, "slow": lambda: _t.sleep(0.002)}, seconds=0.05, min_rounds=5)
    assert t["rounds"] >= 5 and t["median_ms"]["slow"] > t["median_ms"]["fast"]
    assert all(len(v) == t["rounds"] for v in t["per_round_ms"].values())
    assert t["calls_per_round"]["fast"] == 50 and 5 <= t["calls_per_round"]["slow"] <= 15  # bursts of ~30 ms
    med, lo, hi = bootstrap_ratio([2.0, 2.2, 1.8, 2.0], [1.0, 1.0, 1.0, 1.0])
    assert lo <= med <= hi and 1.8 <= lo and hi <= 2.2


def test_bf16_detection_is_a_bool():
    from mobilecnn.deploy.auto import auto_candidates
    from mobilecnn.deploy.backends import bf16_supported

    assert isinstance(bf16_supported(), bool)
    pairs = auto_candidates()
    assert ("torchscript", "fp32") in pairs and ("torchscript", "int8") not in pairs
    assert all(p != "bf16" or f == "openvino" for f, p in pairs)
