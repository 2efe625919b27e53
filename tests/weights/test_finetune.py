"""End to end: import a (random) torchvision checkpoint, fine-tune it with --init on a small image folder
with another class count, then predict / eval with the imported preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobilecnn.cli import main
from mobilecnn.runs.rundir import load_trained


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes (skimage photos), random crops: 6 train and 2 val images per class."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for name, im in (("cat", data.chelsea()), ("coffee", data.coffee()), ("astronaut", data.astronaut())):
            (root / split / name).mkdir(parents=True)
            h, w = im.shape[:2]
            for i in range(n):
                s = int(min(h, w) * rng.uniform(0.6, 0.9))
                y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
                Image.fromarray(np.ascontiguousarray(im[y:y + s, x:x + s, :3])).resize((80, 80)).save(
                    root / split / name / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    torchvision = pytest.importorskip("torchvision")
    d = tmp_path_factory.mktemp("imported")
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2(width_mult=0.35).state_dict(), d / "tv.pth")
    assert main(["weights", "import", str(d / "tv.pth"), "--from", "torchvision", "--out", str(d / "w.safetensors"),
                 "--resolution", "64"]) == 0
    return d / "w.safetensors"


def _train(folder, imported, out, *extra):
    return main(["train", "--model", "mobilenet_v2_x0_35", "--init", str(imported), "--data", str(folder),
                 "--epochs", "1", "--batch-size", "6", "--threads", "1", "--workers", "0", "--lr", "0.01",
                 "--out", str(out), *extra])


def test_finetune_then_predict_and_eval(folder, imported, tmp_path, capsys):
    from mobilecnn import create_model

    assert _train(folder, imported, tmp_path / "run", "--backbone-lr-scale", "0.1", "--freeze-bn") == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["identity"]["init"] == str(imported) and len(config["identity"]["init_sha256"]) == 64
    pre = config["data"]["preprocessing"]  # the imported weights' normalisation, not the folder's statistics
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225] and pre["resolution"] == 64
    loaded = load_trained(tmp_path / "run")
    assert loaded.model.num_classes == 3 and loaded.data["class_names"] == ["astronaut", "cat", "coffee"]
    start = create_model("mobilenet_v2_x0_35", weights=imported).state_dict()
    now = loaded.model.state_dict()
    for key in ("features.3.block.1.bn.running_mean", "features.18.bn.running_var"):  # --freeze-bn
        assert torch.equal(now[key], start[key])
    assert not torch.equal(now["features.0.conv.weight"], start["features.0.conv.weight"])  # backbone trained
    capsys.readouterr()
    assert main(["predict", str(folder / "val" / "cat"), "--model", str(tmp_path / "run"), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    assert len(preds) == 2 and all(p["top"][0]["label"] in ("astronaut", "cat", "coffee") for p in preds)
    assert main(["eval", str(tmp_path / "run"), "--json", "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 6


def test_freeze_backbone_trains_the_classifier_only(folder, imported, tmp_path):
    from mobilecnn import create_model

    assert _train(folder, imported, tmp_path / "run", "--freeze-backbone") == 0
    start = create_model("mobilenet_v2_x0_35", weights=imported).state_dict()
    now = load_trained(tmp_path / "run", prefer_ema=False).model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in start.items() if not k.startswith("classifier."))
    assert now["classifier.1.weight"].shape == (3, 1280)


def test_init_from_another_model_refused(folder, imported, tmp_path, capsys):
    code = main(["train", "--model", "mobilenet_v2_x0_5", "--init", str(imported), "--data", str(folder),
                 "--epochs", "1", "--out", str(tmp_path / "r"), "--threads", "1", "--batch-size", "6", "--workers", "0"])
    assert code == 2 and "holds mobilenet_v2_x0_35 weights" in capsys.readouterr().err
