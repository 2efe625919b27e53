"""models/ssd.py: SSD and SSDLite (MobileNetV2 section 6.2): names, layout, output order, sizes and anchors, the
counts of Tables 5 and 6, backbone initialisation from a classification checkpoint, argument errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from mobilecnn import create_model, get_model_entry, list_models
from mobilecnn.analysis.complexity import count_macs, profile
from mobilecnn.analysis.tables import DETECTION_HEAD, detection_row, tables_markdown
from mobilecnn.errors import CheckpointError, UsageError
from mobilecnn.layers import InvertedResidual
from mobilecnn.models import SSD, MobileNetV2, load_backbone_weights, published_detection
from mobilecnn.models.ssd import TABLE5, TABLE6, Predictor, _flatten
from mobilecnn.models.ssd_boxes import AnchorSpec, boxes_per_cell, grid_anchors
from mobilecnn.models.weights_file import model_metadata, save_weights

NAMES = ([f"ssdlite_mobilenet_v2_x{w}" for w in ("0_35", "0_5", "0_75", "1_0", "1_4")]
         + [f"ssdlite_mobilenet_v1_x{w}" for w in ("0_25", "0_5", "0_75", "1_0")]
         + ["ssd_mobilenet_v2_x1_0", "ssdlite_shufflenet_v1_g3_x1_0", "ssdlite_shufflenet_v1_g3_x2_0"])
#: name -> (params with BN, MAdds of the whole network; params, MAdds of the extra layers + predictors) at 320
#: px with 81 classes: the reconstruction SPEC.md quotes (4.34M / 0.789B, 5.10M / 1.309B, 17.00M / 1.870B with
#: heads 14.78M / 1.259B, SSDLite heads 2.11M / 0.178B).
COUNTED = {
    "ssdlite_mobilenet_v2_x1_0": (4_337_013, 788_830_144, 2_113_141, 177_617_344),
    "ssdlite_mobilenet_v1_x1_0": (5_100_661, 1_309_162_944, 1_893_685, 150_558_144),
    "ssd_mobilenet_v2_x1_0": (17_000_501, 1_870_281_472, 14_776_629, 1_259_068_672),
}


def _build(name: str, **kwargs: Any) -> SSD:
    model = create_model(name, **kwargs)
    assert isinstance(model, SSD)
    return model


def _maps(model: SSD, x: torch.Tensor) -> list[torch.Tensor]:
    """The 6 feature maps the predictors see."""
    maps = model.backbone(x)
    for extra in model.extras:
        maps.append(extra(maps[-1]))
    return maps


def test_names_task_and_published_rows():
    assert list_models("ssd*") == sorted(NAMES) == list_models(task="detection")
    assert all(get_model_entry(n).family == ("ssd" if n.startswith("ssd_") else "ssdlite") for n in NAMES)
    assert [r.label for r in published_detection("ssdlite_mobilenet_v2_x1_0")] == ["MNet V2 + SSDLite", "SSDLite"]
    assert [r.label for r in published_detection("ssdlite_mobilenet_v1_x1_0")] == ["MNet V1 + SSDLite"]
    assert [r.label for r in published_detection("ssd_mobilenet_v2_x1_0")] == ["SSD"]
    assert published_detection("ssdlite_mobilenet_v2_x0_35") == () == published_detection("mobilenet_v2_x1_0")
    assert [r.model for r in TABLE6[:3]] == [None, None, None] and all(r.head_only for r in TABLE5)


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_anchor_count(name):
    model = _build(name).eval()
    assert isinstance(model, SSD) and model.num_classes == 81 and model.anchor_spec == AnchorSpec()
    assert model.lite == name.startswith("ssdlite") and model.backbone_name == name.split("_", 1)[1]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 320, 320))
    assert out.shape == (2, 2034, 85) and torch.isfinite(out).all()
    assert model.feature_sizes(320, 320) == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert model.anchors(320, 320).shape == (2034, 4) and model.num_anchors(300, 300) == 1917


@pytest.mark.parametrize("name,small_input", [
    ("ssdlite_mobilenet_v2_x0_35", False), ("ssd_mobilenet_v2_x1_0", False), ("ssdlite_mobilenet_v1_x0_25", False),
    ("ssdlite_shufflenet_v1_g3_x1_0", False), ("ssdlite_mobilenet_v2_x0_35", True),
    ("ssdlite_shufflenet_v1_g3_x1_0", True)])
def test_feature_sizes_are_those_of_a_real_forward(name, small_input):
    model = _build(name, small_input=small_input).eval()
    sizes = [(320, 320), (300, 300), (97, 75), (33, 64), (513, 257), (64, 32)]
    with torch.no_grad():
        for h, w in sizes:
            x = torch.randn(1, 3, h, w)
            assert [tuple(m.shape[-2:]) for m in _maps(model, x)] == model.feature_sizes(h, w), (h, w)
            assert model(x).shape[1] == model.anchors(h, w).shape[0] == model.num_anchors(h, w)
    assert _build("ssdlite_mobilenet_v2_x0_35").feature_sizes(300, 300) == [(19, 19), (10, 10), (5, 5), (3, 3),
                                                                                    (2, 2), (1, 1)]
    if small_input:
        assert model.backbone.feature_info.reduction() == [4, 8] and model.feature_sizes(32, 32)[0] == (8, 8)


def test_rows_are_map_y_x_anchor():
    """``_flatten`` puts channel ``k * 4 + c`` of cell (y, x) at row ``(y * W + x) * K + k``, column c (TF's order);
    the maps follow each other in order, the boxes first then the classes."""
    k_count, height, width = 3, 2, 5
    k, c, y, x = torch.meshgrid(torch.arange(k_count), torch.arange(4), torch.arange(height), torch.arange(width),
                                indexing="ij")
    code = (((y * width + x) * k_count + k) * 10 + c).float()  # (K, 4, H, W)
    flat = _flatten(code.reshape(1, k_count * 4, height, width), 4)
    rows = torch.arange(height * width * k_count)
    assert torch.equal(flat[0], (rows[:, None] * 10 + torch.arange(4)).float())
    model = _build("ssdlite_mobilenet_v2_x0_35", num_classes=3).eval()
    for i, (box, cls) in enumerate(zip(model.box_head, model.class_head)):
        for head, value in ((box, i), (cls, 10 + i)):
            nn.init.zeros_(head.conv.weight)
            nn.init.constant_(head.conv.bias, value)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 320, 320))
    counts = [h * w * k for (h, w), k in zip(model.feature_sizes(320, 320), boxes_per_cell(AnchorSpec()))]
    expected = torch.cat([torch.full((n,), float(i)) for i, n in enumerate(counts)])
    assert torch.equal(out[0, :, 0], expected) and torch.equal(out[0, :, 4:], (expected + 10)[:, None].expand(-1, 3))


def test_anchors_are_grid_anchors_cached_and_not_in_the_state_dict():
    model = _build("ssdlite_mobilenet_v1_x0_25")
    anchors = model.anchors(320, 320)
    assert torch.equal(anchors, grid_anchors(model.feature_sizes(320, 320), AnchorSpec()))
    assert model.anchors(320, 320) is anchors
    assert torch.equal(model.anchors(320, 480), grid_anchors(model.feature_sizes(320, 480), AnchorSpec(), (320, 480)))
    assert not any("anchor" in k for k in model.state_dict())


def test_layout_of_the_extra_layers_and_predictors():
    lite = _build("ssdlite_mobilenet_v2_x1_0")
    assert lite.backbone.feature_info.module_name() == ["features.14.block.0", "features.18"]
    assert lite.backbone.feature_info.channels() == [576, 1280] and lite.backbone.feature_info.reduction() == [16, 32]
    first = lite.extras[0]
    assert [(m.conv.in_channels, m.conv.out_channels, m.conv.kernel_size[0], m.conv.stride[0], m.conv.groups)
            for m in first] == [(1280, 256, 1, 1, 1), (256, 256, 3, 2, 256), (256, 512, 1, 1, 1)]
    assert [e[-1].conv.out_channels for e in lite.extras] == [512, 256, 256, 128]
    assert all(isinstance(m.act, nn.ReLU6) for e in lite.extras for m in e)
    box = lite.box_head[0]
    assert isinstance(box, Predictor) and box.depthwise.conv.groups == 576 and isinstance(box.depthwise.act, nn.ReLU6)
    assert box.conv.kernel_size == (1, 1) and box.conv.out_channels == 3 * 4 and box.conv.bias is not None
    assert lite.class_head[1].conv.out_channels == 6 * 81 and lite.class_head[5].conv.in_channels == 128
    bn = [m for p in DETECTION_HEAD for m in getattr(lite, p).modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn and all(m.eps == 1e-3 for m in bn)  # TF's; the backbone keeps its own
    assert all(m.eps == 1e-5 for m in lite.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    ssd = _build("ssd_mobilenet_v2_x1_0")
    assert [(m.conv.kernel_size[0], m.conv.stride[0], m.conv.groups) for m in ssd.extras[0]] == [(1, 1, 1), (3, 2, 1)]
    assert not hasattr(ssd.box_head[0], "depthwise") and ssd.box_head[0].conv.kernel_size == (3, 3)
    # TF's depth_fn: the extra layers scale with the width, at least 16 channels
    assert [(e[0].conv.out_channels, e[-1].conv.out_channels) for e in _build("ssdlite_mobilenet_v2_x0_35").extras] \
        == [(89, 179), (44, 89), (44, 89), (22, 44)]
    assert _build("ssdlite_mobilenet_v2_x0_35").extras[0][0].conv.in_channels == 1280  # 1280 kept below 1
    assert [e[-1].conv.out_channels for e in _build("ssdlite_mobilenet_v1_x0_25").extras] == [128, 64, 64, 32]
    v1 = _build("ssdlite_mobilenet_v1_x1_0").backbone.feature_info
    assert v1.module_name() == ["features.11", "features.13"] and v1.channels() == [512, 1024]
    shuffle = _build("ssdlite_shufflenet_v1_g3_x1_0").backbone.feature_info
    assert shuffle.module_name() == ["features.3", "features.4"] and shuffle.channels() == [480, 960]


@pytest.mark.parametrize("name", sorted(COUNTED))
def test_counts_at_320_reproduce_the_paper(name):
    params, macs, head_params, head_macs = COUNTED[name]
    p = profile(name, 320)
    assert (p.params, p.macs) == (params, macs)
    model = _build(name)
    _, layers = count_macs(model, 320)
    assert sum(r.macs for r in layers if r.kind != "block" and r.name.split(".")[0] in DETECTION_HEAD) == head_macs
    assert sum(t.numel() for n, t in model.named_parameters() if n.split(".")[0] in DETECTION_HEAD) == head_params
    for row in published_detection(name):
        ours = detection_row(row)
        assert row.params_matches(round(ours.params_m * 1e6)), row
        assert row.madds_matches(round(ours.macs_b * 1e9)) == row.madds_reproduced, row
    assert profile(name, 64, small_input=True).resolution == 64  # the small stem profiles too


def test_tables_5_and_6_beside_the_published():
    text = tables_markdown()
    assert "| MNet V2 + SSDLite | `ssdlite_mobilenet_v2_x1_0` | 320 | 22.1 | 200 | 4.337 | 4.3 | 0.789 | 0.8 |" in text
    assert "| MNet V1 + SSDLite | `ssdlite_mobilenet_v1_x1_0` | 320 | 22.2 | 270 | 5.101 | 5.1 | 1.309 | 1.3 |" in text
    assert "| SSD | `ssd_mobilenet_v2_x1_0` | 320 | - | - | 14.777 | 14.8 | 1.259 | 1.25 | +0.7% |" in text
    assert ("| SSDLite | `ssdlite_mobilenet_v2_x1_0` | 320 | - | - | 2.113 | 2.1 | 0.178 | 0.35 | -49.3% "
            "(not reproduced) |") in text
    assert "| SSD300 | - | 300 | 23.2 | - | - | 36.1 | - | 35.2 | - |" in text


def test_profile_cli_shows_the_rows(capsys):
    from mobilecnn.cli import main

    assert main(["profile", "ssdlite_mobilenet_v2_x1_0"]) == 0  # 320 px by default for a detector
    out = capsys.readouterr().out
    assert "ssdlite_mobilenet_v2_x1_0 @ 320px" in out and "MACs: 788.83 M" in out
    assert ("MobileNetV2 Table 6 MNet V2 + SSDLite: published 4.3 M params, 0.8 B MAdds, mAP 22.1, 200 ms on a "
            "Pixel 1; counted 4.337 M, 0.789 B") in out
    assert "Table 5 SSDLite (extra layers + predictors only): published 2.1 M params, 0.35 B MAdds; counted 2.113 M, " \
           "0.178 B (MAdds not reproduced" in out


def _trained_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():  # non-trivial BN, so a wrong load would show
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            assert m.running_var is not None
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_classification_checkpoint_initialises_the_backbone(tmp_path):
    classifier = _trained_bn(create_model("mobilenet_v2_x0_35")).eval()
    assert isinstance(classifier, MobileNetV2)
    model = _build("ssdlite_mobilenet_v2_x0_35")
    left = load_backbone_weights(model, classifier.state_dict())
    assert left and all(k.startswith("classifier.") for k in left)  # the 1280 conv is used
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, classifier.state_dict()[key]), key
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expansion, last = model.backbone.eval()(x)
        torch.testing.assert_close(last, classifier.features(x))
        block = classifier.features[14]
        assert isinstance(block, InvertedResidual)
        torch.testing.assert_close(expansion, block.block[0](classifier.features[:14](x)))
    path = save_weights(tmp_path / "c.safetensors", classifier.state_dict(), model_metadata(classifier))
    assert load_backbone_weights(_build("ssdlite_mobilenet_v2_x0_35"), path) == left
    with pytest.raises(CheckpointError, match="holds weights for mobilenet_v2_x0_35, but .* is mobilenet_v2_x0_5"):
        load_backbone_weights(_build("ssdlite_mobilenet_v2_x0_5"), path)
    with pytest.raises(CheckpointError, match="missing"):
        load_backbone_weights(_build("ssdlite_mobilenet_v2_x0_35"),
                              {k: v for k, v in classifier.state_dict().items() if not k.startswith("features.18.")})
    v1 = _trained_bn(create_model("mobilenet_v1_x0_25"))
    left = load_backbone_weights(_build("ssdlite_mobilenet_v1_x0_25"), v1.state_dict())
    assert left and all(k.startswith("classifier.") for k in left)  # V1's taps reach its last block


def test_weights_round_trip_and_reset_classifier(tmp_path):
    model = _build("ssdlite_shufflenet_v1_g3_x1_0", num_classes=11)
    path = save_weights(tmp_path / "d.safetensors", model.state_dict(), model_metadata(model))
    again = _build("ssdlite_shufflenet_v1_g3_x1_0", weights=path).eval()
    assert again.num_classes == 11 and again.lite
    boxes = [h.conv.weight.clone() for h in again.box_head]
    again.reset_classifier(5)
    assert again.num_classes == 5 and again.class_head[0].conv.out_channels == 3 * 5
    assert again.class_head[0].conv.kernel_size == (1, 1) and hasattr(again.class_head[0], "depthwise")
    assert all(torch.equal(b, h.conv.weight) for b, h in zip(boxes, again.box_head))
    with torch.no_grad():
        assert again(torch.randn(1, 3, 128, 128)).shape == (1, again.num_anchors(128, 128), 4 + 5)
    ssd = _build("ssd_mobilenet_v2_x1_0", num_classes=3)
    ssd.reset_classifier(4)
    assert ssd.class_head[2].conv.kernel_size == (3, 3) and ssd.class_head[2].conv.out_channels == 6 * 4


def test_bad_arguments_give_one_line_errors():
    cases = [
        (UsageError, "num_classes 1 is not accepted.*background and one class",
         lambda: _build("ssdlite_mobilenet_v2_x0_35", num_classes=1)),
        (UsageError, r"SSDLite \(mobilenet_v1_x0_25\): small_input 'yes'",
         lambda: _build("ssdlite_mobilenet_v1_x0_25", small_input="yes")),
        (UsageError, r"SSD \(mobilenet_v2_x1_0\): in_chans 0",
         lambda: _build("ssd_mobilenet_v2_x1_0", in_chans=0)),
        (TypeError, "'aspp'; accepted: num_classes, in_chans, small_input$",
         lambda: _build("ssdlite_mobilenet_v2_x0_35", aspp=True)),
        (ValueError, "too small.*small_input=True",
         lambda: _build("ssdlite_mobilenet_v1_x0_25")(torch.randn(1, 3, 16, 16))),
        (UsageError, "height 0 is not accepted", lambda: _build("ssdlite_mobilenet_v1_x0_25").anchors(0, 10)),
        (UsageError, "num_classes 1", lambda: _build("ssdlite_mobilenet_v1_x0_25").reset_classifier(1)),
    ]
    for error, pattern, call in cases:
        with pytest.raises(error, match=pattern) as info:
            call()
        assert "\n" not in str(info.value).strip()
