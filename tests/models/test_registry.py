"""Registry: names, wildcard listing, unknown names, keyword checks."""

import pytest

from mobilecnn import UnknownModelError, create_model, list_models, published

EXPECTED = (
    [f"shufflenet_v1_g{g}_x{s}" for g in (1, 2, 3, 4, 8) for s in ("0_25", "0_5", "1_0", "1_5", "2_0")]
    + ["shufflenet_v1_g8_x0_5_arch2", "shufflenet_v1_g3_x0_5_shallow"]
    + [f"mobilenet_v2_x{w}" for w in ("0_35", "0_5", "0_75", "1_0", "1_3", "1_4")]
    + [f"mobilenet_v1_x{w}" for w in ("0_25", "0_5", "0_75", "1_0")]
)
SEGMENTATION = (
    [f"deeplabv3_mobilenet_v2_x{w}" for w in ("0_35", "0_5", "0_75", "1_0", "1_4")]
    + [f"deeplabv3_mobilenet_v1_x{w}" for w in ("0_25", "0_5", "0_75", "1_0")]
    + [f"deeplabv3_shufflenet_v1_g{g}_x{s}" for g in (3, 8) for s in ("0_5", "1_0", "1_5", "2_0")]
)
DETECTION = (
    [f"ssdlite_mobilenet_v2_x{w}" for w in ("0_35", "0_5", "0_75", "1_0", "1_4")]
    + [f"ssdlite_mobilenet_v1_x{w}" for w in ("0_25", "0_5", "0_75", "1_0")]
    + ["ssd_mobilenet_v2_x1_0", "ssdlite_shufflenet_v1_g3_x1_0", "ssdlite_shufflenet_v1_g3_x2_0"]
)


def test_every_name_is_registered():
    assert sorted(EXPECTED + SEGMENTATION + DETECTION) == list_models()
    assert sorted(EXPECTED) == list_models(task="classification")
    assert list_models("deeplabv3*") == sorted(SEGMENTATION) == list_models(task="segmentation")
    assert list_models("ssd*") == sorted(DETECTION) == list_models(task="detection")
    with pytest.raises(UnknownModelError, match="unknown task 'tracking'; accepted: classification, segmentation, "
                                                "detection"):
        list_models(task="tracking")


def test_wildcard_listing():
    assert list_models("shufflenet_v1_g3_*") == sorted(n for n in EXPECTED if n.startswith("shufflenet_v1_g3_"))
    assert list_models("mobilenet_v2*") == sorted(n for n in EXPECTED if n.startswith("mobilenet_v2"))
    assert list_models("nothing*") == []


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownModelError, match="shufflenet_v1_g3_x1_0") as info:
        create_model("shufflenet_v1_g3_x1")
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownModelError, match="mobilecnn list"):
        create_model("zzz")


def test_unexpected_keyword_is_named():
    with pytest.raises(TypeError, match="'shufle'.*accepted: .*shuffle, features_only, out_indices, output_stride"):
        create_model("shufflenet_v1_g3_x1_0", shufle=False)
    with pytest.raises(TypeError, match="'dropout'.*accepted: num_classes, in_chans, small_input, output_stride, aspp$"):
        create_model("deeplabv3_mobilenet_v2_x1_0", dropout=0.5)


def test_model_name_attached_and_published_lookup():
    assert create_model("mobilenet_v1_x0_25").model_name == "mobilenet_v1_x0_25"
    assert published("mobilenet_v2_x1_0").macs[224] == 300
    assert published("shufflenet_v1_g1_x1_5") is None
