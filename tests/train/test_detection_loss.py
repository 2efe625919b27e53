"""train/detection_loss.py: SSD matching, encoded targets, 3:1 hard negative mining."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_convert

from mobilecnn.models.ssd_boxes import AnchorSpec, encode_boxes, grid_anchors
from mobilecnn.train.detection_loss import MultiBoxLoss

SIZES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
ANCHORS = grid_anchors(SIZES, AnchorSpec())
C = 5


def _targets(rows: list[list[list[float]]]) -> torch.Tensor:
    m = max(1, max(len(r) for r in rows))
    y = torch.zeros(len(rows), m, 5)
    for i, r in enumerate(rows):
        if r:
            y[i, :len(r)] = torch.tensor(r)
    return y


def test_a_box_equal_to_an_anchor_matches_it_with_zero_offsets():
    loss = MultiBoxLoss(ANCHORS)
    k = 100
    box = box_convert(ANCHORS[k:k + 1], "cxcywh", "xyxy")[0].tolist()
    labels, boxes = loss.match(_targets([[box + [3.0]]]))
    assert labels[0, k] == 3
    assert torch.allclose(boxes[0, k], torch.zeros(4), atol=1e-5)
    assert (labels[0] > 0).sum() >= 1
    # every positive anchor overlaps the box by at least 0.5, or is the box's best anchor
    hit = (labels[0] > 0).nonzero().flatten()
    want = encode_boxes(torch.tensor([box]).expand(len(hit), 4), ANCHORS[hit])
    assert torch.allclose(boxes[0, hit], want, atol=1e-5)


def test_a_small_box_is_forced_onto_its_best_anchor():
    loss = MultiBoxLoss(ANCHORS)
    labels, _ = loss.match(_targets([[[0.50, 0.50, 0.51, 0.51, 2.0]]]))  # IoU < 0.5 with every anchor
    assert int((labels[0] > 0).sum()) == 1


def test_padding_rows_and_empty_images_give_no_positives():
    loss = MultiBoxLoss(ANCHORS)
    labels, _ = loss.match(_targets([[], [[0.1, 0.1, 0.6, 0.6, 1.0]]]))
    assert int((labels[0] > 0).sum()) == 0 and int((labels[1] > 0).sum()) > 0
    raw = torch.zeros(2, ANCHORS.shape[0], 4 + C, requires_grad=True)
    value = loss(raw, _targets([[], []]))
    assert float(value) == 0.0  # no positive: no negative is mined either (SSD's 3:1 of zero)


def test_hard_negatives_are_three_per_positive_and_the_hardest():
    torch.manual_seed(0)
    loss = MultiBoxLoss(ANCHORS)
    y = _targets([[[0.1, 0.1, 0.6, 0.6, 1.0]]])
    labels, _ = loss.match(y)
    pos = int((labels > 0).sum())
    raw = torch.zeros(1, ANCHORS.shape[0], 4 + C)
    raw[..., 4] = 5.0  # confident background everywhere...
    hardest = [i for i in range(ANCHORS.shape[0]) if labels[0, i] == 0][:3 * pos]
    raw[0, hardest, 4] = -5.0  # ...except 3 x positives background anchors, made the hardest
    raw[0, hardest, 5] = 5.0
    value = loss(raw, y)
    ce_pos = torch.nn.functional.cross_entropy(raw[0, labels[0] > 0, 4:], labels[0, labels[0] > 0], reduction="sum")
    ce_neg = torch.nn.functional.cross_entropy(raw[0, hardest, 4:], torch.zeros(len(hardest), dtype=torch.long),
                                               reduction="sum")
    box = torch.nn.functional.smooth_l1_loss(raw[0, labels[0] > 0, :4], loss.match(y)[1][0, labels[0] > 0],
                                             reduction="sum")
    assert float(value) == pytest.approx(float((ce_pos + ce_neg + box) / pos), rel=1e-5)


def test_gradients_flow_and_accuracy_is_recorded():
    loss = MultiBoxLoss(ANCHORS)
    raw = torch.randn(2, ANCHORS.shape[0], 4 + C, requires_grad=True)
    value = loss(raw, _targets([[[0.1, 0.1, 0.6, 0.6, 1.0]], [[0.3, 0.2, 0.9, 0.7, 4.0]]]))
    value.backward()
    assert raw.grad is not None and float(raw.grad.abs().sum()) > 0
    assert 0 <= loss.last_correct <= loss.last_positives and loss.last_positives > 0


def test_outputs_for_other_anchors_are_refused():
    with pytest.raises(ValueError, match="training resolution"):
        MultiBoxLoss(ANCHORS)(torch.zeros(1, 10, 4 + C), _targets([[]]))
