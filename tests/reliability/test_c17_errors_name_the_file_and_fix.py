"""Class 17: every error names the file or option at fault and what to do."""

import os
import shutil

import pytest

from mobilecnn.cli import main
from mobilecnn.data import load_data, scan_image_folder
from mobilecnn.deploy.bench import BenchConfig, run_bench
from mobilecnn.errors import DataError, TrainError, UsageError
from mobilecnn.evaluate import evaluate_run
from mobilecnn.train import TrainConfig, train


def test_bad_json_in_config_names_the_file(tmp_path, folder_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    (run / "config.json").write_text("{not json")
    assert main(["eval", str(run), "--workers", "0"]) == 2
    assert str(run / "config.json") in capsys.readouterr().err


def test_empty_dataset_says_so(tmp_path, make_folder):
    from mobilecnn.data.batches import check_global_batch

    root = make_folder(tmp_path / "d", per_class=1, classes="ab")
    with pytest.raises(DataError, match="larger than the 2 training images"):
        load_data(str(root), resolution=32, batch_size=4, workers=0)
    with pytest.raises(DataError, match="no training images"):
        check_global_batch(1, 1, 0)


def test_unreadable_class_folder_is_not_called_empty(tmp_path, monkeypatch, make_folder):
    root = make_folder(tmp_path / "d", per_class=2, classes="ab")
    real_walk = os.walk

    def walk(top, *a, onerror=None, **k):
        if str(top).endswith("/b"):
            onerror(PermissionError(13, "Permission denied", str(top)))
            return iter(())
        return real_walk(top, *a, onerror=onerror, **k)

    monkeypatch.setattr(os, "walk", walk)
    with pytest.raises(DataError, match="cannot read class folder .*Permission denied"):
        scan_image_folder(root / "train")


def test_non_utf8_class_name_evaluates(tmp_path, make_folder):
    root = make_folder(tmp_path / "d", per_class=2, classes="ab")
    for split in ("train", "val"):
        os.rename(root / split / "b", os.fsencode(root / split) + b"/caf\xe9")
    run = tmp_path / "run"
    train(TrainConfig(model="mobilenet_v1_x0_25", data=str(root), out=str(run), resolution=32, batch_size=2,
                      max_steps=1, threads=1, workers=0, ema=0.0))
    result = evaluate_run(run, out_dir=tmp_path / "eval", workers=0)
    assert (tmp_path / "eval" / "confusion.png").is_file() and result["samples"] == 4


def test_batch_of_one_with_a_one_pixel_map_explains_itself(tmp_path, folder_data):
    with pytest.raises(TrainError, match="--batch-size >= 2"):
        train(TrainConfig(model="mobilenet_v1_x0_25", data=str(folder_data), out=str(tmp_path / "r"), resolution=8,
                          batch_size=1, max_steps=1, threads=1, workers=0))
    assert not (tmp_path / "r").exists()


def test_bench_out_is_checked_before_timing(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        run_bench(BenchConfig(("mobilenet_v1_x0_25",), backend=("eager",), threads=(1,), batch=(1,), out=str(target)))
