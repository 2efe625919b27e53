"""SSD and SSDLite detectors (MobileNetV2 paper section 6.2, Tables 5 and 6; SSD: Liu et al., arXiv 1512.02325).

The layout of the TF Object Detection API (``ssd_mobilenet_v2_feature_extractor.py``,
``feature_map_generators.multi_resolution_feature_maps``, ``ssdlite_mobilenet_v2_coco.config``):

* **Backbone**: a classifier of the zoo as a :class:`~mobilecnn.models.features.FeatureNet` (the same module
  names, so a classification checkpoint initialises it, :func:`load_backbone_weights`) with two taps at
  strides 16 and 32: MobileNetV2's ``features.14.block.0`` (TF's ``layer_15/expansion_output``, the expansion
  of the first 160-channel block, 576 channels at width 1) and ``features.18`` (``layer_19``, the 1280 conv;
  kept at 1280 below width 1, as our classifier builds it); MobileNet V1's ``features.11`` and ``features.13``
  (``Conv2d_11_pointwise``, ``Conv2d_13_pointwise``, 512 and 1024 channels); ShuffleNet v1's Stage 3 and
  Stage 4 outputs.
* **Extra layers**: four, of depth 512, 256, 256, 128, each stride 2: a 1x1 conv to half the depth, then for
  SSDLite a 3x3 depthwise conv (stride 2) and a 1x1 conv to the depth, for SSD a regular 3x3 conv (stride 2)
  to the depth; every conv with BN and ReLU6. As TF's ``get_depth_fn``, the depths are scaled by the
  MobileNets' width multiplier, ``max(int(d * width), 16)`` (``min_depth: 16``; 179, 89, ... at 0.35);
  ShuffleNet (no TF reference) keeps them.
* **Predictors**, per feature map (6) and separately for the box offsets (4 per anchor) and the classes
  (``num_classes`` per anchor, index 0 the background): SSDLite a 3x3 depthwise conv (BN, ReLU6) then a 1x1
  conv with bias (``use_depthwise: true``); SSD a regular 3x3 conv with bias (the predictor that gives Table
  5's 14.8M). Anchors per cell: :func:`~.ssd_boxes.boxes_per_cell` (3 in the lowest map, 6 in the others).

BN epsilon 1e-3 in the extra layers and predictors: TF's ``batch_norm { epsilon: 0.001 }`` of the config; they
start untrained and their BNs see tiny maps (1 x 1 to 3 x 3 at 320 px), where the larger epsilon steadies
the normalisation. The backbone keeps its classifier's own (1e-5), so its checkpoint computes what it did.
3x3 stride-2 convs pad symmetrically like the rest of the zoo (a side H gives ``ceil(H / 2)``, as TF's SAME).

:meth:`SSD.forward` returns the raw head outputs ``(N, A, 4 + num_classes)``, box offsets then class logits
per anchor, in TF's order (map, y, x, anchor: that of :func:`~.ssd_boxes.grid_anchors`); the decoding and NMS
are :func:`~.ssd_boxes.detect`, applied by the callers to any runtime's outputs. The figures of Tables 5 and 6
are :data:`TABLE5` and :data:`TABLE6` (docs/counting.md).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

import torch
from torch import nn

from ..layers import ConvBNAct
from ..validators import check_bool, check_int, check_number, check_positive_int
from .base import MAX_IN_CHANS, MAX_NUM_CLASSES, ClassifierNet, ImageModel, init_weights
from .deeplab import load_backbone_weights
from .features import FeatureNet
from .mobilenet_v2 import MobileNetV2
from .published import PublishedDetection
from .registry import get_model_entry, register_model
from .ssd_boxes import AnchorSpec, boxes_per_cell, grid_anchors

__all__ = ["SSD", "Predictor", "TABLE5", "TABLE6", "EXTRA_DEPTHS", "NUM_MAPS", "load_backbone_weights"]

#: Depths of the four extra layers (TF's ``layer_depth: [-1, -1, 512, 256, 256, 128]``).
EXTRA_DEPTHS = (512, 256, 256, 128)
#: Feature maps the predictors run on: the two backbone taps and the extra layers.
NUM_MAPS = 2 + len(EXTRA_DEPTHS)
MIN_DEPTH = 16
BN_EPS = 1e-3
BOX_CODE = 4
_ANCHOR_CACHE_SIZE = 64


def _ceil_half(size: int) -> int:
    return -(-size // 2)


def _detection_taps(classifier: ClassifierNet) -> list[str]:
    """MobileNetV2's two extra taps (the 160-block expansion and the 1280 conv), else the last two stage
    outputs (MobileNet V1's 11th and 13th blocks, ShuffleNet's Stages 3 and 4)."""
    taps = classifier.feature_taps()
    if isinstance(classifier, MobileNetV2):
        return [t.module for t in taps if not t.stage]
    return [t.module for t in taps if t.stage][-2:]


def _depth(depth: float, multiplier: float) -> int:
    """TF's ``get_depth_fn``: ``max(int(depth * multiplier), min_depth)``."""
    return max(int(depth * multiplier), MIN_DEPTH)


