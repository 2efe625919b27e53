"""SSD's multibox loss: anchor matching, smooth L1 on the matched boxes, softmax cross-entropy with 3:1 hard
negative mining (Liu et al., SSD, ECCV 2016, section 2.2; torchvision's ``SSD.compute_loss``).

Matching is the MobileNetV2 paper's TF config's: an anchor whose IoU with a ground-truth box is at least 0.5
takes it (the highest IoU wins), and each ground truth is also given its best anchor (``force_match_for_each
_row``) -- torchvision's ``SSDMatcher``. Offsets are encoded with the project's box coder
(:func:`mobilecnn.models.ssd_boxes.encode_boxes`, scales 10, 10, 5, 5).

Why softmax cross-entropy and not TF's sigmoid (focal-free) loss: the detectors count the background as class 0
(``num_classes`` 81 for COCO's 80), the post-processing is a softmax over them (one definition for PyTorch and
every exported file), and it is the loss torchvision's SSD / SSDLite users train with. The hard negatives are the
``neg_pos_ratio`` x positives background anchors with the highest loss in each image (TF's
``hard_example_miner`` with ``max_negatives_per_positive: 3``).

Both terms are summed and divided by the number of positive anchors in the batch (at least 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.ssd_boxes import encode_boxes

__all__ = ["MultiBoxLoss", "IOU_THRESHOLD", "NEG_POS_RATIO"]

IOU_THRESHOLD = 0.5
NEG_POS_RATIO = 3


class MultiBoxLoss(nn.Module):
    """``loss(raw (N, A, 4 + C), targets (N, M, 5))``; ``targets`` rows are ``x1, y1, x2, y2, label`` normalised to
    [0, 1] (:mod:`mobilecnn.data.detection`), label 0 = padding. ``anchors`` ``(A, 4)`` ``cx, cy, w, h``.

    After each call, :attr:`last_correct` is the number of positive anchors whose best class is their label,
    :attr:`last_positives` their count (the trainer's running accuracy) and :attr:`last_sum` the loss before the
    division by the positives (an evaluation sums both over batches: a figure that does not depend on how the
    set is batched or sharded)."""

    def __init__(self, anchors: torch.Tensor, neg_pos_ratio: int = NEG_POS_RATIO,
                 iou_threshold: float = IOU_THRESHOLD) -> None:
        # torchvision loads torch._dynamo (1.5 s): imported here, by the commands that build a detection loss
        from torchvision.models.detection._utils import SSDMatcher
        from torchvision.ops import box_convert

        super().__init__()
        self.anchors: torch.Tensor
        self.anchor_corners: torch.Tensor
        self.register_buffer("anchors", anchors.float(), persistent=False)
        self.register_buffer("anchor_corners", box_convert(anchors.float(), "cxcywh", "xyxy"), persistent=False)
        self.neg_pos_ratio = int(neg_pos_ratio)
        self.matcher = SSDMatcher(iou_threshold)
        self.last_correct = 0.0
        self.last_positives = 0.0
        self.last_sum = 0.0

    def match(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per anchor: the class label (0 = background) and the encoded box of its ground truth (zeros where
        unmatched), each ``(N, A)`` / ``(N, A, 4)``."""
        from torchvision.ops import box_iou

        n, a = targets.shape[0], self.anchors.shape[0]
        labels = torch.zeros(n, a, dtype=torch.int64, device=targets.device)
        boxes = torch.zeros(n, a, 4, dtype=torch.float32, device=targets.device)
        for i in range(n):
            real = targets[i, targets[i, :, 4] > 0]
            if real.shape[0] == 0:
                continue  # an image without boxes: every anchor is background
            matches = self.matcher(box_iou(real[:, :4], self.anchor_corners))
            hit = matches >= 0
            gt = real[matches[hit]]
            labels[i, hit] = gt[:, 4].long()
            boxes[i, hit] = encode_boxes(gt[:, :4], self.anchors[hit])
        return labels, boxes

    def forward(self, raw: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if raw.dim() != 3 or raw.shape[1] != self.anchors.shape[0]:
            raise ValueError(f"detector outputs must be (N, {self.anchors.shape[0]}, 4 + classes) at the training "
                             f"resolution, got {tuple(raw.shape)}")
        raw = raw.float()
        with torch.no_grad():
            labels, target_boxes = self.match(targets)
        positive = labels > 0
        num_pos = positive.sum(dim=1)
        box_loss = F.smooth_l1_loss(raw[..., :4][positive], target_boxes[positive], reduction="sum")
        logits = raw[..., 4:]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             reduction="none").view_as(labels)
        with torch.no_grad():  # the hardest background anchors, neg_pos_ratio per positive, in each image
            negative_ce = ce.masked_fill(positive, float("-inf"))
            rank = negative_ce.argsort(dim=1, descending=True).argsort(dim=1)
            hard = rank < (self.neg_pos_ratio * num_pos).unsqueeze(1)
        class_loss = ce[positive].sum() + ce[hard & ~positive].sum()
        total = max(1.0, float(num_pos.sum()))
        with torch.no_grad():
            self.last_correct = float((logits[positive].argmax(-1) == labels[positive]).sum())
            self.last_positives = float(num_pos.sum())
            self.last_sum = float(box_loss + class_loss)
        return (box_loss + class_loss) / total
