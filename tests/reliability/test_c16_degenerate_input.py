"""Class 16: degenerate input is refused with a reason, not trained or served silently."""

import json

import pytest

from mobilecnn.cli import main
from mobilecnn.data import load_data
from mobilecnn.errors import DataError


def test_one_class_folder_is_refused(tmp_path, make_folder):
    root = make_folder(tmp_path / "d", classes="a")
    with pytest.raises(DataError, match="at least 2 classes"):
        load_data(str(root), resolution=32, batch_size=2, workers=0)


@pytest.mark.parametrize("labels", [["only"], [f"c{i}" for i in range(1000)]])
def test_sidecar_with_the_wrong_number_of_labels(tmp_path, folder_run, folder_data, labels, capsys):
    pytest.importorskip("onnxruntime")
    from mobilecnn.deploy.run_export import export_run

    out = tmp_path / "m.onnx"
    export_run(folder_run, "onnx", out)
    sidecar = out.parent / (out.name + ".mobilecnn.json")
    info = json.loads(sidecar.read_text())
    info["data"]["class_names"] = labels
    sidecar.write_text(json.dumps(info))
    image = next((folder_data / "val" / "a").iterdir())
    assert main(["predict", str(image), "--model", str(out)]) == 2
    assert "classes" in capsys.readouterr().err


@pytest.mark.parametrize("threads", ["-1", "0", "99"])
def test_predict_threads_are_checked(folder_run, folder_data, threads, capsys):
    image = next((folder_data / "val" / "a").iterdir())
    assert main(["predict", str(image), "--model", str(folder_run), "--threads", threads]) == 2
    assert "threads" in capsys.readouterr().err
