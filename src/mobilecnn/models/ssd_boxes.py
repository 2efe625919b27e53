"""SSD's boxes: TF's anchor layout, the box coder, and the one post-processing definition of every detector.

A detector of the zoo (:mod:`.ssd`) returns its raw head outputs ``(N, A, 4 + C)``: per anchor four box
offsets and ``C`` class logits (index 0 = background). Everything after that is here, so PyTorch and every
exported file (ONNX, OpenVINO, ExecuTorch, LiteRT) are decoded by the same code:

* **Anchors** (:func:`grid_anchors`): TF Object Detection API's ``multiple_grid_anchor_generator`` as
  ``ssdlite_mobilenet_v2_coco.config`` sets it (MobileNetV2 paper section 6.2): 6 layers, scales 0.2 to 0.95
  linearly, aspect ratios 1, 2, 1/2, 3, 1/3 plus one box of scale ``sqrt(s_k s_k+1)`` at ratio 1; the lowest
  layer has 3 boxes, (0.1, 1), (s_0, 2), (s_0, 1/2). Cell centres at ``(i + 0.5) / size``, unclipped; order
  layer, y, x, box -- the order the heads' outputs are flattened in. 2,034 anchors at 320 x 320.
* **Box coder** (:func:`encode_boxes`, :func:`decode_boxes`): Faster R-CNN's, scales 10, 10, 5, 5 (TF's
  ``faster_rcnn_box_coder``; torchvision's ``BoxCoder(weights=(10, 10, 5, 5))``), offsets in x, y, w, h order.
* **Post-processing** (:func:`detect`): softmax over the classes (the model is trained with softmax
  cross-entropy, :mod:`mobilecnn.train.detection_loss`), boxes clipped to the image (one clipped to zero width or
  height is dropped), the best ``per_class`` anchors of each class above
  ``score_threshold``, class-wise NMS at ``nms_iou`` (torchvision's ``batched_nms``), the ``max_detections``
  best kept. The defaults are the TF config's (score 1e-8, IoU 0.6, 100 per class and in total).

Boxes are ``x1, y1, x2, y2`` normalised to [0, 1] of the network input; :func:`to_pixels` scales them to an
image's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["AnchorSpec", "PostProcess", "Detections", "BOX_WEIGHTS", "boxes_per_cell", "layer_box_specs",
           "grid_anchors", "encode_boxes", "decode_boxes", "detect", "to_pixels"]

#: The box coder's scales for x, y, w, h (TF: y, x 10 and h, w 5).
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# exp() of a width/height offset is clamped here (torchvision's bbox_xform_clip): an untrained head can emit
# offsets whose exponential overflows
_MAX_LOG_SCALE = math.log(1000.0 / 16)


@dataclass(frozen=True)
class AnchorSpec:
    """TF's ``ssd_anchor_generator`` settings of ``ssdlite_mobilenet_v2_coco.config``."""

    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
    interpolated_ratio: float = 1.0  # the extra box at scale sqrt(s_k s_k+1); 0 = none
    reduce_lowest: bool = True  # the lowest layer has 3 boxes: (0.1, 1), (s_0, 2), (s_0, 1/2)

    def scales(self, num_layers: int) -> list[float]:
        """``s_k`` for each layer, then 1.0 (the interpolated box of the top layer uses it)."""
        if num_layers == 1:
            return [self.min_scale, 1.0]
        step = (self.max_scale - self.min_scale) / (num_layers - 1)
        return [self.min_scale + step * k for k in range(num_layers)] + [1.0]


def layer_box_specs(spec: AnchorSpec, num_layers: int = 6) -> list[list[tuple[float, float]]]:
    """``(scale, aspect ratio)`` of each box of a cell, per layer."""
    scales = spec.scales(num_layers)
    layers = []
    for k in range(num_layers):
        if k == 0 and spec.reduce_lowest:
            layers.append([(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)])
            continue
        boxes = [(scales[k], ratio) for ratio in spec.aspect_ratios]
        if spec.interpolated_ratio > 0:
            boxes.append((math.sqrt(scales[k] * scales[k + 1]), spec.interpolated_ratio))
        layers.append(boxes)
    return layers


def boxes_per_cell(spec: AnchorSpec, num_layers: int = 6) -> tuple[int, ...]:
    """Anchors per feature-map cell of each layer: ``(3, 6, 6, 6, 6, 6)`` for the default spec."""
    return tuple(len(boxes) for boxes in layer_box_specs(spec, num_layers))


