"""Class 10: NaN or inf outputs are an error, never a result (and never non-JSON "NaN" in a file)."""

import json
import shutil

import pytest
import torch

from mobilecnn.cli import main
from mobilecnn.data.images import Preprocessing
from mobilecnn.errors import DataError, NonFiniteError
from mobilecnn.evaluate import evaluate_run
from mobilecnn.models.weights_file import load_weights, read_metadata, save_weights
from mobilecnn.runs.checkpoints import latest_checkpoint


def _poison(run, value: float = 1e38):
    """Every float tensor set to ``value``: finite (the file loads) but the outputs overflow to inf/NaN."""
    ckpt = latest_checkpoint(run)
    path = ckpt / "model.safetensors"
    state = load_weights(path, check_values=False)
    state = {k: (torch.full_like(v, value) if v.is_floating_point() else v) for k, v in state.items()}
    save_weights(path, state, read_metadata(path))


def test_nan_weights_fail_eval_and_predict(tmp_path, folder_run, folder_data, capsys):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    _poison(run)
    with pytest.raises(NonFiniteError):
        evaluate_run(run, out_dir=tmp_path / "eval", workers=0)
    assert not (tmp_path / "eval" / "eval.json").exists()
    image = next((folder_data / "val" / "a").iterdir())
    assert main(["predict", str(image), "--model", str(run), "--json"]) == 2
    captured = capsys.readouterr()
    assert "NaN" not in captured.out and "nan%" not in captured.out
    assert "NaN/inf" in captured.err


def test_nan_weights_are_refused_when_loaded_naming_the_tensor(tmp_path, folder_run, folder_data, capsys):
    from mobilecnn.errors import CheckpointError

    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    _poison(run, float("nan"))
    with pytest.raises(CheckpointError, match="holds NaN or infinite values"):
        evaluate_run(run, out_dir=tmp_path / "eval", workers=0)
    image = next((folder_data / "val" / "a").iterdir())
    assert main(["predict", str(image), "--model", str(run)]) == 2
    assert "model.safetensors: tensor" in capsys.readouterr().err


def test_zero_std_in_a_sidecar_is_refused():
    with pytest.raises(DataError, match="std"):
        Preprocessing.from_dict({"resolution": 32, "in_chans": 3, "mean": [0.5], "std": [0.0]})


def test_report_only_refuses_nan_results(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"plan": {}, "models": [], "elapsed_s": float("nan")}))
    assert main(["reproduce", "--report-only", "--out", str(tmp_path)]) == 2
    assert "results.json" in capsys.readouterr().err
