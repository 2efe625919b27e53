"""Dilated convs counted plain and TF's space-to-batch way; MobileNetV2 Table 7 reproduced from the built models."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilecnn import create_model, profile
from mobilecnn.analysis.complexity import count_macs, evaluation_macs
from mobilecnn.analysis.tables import segmentation_row
from mobilecnn.models import published_segmentation
from mobilecnn.models.deeplab import TABLE7, evaluation_sizes

#: (label, OS, ASPP, MF) -> (params M with BN, MAdds B plain, MAdds B space-to-batch), counted at 513, 21 classes.
COUNTED = {
    ("MNV2*", 16, False, False): (2.1136, 2.7407, 2.7424),
    ("MNV2*", 16, True, False): (4.5235, 5.3635, 5.8231),
    ("MNet V1", 16, True, False): (11.1453, 12.7609, 14.2266),
    ("MNV2*", 8, False, True): (2.1136, 152.3346, 152.5255),
    ("MNV2*", 8, True, True): (4.5235, 327.9298, 387.4776),
    ("MNet V1", 8, True, True): (11.1453, 800.7452, 990.7856),
}
ROWS = [r for r in TABLE7 if r.model is not None]


def _space_to_batch_conv(x: torch.Tensor, weight: torch.Tensor, rate: int) -> tuple[torch.Tensor, int]:
    """TF's ``with_space_to_batch`` for a 3x3 SAME conv at ``rate``: pad (k - 1) r, then up to a multiple of r,
    run the undilated VALID conv on each of the r x r sub-grids, put them back and crop. Returns the output and
    the number of output positions computed."""
    h, w = x.shape[-2:]
    extra_h, extra_w = (-(h + 2 * rate)) % rate, (-(w + 2 * rate)) % rate
    p = F.pad(x, (rate, rate + extra_w, rate, rate + extra_h))
    n, c, ph, pw = p.shape
    sub = p.reshape(n, c, ph // rate, rate, pw // rate, rate).permute(3, 5, 0, 1, 2, 4)
    sub = sub.reshape(rate * rate * n, c, ph // rate, pw // rate)
    out = F.conv2d(sub, weight)  # one batch entry per sub-grid
    computed = out.shape[0] * out.shape[2] * out.shape[3] // n
    oh, ow = out.shape[-2:]
    out = out.reshape(rate, rate, n, -1, oh, ow).permute(2, 3, 4, 0, 5, 1).reshape(n, -1, oh * rate, ow * rate)
    return out[..., :h, :w], computed


@pytest.mark.parametrize("size,rate", [(33, 2), (33, 6), (33, 12), (33, 18), (65, 36), (16, 4), (9, 12)])
def test_space_to_batch_charge_is_what_tf_computes(size, rate):
    conv = nn.Conv2d(3, 4, 3, padding=rate, dilation=rate, bias=False)
    x = torch.randn(1, 3, size, size)
    out, computed = _space_to_batch_conv(x, conv.weight, rate)
    torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)  # the emulation is the dilated conv
    assert computed == (rate * math.ceil(size / rate)) ** 2
    per_position = 4 * 3 * 9
    assert count_macs(conv, size, "space_to_batch")[0] == computed * per_position
    assert count_macs(conv, size, "plain")[0] == size * size * per_position


def test_plain_and_space_to_batch_agree_without_dilation():
    model = create_model("mobilenet_v2_x0_35")
    assert count_macs(model, 96, "space_to_batch")[0] == count_macs(model, 96)[0]
    p = profile(model, 96)
    assert p.macs_space_to_batch == p.macs and p.dilated == "plain"
    with pytest.raises(ValueError, match="dilated"):
        count_macs(model, 96, "tf")


def test_profile_reports_both_conventions():
    p = profile("deeplabv3_mobilenet_v2_x0_35", 65, aspp=True)
    s = profile("deeplabv3_mobilenet_v2_x0_35", 65, aspp=True, dilated="space_to_batch")
    assert p.macs < p.macs_space_to_batch == s.macs == s.macs_space_to_batch
    assert p.params == s.params and s.dilated == "space_to_batch"


def test_multi_scale_flip_inputs():
    assert evaluation_sizes(513) == [513]
    assert evaluation_sizes(513, True) == [257, 257, 385, 385, 513, 513, 641, 641, 769, 769, 897, 897]
    with torch.device("meta"):
        model = create_model("deeplabv3_mobilenet_v2_x0_35")
    assert evaluation_macs(model, 129, True) == 2 * sum(count_macs(model, s)[0] for s in (65, 97, 129, 161, 193, 225))


def test_table7_data_is_present():
    assert len(TABLE7) == 8 and {r.label for r in TABLE7} == {"MNet V1", "MNV2*", "ResNet-101"}
    assert [(r.output_stride, r.aspp, r.multi_scale_flip, r.madds_b) for r in published_segmentation(
        "deeplabv3_mobilenet_v2_x1_0")] == [(16, True, False, 5.8), (8, True, True, 387), (16, False, False, 2.75),
                                            (8, False, True, 152.6)]
    assert [r.miou for r in published_segmentation("deeplabv3_mobilenet_v1_x1_0")] == [75.29, 78.56]
    assert all(r.resolution == 513 and r.num_classes == 21 and r.counting == "space_to_batch" for r in TABLE7)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.label}-OS{r.output_stride}-{r.aspp}-{r.multi_scale_flip}")
def test_table7_counts(row):
    ours = segmentation_row(row)
    params, plain, s2b = COUNTED[(row.label, row.output_stride, row.aspp, row.multi_scale_flip)]
    assert ours.params_m == pytest.approx(params, abs=5e-5)
    assert ours.macs_plain_b == pytest.approx(plain, abs=5e-4)
    assert ours.macs_space_to_batch_b == pytest.approx(s2b, abs=5e-4)
    assert row.params_matches(int(ours.params_m * 1e6))  # every params figure, to its printed precision
    assert row.madds_matches(int(s2b * 1e9))  # in the row's convention, within its documented tolerance
    if row.madds_tolerance == 0:  # the two ASPP rows of MobileNetV2: exact to the printed precision
        assert abs(s2b - row.madds_b) <= row.madds_step_b / 2
    else:
        assert row.note and not row.madds_matches(int(plain * 1e9))
    if row.aspp:  # plain counts miss every ASPP figure by 7-15%
        assert not row.madds_matches(int(plain * 1e9))