def _extra_layer(in_ch: int, depth: int, multiplier: float, lite: bool) -> nn.Sequential:
    """One stride-2 extra layer: 1x1 to half the depth, then depthwise 3x3 + 1x1 (lite) or a 3x3 conv, to the
    depth; both depths scaled by ``multiplier`` separately, as TF does."""
    half, depth = _depth(depth / 2, multiplier), _depth(depth, multiplier)
    act = nn.ReLU6
    layers = [ConvBNAct(in_ch, half, 1, act=act, bn_eps=BN_EPS)]
    if lite:
        layers += [ConvBNAct(half, half, 3, 2, groups=half, act=act, bn_eps=BN_EPS),
                   ConvBNAct(half, depth, 1, act=act, bn_eps=BN_EPS)]
    else:
        layers.append(ConvBNAct(half, depth, 3, 2, act=act, bn_eps=BN_EPS))
    return nn.Sequential(*layers)


class Extras(nn.ModuleList):
    """The extra layers, each on the last map. A called container, not a list iterated by :class:`SSD`: export
    tools that name an op by the modules that called it (litert-torch) then see ``extras`` in the path."""

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        for extra in self:
            maps.append(extra(maps[-1]))
        return maps


class Heads(nn.ModuleList):
    """One predictor per map, their outputs flattened to ``(N, anchors, per_anchor)`` and joined. Called, like
    :class:`Extras`, so that ``box_head.0`` and ``class_head.0`` are told apart in a converted file's op names."""

    def __init__(self, predictors: list[Predictor], per_anchor: int) -> None:
        super().__init__(predictors)
        self.per_anchor = per_anchor

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([_flatten(head(m), self.per_anchor) for head, m in zip(self, maps)], dim=1)


