"""Mobile DeepLabv3: names, head structure, output, backbone initialisation from a classification checkpoint."""

import pytest
import torch
from torch import nn

from mobilecnn import create_model, get_model_entry, list_models
from mobilecnn.errors import CheckpointError, TrainError, UsageError
from mobilecnn.models import DeepLabV3, load_backbone_weights
from mobilecnn.models.weights_file import model_metadata, save_weights

NAMES = ([f"deeplabv3_mobilenet_v2_x{w}" for w in ("0_35", "0_5", "0_75", "1_0", "1_4")]
         + [f"deeplabv3_mobilenet_v1_x{w}" for w in ("0_25", "0_5", "0_75", "1_0")]
         + [f"deeplabv3_shufflenet_v1_g{g}_x{w}" for g in (3, 8) for w in ("0_5", "1_0", "1_5", "2_0")])


def test_names_and_task():
    assert list_models("deeplabv3*") == sorted(NAMES)
    assert all(get_model_entry(n).task == "segmentation" for n in NAMES)
    assert not set(NAMES) & set(list_models(task="classification"))
    assert sorted(NAMES) == list_models(task="segmentation")


@pytest.mark.parametrize("name", NAMES)
def test_builds_and_returns_logits_at_the_input_size(name):
    model = create_model(name).eval()
    assert model.num_classes == 21 and model.output_stride == 16 and not model.aspp
    with torch.no_grad():
        out = model(torch.randn(1, 3, 97, 75))
    assert out.shape == (1, 21, 97, 75) and torch.isfinite(out).all()


@pytest.mark.parametrize("output_stride,rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_aspp_head(output_stride, rates):
    model = create_model("deeplabv3_mobilenet_v2_x0_35", output_stride=output_stride, aspp=True, num_classes=5)
    head = model.head
    atrous = [b.conv for b in head.branches[1:]]
    assert [c.dilation[0] for c in atrous] == list(rates) and all(c.kernel_size == (3, 3) for c in atrous)
    assert all(c.groups == 1 and c.out_channels == 256 and c.in_channels == 112 for c in atrous)  # not separable
    assert head.project.conv.in_channels == 256 * 5 and head.classifier.out_channels == 5
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64, 64)


def test_mnv2_star_head_on_the_320_channel_output():
    model = create_model("deeplabv3_mobilenet_v2_x1_0")
    assert len(model.backbone.features) == 18  # no 1280-channel conv
    assert model.backbone.feature_info.channels() == [320] and model.backbone.feature_info.reduction() == [16]
    head = model.head
    assert [type(b.conv) for b in head.branches] == [nn.Conv2d] and head.branches[0].conv.kernel_size == (1, 1)
    assert head.pool.conv.in_channels == 320 and head.project.conv.in_channels == 512
    assert head.dropout.p == pytest.approx(0.1) and head.classifier.bias is not None
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert create_model("deeplabv3_mobilenet_v1_x1_0").head.pool.conv.in_channels == 1024
    assert create_model("deeplabv3_shufflenet_v1_g3_x1_0").head.pool.conv.in_channels == 960


def test_options_and_errors():
    model = create_model("deeplabv3_mobilenet_v1_x0_25", output_stride=8, in_chans=1, num_classes=2).eval()
    assert model.backbone.feature_info.reduction() == [8] and model.min_input_size == 8
    with torch.no_grad():
        assert model(torch.randn(1, 1, 40, 40)).shape == (1, 2, 40, 40)
    small = create_model("deeplabv3_shufflenet_v1_g3_x0_5", small_input=True).eval()
    assert small.output_stride == 8 and small.head.branches[0].conv.in_channels == 480
    with torch.no_grad():
        assert small(torch.randn(1, 3, 32, 32)).shape == (1, 21, 32, 32)
    with pytest.raises(UsageError, match="output_stride 32 is not accepted"):
        create_model("deeplabv3_mobilenet_v2_x0_35", output_stride=32)
    with pytest.raises(UsageError, match="aspp"):
        create_model("deeplabv3_mobilenet_v2_x0_35", aspp="yes")
    with pytest.raises(ValueError, match="too small"):
        create_model("deeplabv3_mobilenet_v2_x0_35")(torch.randn(1, 3, 8, 8))
    model.reset_classifier(7)
    assert model.head.classifier.out_channels == 7 and model.num_classes == 7


def test_classification_checkpoint_initialises_the_backbone(tmp_path):
    classifier = create_model("mobilenet_v2_x0_35")
    for m in classifier.modules():  # non-trivial BN (the residual branches start at zero otherwise)
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model = create_model("deeplabv3_mobilenet_v2_x0_35")
    left = load_backbone_weights(model, classifier.state_dict())
    assert left and all(k.startswith(("classifier.", "features.18.")) for k in left)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, classifier.state_dict()[key]), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the backbone is the classifier's features, dilated: every 2nd pixel of its stride 32 map
        torch.testing.assert_close(model.backbone.eval()(x)[0][..., ::2, ::2], classifier.eval().features[:18](x),
                                   rtol=1e-4, atol=1e-4)
    path = save_weights(tmp_path / "c.safetensors", classifier.state_dict(), model_metadata(classifier))
    assert load_backbone_weights(create_model("deeplabv3_mobilenet_v2_x0_35"), path) == left
    with pytest.raises(CheckpointError, match="holds weights for mobilenet_v2_x0_35, but .* is mobilenet_v2_x0_5"):
        load_backbone_weights(create_model("deeplabv3_mobilenet_v2_x0_5"), path)
    with pytest.raises(CheckpointError, match="missing"):
        load_backbone_weights(create_model("deeplabv3_mobilenet_v2_x0_35"),
                              {k: v for k, v in classifier.state_dict().items() if not k.startswith("features.3.")})


def test_deeplab_weights_round_trip_and_the_segmentation_recipe(tmp_path):
    from mobilecnn.train.config import TrainConfig, resolve

    model = create_model("deeplabv3_mobilenet_v1_x0_25", aspp=True, output_stride=8)
    assert isinstance(model, DeepLabV3) and model.model_kwargs == {"aspp": True, "output_stride": 8}
    path = save_weights(tmp_path / "d.safetensors", model.state_dict(), model_metadata(model))
    again = create_model("deeplabv3_mobilenet_v1_x0_25", weights=path)
    assert again.aspp and again.output_stride == 8 and again.num_classes == 21
    assert resolve(TrainConfig(model="deeplabv3_mobilenet_v1_x0_25", out=str(tmp_path / "run"))).recipe_name \
        == "fast_segmentation"
    with pytest.raises(TrainError, match="trains classification models"):
        resolve(TrainConfig(model="deeplabv3_mobilenet_v1_x0_25", recipe="mobilenetv2", out=str(tmp_path / "run")))
