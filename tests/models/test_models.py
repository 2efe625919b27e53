"""Every model builds, runs, and rejects impossible arguments and inputs with clear errors."""

import pytest
import torch
from torch import nn

from mobilecnn import create_model, list_models
from mobilecnn.layers import ChannelShuffle, InvertedResidual, ShuffleNetUnit
from mobilecnn.models import MobileNetV1, MobileNetV2, ShuffleNetV1, shufflenet_v1_channels
from mobilecnn.models.shufflenet_v1 import RELEASED_CHANNELS


@pytest.mark.parametrize("name", list_models(task="classification"))
def test_builds_and_runs_at_224_and_small_input_32(name):
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
        small = create_model(name, num_classes=7, in_chans=1, small_input=True).eval()
        out = small(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x1_0", "mobilenet_v2_x1_0", "mobilenet_v1_x1_0"])
def test_small_input_keeps_last_feature_map_at_least_2x2(name):
    for res in (28, 32, 64):
        model = create_model(name, small_input=True).eval()
        with torch.no_grad():
            feats = model.forward_features(torch.randn(1, 3, res, res))
        assert min(feats.shape[-2:]) >= 2, (res, feats.shape)


def test_released_channel_lists_follow_the_documented_rule():
    for (g, s), channels in RELEASED_CHANNELS.items():
        ShuffleNetV1.__init__  # the released lists are used verbatim; the rule must reproduce them
        from mobilecnn.models import shufflenet_v1 as mod

        saved = dict(mod.RELEASED_CHANNELS)
        try:
            mod.RELEASED_CHANNELS.clear()
            assert shufflenet_v1_channels(g, s) == channels
        finally:
            mod.RELEASED_CHANNELS.update(saved)


@pytest.mark.parametrize("g", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("s", [0.25, 0.5, 1.0, 1.5, 2.0])
def test_every_shufflenet_group_conv_divides_evenly(g, s):
    model = create_model(f"shufflenet_v1_g{g}_x{str(s).replace('.', '_')}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0


def test_shufflenet_structure():
    model = create_model("shufflenet_v1_g3_x1_0")
    units = [m for m in model.modules() if isinstance(m, ShuffleNetUnit)]
    assert len(units) == 16 and [u.stride for u in units].count(2) == 3
    assert units[0].compress.conv.groups == 1 and all(u.compress.conv.groups == 3 for u in units[1:])
    assert isinstance(model.features[1], nn.MaxPool2d)
    small = create_model("shufflenet_v1_g3_x1_0", small_input=True)
    assert small.features[0].conv.stride == (1, 1) and not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
    assert not any(isinstance(m, ChannelShuffle) for m in create_model("shufflenet_v1_g8_x1_0", shuffle=False).modules())
    assert model.classifier.bias is not None


def test_table5_variants():
    arch2 = create_model("shufflenet_v1_g8_x0_5_arch2")
    assert [len(s) for s in arch2.features[2:]] == [4, 6, 4] and arch2.channels == (16, 224, 416, 832)
    shallow = create_model("shufflenet_v1_g3_x0_5_shallow")
    assert [len(s) for s in shallow.features[2:]] == [2, 4, 2] and shallow.groups == 3


def test_mobilenet_v2_structure():
    model = create_model("mobilenet_v2_x1_0")
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 17 and sum(b.use_residual for b in blocks) == 10
    assert model.features[-1].conv.out_channels == 1280
    assert create_model("mobilenet_v2_x0_5").features[-1].conv.out_channels == 1280  # not reduced below 1
    assert create_model("mobilenet_v2_x1_4").features[-1].conv.out_channels == 1792
    small = create_model("mobilenet_v2_x1_0", small_input=True)
    strides = [b.stride for b in blocks]
    small_strides = [b.stride for b in small.modules() if isinstance(b, InvertedResidual)]
    assert strides.count(2) == 4 and small_strides.count(2) == 3 and small.features[0].conv.stride == (1, 1)
    assert isinstance(model.classifier[0], nn.Dropout) and model.classifier[0].p == 0.2


def test_mobilenet_v1_width():
    model = create_model("mobilenet_v1_x0_75")
    assert model.features[0].conv.out_channels == 24 and model.num_features == 768


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: create_model("mobilenet_v2_x1_0", num_classes=0), "num_classes 0 is not accepted: it must be a positive integer <= 100000"),
        (lambda: create_model("mobilenet_v1_x1_0", in_chans=0), "in_chans 0 is not accepted: it must be a positive integer <= 4096"),
        (lambda: create_model("shufflenet_v1_g3_x1_0", num_classes=2.5), "num_classes"),
        (lambda: MobileNetV2(width_mult=0), "width_mult 0 is not accepted: it must be a number > 0"),
        (lambda: MobileNetV1(alpha=-1), "alpha -1 is not accepted: it must be a number > 0"),
        (lambda: shufflenet_v1_channels(3, 0), "scale 0 is not accepted: it must be a number > 0"),
        (lambda: shufflenet_v1_channels(5, 1.0), r"groups must be one of \[1, 2, 3, 4, 8\]"),
        (lambda: ShuffleNetV1((24, 240, 480, 960), groups=8), "groups=8 does not divide stage 2"),
        (lambda: create_model("mobilenet_v2_x1_0", dropout=1.5), r"dropout 1.5 is not accepted: it must be a number in \[0, 1\)"),
        (lambda: create_model("shufflenet_v1_g3_x1_0", small_input="yes"), "small_input 'yes' is not accepted: it must be True or False"),
    ],
)
def test_impossible_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_forward_input_errors_are_clear():
    model = create_model("shufflenet_v1_g3_x0_5").eval()
    with pytest.raises(ValueError, match=r"expected 3 input channel\(s\).*got 1"):
        model(torch.randn(1, 1, 224, 224))
    with pytest.raises(ValueError, match="too small.*at least 32.*small_input=True"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="4-D batch"):
        model(torch.randn(3, 224, 224))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    small = create_model("mobilenet_v2_x0_5", small_input=True).eval()
    with pytest.raises(ValueError, match="at least 8"):
        small(torch.randn(1, 3, 4, 4))


def test_reset_classifier():
    model = create_model("mobilenet_v2_x0_35")
    model.reset_classifier(5)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
