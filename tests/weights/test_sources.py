"""Safe loading, model-name inference, the one-line error for a file that fits no model, tf_same padding."""

from __future__ import annotations

import pickle

import pytest
import torch

from mobilecnn import create_model, list_models
from mobilecnn.errors import CheckpointError, UsageError
from mobilecnn.weights import convert_file, infer_model_name, load_weights_file


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_malicious_pickle_refused_never_run(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.pth"
    raw.write_bytes(pickle.dumps({"state_dict": {"w": _Evil(str(marker))}}))
    tar = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"w": _Evil(str(marker))}}, tar)
    for path in (raw, tar):
        with pytest.raises(CheckpointError, match="refused"):
            load_weights_file(path)
        with pytest.raises(CheckpointError, match="refused"):
            convert_file(path, "megvii")
    assert not marker.exists()


def test_unsupported_suffix_refused(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UsageError, match="unsupported file type"):
        load_weights_file(path)


def test_safetensors_source_and_guess(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    path = tmp_path / "mnv2.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.mobilenet_v2(width_mult=0.5).state_dict().items()},
              str(path))
    conv = convert_file(path)  # source guessed from the keys
    assert conv.source == "torchvision" and conv.model_name == "mobilenet_v2_x0_5"


def test_infer_every_registered_model():
    for name in list_models():
        with torch.device("meta"):
            sd = create_model(name).state_dict()
        assert infer_model_name(sd) == name


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_no_fit_names_closest_and_first_mismatch(tmp_path, capsys):
    """A torchvision file of a width we do not register: a one-line error naming the closest model."""
    torchvision = pytest.importorskip("torchvision")
    from mobilecnn.cli import main

    torch.save(torchvision.models.mobilenet_v2(width_mult=0.6).state_dict(), tmp_path / "w06.pth")
    code = main(["weights", "import", str(tmp_path / "w06.pth"), "--from", "torchvision", "--out",
                 str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    # width 0.6 rounds its stem like 0.75 (24 channels) and parts at the second block
    assert "closest: mobilenet_v2_x0_75 (first mismatch: features.2.block.2.conv.weight: file (16, 96, 1, 1)" in err
    assert not (tmp_path / "o.safetensors").exists()
    with pytest.raises(CheckpointError, match=r"does not fit mobilenet_v2_x1_0 \(first mismatch: features\.0"):
        convert_file(tmp_path / "w06.pth", "torchvision", model="mobilenet_v2_x1_0")


def test_tf_same_padding_matches_timm_conv2d_same():
    """padding='tf_same' equals timm's Conv2dSame (TF 'SAME') on even and odd sides; keys unchanged."""
    timm_layers = pytest.importorskip("timm.layers")
    from mobilecnn.layers import ConvBNAct

    ours = ConvBNAct(3, 4, 3, stride=2, padding="tf_same", act=None).eval()
    ref = timm_layers.Conv2dSame(3, 4, 3, stride=2, bias=False)
    ref.weight.data.copy_(ours.conv.weight.data)
    assert list(ours.state_dict()) == list(ConvBNAct(3, 4, 3, stride=2, act=None).state_dict())
    for side in (7, 8, 9, 32):
        x = torch.randn(2, 3, side, side)
        with torch.no_grad():
            assert torch.allclose(ours.conv(torch.nn.functional.pad(x, _pads(side))), ref(x), atol=1e-6)
            assert torch.allclose(ours(x), ours.bn(ref(x)), atol=1e-5)


def _pads(side):
    total = max((-(-side // 2) - 1) * 2 + 3 - side, 0)
    return [total // 2, total - total // 2] * 2


def test_tf_same_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mobilecnn.deploy.export import ExportConfig, ExportImages, export_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v1_x0_25", num_classes=10, act="relu6", padding="tf_same", bn_eps=1e-3).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    verify = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    report = export_model(model, tmp_path / "m.onnx", ExportImages(verify[:1], verify), ExportConfig("onnx", rtol=1e-4))
    assert report.rel_diff <= 1e-4 and report.top1_agreement == 1.0
