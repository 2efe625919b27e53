"""Exporting imported weights (no dataset comes with them): fp32 verified on real photographs, bf16/int8 only
with --calibration-data DIR (calibration and an agreement check with fp32), a one-line error without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mobilecnn.cli import main
from mobilecnn.deploy.imported_images import MIN_FOLDER_IMAGES
from mobilecnn.deploy.run_export import export_run
from mobilecnn.errors import UsageError
from mobilecnn.weights import import_weights


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    import torch
    from torchvision.models import mobilenet_v2

    folder = tmp_path_factory.mktemp("imported")
    torch.manual_seed(0)
    torch.save(mobilenet_v2().state_dict(), folder / "mobilenet_v2.pth")
    import_weights(folder / "mobilenet_v2.pth", "torchvision", folder / "w.safetensors", resolution=96)
    return folder / "w.safetensors"


def _photo_folder(root, count: int):
    from mobilecnn.data.scenes_compose import load_textures

    rng = np.random.default_rng(0)
    photos = [rgb for _, rgb in load_textures()]
    for i in range(count):
        rgb = photos[i % len(photos)]
        y, x = rng.integers(0, rgb.shape[0] - 128), rng.integers(0, rgb.shape[1] - 128)
        (root / f"sub{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb[y:y + 128, x:x + 128]).save(root / f"sub{i % 3}" / f"{i:03d}.png")
    return root


def test_fp32_is_verified_on_photographs(imported, tmp_path, one_thread):
    result = export_run(imported, "onnx", tmp_path / "m.onnx")
    assert result["top1_agreement"] == 1.0 and result["rel_diff"] < 1e-4
    assert any("scikit-image sample photographs" in n for n in result["notes"])
    sidecar = json.loads((tmp_path / "m.onnx.mobilecnn.json").read_text())
    assert sidecar["data"]["name"] == "imported:torchvision"


def test_int8_needs_a_folder_and_then_checks_agreement(imported, tmp_path, capsys, one_thread):
    with pytest.raises(UsageError, match="need --calibration-data DIR"):
        export_run(imported, "onnx", tmp_path / "q.onnx", precision="int8")
    assert main(["export", str(imported), "--format", "onnx", "--precision", "int8", "--out",
                 str(tmp_path / "q.onnx")]) == 2
    assert "--calibration-data DIR" in capsys.readouterr().err and not (tmp_path / "q.onnx").exists()
    few = _photo_folder(tmp_path / "few", MIN_FOLDER_IMAGES - 1)
    with pytest.raises(UsageError, match=f"holds {MIN_FOLDER_IMAGES - 1} images"):
        export_run(imported, "onnx", tmp_path / "q.onnx", precision="int8", calibration_data=str(few))
    folder = _photo_folder(tmp_path / "photos", 96)
    result = export_run(imported, "onnx", tmp_path / "q.onnx", precision="int8", calibration_data=str(folder),
                        calibration_count=32, check_count=48, max_drop=100.0)
    assert (tmp_path / "q.onnx").is_file()
    assert any("agreement with the fp32 model's top-1 on 48 others" in n for n in result["notes"])
    assert result["int8_report"]["fp32_top1"] == pytest.approx(100.0)  # fp32 agrees with itself
