"""Class 11: bad input is a one-line error with an exit code, never a traceback."""

import json
import shutil

import pytest
import torch

from mobilecnn.cli import main
from mobilecnn.models.weights_file import load_weights, read_metadata, save_weights
from mobilecnn.runs.checkpoints import latest_checkpoint

TRAIN = ["train", "--model", "mobilenet_v1_x0_25", "--subset", "64", "--max-steps", "1"]


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "Traceback" not in err
    return err


def test_markup_in_a_path_is_printed_not_parsed(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "x[/]y[bold].png"), "--model", str(tmp_path / "m[/].onnx")]) == 2
    assert "m[/].onnx" in _one_line_error(capsys)


def test_config_json_holding_a_list(tmp_path, folder_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    (run / "config.json").write_text("[1, 2, 3]")
    assert main(["eval", str(run), "--workers", "0"]) == 2
    assert "config.json" in _one_line_error(capsys)


def test_weight_tensor_of_the_wrong_shape(tmp_path, folder_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    path = latest_checkpoint(run) / "model.safetensors"
    state = load_weights(path)
    key = next(k for k in state if k.endswith("conv.weight"))
    state[key] = torch.zeros(3, 3)
    save_weights(path, state, read_metadata(path))
    assert main(["predict", str(run), "--model", str(run)]) == 2
    assert "shape mismatch" in _one_line_error(capsys)


@pytest.mark.parametrize("field,value", [("mean", [0.1, 0.2]), ("std", "wide"), ("resolution", "big"), ("in_chans", 7)])
def test_sidecar_fields_of_the_wrong_kind(tmp_path, folder_run, folder_data, field, value, capsys):
    pytest.importorskip("onnxruntime")
    from mobilecnn.deploy.run_export import export_run

    out = tmp_path / "m.onnx"
    export_run(folder_run, "onnx", out)
    sidecar = out.parent / (out.name + ".mobilecnn.json")
    info = json.loads(sidecar.read_text())
    info["preprocessing"][field] = value
    sidecar.write_text(json.dumps(info))
    image = next((folder_data / "val" / "a").iterdir())
    assert main(["predict", str(image), "--model", str(out)]) == 2
    assert "mobilecnn.json" in _one_line_error(capsys)


@pytest.mark.parametrize("option", [["--epochs", "1e308"], ["--warmup", "1e308"], ["--threads", "-1"],
                                    ["--epochs", "nan"], ["--lr", "inf"]])
def test_absurd_numbers(option, tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path / "r"), *option]) == 2
    capsys.readouterr()
    assert not (tmp_path / "r").exists()


def test_ctrl_c_while_the_command_line_loads_is_exit_130_without_a_traceback():
    import signal
    import subprocess
    import sys
    import time

    code = "import mobilecnn, sys; print('torch' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "False"  # import mobilecnn does not wait for torch
    proc = subprocess.Popen([sys.executable, "-m", "mobilecnn.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.6)  # the interpreter is up and torch is loading (it takes seconds)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
