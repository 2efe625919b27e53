"""Building blocks: channel shuffle semantics, conv blocks, inverted residual, ShuffleNet unit."""

import numpy as np
import pytest
import torch
from torch import nn

from mobilecnn.layers import (
    ChannelShuffle,
    ConvBNAct,
    DepthwiseSeparableConv,
    InvertedResidual,
    ShuffleNetUnit,
    channel_shuffle,
    group_pointwise_conv,
    make_divisible,
)
from mobilecnn.layers.shuffle import shuffle_traced_as_gather


def seed_shuffle_nhwc(x: np.ndarray, g: int) -> np.ndarray:
    """NumPy transcription of the seed's NHWC reference code (SPEC.md)."""
    n, h, w, c = x.shape
    x = np.reshape(x, [-1, h, w, g, c // g])
    x = np.transpose(x, [0, 1, 2, 4, 3])
    return np.reshape(x, [-1, h, w, c])


@pytest.mark.parametrize("groups,channels", [(2, 8), (3, 12), (4, 16), (8, 48), (3, 240)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_shuffle_matches_seed_reference(groups, channels, channels_last):
    x = torch.randn(2, channels, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = channel_shuffle(x, groups)
    expected = seed_shuffle_nhwc(x.permute(0, 2, 3, 1).numpy(), groups).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(out.numpy(), expected)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_channel_shuffle_index_formula():
    g, n = 3, 4
    x = torch.arange(g * n, dtype=torch.float32).view(1, g * n, 1, 1)
    out = channel_shuffle(x, g).flatten().tolist()
    for i in range(n):
        for j in range(g):
            assert out[i * g + j] == j * n + i


def test_channel_shuffle_identity_and_errors():
    x = torch.randn(1, 6, 2, 2)
    assert channel_shuffle(x, 1) is x
    with pytest.raises(ValueError, match="divide the 6 channels"):
        channel_shuffle(x, 4)
    with pytest.raises(ValueError, match="4-D"):
        channel_shuffle(torch.randn(6, 2, 2), 3)
    with pytest.raises(ValueError, match="positive integer"):
        ChannelShuffle(0)


def test_shuffle_traced_as_gather_is_the_same_permutation_and_only_while_tracing():
    x = torch.randn(2, 12, 3, 5)
    shuffle = ChannelShuffle(3)
    with shuffle_traced_as_gather():
        traced = torch.jit.trace(shuffle, (x,), check_trace=False)
        eager = shuffle(x)  # not tracing: the eager path, unchanged
    plain = torch.jit.trace(shuffle, (x,), check_trace=False)
    assert "aten::index_select" in str(traced.graph) and "aten::transpose" not in str(traced.graph)
    assert "aten::index_select" not in str(plain.graph)
    other = torch.randn(4, 12, 3, 5)
    np.testing.assert_array_equal(traced(other).numpy(), channel_shuffle(other, 3).numpy())
    np.testing.assert_array_equal(eager.numpy(), channel_shuffle(x, 3).numpy())


def test_shuffle_of_shuffle_mixes_groups():
    """After a shuffle every group of the next group conv sees channels of every previous group."""
    g, n = 3, 6
    x = torch.arange(g * n, dtype=torch.float32).view(1, g * n, 1, 1)
    out = channel_shuffle(x, g).flatten()
    for group in out.view(g, n):
        assert {int(c) // n for c in group} == set(range(g))


def test_make_divisible_matches_tf_slim_rule():
    assert make_divisible(32 * 0.35) == 16
    assert make_divisible(16 * 0.35) == 8
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(24 * 0.75) == 24  # 18 -> 16 is below 0.9 * 18 -> 24
    assert make_divisible(96) == 96


def test_conv_bn_act_layout_and_errors():
    block = ConvBNAct(8, 16, 3, stride=2, groups=4, act=nn.ReLU6)
    assert [n for n, _ in block.named_children()] == ["conv", "bn", "act"]
    assert block.conv.padding == (1, 1) and block.conv.bias is None
    assert block(torch.randn(1, 8, 9, 9)).shape == (1, 16, 5, 5)
    assert not hasattr(ConvBNAct(8, 8, 1, act=None), "act")
    with pytest.raises(ValueError, match="groups=3 must divide"):
        ConvBNAct(8, 16, groups=3)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        ConvBNAct(8, 16, stride=3)
    with pytest.raises(ValueError, match="in_channels 0 is not accepted: it must be a positive integer"):
        ConvBNAct(0, 16)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        group_pointwise_conv(8, 12, 3)


def test_depthwise_separable_conv():
    block = DepthwiseSeparableConv(16, 32, stride=2)
    assert block.depthwise.conv.groups == 16 and block.pointwise.conv.kernel_size == (1, 1)
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)


def test_inverted_residual_structure():
    t1 = InvertedResidual(32, 16, 1, expand_ratio=1)
    convs = [m for m in t1.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and convs[0].groups == 32  # no expansion conv when t = 1
    t6 = InvertedResidual(24, 24, 1, expand_ratio=6)
    convs = [m for m in t6.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [144, 144, 24]
    assert t6.use_residual
    assert not hasattr(t6.block[-1], "act")  # linear bottleneck
    assert not InvertedResidual(24, 24, 2, 6).use_residual
    assert not InvertedResidual(24, 32, 1, 6).use_residual


def test_inverted_residual_adds_input_only_when_allowed():
    block = InvertedResidual(8, 8, 1, 6).eval()
    nn.init.zeros_(block.block[-1].bn.weight)  # branch outputs exactly zero
    x = torch.randn(1, 8, 6, 6)
    torch.testing.assert_close(block(x), x)
    block2 = InvertedResidual(8, 8, 2, 6).eval()
    nn.init.zeros_(block2.block[-1].bn.weight)
    assert block2(x).abs().max() == 0


def test_shufflenet_unit_stride1_adds_and_relus():
    unit = ShuffleNetUnit(48, 48, stride=1, groups=3).eval()
    nn.init.zeros_(unit.expand.bn.weight)
    x = torch.randn(1, 48, 6, 6)
    torch.testing.assert_close(unit(x), torch.relu(x))
    assert isinstance(unit.shuffle, ChannelShuffle)
    assert unit.compress.conv.groups == 3 and unit.expand.conv.groups == 3
    assert unit.compress.conv.out_channels == 12  # bottleneck = out / 4


def test_shufflenet_unit_stride2_concatenates_pooled_input():
    unit = ShuffleNetUnit(24, 240, stride=2, groups=3, group_first_pointwise=False).eval()
    x = torch.randn(1, 24, 8, 8)
    out = unit(x)
    assert out.shape == (1, 240, 4, 4)
    torch.testing.assert_close(out[:, :24], nn.functional.avg_pool2d(x, 3, 2, 1))
    assert (out[:, 24:] >= 0).all()
    assert unit.compress.conv.groups == 1 and unit.expand.conv.out_channels == 216


def test_shufflenet_unit_without_shuffle_and_errors():
    unit = ShuffleNetUnit(48, 48, 1, 3, shuffle=False)
    assert not any(isinstance(m, ChannelShuffle) for m in unit.modules())
    with pytest.raises(ValueError, match="must equal"):
        ShuffleNetUnit(24, 48, 1, 3)
    with pytest.raises(ValueError, match="groups=8 does not divide the bottleneck"):
        ShuffleNetUnit(48, 48, 1, 8)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        ShuffleNetUnit(48, 48, 3, 3)


def test_shufflenet_unit_channels_last_matches_nchw():
    unit = ShuffleNetUnit(48, 96, 2, 3).eval()
    x = torch.randn(2, 48, 8, 8)
    ref = unit(x)
    out = unit.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride,cin", [(1, 48), (2, 24)])
@pytest.mark.parametrize("dynamo", [False, True])
def test_shufflenet_unit_onnx_matches_onnxruntime(tmp_path, stride, cin, dynamo):
    ort = pytest.importorskip("onnxruntime")
    unit = ShuffleNetUnit(cin, 48, stride, 3).eval()
    x = torch.randn(2, cin, 8, 8)
    path = tmp_path / "unit.onnx"
    if dynamo:
        torch.onnx.export(unit, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}}, verbose=False)
    else:
        torch.onnx.export(unit, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                          dynamic_axes={"x": {0: "batch"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (2, 3):
        xb = torch.randn(batch, cin, 8, 8)
        (out,) = sess.run(None, {"x": xb.numpy()})
        np.testing.assert_allclose(out, unit(xb).detach().numpy(), rtol=1e-4, atol=1e-5)
