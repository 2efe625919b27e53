"""Mobile DeepLabv3 (MobileNetV2 paper section 6.3, Table 7; DeepLabv3: Chen et al., arXiv 1706.05587).

A classifier of the zoo, dilated to output stride 16 (default) or 8 and cut before its pool (its
:class:`~mobilecnn.models.features.FeatureNet`: the same module names, so a classification checkpoint
initialises it, :func:`load_backbone_weights`), then a DeepLabv3 head on its last stage output:

* MobileNetV2: the 320-channel output of the last block, without the 1280-channel 1x1 conv (Table 7's
  "MNV2*": "second last feature map"); MobileNet V1: its last (1024-channel) block; ShuffleNet v1: Stage 4.
* ``aspp=False`` (the default, the paper's on-device candidate): an image-pooling branch (global average
  pool, 1x1 conv 256, BN, ReLU, bilinear upsampling back) and a 1x1 conv 256 (BN, ReLU), concatenated (in
  that order, as DeepLab's ``model.py``), a 1x1 projection to 256 (BN, ReLU), dropout 0.1 (keep 0.9) and 1x1
  logits with bias. ``aspp=True`` adds three regular 3x3 atrous convs 256 (BN, ReLU) at rates 6, 12, 18
  (output stride 16) or 12, 24, 36 (output stride 8) after the 1x1 branch. BN eps 1e-5.
* The logits are upsampled bilinearly (``align_corners=False``) to the input size, as torchvision's
  ``DeepLabV3`` does (DeepLab's TF code resizes with ``align_corners=True``); ``num_classes`` counts the
  background (21 for PASCAL VOC).

The image-pooling branch's BN sees one value per channel and image, so training needs a batch of 2 or more.
The figures of Table 7 are :data:`TABLE7`; MAdds are counted at 513 x 513 (DeepLab's crop), multi-scale +
flip (MF) summed over the inputs of :func:`evaluation_sizes` (docs/counting.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..layers import ConvBNAct
from ..validators import check_bool, check_choice, check_positive_int
from .base import MAX_NUM_CLASSES, ClassifierNet, ImageModel, init_weights
from .features import FeatureNet
from .published import PublishedSegmentation
from .registry import get_model_entry, register_model
from .weights_file import check_state_fits, load_weights, read_metadata

__all__ = ["DeepLabV3", "DeepLabHead", "BackboneModel", "ASPP_RATES", "MF_SCALES", "TABLE7", "load_backbone_weights",
           "scaled_size", "evaluation_sizes"]

#: Atrous rates of the three 3x3 ASPP branches by output stride (DeepLabv3 section 3.3: doubled at 8).
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
HEAD_CHANNELS = 256
HEAD_DROPOUT = 0.1
#: Table 7's "MF": DeepLab's evaluation scales, each input also flipped left-right.
MF_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def scaled_size(size: int, scale: float) -> int:
    """DeepLab's ``scale_dimension``: ``int((size - 1) * scale + 1)`` (513 -> 257, 385, 513, 641, 769, 897)."""
    return int((size - 1) * scale + 1)


def evaluation_sizes(resolution: int, multi_scale_flip: bool = False) -> list[int]:
    """The input sides one evaluation runs: ``resolution``, or with MF each scale twice (the flipped copy costs
    the same)."""
    return [scaled_size(resolution, s) for s in MF_SCALES for _ in range(2)] if multi_scale_flip else [resolution]