def grid_anchors(sizes: Sequence[tuple[int, int]], spec: AnchorSpec,
                 image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """The anchors ``(A, 4)`` as ``cx, cy, w, h`` in [0, 1] for feature maps of ``sizes`` ``(height, width)``.

    ``image_size`` ``(height, width)``: for a non-square input, TF scales the base anchor by
    ``min(h, w) / h`` and ``min(h, w) / w`` so a ratio-1 anchor stays square in pixels.
    """
    h_img, w_img = image_size if image_size is not None else (1, 1)
    base_h, base_w = min(h_img, w_img) / h_img, min(h_img, w_img) / w_img
    per_layer = []
    for (height, width), boxes in zip(sizes, layer_box_specs(spec, len(sizes))):
        wh = torch.tensor([[s * math.sqrt(r) * base_w, s / math.sqrt(r) * base_h] for s, r in boxes],
                          dtype=torch.float64)
        cy = (torch.arange(height, dtype=torch.float64) + 0.5) / height
        cx = (torch.arange(width, dtype=torch.float64) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 1, 2).expand(-1, len(boxes), 2)
        per_layer.append(torch.cat([centres, wh.expand(height * width, -1, -1)], dim=-1).reshape(-1, 4))
    return torch.cat(per_layer).to(torch.float32)


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Offsets ``(K, 4)`` that turn ``anchors`` (``cx, cy, w, h``) into ``boxes`` (``x1, y1, x2, y2``)."""
    from torchvision.ops import box_convert  # here, not at the top: importing torchvision costs 1.5 s

    target = box_convert(boxes, "xyxy", "cxcywh")
    wx, wy, ww, wh = BOX_WEIGHTS
    return torch.stack([wx * (target[:, 0] - anchors[:, 0]) / anchors[:, 2],
                        wy * (target[:, 1] - anchors[:, 1]) / anchors[:, 3],
                        ww * torch.log(target[:, 2] / anchors[:, 2]),
                        wh * torch.log(target[:, 3] / anchors[:, 3])], dim=1)


def decode_boxes(offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Boxes ``(..., A, 4)`` as ``x1, y1, x2, y2`` from offsets ``(..., A, 4)`` and anchors ``(A, 4)``."""
    wx, wy, ww, wh = BOX_WEIGHTS
    cx = offsets[..., 0] / wx * anchors[:, 2] + anchors[:, 0]
    cy = offsets[..., 1] / wy * anchors[:, 3] + anchors[:, 1]
    w = torch.exp((offsets[..., 2] / ww).clamp(max=_MAX_LOG_SCALE)) * anchors[:, 2]
    h = torch.exp((offsets[..., 3] / wh).clamp(max=_MAX_LOG_SCALE)) * anchors[:, 3]
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


@dataclass(frozen=True)
class PostProcess:
    """How raw outputs become detections (TF config's values by default; ``predict`` raises the threshold)."""

    score_threshold: float = 1e-8
    nms_iou: float = 0.6
    per_class: int = 100
    max_detections: int = 100


@dataclass
class Detections:
    """One image's detections: ``boxes`` ``(K, 4)`` ``x1, y1, x2, y2`` (normalised unless scaled by
    :func:`to_pixels`), ``scores`` ``(K,)`` best first, ``labels`` ``(K,)`` int64 in 1..C-1."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


def _detect_one(boxes: torch.Tensor, probs: torch.Tensor, post: PostProcess) -> Detections:
    """``boxes`` ``(A, 4)``, ``probs`` ``(A, C - 1)`` (background dropped)."""
    k = min(post.per_class, probs.shape[0])
    top, anchor = probs.topk(k, dim=0)  # (k, C - 1): each class's best anchors
    cls = torch.arange(probs.shape[1], device=probs.device).expand(k, -1)
    keep = top > post.score_threshold
    scores, anchor, cls = top[keep], anchor[keep], cls[keep]
    candidates = boxes[anchor]
    from torchvision.ops import batched_nms  # here, not at the top: importing torchvision costs 1.5 s

    kept = batched_nms(candidates, scores, cls, post.nms_iou)[:post.max_detections]
    return Detections(candidates[kept], scores[kept], cls[kept] + 1)


def detect(raw: torch.Tensor, anchors: torch.Tensor, post: PostProcess | None = None) -> list[Detections]:
    """Detections of each image from a detector's raw outputs ``(N, A, 4 + C)`` (any runtime's, as a tensor)."""
    post = post or PostProcess()
    raw = raw.float()
    if raw.dim() != 3 or raw.shape[1] != anchors.shape[0] or raw.shape[2] < 6:
        raise ValueError(f"detector outputs must be (N, {anchors.shape[0]}, 4 + classes) for these anchors, got "
                         f"{tuple(raw.shape)}")
    anchors = anchors.to(raw.device)
    boxes = decode_boxes(raw[..., :4], anchors).clamp(0.0, 1.0)
    probs = torch.softmax(raw[..., 4:], dim=-1)[..., 1:]
    # a box clamped to nothing (entirely outside the image) is no detection
    empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
    probs = probs.masked_fill(empty.unsqueeze(-1), 0.0)
    return [_detect_one(boxes[i], probs[i], post) for i in range(raw.shape[0])]


def to_pixels(det: Detections, width: int, height: int) -> Detections:
    """``det`` with its normalised boxes scaled to an image of ``width`` x ``height`` pixels."""
    scale = torch.tensor([width, height, width, height], dtype=det.boxes.dtype, device=det.boxes.device)
    return Detections(det.boxes * scale, det.scores, det.labels)