class Predictor(nn.Sequential):
    """One predictor of one feature map: ``depthwise`` 3x3 (BN, ReLU6) and a 1x1 ``conv`` with bias (SSDLite),
    or a 3x3 ``conv`` with bias (SSD). ``conv`` makes ``anchors * per_anchor`` channels."""

    conv: nn.Conv2d

    def __init__(self, in_ch: int, out_ch: int, lite: bool) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if lite:
            layers["depthwise"] = ConvBNAct(in_ch, in_ch, 3, groups=in_ch, act=nn.ReLU6, bn_eps=BN_EPS)
        layers["conv"] = nn.Conv2d(in_ch, out_ch, 1) if lite else nn.Conv2d(in_ch, out_ch, 3, padding=1)
        super().__init__(layers)
        self.lite = lite

    def reset(self, out_ch: int) -> None:
        """A fresh output conv of ``out_ch`` channels (the depthwise conv, if any, is kept)."""
        k = self.conv.kernel_size[0]
        self.conv = nn.Conv2d(self.conv.in_channels, out_ch, k, padding=k // 2)
        _init(self.conv)


#: Standard deviation of the predictors' output convs at initialisation (TF's SSDLite config: truncated normal
#: 0.03; torchvision's SSDLite head: normal 0.03). He-normal there gives box offsets of std ~5 and class logits of
#: std ~3 at the start, and a run spends its first epochs undoing them.
PREDICTOR_INIT_STD = 0.03


def _init(module: nn.Module) -> None:
    """He-normal convs, unit BN (the zoo's :func:`init_weights`); the predictors' output convs (the biased ones)
    normal(0, :data:`PREDICTOR_INIT_STD`) with zero bias."""
    init_weights(module, zero_init_residual=False)
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.normal_(m.weight, 0.0, PREDICTOR_INIT_STD)
            nn.init.zeros_(m.bias)


class SSD(ImageModel):
    """SSDLite (``lite=True``) or SSD on the registered classifier ``backbone_name`` (module docstring):
    ``backbone`` (a :class:`FeatureNet` with two taps), ``extras`` (4 stride-2 layers), ``box_head`` and
    ``class_head`` (a :class:`Predictor` per map). ``forward`` returns ``(N, A, 4 + num_classes)``.

    ``num_classes`` counts the background (81 for COCO's 80 classes); ``depth_multiplier`` scales the extra
    layers' depths (TF's ``depth_multiplier``: the MobileNets' width). With ``small_input`` the backbone taps
    sit at strides 4 and 8 (maps of 8, 4, 2, 1, 1, 1 at 32 px).
    """

    def __init__(self, backbone_name: str, num_classes: int = 81, in_chans: int = 3, small_input: bool = False,
                 lite: bool = True, depth_multiplier: float = 1.0) -> None:
        owner = f"{'SSDLite' if lite is True else 'SSD'} ({backbone_name})"
        check_bool(lite, f"{owner}: lite")
        check_bool(small_input, f"{owner}: small_input")
        check_positive_int(in_chans, f"{owner}: in_chans", maximum=MAX_IN_CHANS)
        _check_num_classes(num_classes, owner)
        check_number(depth_multiplier, f"{owner}: depth_multiplier", above=0)
        classifier = get_model_entry(backbone_name).builder(in_chans=in_chans, small_input=small_input)
        if not isinstance(classifier, ClassifierNet):
            raise TypeError(f"{owner}: the backbone must be a classifier of the zoo")
        backbone = FeatureNet(classifier, _detection_taps(classifier))
        low, high = backbone.feature_info.reduction()
        if high != 2 * low:  # the predictors expect each map half the size of the one before
            raise ValueError(f"{owner}: with small_input={small_input} the backbone taps sit at strides {low} and "
                             f"{high}; detection needs the second at twice the first")
        super().__init__(owner, in_chans, backbone.total_stride, small_input)
        self.num_classes, self.backbone_name, self.lite = num_classes, backbone_name, lite
        self.depth_multiplier = depth_multiplier
        self.arch = dict(backbone.arch)
        self.anchor_spec = AnchorSpec()
        self.backbone = backbone
        channels = list(backbone.feature_info.channels())
        extras = []
        for depth in EXTRA_DEPTHS:
            extras.append(_extra_layer(channels[-1], depth, depth_multiplier, lite))
            channels.append(_depth(depth, depth_multiplier))
        self.extras = Extras(extras)
        anchors = boxes_per_cell(self.anchor_spec, NUM_MAPS)
        self.box_head = Heads([Predictor(c, k * BOX_CODE, lite) for c, k in zip(channels, anchors)], BOX_CODE)
        self.class_head = Heads([Predictor(c, k * num_classes, lite) for c, k in zip(channels, anchors)],
                                num_classes)
        for part in (self.extras, self.box_head, self.class_head):
            _init(part)
        self._anchors: dict[tuple[int, int], torch.Tensor] = {}  # a plain dict: never in the state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_once(x)
        maps = self.extras(self.backbone(x))
        return torch.cat([self.box_head(maps), self.class_head(maps)], dim=-1)

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The ``(height, width)`` of the 6 maps an input of ``height`` x ``width`` gives: every stride-2 conv
        or pool of the zoo pads so that a side H becomes ``ceil(H / 2)``, so a tap at stride r is
        ``ceil(H / r)`` and each extra layer halves (rounding up). 320 -> 20, 10, 5, 3, 2, 1."""
        check_positive_int(height, f"{self.owner}: height")
        check_positive_int(width, f"{self.owner}: width")
        sizes = [(-(-height // r), -(-width // r)) for r in self.backbone.feature_info.reduction()]
        while len(sizes) < NUM_MAPS:
            sizes.append((_ceil_half(sizes[-1][0]), _ceil_half(sizes[-1][1])))
        return sizes

    def anchors(self, height: int, width: int) -> torch.Tensor:
        """The anchors ``(A, 4)`` (``cx, cy, w, h`` in [0, 1], CPU float32) of an input of ``height`` x ``width``,
        in the order of :meth:`forward`'s rows; cached per size (do not modify the returned tensor)."""
        key = (height, width)
        if key not in self._anchors:
            if len(self._anchors) >= _ANCHOR_CACHE_SIZE:
                self._anchors.clear()
            self._anchors[key] = grid_anchors(self.feature_sizes(height, width), self.anchor_spec,
                                              image_size=(height, width))
        return self._anchors[key]

    def num_anchors(self, height: int, width: int) -> int:
        """``A``, the rows of :meth:`forward`'s output for this input size (2,034 at 320 x 320)."""
        per_cell = boxes_per_cell(self.anchor_spec, NUM_MAPS)
        return sum(h * w * k for (h, w), k in zip(self.feature_sizes(height, width), per_cell))

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh class predictors' output convs for ``num_classes`` classes, background included (fine-tuning);
        the box predictors and the depthwise convs are kept."""
        _check_num_classes(num_classes, self.owner)
        per_cell = boxes_per_cell(self.anchor_spec, NUM_MAPS)
        for head, k in zip(self.class_head, per_cell):
            cast(Predictor, head).reset(k * num_classes)
        self.num_classes = self.class_head.per_anchor = num_classes


def _check_num_classes(num_classes: int, owner: str) -> None:
    """At least 2: the background and one class (``num_classes`` counts the background)."""
    check_int(num_classes, f"{owner}: num_classes", minimum=2, maximum=MAX_NUM_CLASSES,
              accepted=f"an integer from 2 (the background and one class) to {MAX_NUM_CLASSES}")


def _flatten(out: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """``(N, k * per_anchor, H, W)`` -> ``(N, H * W * k, per_anchor)``: rows in y, x, anchor order (TF's)."""
    return out.permute(0, 2, 3, 1).reshape(out.shape[0], -1, per_anchor)


# Table 6 (COCO test-dev, mAP) and Table 5 (MobileNetV2 with SSD or SSDLite predictors, the prediction layers
# alone) of the MobileNetV2 paper; params and MAdds at 320 x 320 with 80 classes + background.
_T5, _T6 = "MobileNetV2 Table 5", "MobileNetV2 Table 6"
_LITE_V2, _LITE_V1, _SSD_V2 = "ssdlite_mobilenet_v2_x1_0", "ssdlite_mobilenet_v1_x1_0", "ssd_mobilenet_v2_x1_0"
TABLE6: tuple[PublishedDetection, ...] = (
    PublishedDetection(_T6, "SSD300", None, 23.2, 36.1, 35.2, resolution=300, note="VGG-16 SSD: not built here"),
    PublishedDetection(_T6, "SSD512", None, 26.8, 36.1, 99.5, resolution=512, note="VGG-16 SSD: not built here"),
    PublishedDetection(_T6, "YOLOv2", None, 21.6, 50.7, 17.5, resolution=None, note="not built here"),
    PublishedDetection(_T6, "MNet V1 + SSDLite", _LITE_V1, 22.2, 5.1, 1.3, latency_ms=270),
    PublishedDetection(_T6, "MNet V2 + SSDLite", _LITE_V2, 22.1, 4.3, 0.8, latency_ms=200),
)
TABLE5: tuple[PublishedDetection, ...] = (
    PublishedDetection(_T5, "SSD", _SSD_V2, None, 14.8, 1.25, head_only=True, madds_step_b=0.01,
                       madds_tolerance=0.004,
                       note="extra layers + predictors: counted 1.259 B, 0.3% over the printed 1.245-1.255"),
    PublishedDetection(_T5, "SSDLite", _LITE_V2, None, 2.1, 0.35, head_only=True, madds_step_b=0.01,
                       madds_reproduced=False,
                       note="not reproduced: extra layers + predictors count 0.178 B; 0.35 B does not add up with "
                            "Table 6's 0.8 B total, whose backbone part is 0.61 B"),
)


def _rows(name: str) -> tuple[PublishedDetection, ...]:
    return tuple(row for row in TABLE6 + TABLE5 if row.model == name)


def _width(name: str) -> float:
    """The width multiplier a backbone's name ends with (``mobilenet_v2_x0_35`` -> 0.35)."""
    return float(name.rsplit("_x", 1)[1].replace("_", "."))


def _ssd(backbone: str, num_classes: int, in_chans: int, small_input: bool, lite: bool = True) -> SSD:
    multiplier = _width(backbone) if backbone.startswith("mobilenet") else 1.0
    return SSD(backbone, num_classes, in_chans, small_input, lite, multiplier)


@register_model("ssdlite", task="detection")
def ssdlite_mobilenet_v2_x0_35(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on MobileNetV2 width 0.35."""
    return _ssd("mobilenet_v2_x0_35", num_classes, in_chans, small_input)


@register_model("ssdlite", task="detection")
def ssdlite_mobilenet_v2_x0_5(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on MobileNetV2 width 0.5."""
    return _ssd("mobilenet_v2_x0_5", num_classes, in_chans, small_input)


@register_model("ssdlite", task="detection")
def ssdlite_mobilenet_v2_x0_75(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on MobileNetV2 width 0.75."""
    return _ssd("mobilenet_v2_x0_75", num_classes, in_chans, small_input)


@register_model("ssdlite", task="detection", detection=_rows(_LITE_V2))
def ssdlite_mobilenet_v2_x1_0(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on MobileNetV2 width 1: Table 6's MNet V2 + SSDLite (4.3M, 0.8B at 320)."""
    return _ssd("mobilenet_v2_x1_0", num_classes, in_chans, small_input)


@register_model("ssdlite", task="detection")
def ssdlite_mobilenet_v2_x1_4(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on MobileNetV2 width 1.4."""
    return _ssd("mobilenet_v2_x1_4", num_classes, in_chans, small_input)


@register_model("ssdlite", task="detection")
def ssdlite_mobilenet_v1_x0_25(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on MobileNet V1 width 0.25."""
    return _ssd("mobilenet_v1_x0_25", num_classes, in_chans, small_input)


@register_model("ssdlite", task="detection")
def ssdlite_mobilenet_v1_x0_5(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on MobileNet V1 width 0.5."""
    return _ssd("mobilenet_v1_x0_5", num_classes, in_chans, small_input)


@register_model("ssdlite", task="detection")
def ssdlite_mobilenet_v1_x0_75(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on MobileNet V1 width 0.75."""
    return _ssd("mobilenet_v1_x0_75", num_classes, in_chans, small_input)


@register_model("ssdlite", task="detection", detection=_rows(_LITE_V1))
def ssdlite_mobilenet_v1_x1_0(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on MobileNet V1 width 1: Table 6's MNet V1 + SSDLite (5.1M, 1.3B at 320)."""
    return _ssd("mobilenet_v1_x1_0", num_classes, in_chans, small_input)


@register_model("ssd", task="detection", detection=_rows(_SSD_V2))
def ssd_mobilenet_v2_x1_0(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSD (regular 3x3 extra layers and predictors) on MobileNetV2 width 1: Table 5's SSD row."""
    return _ssd("mobilenet_v2_x1_0", num_classes, in_chans, small_input, lite=False)


@register_model("ssdlite", task="detection")
def ssdlite_shufflenet_v1_g3_x1_0(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on ShuffleNet v1 1x, g=3 (Stages 3 and 4: 480 and 960 channels)."""
    return _ssd("shufflenet_v1_g3_x1_0", num_classes, in_chans, small_input)


@register_model("ssdlite", task="detection")
def ssdlite_shufflenet_v1_g3_x2_0(num_classes: int = 81, in_chans: int = 3, small_input: bool = False) -> SSD:
    """SSDLite on ShuffleNet v1 2x, g=3 (Stages 3 and 4)."""
    return _ssd("shufflenet_v1_g3_x2_0", num_classes, in_chans, small_input)
