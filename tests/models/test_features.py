"""Backbone taps: features_only / out_indices / output_stride (timm's convention), TF-slim's dilation rule,
classification weights in a backbone."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilecnn import create_model
from mobilecnn.errors import UsageError
from mobilecnn.layers import ConvBNAct, InvertedResidual, ShuffleNetUnit
from mobilecnn.layers.blocks import DilatedAvgPool3x3
from mobilecnn.models import FeatureNet

RES = 224

#: (model, output stride) -> (channels, reduction) of every tap, stage taps first.
EXPECTED = {
    ("mobilenet_v2_x1_0", 32): [(16, 2), (24, 4), (32, 8), (96, 16), (320, 32), (576, 16), (1280, 32)],
    ("mobilenet_v2_x1_0", 16): [(16, 2), (24, 4), (32, 8), (96, 16), (320, 16), (576, 16), (1280, 16)],
    ("mobilenet_v2_x1_0", 8): [(16, 2), (24, 4), (32, 8), (96, 8), (320, 8), (576, 8), (1280, 8)],
    ("mobilenet_v1_x0_25", 32): [(16, 2), (32, 4), (64, 8), (128, 16), (256, 32)],
    ("mobilenet_v1_x0_25", 16): [(16, 2), (32, 4), (64, 8), (128, 16), (256, 16)],
    ("mobilenet_v1_x0_25", 8): [(16, 2), (32, 4), (64, 8), (128, 8), (256, 8)],
    ("shufflenet_v1_g3_x0_5", 32): [(12, 2), (12, 4), (120, 8), (240, 16), (480, 32)],
    ("shufflenet_v1_g3_x0_5", 16): [(12, 2), (12, 4), (120, 8), (240, 16), (480, 16)],
    ("shufflenet_v1_g8_x0_5", 8): [(16, 2), (16, 4), (192, 8), (384, 8), (768, 8)],
}


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (zero-init residual BNs would hide a wrong branch)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


@pytest.mark.parametrize("name,output_stride", sorted(EXPECTED))
def test_every_tap_has_its_channels_and_stride(name, output_stride):
    every = list(range(len(EXPECTED[(name, output_stride)])))
    net = create_model(name, features_only=True, out_indices=every, output_stride=output_stride).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, RES, RES))
    got = [(o.shape[1], RES // o.shape[-1]) for o in outs]
    assert got == EXPECTED[(name, output_stride)]
    assert list(zip(net.feature_info.channels(), net.feature_info.reduction())) == got
    assert all(o.shape[-2:] == (RES // r, RES // r) for o, (_, r) in zip(outs, got))


def test_default_out_indices_are_the_stage_outputs_like_timm():
    net = create_model("mobilenet_v2_x1_0", features_only=True)
    assert net.feature_info.channels() == [16, 24, 32, 96, 320]
    assert net.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert net.feature_info.module_name() == ["features.1", "features.3", "features.6", "features.13", "features.17"]
    assert len(net.features) == 18  # cut after the last tap: no 1280 conv, no pool, no classifier
    assert net.feature_info.get_dicts(keys=("num_chs", "reduction"))[0] == {"num_chs": 16, "reduction": 2}


def test_mobilenet_v2_detection_taps():
    """TF's layer_15/expansion_output (576 ch, stride 16) and layer_19 (1280 ch), by name or index."""
    net = create_model("mobilenet_v2_x1_0", features_only=True, out_indices=["features.14.block.0", -1]).eval()
    assert net.feature_info.channels() == [576, 1280] and net.feature_info.reduction() == [16, 32]
    with torch.no_grad():
        expansion, last = net(torch.randn(1, 3, RES, RES))
    assert expansion.shape == (1, 576, 14, 14) and last.shape == (1, 1280, 7, 7)


