"""Class 12: labels and file names with terminal escapes or newlines are printed escaped."""

import json
import shutil

from PIL import Image

from mobilecnn.cli import main
from mobilecnn.cli.console import safe
from mobilecnn.models.weights_file import load_weights, read_metadata, save_weights
from mobilecnn.runs.checkpoints import latest_checkpoint


def test_safe_makes_control_characters_visible():
    assert safe("a\x1b[2Jb\nc\td") == "a\\x1b[2Jb\\nc\\td"
    assert safe("plain café") == "plain café"


def test_hostile_label_and_file_name_in_predict_output(tmp_path, folder_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    path = latest_checkpoint(run) / "model.safetensors"
    meta = read_metadata(path)
    data = json.loads(meta["data"])
    data["class_names"] = ["\x1b[2Jevil", "b\nforged: line", "c"]
    meta["data"] = json.dumps(data)
    save_weights(path, load_weights(path), meta)
    image = tmp_path / "img\x1b[31m\nname.png"
    Image.new("RGB", (40, 40), (200, 40, 40)).save(image)
    assert main(["predict", str(image), "--model", str(run), "--topk", "3"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert len(out.strip().splitlines()) == 1
    assert "\\x1b[2Jevil" in out
