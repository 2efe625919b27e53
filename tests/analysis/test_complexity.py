"""Complexity: MACs and params against every published figure, an independent count, peak memory."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mobilecnn import create_model, list_models, profile, published
from mobilecnn.analysis.complexity import count_macs, peak_activation_bytes
from mobilecnn.layers import DepthwiseSeparableConv

PUBLISHED_FIGURES = [
    (name, res) for name in list_models() if published(name) for res in sorted(published(name).macs)
]


@pytest.mark.parametrize("name,res", PUBLISHED_FIGURES)
def test_macs_match_published(name, res):
    pub = published(name)
    macs, _ = count_macs(create_model(name), res)
    assert pub.macs_matches(macs, res), f"{name}@{res}: {macs / 1e6:.2f} M vs published {pub.macs[res]} M"
    if not pub.approximate:
        assert pub.macs_tolerance == 0.015


def test_macs_tolerance_rule():
    from mobilecnn.models import Published

    nearest = Published("t", {224: 100})
    assert nearest.macs_matches(101.9e6) and not nearest.macs_matches(102.1e6)
    floor = Published("t", {224: 11}, macs_rounding="floor")
    assert floor.macs_matches(11.93e6) and not floor.macs_matches(12.2e6) and not floor.macs_matches(10.8e6)


@pytest.mark.parametrize("name", [n for n in list_models() if published(n) and published(n).params])
def test_params_match_published(name):
    p = profile(create_model(name), 64)
    assert published(name).params_matches(p.params, p.params_without_bn), (name, p.params, p.params_without_bn)


def flop_counter_macs(model: nn.Module, res: int) -> int:
    """Independent count: torch's FlopCounterMode (2 FLOPs per MAC) restricted to conv and matmul ops."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, getattr(model, "in_chans", 3), res, res))
    counts = counter.get_flop_counts()["Global"]
    wanted = {"convolution", "addmm", "mm", "_convolution", "bmm"}
    return sum(v for op, v in counts.items() if op.__name__.split(".")[0] in wanted) // 2


@pytest.mark.parametrize("name", list_models())
def test_mac_count_agrees_with_flop_counter(name):
    model = create_model(name)
    assert count_macs(model, 224)[0] == flop_counter_macs(model, 224)
    small = create_model(name, small_input=True)
    assert count_macs(small, 32)[0] == flop_counter_macs(small, 32)


def test_params_with_and_without_bn():
    model = create_model("mobilenet_v2_x1_0")
    p = profile(model)
    bn = sum(m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert p.params == sum(t.numel() for t in model.parameters())
    assert p.params - p.params_without_bn == bn > 0


def test_peak_activation_of_a_chain_is_the_largest_input_output_pair():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                          nn.Conv2d(16, 4, 1))
    res = 16
    sizes = [3 * res * res, 8 * res * res, 16 * (res // 2) ** 2, 4 * (res // 2) ** 2]
    expected = max(a + b for a, b in zip(sizes, sizes[1:])) * 4
    assert peak_activation_bytes(model, res) == expected


def test_peak_activation_counts_the_residual_kept_alive():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 32, 1)
            self.b = nn.Conv2d(32, 4, 1)
            self.in_chans = 4

        def forward(self, x):
            return x + self.b(self.a(x))

    res = 8
    per_channel = res * res * 4
    # while b runs: x (4), a's output (32), b's output (4) are all alive
    assert peak_activation_bytes(Residual(), res) == (4 + 32 + 4) * per_channel


def test_peak_activation_mobilenet_v2_is_dominated_by_the_expanded_block():
    p = profile("mobilenet_v2_x1_0")
    # features.2 expands 16 -> 96 channels at 112x112: its input and expansion alone take 7.7 MB
    assert 16 * 112 * 112 * 4 + 96 * 112 * 112 * 4 <= p.peak_activation_bytes < 16 * 2**20


def test_profile_layers_and_separable_cost():
    p = profile(create_model("mobilenet_v1_x1_0"))
    leaf = [r for r in p.layers if r.kind != "block"]
    assert sum(r.macs for r in leaf) == p.macs
    blocks = [r for r in p.layers if r.kind == "block"]
    assert len(blocks) == 13
    for b in blocks:  # a MobileNet V1 block costs exactly the seed's F^2 D (K^2 + C)
        assert b.separable_conv_macs == b.macs and b.saving > 1
    first = blocks[0]  # 32 -> 64 at 112x112
    assert first.standard_conv_macs == 112 * 112 * 32 * 9 * 64
    assert {r.kind for r in profile(create_model("shufflenet_v1_g3_x1_0"), 224).layers} >= {
        "conv", "pointwise", "group_pointwise", "depthwise", "linear", "block"}


def test_profile_accepts_names_and_rejects_bad_resolution():
    assert profile("mobilenet_v2_x0_35", resolution=32, small_input=True).resolution == 32
    with pytest.raises(ValueError, match="resolution 0 is not accepted: it must be a positive integer <= 2048"):
        profile("mobilenet_v2_x0_35", resolution=0)
    with pytest.raises(ValueError, match="too small"):
        profile("mobilenet_v2_x0_35", resolution=16)
    with pytest.raises(TypeError, match="nn.Module or a registered model name"):
        profile(42)


def test_profile_leaves_training_mode_alone():
    model = create_model("mobilenet_v1_x0_25").train()
    profile(model, 64)
    assert model.training
    assert isinstance(model, nn.Module) and not isinstance(model, DepthwiseSeparableConv)
