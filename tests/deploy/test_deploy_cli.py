"""The road from a run directory to a device file: export (+ sidecar), predict with the file, bench a run."""

import json

import pytest

from mobilecnn.cli import main

pytest.importorskip("onnxruntime")


def test_export_onnx_then_predict_with_the_file(tiny_run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(tiny_run), "--format", "onnx", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rel_diff"] < 1e-4 and report["top1_agreement"] == 1.0
    sidecar = json.loads((tmp_path / "model.onnx.mobilecnn.json").read_text())
    assert sidecar["model"] == "shufflenet_v1_g3_x0_5" and sidecar["data"]["resolution"] == 32
    from PIL import Image
    import numpy as np

    img = tmp_path / "shirt.png"
    Image.fromarray((np.random.default_rng(0).random((40, 30)) * 255).astype("uint8")).save(img)
    assert main(["predict", str(img), "--model", str(out), "--json"]) == 0
    onnx_pred = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    assert main(["predict", str(img), "--model", str(tiny_run), "--json"]) == 0
    torch_pred = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    assert [p["label"] for p in onnx_pred] == [p["label"] for p in torch_pred]
    assert abs(onnx_pred[0]["probability"] - torch_pred[0]["probability"]) < 1e-4


def test_export_int8_reports_accuracy_check(tiny_run, tmp_path, capsys):
    out = tmp_path / "model_int8.onnx"
    code = main(["export", str(tiny_run), "--format", "onnx", "--int8", "--out", str(out), "--max-drop", "100"])
    text = capsys.readouterr().out
    assert code == 0 and "int8 accuracy check: fp32 top-1" in text and out.is_file()


def test_export_bad_options(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run), "--format", "tflite"]) == 2  # argparse's error, as exit status 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--format", "torchscript", "--int8"]) == 2
    assert "int8" in capsys.readouterr().err


def test_bench_cli_with_run_directory(tiny_run, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", str(tiny_run), "--backend", "eager", "onnxruntime", "--repeats", "3", "--out", str(out)]) == 0
    data = json.loads((out / "bench.json").read_text())
    models = {r["model"] for r in data["rows"]}
    assert {"shufflenet_v1_g3_x0_5", "torchvision.mobilenet_v2", "torchvision.shufflenet_v2_x1_0"} <= models
    ours = [r for r in data["rows"] if r["model"] == "shufflenet_v1_g3_x0_5"]
    assert ours and all(r["accuracy"] is not None for r in ours)
    assert (out / "bench.png").stat().st_size > 1000 and "x ref" in (out / "bench.md").read_text()
    assert main(["bench", "mobilenet_v9", "--out", str(out)]) == 2
    assert "closest" in capsys.readouterr().err
