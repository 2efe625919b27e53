"""Class 19: files users name are read only if they are regular files of a sane size (``/dev/zero`` as a labels
file or as a run's ``metrics.jsonl`` is a one-line error naming it, never a MemoryError or ``[Errno 22]``), and an
import never writes over its own source."""

from __future__ import annotations

import os

import pytest

from mobilecnn.cli import main
from mobilecnn.errors import UsageError
from mobilecnn.files import read_bounded, read_json_object
from mobilecnn.plots import read_metrics
from mobilecnn.weights import import_weights
from mobilecnn.weights.store import read_labels


def test_labels_from_dev_zero_or_a_huge_file_are_refused_naming_it(tmp_path):
    with pytest.raises(UsageError, match="--labels /dev/zero is not a regular file; it must be a text file"):
        read_labels("/dev/zero", 1000)
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as fh:
        fh.truncate(5 << 20)
    with pytest.raises(UsageError, match="huge.txt is larger than 4 MiB"):
        read_labels(huge, 1000)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="latin1.txt: not UTF-8 text"):
        read_labels(latin, 1)


def test_metrics_linked_to_dev_zero_names_the_file(tmp_path):
    link = tmp_path / "metrics.jsonl"
    os.symlink("/dev/zero", link)
    with pytest.raises(ValueError, match=r"metrics.jsonl is not a regular file; it must be the metrics.jsonl"):
        read_metrics(link)


def test_a_fifo_or_missing_json_object_is_one_line(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)  # opening a FIFO for reading would block without a writer: it must not be opened
    with pytest.raises(ValueError, match="config.json is not a regular file"):
        read_json_object(fifo, "mobilecnn train")
    with pytest.raises(ValueError, match="missing.json is unreadable"):
        read_bounded(tmp_path / "missing.json", 10, "a file")


def test_import_onto_its_own_source_is_refused_and_the_source_kept(tmp_path, capsys):
    from torchvision.models import mobilenet_v2

    src = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file(mobilenet_v2().state_dict(), str(src))
    before = src.read_bytes()
    with pytest.raises(UsageError, match="is the file being imported"):
        import_weights(src, "torchvision", src)
    same = str(tmp_path / "." / "w.safetensors")
    assert main(["weights", "import", str(src), "--from", "torchvision", "--out", same]) == 2
    assert "name another --out" in capsys.readouterr().err and src.read_bytes() == before


def test_a_checkpoint_of_another_model_than_the_runs_config_is_refused(tmp_path, folder_data, capsys):
    import json
    import shutil

    from mobilecnn.errors import CheckpointError
    from mobilecnn.runs.rundir import load_trained

    from .conftest import train_tiny

    run = train_tiny(folder_data, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["model"] = "mobilenet_v2_x0_35"  # the checkpoint holds mobilenet_v1_x0_25
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="holds mobilenet_v1_x0_25 but .*config.json was written for "
                                              "mobilenet_v2_x0_35"):
        load_trained(run)
    image = next((folder_data / "val").rglob("*.png"))
    assert main(["predict", str(image), "--model", str(run)]) == 2
    assert "belongs to another run" in capsys.readouterr().err
    alone = tmp_path / "alone.safetensors"  # the weights file alone still loads: its metadata describes it
    shutil.copy(next(run.rglob("model.safetensors")), alone)
    assert load_trained(alone).model_name == "mobilenet_v1_x0_25"