def test_out_indices_order_is_kept_and_wrong_ones_are_named():
    net = create_model("mobilenet_v1_x0_25", features_only=True, out_indices=(4, 1))
    assert net.feature_info.reduction() == [32, 4]
    with pytest.raises(ValueError, match="out_indices entry 9 is not a tap; taps: 0: features.1"):
        create_model("mobilenet_v1_x0_25", features_only=True, out_indices=[9])
    with pytest.raises(TypeError, match="out_indices needs features_only"):
        create_model("mobilenet_v1_x0_25", out_indices=[1])
    with pytest.raises(UsageError, match="output_stride 4 is not accepted"):
        create_model("mobilenet_v1_x0_25", output_stride=4)
    with pytest.raises(TypeError, match="classifiers only"):
        create_model("deeplabv3_mobilenet_v1_x0_25", features_only=True)


def _depthwise(block: nn.Module) -> nn.Conv2d:
    if isinstance(block, InvertedResidual):
        return block.block[-2].conv
    return block.depthwise.conv


def _rates(model, indices):
    return [(_depthwise(model.features[i]).stride[0], _depthwise(model.features[i]).dilation[0]) for i in indices]


def test_mobilenet_v2_dilation_rule():
    """TF-slim: the unit whose stride is removed keeps the previous rate; the units after it multiply it."""
    model = create_model("mobilenet_v2_x1_0", output_stride=16)
    # 7: first 64-channel block (stride 2, kept); 14: first 160-channel block (stride removed, rate 1)
    assert _rates(model, [7, 13, 14, 15, 16, 17]) == [(2, 1), (1, 1), (1, 1), (1, 2), (1, 2), (1, 2)]
    model.set_output_stride(8)
    assert _rates(model, [4, 7, 8, 13, 14, 15, 17]) == [(2, 1), (1, 1), (1, 2), (1, 2), (1, 2), (1, 4), (1, 4)]
    assert model.features[-1].conv.dilation == (1, 1)  # a 1x1 conv is never dilated
    model.set_output_stride(32)  # back to the classifier
    assert all(d == 1 for _, d in _rates(model, range(1, 18))) and _rates(model, [14])[0] == (2, 1)


def test_mobilenet_v1_dilation_rule():
    model = create_model("mobilenet_v1_x0_25", output_stride=16)
    assert _rates(model, [6, 11, 12, 13]) == [(2, 1), (1, 1), (1, 1), (1, 2)]
    model.set_output_stride(8)
    assert _rates(model, [4, 6, 7, 11, 12, 13]) == [(2, 1), (1, 1), (1, 2), (1, 2), (1, 2), (1, 4)]


def test_shufflenet_dilation_rule_and_concat_units_at_stride_1():
    model = create_model("shufflenet_v1_g3_x0_5", output_stride=16)
    stage3, stage4 = model.features[3], model.features[4]
    unit = stage4[0]
    assert unit.concat and unit.stride == 1 and unit.depthwise.conv.dilation == (1, 1)
    assert isinstance(unit.shortcut, nn.AvgPool2d) and (unit.shortcut.stride, unit.shortcut.padding) == (1, 1)
    assert [u.depthwise.conv.dilation[0] for u in stage4[1:]] == [2, 2, 2] and stage3[0].stride == 2
    model.set_output_stride(8)
    assert stage3[0].stride == 1 and stage3[0].depthwise.conv.dilation == (1, 1)
    assert [u.depthwise.conv.dilation[0] for u in stage3[1:]] == [2] * 7
    assert stage4[0].depthwise.conv.dilation == (2, 2) and isinstance(stage4[0].shortcut, DilatedAvgPool3x3)
    assert stage4[0].shortcut.dilation == 2 and [u.depthwise.conv.dilation[0] for u in stage4[1:]] == [4, 4, 4]
    model.set_output_stride(32)
    assert all(u.stride == 2 for u in (stage3[0], stage4[0])) and stage4[0].shortcut.stride == 2


def test_dilated_avg_pool_is_a_dilated_3x3_mean_with_zero_padding():
    x = torch.randn(2, 5, 11, 9)
    for d in (1, 2, 3):
        ref = F.conv2d(x, torch.full((5, 1, 3, 3), 1 / 9), padding=d, dilation=d, groups=5)
        torch.testing.assert_close(DilatedAvgPool3x3(d)(x), ref)
    torch.testing.assert_close(DilatedAvgPool3x3(1)(x), F.avg_pool2d(x, 3, 1, 1))


