"""Class 8: a run on a dozen images can be evaluated and exported, also after its dataset moved."""

import shutil

import pytest

from mobilecnn.cli import main
from mobilecnn.deploy.run_export import export_run
from mobilecnn.evaluate import evaluate_run


pytest.importorskip("onnxruntime")


def test_eval_and_export_of_a_twelve_image_run(tmp_path, folder_run):
    result = evaluate_run(folder_run, out_dir=tmp_path / "eval", workers=0)
    assert result["samples"] == 12
    export_run(folder_run, "onnx", tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").is_file()


def test_int8_export_of_a_tiny_run_calibrates_on_what_there_is(tmp_path, folder_run):
    result = export_run(folder_run, "onnx", tmp_path / "q.onnx", precision="int8", calibration_count=32, max_drop=100)
    assert result["precision"] == "int8"


def test_moved_dataset_is_found_with_data_dir(tmp_path, folder_data, capsys, train_run):
    data = tmp_path / "data"
    shutil.copytree(folder_data, data)
    run = train_run(data, tmp_path / "run")
    moved = tmp_path / "moved"
    data.rename(moved)
    assert main(["eval", str(run), "--workers", "0", "--out", str(tmp_path / "e")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(run), "--data-dir", str(moved), "--workers", "0", "--out", str(tmp_path / "e")]) == 0
    assert main(["export", str(run), "--format", "onnx", "--data-dir", str(moved), "--out", str(tmp_path / "x.onnx")]) == 0
