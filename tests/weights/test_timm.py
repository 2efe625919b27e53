"""timm MobileNets with random weights, saved as .pth: the variants that are our architecture import
exactly (mobilenetv1_100 with act='relu6'); the others are refused with a message saying why."""

from __future__ import annotations

import pytest
import torch

from mobilecnn import create_model
from mobilecnn.errors import CheckpointError
from mobilecnn.weights import convert_file

EXACT = {"mobilenetv2_050": "mobilenet_v2_x0_5", "mobilenetv2_140": "mobilenet_v2_x1_4",
         "mobilenetv1_100": "mobilenet_v1_x1_0"}


@pytest.mark.parametrize("variant", list(EXACT))
def test_timm_exact(variant, tmp_path, wt):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    x8 = wt.photos(224)
    cfg = timm.create_model(variant, pretrained=False).pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x_timm = (x8.float() / 255 - mean) / std  # timm's own normalisation for this variant
    tm = wt.randomize_bn_(timm.create_model(variant, pretrained=False), x_timm).eval()
    torch.save(tm.state_dict(), tmp_path / "timm.pth")
    out = tmp_path / "w.safetensors"
    side = wt.import_file(tmp_path / "timm.pth", "timm", out, "--variant", variant)
    assert side["model"] == EXACT[variant]
    assert side["data"]["preprocessing"]["mean"] == pytest.approx(list(cfg["mean"]))
    with torch.no_grad():
        ref = tm(x_timm).numpy()
    ours = create_model(EXACT[variant], weights=out)
    assert wt.rel_diff(wt.logits(ours, wt.ours_input(out, x8)), ref) <= wt.TOL
    if variant.startswith("mobilenetv1"):
        assert side["model_kwargs"] == {"act": "relu6"}
        plain = create_model(EXACT[variant])  # the paper's ReLU: the same tensors are another function
        plain.load_state_dict(ours.state_dict())
        assert wt.rel_diff(wt.logits(plain, wt.ours_input(out, x8)), ref) > wt.TOL


@pytest.mark.parametrize("variant,closest", [("mobilenetv2_110d", "mobilenet_v2"), ("mobilenetv1_100h", None)])
def test_timm_other_architectures_refused(variant, closest, tmp_path):
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model(variant, pretrained=False).state_dict(), tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match=variant):
        convert_file(tmp_path / "t.pth", "timm", variant=variant)
    with pytest.raises(CheckpointError) as info:  # without the name: the shapes (or the extra head) refuse it
        convert_file(tmp_path / "t.pth", "timm")
    if closest:
        assert f"closest: {closest}" in str(info.value) and "first mismatch" in str(info.value)
