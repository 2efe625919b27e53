"""MobileNetV2's Figure 6 ablations as builder options: same parameters, the wiring the figure names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobilecnn import create_model
from mobilecnn.analysis.complexity import count_macs
from mobilecnn.layers import InvertedResidual
from mobilecnn.models.mobilenet_v2 import ExpansionShortcuts
from mobilecnn.models.weights_file import model_metadata, save_weights

NAME = "mobilenet_v2_x0_35"
VARIANTS = [dict(), dict(linear_bottleneck=False), dict(shortcut="expansion"), dict(shortcut="none")]


def _small(**kw) -> nn.Module:
    return create_model(NAME, num_classes=10, in_chans=1, small_input=True, **kw).eval()


def test_every_variant_has_the_published_parameters_and_macs():
    base = _small()
    shapes = {k: v.shape for k, v in base.state_dict().items()}
    for kw in VARIANTS[1:]:
        model = _small(**kw)
        assert {k: v.shape for k, v in model.state_dict().items()} == shapes, kw
        assert count_macs(model, 32)[0] == count_macs(base, 32)[0], kw


def test_relu6_after_the_projection_only_when_asked():
    seen = {}
    for kw in (dict(), dict(linear_bottleneck=False)):
        model = _small(**kw)
        for bn in model.modules():  # init_weights zeroes the last BN of residual blocks
            if isinstance(bn, nn.BatchNorm2d):
                nn.init.ones_(bn.weight)
        projection = model.features[3].block[-1]
        projection.register_forward_hook(lambda m, i, o, key=str(kw): seen.__setitem__(key, o))
        with torch.no_grad():
            model(torch.randn(2, 1, 32, 32))
    assert float(seen[str({})].min()) < 0
    relu = seen[str(dict(linear_bottleneck=False))]
    assert float(relu.min()) >= 0 and float(relu.max()) <= 6


def _stage(model: nn.Module, first: int, count: int) -> list[InvertedResidual]:
    return [model.features[i] for i in range(first, first + count)]


def test_expansion_shortcut_joins_the_expanded_tensors_of_consecutive_blocks():
    torch.manual_seed(0)
    model = _small(shortcut="expansion")
    assert isinstance(model.features, ExpansionShortcuts)
    b1, b2, b3 = _stage(model, 4, 3)  # Table 2's row (6, 32, 3, 2): a stride-2 block, then two of width 32
    assert b1.stride == 2 and not any(b.use_residual for b in (b1, b2, b3))
    x = torch.randn(2, b1.in_channels, 16, 16)
    with torch.no_grad():
        h1 = b1.block[0](x)
        y1 = b1.block[2](b1.block[1](h1))
        h2 = b2.block[0](y1)  # block 1 strides: nothing carried over
        y2 = b2.block[2](b2.block[1](h2))
        h3 = b3.block[0](y2) + h2  # the residual between the expansions of blocks 2 and 3
        y3 = b3.block[2](b3.block[1](h3))
        got = ExpansionShortcuts(b1, b2, b3)(x)
    torch.testing.assert_close(got, y3)


def test_no_shortcut_is_the_plain_chain_and_differs_from_the_paper():
    torch.manual_seed(0)
    paper, none = _small(), _small(shortcut="none")
    none.load_state_dict(paper.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        chain = x
        for layer in none.features:
            chain = layer.block(chain) if isinstance(layer, InvertedResidual) else layer(chain)
        torch.testing.assert_close(none.features(x), chain)
        assert not torch.allclose(paper.features(x), chain)


@pytest.mark.parametrize("kw", VARIANTS[1:])
def test_variant_round_trips_through_weights_metadata_and_onnx(tmp_path, kw):
    from mobilecnn.deploy.export import ExportConfig, ExportImages, export_model

    model = _small(**kw)
    path = save_weights(tmp_path / "w.safetensors", model.state_dict(), model_metadata(model))
    again = create_model(NAME, weights=path).eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    report = export_model(again, tmp_path / "m.onnx", ExportImages(x[:1], x), ExportConfig("onnx"))
    assert report.rel_diff < 1e-4


def test_bad_ablation_values_are_refused_in_one_line():
    with pytest.raises(ValueError, match="shortcut .*bottleneck, expansion, none"):
        create_model(NAME, shortcut="sideways")
    with pytest.raises(ValueError, match="linear_bottleneck"):
        create_model(NAME, linear_bottleneck="yes")
    with pytest.raises(ValueError, match="not taps"):
        create_model(NAME, shortcut="expansion", features_only=True)