class DeepLabHead(nn.Module):
    """DeepLabv3's head (see the module docstring): image pooling + 1x1 (+ ASPP ``rates``) -> project -> logits."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.pool = ConvBNAct(in_channels, HEAD_CHANNELS, 1)
        branches = [ConvBNAct(in_channels, HEAD_CHANNELS, 1)]
        for rate in self.rates:
            atrous = ConvBNAct(in_channels, HEAD_CHANNELS, 3)
            atrous.set_stride_dilation(1, rate)
            branches.append(atrous)
        self.branches = nn.ModuleList(branches)
        self.project = ConvBNAct(HEAD_CHANNELS * (1 + len(branches)), HEAD_CHANNELS, 1)
        self.dropout = nn.Dropout(HEAD_DROPOUT)
        self.classifier = nn.Conv2d(HEAD_CHANNELS, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(F.adaptive_avg_pool2d(x, 1))
        pooled = F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([pooled] + [branch(x) for branch in self.branches], dim=1)
        return self.classifier(self.dropout(self.project(x)))


class DeepLabV3(ImageModel):
    """Mobile DeepLabv3 on the registered classifier ``backbone_name`` (module docstring): ``backbone`` (a
    :class:`FeatureNet`) and ``head`` (:class:`DeepLabHead`). Returns ``(N, num_classes, H, W)`` logits,
    upsampled bilinearly to the input size as torchvision's ``DeepLabV3`` does.

    ``output_stride`` 16 or 8 is reached by dilation (TF-slim's rule); with ``small_input`` the backbone's own
    stride is 8, so both give 8 (``self.output_stride`` is the one reached, and picks the ASPP rates).
    """

    def __init__(self, backbone_name: str, num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                 output_stride: int = 16, aspp: bool = False) -> None:
        owner = f"DeepLabv3 ({backbone_name})"
        check_choice(output_stride, f"{owner}: output_stride", tuple(ASPP_RATES))
        check_bool(aspp, f"{owner}: aspp")
        check_positive_int(num_classes, f"{owner}: num_classes", maximum=MAX_NUM_CLASSES)
        classifier = get_model_entry(backbone_name).builder(in_chans=in_chans, small_input=small_input)
        if not isinstance(classifier, ClassifierNet):
            raise TypeError(f"{owner}: the backbone must be a classifier of the zoo")
        classifier.set_output_stride(output_stride)
        last_stage = [i for i, tap in enumerate(classifier.feature_taps()) if tap.stage][-1]
        backbone = FeatureNet(classifier, [last_stage])
        super().__init__(owner, in_chans, backbone.total_stride, small_input)
        self.num_classes, self.backbone_name, self.aspp = num_classes, backbone_name, aspp
        self.output_stride = backbone.output_stride
        self.arch = dict(backbone.arch)
        self.backbone = backbone
        self.head = DeepLabHead(backbone.feature_info.channels()[-1], num_classes,
                                ASPP_RATES[self.output_stride] if aspp else ())
        init_weights(self.head, zero_init_residual=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_once(x)
        logits = self.head(self.backbone(x)[-1])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh logits conv for ``num_classes`` classes (fine-tuning on another label set)."""
        check_positive_int(num_classes, f"{self.owner}: num_classes", maximum=MAX_NUM_CLASSES)
        old = self.head.classifier
        self.head.classifier = nn.Conv2d(old.in_channels, num_classes, 1)
        init_weights(self.head.classifier, zero_init_residual=False)
        self.num_classes = num_classes


class BackboneModel(Protocol):
    """What :func:`load_backbone_weights` reads of a model built on a classifier of the zoo (DeepLabV3, SSD)."""

    owner: str
    in_chans: int
    small_input: bool
    backbone_name: str
    arch: dict[str, Any]
    backbone: FeatureNet


def _check_backbone_file(path: str | os.PathLike, model: BackboneModel) -> None:
    """A mobilecnn file must name the backbone's classifier, with the same input channels, stem and options."""
    meta = read_metadata(path)
    want = {"in_chans": str(model.in_chans), "small_input": str(model.small_input)}
    if meta.get("model") and meta["model"] != model.backbone_name:
        raise CheckpointError(f"{path} holds weights for {meta['model']}, but the backbone of {model.owner} is "
                              f"{model.backbone_name}")
    for key, value in want.items():
        if meta.get(key) and meta[key] != value:
            raise CheckpointError(f"{path} was made with {key}={meta[key]}, the backbone of {model.owner} has "
                                  f"{key}={value}")
    try:
        recorded = json.loads(meta.get("model_kwargs") or "{}")
    except ValueError:
        recorded = {}
    differ = {k: v for k, v in (recorded.items() if isinstance(recorded, dict) else ())
              if k in model.arch and model.arch[k] != v}
    if differ:
        built = {k: model.arch[k] for k in differ}
        raise CheckpointError(f"{path} was made with {differ}, the backbone of {model.owner} is built with {built}: "
                              "the same tensors would compute another function")


def load_backbone_weights(model: BackboneModel, weights: str | os.PathLike | Mapping[str, torch.Tensor]) -> list[str]:
    """Initialise ``model.backbone`` from a classification checkpoint of ``model.backbone_name``: a mobilecnn
    safetensors file (checked against the backbone: model, input channels, stem, architecture options) or a
    state_dict. Every backbone tensor must be there with its shape (else :class:`CheckpointError` names the
    first missing one); the head keeps its initialisation. Returns the checkpoint keys left out (the
    classifier; for DeepLab MobileNetV2's final 1x1 conv, which its head does not use). Any model with a
    :class:`FeatureNet` ``backbone`` of the zoo (:class:`BackboneModel`: DeepLabV3, SSD) loads this way."""
    if isinstance(weights, Mapping):
        state, where = dict(weights), "the state_dict"
    else:
        _check_backbone_file(weights, model)
        state, where = load_weights(weights), str(weights)
    own = model.backbone.state_dict()
    check_state_fits({k: v for k, v in state.items() if k in own}, model.backbone, where)
    model.backbone.load_state_dict({k: state[k] for k in own})
    return sorted(set(state) - set(own))


# Table 7 of the MobileNetV2 paper: PASCAL VOC 2012 val, every model pretrained on COCO; 513 x 513, 21 classes.
# The MAdds are TensorFlow's (dilated convs run by space-to-batch); docs/counting.md compares both conventions.
_T7 = "MobileNetV2 Table 7"
_MNV2, _MNV1 = "deeplabv3_mobilenet_v2_x1_0", "deeplabv3_mobilenet_v1_x1_0"
TABLE7: tuple[PublishedSegmentation, ...] = (
    PublishedSegmentation(_T7, "MNet V1", _MNV1, 16, True, False, 75.29, 11.15, 14.25, 0.01, madds_tolerance=0.0015,
                          note="counted 14.227 B the TF way (12.761 B plain): 0.13% under the printed 14.245-14.255"),
    PublishedSegmentation(_T7, "MNet V1", _MNV1, 8, True, True, 78.56, 11.15, 941.9, 0.1, madds_tolerance=0.053,
                          note="not reproduced: 990.8 B the TF way (+5.2%), 800.7 B plain (-15%); ASPP rates "
                               "6/12/18 (885.3 B) or inputs int(513 s) (969.8 B) do not give it either"),
    PublishedSegmentation(_T7, "MNV2*", _MNV2, 16, True, False, 75.70, 4.52, 5.8, 0.1),
    PublishedSegmentation(_T7, "MNV2*", _MNV2, 8, True, True, 78.42, 4.52, 387, 1),
    PublishedSegmentation(_T7, "MNV2*", _MNV2, 16, False, False, 75.32, 2.11, 2.75, 0.01, madds_tolerance=0.001,
                          note="counted 2.7424 B the TF way (2.7407 B plain): 0.09% under the printed 2.745-2.755; "
                               "the paper's on-device candidate"),
    PublishedSegmentation(_T7, "MNV2*", _MNV2, 8, False, True, 77.33, 2.11, 152.6, 0.1, madds_tolerance=0.0002,
                          note="counted 152.53 B the TF way (152.33 B plain): 0.02% under the printed 152.55-152.65"),
    PublishedSegmentation(_T7, "ResNet-101", None, 16, True, False, 80.49, 58.16, 81.0, 0.1, note="not built here"),
    PublishedSegmentation(_T7, "ResNet-101", None, 8, True, True, 82.70, 58.16, 4870.6, 0.1, note="not built here"),
)


def _rows(name: str) -> tuple[PublishedSegmentation, ...]:
    return tuple(row for row in TABLE7 if row.model == name)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_mobilenet_v2_x0_35(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                 output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on MobileNetV2 width 0.35 (its 320 x 0.35 = 112-channel output)."""
    return DeepLabV3("mobilenet_v2_x0_35", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_mobilenet_v2_x0_5(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on MobileNetV2 width 0.5."""
    return DeepLabV3("mobilenet_v2_x0_5", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_mobilenet_v2_x0_75(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                 output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on MobileNetV2 width 0.75."""
    return DeepLabV3("mobilenet_v2_x0_75", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation", segmentation=_rows(_MNV2))
def deeplabv3_mobilenet_v2_x1_0(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on MobileNetV2 width 1: Table 7's MNV2* (the 320-channel output, no 1280 conv)."""
    return DeepLabV3("mobilenet_v2_x1_0", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_mobilenet_v2_x1_4(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on MobileNetV2 width 1.4."""
    return DeepLabV3("mobilenet_v2_x1_4", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_mobilenet_v1_x0_25(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                 output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on MobileNet V1 width 0.25 (its last, 256-channel block)."""
    return DeepLabV3("mobilenet_v1_x0_25", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_mobilenet_v1_x0_5(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on MobileNet V1 width 0.5."""
    return DeepLabV3("mobilenet_v1_x0_5", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_mobilenet_v1_x0_75(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                 output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on MobileNet V1 width 0.75."""
    return DeepLabV3("mobilenet_v1_x0_75", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation", segmentation=_rows(_MNV1))
def deeplabv3_mobilenet_v1_x1_0(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on MobileNet V1 width 1: Table 7's "MNet V1" (its last, 1024-channel block)."""
    return DeepLabV3("mobilenet_v1_x1_0", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_shufflenet_v1_g3_x0_5(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                    output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on ShuffleNet v1 0.5x, g=3 (its Stage 4)."""
    return DeepLabV3("shufflenet_v1_g3_x0_5", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_shufflenet_v1_g3_x1_0(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                    output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on ShuffleNet v1 1x, g=3 (its Stage 4)."""
    return DeepLabV3("shufflenet_v1_g3_x1_0", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_shufflenet_v1_g3_x1_5(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                    output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on ShuffleNet v1 1.5x, g=3 (its Stage 4)."""
    return DeepLabV3("shufflenet_v1_g3_x1_5", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_shufflenet_v1_g3_x2_0(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                    output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on ShuffleNet v1 2x, g=3 (its Stage 4)."""
    return DeepLabV3("shufflenet_v1_g3_x2_0", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_shufflenet_v1_g8_x0_5(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                    output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on ShuffleNet v1 0.5x, g=8 (its Stage 4)."""
    return DeepLabV3("shufflenet_v1_g8_x0_5", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_shufflenet_v1_g8_x1_0(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                    output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on ShuffleNet v1 1x, g=8 (its Stage 4)."""
    return DeepLabV3("shufflenet_v1_g8_x1_0", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_shufflenet_v1_g8_x1_5(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                    output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on ShuffleNet v1 1.5x, g=8 (its Stage 4)."""
    return DeepLabV3("shufflenet_v1_g8_x1_5", num_classes, in_chans, small_input, output_stride, aspp)


@register_model("deeplabv3", task="segmentation")
def deeplabv3_shufflenet_v1_g8_x2_0(num_classes: int = 21, in_chans: int = 3, small_input: bool = False,
                                    output_stride: int = 16, aspp: bool = False) -> DeepLabV3:
    """Mobile DeepLabv3 on ShuffleNet v1 2x, g=8 (its Stage 4)."""
    return DeepLabV3("shufflenet_v1_g8_x2_0", num_classes, in_chans, small_input, output_stride, aspp)
