"""models/ssd_boxes.py: TF's anchor layout, the box coder and the post-processing."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_convert, box_iou, nms

from mobilecnn.models.ssd_boxes import (
    AnchorSpec,
    PostProcess,
    boxes_per_cell,
    decode_boxes,
    detect,
    encode_boxes,
    grid_anchors,
    layer_box_specs,
    to_pixels,
)

SIZES_320 = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
SIZES_300 = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def test_anchor_counts_match_the_tf_config():
    spec = AnchorSpec()
    assert boxes_per_cell(spec) == (3, 6, 6, 6, 6, 6)
    assert grid_anchors(SIZES_320, spec).shape == (2034, 4)
    assert grid_anchors(SIZES_300, spec).shape == (1917, 4)
    no_reduce = AnchorSpec(reduce_lowest=False)
    assert grid_anchors(SIZES_320, no_reduce).shape == (2034 + 400 * 3, 4)


def test_scales_are_linear_from_0_2_to_0_95_with_an_interpolated_box():
    specs = layer_box_specs(AnchorSpec())
    assert specs[0] == [(0.1, 1.0), (0.2, 2.0), (0.2, 0.5)]
    scales = [0.2 + 0.15 * k for k in range(6)]
    for k in range(1, 6):
        assert [s for s, _ in specs[k][:5]] == pytest.approx([scales[k]] * 5)
        nxt = scales[k + 1] if k < 5 else 1.0
        assert specs[k][5] == pytest.approx((math.sqrt(scales[k] * nxt), 1.0))


def test_anchor_order_is_layer_y_x_box_with_cell_centres():
    a = grid_anchors(SIZES_320, AnchorSpec())
    # first cell of the lowest layer: its three boxes
    assert a[0].tolist() == pytest.approx([0.025, 0.025, 0.1, 0.1])
    assert a[1].tolist() == pytest.approx([0.025, 0.025, 0.2 * math.sqrt(2), 0.2 / math.sqrt(2)])
    assert a[2].tolist() == pytest.approx([0.025, 0.025, 0.2 / math.sqrt(2), 0.2 * math.sqrt(2)])
    # next cell moves along x first
    assert a[3, :2].tolist() == pytest.approx([0.075, 0.025])
    assert a[3 * 20, :2].tolist() == pytest.approx([0.025, 0.075])
    # the top layer: one cell centred in the image, six boxes
    assert torch.allclose(a[-6:, :2], torch.full((6, 2), 0.5))


def test_non_square_input_keeps_ratio_one_anchors_square_in_pixels():
    a = grid_anchors([(10, 20)], AnchorSpec(), image_size=(160, 320))
    w_px, h_px = a[0, 2] * 320, a[0, 3] * 160
    assert float(w_px) == pytest.approx(float(h_px))


def test_encode_decode_round_trip_and_weights():
    anchors = grid_anchors(SIZES_320, AnchorSpec())[:50]
    boxes = box_convert(anchors * torch.tensor([1.0, 1.0, 1.3, 0.8]) + 0.01, "cxcywh", "xyxy")
    offsets = encode_boxes(boxes, anchors)
    assert torch.allclose(decode_boxes(offsets, anchors), boxes, atol=1e-6)
    same = encode_boxes(box_convert(anchors, "cxcywh", "xyxy"), anchors)
    assert torch.allclose(same, torch.zeros_like(same), atol=1e-5)
    # width doubled -> 5 * log 2
    doubled = anchors * torch.tensor([1.0, 1.0, 2.0, 1.0])
    assert torch.allclose(encode_boxes(box_convert(doubled, "cxcywh", "xyxy"), anchors)[:, 2],
                          torch.full((50,), 5 * math.log(2)), atol=1e-5)


def test_decode_clamps_huge_offsets():
    anchors = grid_anchors(SIZES_320, AnchorSpec())[:4]
    out = decode_boxes(torch.full((4, 4), 1e4), anchors)
    assert torch.isfinite(out).all()


def _raw_for(anchors: torch.Tensor, hits: dict[int, int], num_classes: int = 4) -> torch.Tensor:
    """Zero offsets (box = anchor); anchor i scored as class hits[i], the rest background."""
    raw = torch.zeros(1, anchors.shape[0], 4 + num_classes)
    raw[0, :, 4] = 5.0
    for i, c in hits.items():
        raw[0, i, 4] = 0.0
        raw[0, i, 4 + c] = 8.0
    return raw


def test_detect_finds_the_scored_anchors_and_applies_nms():
    anchors = grid_anchors(SIZES_320, AnchorSpec())
    far, top = 0, anchors.shape[0] - 6  # a small box at the corner, a big one in the middle
    raw = _raw_for(anchors, {far: 2, top: 3, top + 5: 3})  # top+5 overlaps top a lot (same centre)
    det = detect(raw, anchors, PostProcess(score_threshold=0.5))[0]
    expect = box_convert(anchors[[far, top]], "cxcywh", "xyxy").clamp(0, 1)
    assert sorted(det.labels.tolist()) == [2, 3]
    for box, label in zip(det.boxes, det.labels):
        want = expect[0] if label == 2 else expect[1]
        assert float(box_iou(box[None], want[None])) > 0.999 or label == 3
    assert len(det) == 2  # the two class-3 boxes overlap above 0.6: one kept
    assert bool((det.scores[:-1] >= det.scores[1:]).all())


def test_detect_matches_a_plain_per_class_nms():
    torch.manual_seed(0)
    anchors = grid_anchors(SIZES_320, AnchorSpec())
    raw = torch.randn(2, anchors.shape[0], 4 + 3)
    post = PostProcess(score_threshold=0.3, nms_iou=0.5, per_class=2034, max_detections=10_000)
    dets = detect(raw, anchors, post)
    boxes = decode_boxes(raw[..., :4], anchors).clamp(0, 1)
    probs = raw[..., 4:].softmax(-1)
    for i, det in enumerate(dets):
        for c in (1, 2):
            mask = probs[i, :, c] > 0.3
            kept = nms(boxes[i][mask], probs[i, mask, c], 0.5)
            assert int((det.labels == c).sum()) == kept.numel()


def test_detect_refuses_outputs_of_another_shape():
    anchors = grid_anchors(SIZES_320, AnchorSpec())
    with pytest.raises(ValueError, match="2034"):
        detect(torch.zeros(1, 100, 10), anchors)


def test_to_pixels_scales_x_by_width_and_y_by_height():
    anchors = grid_anchors(SIZES_320, AnchorSpec())
    det = detect(_raw_for(anchors, {0: 1}), anchors, PostProcess(score_threshold=0.5))[0]
    px = to_pixels(det, 640, 480)
    assert torch.allclose(px.boxes, det.boxes * torch.tensor([640, 480, 640, 480]))


def test_boxes_clipped_to_nothing_are_dropped():
    anchors = grid_anchors(SIZES_320, AnchorSpec())
    raw = _raw_for(anchors, {0: 1, 500: 2})
    raw[0, 0, 0] = -50.0  # the first anchor's box moved far left of the image: zero width once clipped
    det = detect(raw, anchors, PostProcess(score_threshold=0.5))[0]
    assert det.labels.tolist() == [2]
