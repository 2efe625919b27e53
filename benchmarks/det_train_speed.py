"""Detection training speed, paired against a plain torchvision loop (issue 23 aim).

Aim: training img/s of mobilecnn's ``ssdlite_mobilenet_v2_x1_0`` at 320 px at least 1.0x a plain training loop
over torchvision's ``torchvision.models.detection.SSD`` with torchvision's ``SSDLiteHead`` on torchvision's
``mobilenet_v2`` (same anchors, batch, resolution and threads).

The two models (same architecture: parameter counts and every layer's shape are asserted equal before timing;
then ours' weights are copied into torchvision's, and on the timed batch both must give the same raw outputs,
the same matched anchors -- the same labels at the same IoUs in every image, :func:`compare_matching` -- the same
loss and the same gradients, so the anchors, their order and the loss are the same too. One exception is
allowed and reported: an exact IoU tie that the two coordinate scales round apart, so that a ground truth's
forced match takes the other of two equally good anchors; the loss then differs by a few 1e-4 and the gradients
are not compared. The weights stay equal for the timing; the two runs' losses part after a few steps by float
rounding that SGD on a fresh model amplifies, which does not change the work of a step):

* mobilecnn: ``create_model("ssdlite_mobilenet_v2_x1_0", num_classes=C)`` then, as the trainer does
  (``train/loop.py``), ``.to(memory_format=torch.channels_last)`` and channels_last inputs: MobileNetV2 tapped
  at the expansion output of its first 160-channel block (576 channels, stride 16) and at the 1280 conv
  (stride 32); four extra layers of depth 512, 256, 256, 128 (1x1 to half the depth, 3x3 depthwise stride 2,
  1x1 to the depth, each with BN eps 1e-3 and ReLU6); SSDLite predictors (3x3 depthwise BN ReLU6, 1x1 conv with
  bias) for the boxes and the classes on each of the 6 maps, 3 anchors per cell on the first, 6 on the others;
  loss :class:`mobilecnn.train.detection_loss.MultiBoxLoss` (the trainer's).
* torchvision: ``torchvision.models.mobilenet_v2(weights=None).features`` cut as torchvision's
  ``ssdlite320_mobilenet_v3_large`` cuts its MobileNetV3 (``_mobilenet_extractor`` ->
  ``SSDLiteFeatureExtractorMobileNet``, which reads MobileNetV3's ``block`` attribute, so an equivalent
  :class:`MobileNetV2Extractor` is written here for MobileNetV2's ``conv``): part 1 = blocks 0-13 and block 14's
  expansion conv, part 2 = the rest of block 14 and blocks 15-18; the four extra layers are torchvision's own
  ``ssdlite._extra_block`` (512, 256, 256, 128); the head is ``SSDLiteHead(in_channels, [3, 6, 6, 6, 6, 6], C,
  norm_layer)`` with ``norm_layer = BatchNorm2d(eps=1e-3)`` as ours (torchvision's own SSDLite320 uses eps 1e-3,
  momentum 0.03; the momentum does not change the work); all in ``torchvision.models.detection.SSD(size=(R, R))``,
  whose ``GeneralizedRCNNTransform`` then has ``min_size = max_size = R`` and ``fixed_size = (R, R)``: images
  given at R x R are not rescaled (its ``F.interpolate`` to the same size stays, a copy). Its anchor generator
  is :class:`OurAnchors`, a ``DefaultBoxGenerator`` that yields our anchors (``model.anchors(R, R)``, ``cx, cy,
  w, h`` in [0, 1]) as torchvision's pixel ``x1, y1, x2, y2``: both losses match the same 2,034 anchors at 320.
  Its loss is torchvision's own ``SSD.compute_loss`` (``SSDMatcher`` at IoU 0.5, smooth L1 on the coded boxes,
  softmax cross-entropy with 3:1 hard negatives: ``positive_fraction=0.25``), ours the same definition.
  Both anchor sets are computed once, outside the step (ours: the loss's buffer; torchvision's: the
  generator's buffer, where torchvision's own generator recomputes its boxes every step).

Both steps do the same preprocessing: both start from the same un-normalised batch (the loader's images with
its ImageNet normalisation undone, values in [0, 1]); ours normalises ``(x - mean) / std`` inside the timed step
(the trainer's data loader does it in its workers) and converts to channels_last as the trainer does;
torchvision's ``GeneralizedRCNNTransform`` normalises with the same mean/std inside ``SSD.forward`` (per image),
resizes to the same size and batches the images; our extractor turns the batch to channels_last when channels_last
is on (a torchvision user would do it in the backbone too).

One timed unit = one training step on the same fixed batch for both: the first batch of the default scenes
(``mobilecnn.data.detection.load_detection(None, batch_size=B, resolution=R)``: real images with their boxes,
SSD's augmentation applied), ours with its ``(N, M, 5)`` targets, torchvision's with the same boxes as its
list of ``{"boxes": pixel x1 y1 x2 y2, "labels": int64}``: forward, loss, backward, SGD (momentum 0.9) step,
``zero_grad``; both models in train mode, the same torch threads, channels_last for both or neither. The two
steps are interleaved with :func:`mobilecnn.deploy.timing.paired_times`: rounds of ``--calls`` steps each in a
freshly shuffled order, a round dropped when other processes used more than ``--max-other-load`` cores during
it; the ratio ours/torchvision (img/s) is the median of per-round ratios with a bootstrap 95% interval.

Writes ``benchmarks/results/det_train_speed.json`` and ``.md`` next to it (``--out``).

Measurement (idle machine; about 5 min on 2 cores: 60 rounds x 3 steps x 2 models of about 0.6 s at batch 16
and 320 px -- a ``--quick`` run at batch 8 took 0.30 s a step on this project's 2-core box at load 1.3 -- plus
building, the checks, 3 warm-up and 4 probe steps per model)::

    .venv/bin/python benchmarks/det_train_speed.py --threads 2 --batch 16 --resolution 320 --rounds 60 --calls 3

Smoke run (shows it works; not for the results folder)::

    .venv/bin/python benchmarks/det_train_speed.py --rounds 2 --calls 1 --warmup 1 --resolution 128 --batch 4 \
        --max-other-load 100 --out /tmp/det_smoke.json

Usage: ``python benchmarks/det_train_speed.py [--quick] [--threads N] [--batch B] [--resolution R] [--rounds N]
[--calls N] [--warmup N] [--max-other-load L] [--[no-]channels-last] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD as TVSSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops import box_convert, box_iou

from mobilecnn import create_model
from mobilecnn.data.detection import load_detection
from mobilecnn.deploy.timing import bootstrap_ratio, machine_info, paired_times
from mobilecnn.files import atomic_write_text
from mobilecnn.models.ssd import BN_EPS, EXTRA_DEPTHS
from mobilecnn.models.ssd_boxes import boxes_per_cell
from mobilecnn.train.detection_loss import IOU_THRESHOLD, NEG_POS_RATIO, MultiBoxLoss

MODEL = "ssdlite_mobilenet_v2_x1_0"
OURS, PLAIN = "mobilecnn ssdlite_mobilenet_v2_x1_0", "torchvision SSD(SSDLiteHead, mobilenet_v2)"
AIM = 1.0
C4_CHANNELS = 160  # the expansion output of the first block of this width is the stride-16 tap (TF's layer_15)
#: How far apart the raw outputs, losses and gradients of the same weights may be (float sums in another order).
OUTPUT_ATOL = 1e-3
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-3  # of the largest gradient
TIE_LOSS_RTOL = 1e-2  # when an IoU tie was matched to another anchor (compare_matching)


# ------------------------------------------------------------------------------------- the two models
class MobileNetV2Extractor(nn.Module):
    """torchvision's ``SSDLiteFeatureExtractorMobileNet`` for torchvision's MobileNetV2: the same two-part cut
    (start .. C4 expansion, C4 depthwise .. the 1280 conv) and four ``_extra_block``; returns the 6 maps as an
    ``OrderedDict``. ``channels_last``: the batch is turned channels_last first (what ours' trainer does)."""

    def __init__(self, features: nn.Sequential, norm_layer: Callable[..., nn.Module], channels_last: bool) -> None:
        super().__init__()
        blocks = [i for i, b in enumerate(features) if isinstance(b, InvertedResidual)]
        c4 = next(i for i in blocks if features[i].out_channels == C4_CHANNELS)
        block = features[c4]
        assert c4 == 14 and block.stride == 2 and not block.use_res_connect, (c4, block.stride)
        self.features = nn.Sequential(
            nn.Sequential(*features[:c4], block.conv[0]),  # up to block 14's expansion (576 channels)
            nn.Sequential(*block.conv[1:], *features[c4 + 1:]),  # block 14's depthwise .. the 1280 conv
        )
        depths = [features[-1].out_channels, *EXTRA_DEPTHS]
        self.extra = nn.ModuleList(_extra_block(i, o, norm_layer) for i, o in zip(depths, depths[1:]))
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        maps = []
        for part in self.features:
            x = part(x)
            maps.append(x)
        for block in self.extra:
            x = block(x)
            maps.append(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class OurAnchors(DefaultBoxGenerator):
    """A ``DefaultBoxGenerator`` whose boxes are given: ``anchors`` ``(A, 4)`` ``cx, cy, w, h`` in [0, 1] (ours)
    as pixel ``x1, y1, x2, y2`` of a ``height`` x ``width`` input, for feature maps of ``sizes``."""

    def __init__(self, anchors: torch.Tensor, height: int, width: int, per_cell: tuple[int, ...],
                 sizes: list[tuple[int, int]]) -> None:
        super().__init__([[2]] * len(per_cell))  # its own scales and ratios are not used
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        self.boxes: torch.Tensor
        self.register_buffer("boxes", box_convert(anchors.float(), "cxcywh", "xyxy") * scale, persistent=False)
        self.per_cell, self.sizes, self.image_size = list(per_cell), [tuple(s) for s in sizes], (height, width)

    def num_anchors_per_location(self) -> list[int]:
        return self.per_cell

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        if sizes != self.sizes or tuple(image_list.tensors.shape[-2:]) != self.image_size:
            raise ValueError(f"OurAnchors: made for maps {self.sizes} of a {self.image_size} input, got {sizes} "
                             f"of {tuple(image_list.tensors.shape[-2:])}")
        return [self.boxes for _ in image_list.image_sizes]


def torchvision_ssdlite(ours: nn.Module, num_classes: int, resolution: int, mean, std,
                        channels_last: bool) -> TVSSD:
    """torchvision's SSD with SSDLiteHead on torchvision's MobileNetV2 (module docstring), ours' anchors."""
    norm_layer = partial(nn.BatchNorm2d, eps=BN_EPS)
    backbone = MobileNetV2Extractor(torchvision.models.mobilenet_v2(weights=None).features, norm_layer,
                                    channels_last)
    in_channels = det_utils.retrieve_out_channels(backbone, (resolution, resolution))
    per_cell = boxes_per_cell(ours.anchor_spec, len(in_channels))
    anchors = OurAnchors(ours.anchors(resolution, resolution), resolution, resolution, per_cell,
                         ours.feature_sizes(resolution, resolution))
    head = SSDLiteHead(in_channels, list(per_cell), num_classes, norm_layer)
    model = TVSSD(backbone, anchors, (resolution, resolution), num_classes, image_mean=list(mean),
                  image_std=list(std), head=head, iou_thresh=IOU_THRESHOLD, positive_fraction=1 / (1 + NEG_POS_RATIO))
    assert model.neg_to_pos_ratio == NEG_POS_RATIO, model.neg_to_pos_ratio
    return model


def ours_ssdlite(num_classes: int) -> nn.Module:
    return create_model(MODEL, num_classes=num_classes, small_input=False)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer(m: nn.Module) -> tuple | None:
    if isinstance(m, nn.Conv2d):
        return ("conv", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.dilation, m.padding, m.groups,
                m.bias is not None)
    if isinstance(m, nn.BatchNorm2d):
        return ("bn", m.num_features, m.eps, m.momentum)
    if isinstance(m, (nn.ReLU, nn.ReLU6)):
        return (type(m).__name__,)
    return None


def layers(*modules: nn.Module) -> list[tuple]:
    return [sig for module in modules for m in module.modules() if (sig := _layer(m)) is not None]


def _parts(ours: nn.Module, plain: TVSSD) -> dict[str, tuple[list[nn.Module], list[nn.Module]]]:
    """The matching parts of the two models, in the order of their layers."""
    tv_backbone = plain.backbone
    assert isinstance(tv_backbone, MobileNetV2Extractor)
    head = plain.head
    assert isinstance(head, SSDLiteHead)
    return {"backbone": ([ours.backbone], [tv_backbone.features]),
            "extra layers": ([ours.extras], [tv_backbone.extra]),
            "box predictors": ([ours.box_head], [head.regression_head.module_list]),
            "class predictors": ([ours.class_head], [head.classification_head.module_list])}


def check_same_architecture(ours: nn.Module, plain: TVSSD) -> dict:
    """Equal parameter counts; the same layers (shape, stride, padding, groups, bias, BN eps) in the same order
    in each part: backbone, extra layers, box predictors, class predictors."""
    counts = {OURS: n_params(ours), PLAIN: n_params(plain)}
    print(f"parameters: {OURS}: {counts[OURS]:,}; {PLAIN}: {counts[PLAIN]:,}", flush=True)
    assert counts[OURS] == counts[PLAIN], counts
    sizes = {}
    for name, (a, b) in _parts(ours, plain).items():
        la, lb = layers(*a), layers(*b)
        assert la == lb, (name, next(((i, x, y) for i, (x, y) in enumerate(zip(la, lb)) if x != y),
                                     (len(la), len(lb))))
        sizes[name] = len(la)
    return {"parameters": counts, "layers": sizes}


def copy_weights(ours: nn.Module, plain: TVSSD) -> int:
    """Ours' parameters and BN buffers into torchvision's, part by part in order (shapes asserted equal)."""
    copied = 0
    with torch.no_grad():
        for name, (a, b) in _parts(ours, plain).items():
            src = [t for m in a for t in m.state_dict().values()]
            dst = [t for m in b for t in m.state_dict().values()]
            assert len(src) == len(dst), (name, len(src), len(dst))
            for s, d in zip(src, dst):
                assert s.shape == d.shape, (name, s.shape, d.shape)
                d.copy_(s)
                copied += 1
    return copied


# ------------------------------------------------------------------------------------- data and one step
def fixed_batch(batch: int, resolution: int, seed: int):
    """The first training batch of the default scenes: un-normalised images in [0, 1], ours' targets
    ``(N, M, 5)``, torchvision's list of dicts (pixel boxes) and the normalisation mean/std."""
    train, _, info = load_detection(None, batch_size=batch, resolution=resolution, workers=0, seed=seed)
    x, y = next(iter(train.batches(0)))
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    raw = (x * std + mean).contiguous()
    scale = torch.tensor([resolution, resolution, resolution, resolution], dtype=torch.float32)
    targets = [{"boxes": rows[rows[:, 4] > 0, :4] * scale, "labels": rows[rows[:, 4] > 0, 4].long()} for rows in y]
    return raw, y, targets, (mean, std), info


def ours_forward(model: nn.Module, raw: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor],
                 channels_last: bool) -> torch.Tensor:
    x = (raw - norm[0]) / norm[1]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return model(x)


def compare_matching(criterion: MultiBoxLoss, plain: TVSSD, y: torch.Tensor, targets: list[dict]) -> dict:
    """Ours' anchor matching (IoU of fractions) against torchvision's (``SSDMatcher`` on pixel IoU, as
    ``SSD.forward`` runs it): in each image the same positives -- the same labels, matched at the same IoUs.
    An anchor matched on one side only is an exact IoU tie (synthetic scenes put boxes on a grid, as the
    anchors are): the forced match of a ground truth picks the first of equally good anchors, and the two
    coordinate scales round such a tie apart. Returns the positives and the anchors matched differently."""
    labels, _ = criterion.match(y)
    positives = ties = 0
    for i, t in enumerate(targets):
        theirs = torch.zeros_like(labels[i])
        quality = {"ours": [], "torchvision": []}
        if t["boxes"].numel():
            iou = box_iou(t["boxes"], plain.anchor_generator.boxes)
            matched = plain.proposal_matcher(iou)
            hit = (matched >= 0).nonzero().flatten()
            theirs[hit] = t["labels"][matched[hit]]
            quality["torchvision"] = sorted((int(theirs[a]), round(float(iou[matched[a], a]), 5)) for a in hit)
            real = y[i, y[i, :, 4] > 0]
            iou_ours = box_iou(real[:, :4], criterion.anchor_corners)  # what MultiBoxLoss.match computes
            gt = criterion.matcher(iou_ours)
            mine = (gt >= 0).nonzero().flatten()
            assert torch.equal(labels[i, mine], real[gt[mine], 4].long()) and int((labels[i] > 0).sum()) == len(mine)
            quality["ours"] = sorted((int(labels[i, a]), round(float(iou_ours[gt[a], a]), 5)) for a in mine)
        assert quality["ours"] == quality["torchvision"], (i, quality)
        positives += len(quality["ours"])
        ties += int((theirs != labels[i]).sum()) // 2
    return {"positive_anchors": positives, "tied_anchors_matched_differently": ties}


def check_same_function(ours: nn.Module, plain: TVSSD, criterion: MultiBoxLoss, raw: torch.Tensor,
                        y: torch.Tensor, targets: list[dict], norm, channels_last: bool) -> dict:
    """With ours' weights copied into torchvision's: the same raw outputs (eval), the same matching
    (:func:`compare_matching`), the same loss and the same gradients (train; no optimiser step, so the weights
    stay equal for the timing). Where a tie was matched to another anchor, the loss may differ by up to
    :data:`TIE_LOSS_RTOL` and the gradients are reported, not compared."""
    copied = copy_weights(ours, plain)
    with torch.no_grad():
        ours.eval()
        plain.eval()
        mine = ours_forward(ours, raw, norm, channels_last)
        images, _ = plain.transform(list(raw))
        head = plain.head(list(plain.backbone(images.tensors).values()))
        theirs = torch.cat([head["bbox_regression"], head["cls_logits"]], dim=-1)
    assert mine.shape == theirs.shape, (mine.shape, theirs.shape)
    out_diff = float((mine - theirs).abs().max())
    matching = compare_matching(criterion, plain, y, targets)
    ours.train()
    plain.train()
    loss_ours = criterion(ours_forward(ours, raw, norm, channels_last).float(), y)
    loss_plain = sum(plain(list(raw), targets).values())
    loss_ours.backward()
    loss_plain.backward()
    grad_diff, grad_max = 0.0, 0.0
    for a, b in _parts(ours, plain).values():
        for pa, pb in zip((p for m in a for p in m.parameters()), (p for m in b for p in m.parameters())):
            assert pa.grad is not None and pb.grad is not None
            grad_diff = max(grad_diff, float((pa.grad - pb.grad).abs().max()))
            grad_max = max(grad_max, float(pa.grad.abs().max()))
    ours.zero_grad(set_to_none=True)
    plain.zero_grad(set_to_none=True)
    lo, lp = float(loss_ours.detach()), float(loss_plain.detach())
    ties = matching["tied_anchors_matched_differently"]
    print(f"same weights: raw outputs {tuple(mine.shape)} differ by at most {out_diff:.2e}; "
          f"{matching['positive_anchors']} positive anchors, {ties} IoU tie(s) matched to another anchor; loss "
          f"{OURS} {lo:.6f}, {PLAIN} {lp:.6f}; gradients differ by at most {grad_diff:.2e} (largest "
          f"{grad_max:.2e})", flush=True)
    assert out_diff <= OUTPUT_ATOL, out_diff
    assert abs(lo - lp) <= (TIE_LOSS_RTOL if ties else LOSS_RTOL) * max(1.0, abs(lo)), (lo, lp, ties)
    assert ties or grad_diff <= GRAD_RTOL * grad_max, (grad_diff, grad_max)
    return {"tensors_copied": copied, "outputs_shape": list(mine.shape), "max_abs_output_diff": out_diff,
            **matching, "loss": {OURS: lo, PLAIN: lp}, "max_abs_grad_diff": grad_diff, "max_abs_grad": grad_max,
            "gradients_compared": not ties}


def train_step(fn: Callable[[], torch.Tensor], model: nn.Module, lr: float = 0.01
               ) -> tuple[Callable[[], None], list[float]]:
    """One SGD step (``fn()`` = forward and loss, backward, step, zero_grad) as a callable; also the last loss."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    last: list[float] = [float("nan")]

    def step() -> None:
        loss = fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last[0] = float(loss.detach())

    return step, last


# ------------------------------------------------------------------------------------- report
def markdown(result: dict) -> str:
    s, r = result["setting"], result["result"]
    m, a, f = result["machine"], result["architecture"], result["same_function"]
    lines = ["# det_train_speed (issue 23): mobilecnn SSDLite training vs a plain torchvision loop, paired", "",
             f"{m.get('cpu')}; torch {m.get('torch')}, torchvision {result['torchvision']}; {s['threads']} "
             f"thread(s); batch {s['batch']}, {s['resolution']} px, {s['num_classes']} classes (background "
             f"included), {s['anchors']:,} anchors, {s['boxes']} boxes in the batch, channels_last "
             f"{'on' if s['channels_last'] else 'off'} (both); {s['rounds']} rounds x {s['calls_per_round']} steps "
             f"per model; rounds with other load > {s['max_other_load']} core dropped ({r['rounds_dropped']} "
             f"dropped); load average at start {result['load_average_start']}, end {result['load_average_end']}."
             + (" **--quick run: too few rounds for final figures.**" if s["quick"] else ""), "",
             f"Same architecture: {a['parameters'][OURS]:,} parameters each; layers equal in order: "
             + ", ".join(f"{n} {k}" for n, k in a["layers"].items()) + ". Same function: with ours' weights "
             f"copied, raw outputs differ by at most {f['max_abs_output_diff']:.1e}; {f['positive_anchors']} positive "
             f"anchors matched alike ({f['tied_anchors_matched_differently']} IoU tie(s) broken the other way); the "
             f"losses are "
             f"{f['loss'][OURS]:.5f} (ours) and {f['loss'][PLAIN]:.5f} (torchvision), the gradients differ by at most "
             f"{f['max_abs_grad_diff']:.1e} (largest {f['max_abs_grad']:.1e}"
             + ("" if f["gradients_compared"] else "; not compared: a tie") + ").", "",
             "| model | ms / step (median over rounds) | img/s |", "|---|---|---|"]
    for name in (OURS, PLAIN):
        ms = r["median_ms_per_step"].get(name)
        ips = r["img_per_s"].get(name)
        lines.append(f"| {name} | {'-' if ms is None else f'{ms:.1f}'} | {'-' if ips is None else f'{ips:.2f}'} |")
    lines.append("")
    v = r["ratio_ours_over_torchvision"]
    if v:
        lines += [f"Ratio ours / torchvision (img/s, paired per round): **{v[0]:.3f}** [95% CI {v[1]:.3f}, {v[2]:.3f}]",
                  "", f"Aim >= {AIM}x: {'held' if r['aim_held'] else 'NOT held'} (median); lower 95% bound "
                  f"{'>=' if r['aim_held_at_lower_95'] else '<'} {AIM}."]
    else:
        lines.append("No ratio: no round was kept.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both models)")
    parser.add_argument("--batch", type=int, default=16, help="images per step (fast_detection's batch)")
    parser.add_argument("--resolution", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (default 60, --quick 3)")
    parser.add_argument("--calls", type=int, default=3, help="training steps per model per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model before the rounds (the "
                        "timing also runs 4 untimed probe steps each)")
    parser.add_argument("--max-other-load", type=float, default=0.15, help="drop a round in which other processes "
                        "used more than this many cores")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels_last model and inputs for both (default on: mobilecnn's trainer default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "det_train_speed.json"))
    args = parser.parse_args(argv)
    if args.batch < 2:
        parser.error("--batch must be >= 2 (the last extra layer's BatchNorm sees one value per channel and image)")
    rounds = args.rounds or (3 if args.quick else 60)
    torch.set_num_threads(args.threads)
    result: dict = {"torch": torch.__version__, "torchvision": torchvision.__version__, "machine": machine_info(),
                    "threads": args.threads, "load_average_start": os.getloadavg()}

    raw, y, targets, norm, info = fixed_batch(args.batch, args.resolution, args.seed)
    num_classes = info.num_classes
    torch.manual_seed(args.seed)
    ours = ours_ssdlite(num_classes)
    plain = torchvision_ssdlite(ours, num_classes, args.resolution, info.mean, info.std, args.channels_last)
    result["architecture"] = check_same_architecture(ours, plain)
    if args.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
        plain = plain.to(memory_format=torch.channels_last)
    criterion = MultiBoxLoss(ours.anchors(args.resolution, args.resolution))
    assert criterion.anchors.shape[0] == ours.num_anchors(args.resolution, args.resolution) \
        == plain.anchor_generator.boxes.shape[0]
    result["same_function"] = check_same_function(ours, plain, criterion, raw, y, targets, norm, args.channels_last)

    def ours_loss() -> torch.Tensor:
        return criterion(ours_forward(ours, raw, norm, args.channels_last).float(), y)

    def plain_loss() -> torch.Tensor:
        losses = plain(list(raw), targets)
        return losses["bbox_regression"] + losses["classification"]

    steps = {OURS: train_step(ours_loss, ours), PLAIN: train_step(plain_loss, plain)}
    for _ in range(args.warmup):
        for fn, _last in steps.values():
            fn()
    t = paired_times({name: fn for name, (fn, _) in steps.items()}, min_rounds=rounds, max_rounds=rounds,
                     calls_per_round=args.calls, max_other_load=args.max_other_load, seed=args.seed)
    if t["failed"]:
        raise RuntimeError(f"timing failed: {t['failed']}")
    pr = {n: t["per_round_ms"].get(n, []) for n in (OURS, PLAIN)}
    med = {n: (statistics.median(v) if v else None) for n, v in pr.items()}
    ips = {n: (args.batch / (m / 1e3) if m else None) for n, m in med.items()}
    # img/s ratio ours/torchvision = per-round time ratio torchvision/ours
    ratio = list(bootstrap_ratio(pr[PLAIN], pr[OURS])) if pr[OURS] and pr[PLAIN] else None
    losses = {n: last[0] for n, (_, last) in steps.items()}
    result["setting"] = {"model": MODEL, "batch": args.batch, "resolution": args.resolution,
                         "num_classes": num_classes, "anchors": int(criterion.anchors.shape[0]),
                         "boxes": int(sum(len(t_["labels"]) for t_ in targets)), "data": info.name,
                         "channels_last": args.channels_last, "threads": args.threads, "rounds": rounds,
                         "calls_per_round": args.calls, "warmup": args.warmup, "max_other_load": args.max_other_load,
                         "quick": args.quick,
                         "step": "normalise (ours: in the step; torchvision: its GeneralizedRCNNTransform), forward, "
                                 "multibox loss (ours: MultiBoxLoss; torchvision: SSD.compute_loss), backward, "
                                 "SGD(momentum=0.9).step, zero_grad(set_to_none=True); train mode; one fixed batch"}
    result["result"] = {
        "rounds_kept": rounds - t["dropped"], "rounds_dropped": t["dropped"],
        "other_load_median": statistics.median(t["other_load"]) if t["other_load"] else None,
        "median_ms_per_step": med, "img_per_s": {n: (round(v, 2) if v else None) for n, v in ips.items()},
        "ratio_ours_over_torchvision": ratio, "aim": AIM,
        "aim_held": bool(ratio and ratio[0] >= AIM), "aim_held_at_lower_95": bool(ratio and ratio[1] >= AIM),
        "last_loss": losses, "per_round_ms": pr,
    }
    result["load_average_end"] = os.getloadavg()
    summary = {k: v for k, v in result["result"].items() if k != "per_round_ms"}
    print(json.dumps(summary, indent=2), flush=True)
    if not all(v == v and abs(v) < float("inf") for v in losses.values()):
        print(f"warning: a loss is not finite: {losses}", file=sys.stderr)
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