@pytest.mark.parametrize("name", ["mobilenet_v2_x0_35", "mobilenet_v1_x0_25", "shufflenet_v1_g3_x0_5"])
def test_classifier_weights_load_into_its_backbone_and_give_its_features(name):
    classifier = _randomize_bn(create_model(name))
    backbone = create_model(name, features_only=True, out_indices=list(range(5))).eval()
    missing, unexpected = backbone.load_state_dict(classifier.state_dict(), strict=False)
    assert missing == [] and all(k.startswith(("classifier.", "features.18.")) for k in unexpected)
    assert isinstance(backbone, FeatureNet) and backbone.output_stride == 32
    x = torch.randn(2, 3, RES, RES)
    with torch.no_grad():
        outs = backbone(x)
        for out, module in zip(outs, backbone.feature_info.module_name()):
            upto = int(module.split(".")[1])
            torch.testing.assert_close(out, classifier.features[:upto + 1](x))
        if name.startswith("mobilenet_v1") or name.startswith("shufflenet"):
            torch.testing.assert_close(outs[-1], classifier.forward_features(x))


def test_weights_file_initialises_a_backbone(tmp_path):
    from mobilecnn.models.weights_file import model_metadata, save_weights

    classifier = _randomize_bn(create_model("mobilenet_v2_x0_35"))
    path = save_weights(tmp_path / "w.safetensors", classifier.state_dict(), model_metadata(classifier))
    net = create_model("mobilenet_v2_x0_35", weights=path, features_only=True, output_stride=16).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))[-1]
    assert out.shape == (1, 112, 4, 4) and torch.equal(net.features[3].block[0].conv.weight,
                                                       classifier.features[3].block[0].conv.weight)


@pytest.mark.parametrize("name", ["mobilenet_v2_x0_35", "mobilenet_v1_x0_25", "shufflenet_v1_g3_x0_5",
                                  "shufflenet_v1_g8_x0_5"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_backbone_at_every_kth_position_equals_the_strided_one(name, output_stride):
    """The a-trous identity: the dense map sampled every 32/OS pixels is the classifier's own (exact with
    symmetric padding), so the rates are the right ones at every unit (a wrong rate or pool breaks it)."""
    strided = _randomize_bn(create_model(name, features_only=True))
    dense = create_model(name, features_only=True, output_stride=output_stride).eval()
    dense.load_state_dict(strided.state_dict())
    x = torch.randn(1, 3, RES, RES)
    with torch.no_grad():
        for a, b, r in zip(strided(x), dense(x), strided.feature_info.reduction()):
            k = r // min(r, output_stride)
            torch.testing.assert_close(b[..., ::k, ::k], a, rtol=1e-4, atol=1e-4)


def test_small_input_backbone_cannot_go_past_its_own_stride():
    net = create_model("mobilenet_v2_x0_35", small_input=True, features_only=True, output_stride=16)
    assert net.output_stride == 8 and net.feature_info.reduction() == [1, 1, 2, 4, 8]


def test_conv_bn_act_restride_checks():
    conv = ConvBNAct(4, 4, 3, stride=2, groups=4, padding="tf_same")
    conv.set_stride_dilation(1, 2)
    assert conv.tf_same is None and conv.conv.padding == (2, 2) and conv.dilation == 2
    conv.set_stride_dilation(2, 1)
    assert conv.tf_same == (3, 2) and conv.conv.padding == (0, 0)
    unit = ShuffleNetUnit(24, 240, stride=2, groups=3, group_first_pointwise=False)
    with pytest.raises(ValueError, match="built with stride 1, it can run at stride 1 only, not 2"):
        InvertedResidual(8, 8, 1, 6).set_stride_dilation(2, 1)
    unit.set_stride_dilation(1, 1)
    assert unit(torch.randn(1, 24, 9, 9)).shape == (1, 240, 9, 9)
