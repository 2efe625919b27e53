"""torchvision mobilenet_v2(width_mult=w), random weights, saved as a state_dict .pth: imported exactly."""

from __future__ import annotations

import pytest
import torch

from mobilecnn import create_model

WIDTHS = {0.35: "mobilenet_v2_x0_35", 1.0: "mobilenet_v2_x1_0", 1.3: "mobilenet_v2_x1_3"}


@pytest.mark.parametrize("width", list(WIDTHS))
def test_torchvision_mobilenet_v2_exact(width, tmp_path, wt):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    x8 = wt.photos(224)
    tv = wt.randomize_bn_(torchvision.models.mobilenet_v2(width_mult=width), wt.imagenet(x8)).eval()
    torch.save(tv.state_dict(), tmp_path / "mobilenet_v2.pth")
    side = wt.import_file(tmp_path / "mobilenet_v2.pth", "torchvision", tmp_path / "w.safetensors")
    assert side["model"] == WIDTHS[width] and side["model_kwargs"] == {}
    assert side["data"]["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    # ImageNet's names, as torchvision itself carries them in its weights' metadata
    assert side["data"]["class_names"] == torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert "BSD-3-Clause" in side["license"] and side["source"]["library"] == "torchvision"
    ours = create_model(WIDTHS[width], weights=tmp_path / "w.safetensors")
    with torch.no_grad():
        ref = tv(wt.imagenet(x8)).numpy()
    assert wt.rel_diff(wt.logits(ours, wt.ours_input(tmp_path / "w.safetensors", x8)), ref) <= wt.TOL


def test_predict_names_what_an_imported_classifier_sees(tmp_path, capsys):
    from mobilecnn.cli import main

    torchvision = pytest.importorskip("torchvision")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mobilenet_v2.pth")
    assert main(["weights", "import", str(tmp_path / "mobilenet_v2.pth"), "--from", "torchvision", "--out",
                 str(tmp_path / "w.safetensors")]) == 0
    assert "labels: ImageNet's 1000 class names (tench, goldfish, ...)" in capsys.readouterr().out
    Image.fromarray(skimage_data.chelsea()).save(tmp_path / "cat.png")
    assert main(["predict", str(tmp_path / "cat.png"), "--model", str(tmp_path / "w.safetensors"), "--topk",
                 "3"]) == 0
    printed = capsys.readouterr().out
    names = set(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
    assert sum(name in printed for name in names) >= 3  # untrained weights: which names is not the point
