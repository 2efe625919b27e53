"""MobileNet V1 (Howard et al., arXiv 1704.04861): the baseline of ShuffleNet's Table 5.

Table 1 body as data (:data:`BLOCKS`), built from :class:`DepthwiseSeparableConv`; the width
multiplier alpha scales every layer with ``int(c * alpha)`` (section 4.2).
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from ..layers import ConvBNAct, DepthwiseSeparableConv
from ..layers.blocks import check_arch_options
from ..validators import check_choice, check_number
from .base import ClassifierNet, FeatureTap, init_weights
from .published import Published
from .registry import register_model

__all__ = ["MobileNetV1", "BLOCKS"]

STEM_CHANNELS = 32
#: ``act``: ReLU as in the paper (Figure 3); ReLU6 is what the TF-slim/Keras and timm weights were trained with.
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}
#: Table 1: (output channels, stride) of the 13 depthwise separable blocks.
BLOCKS: list[tuple[int, int]] = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]


class MobileNetV1(ClassifierNet):
    """MobileNet V1 at width ``alpha``.

    ``small_input=True``: stride-1 stem and the first stride-2 block at stride 1, the MobileNetV2 rule
    (total stride 8, like the other small-input stems), so that complexity stays matched with
    ShuffleNet at 32 px as it is at 224 (ShuffleNet Table 5).
    """

    def __init__(
        self, alpha: float = 1.0, num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
        dropout: float = 0.0, act: str = "relu", padding: str = "symmetric", bn_eps: float = 1e-5,
    ) -> None:
        owner = f"MobileNet V1 (width {alpha})"
        check_arch_options(owner, padding, bn_eps)
        check_choice(act, f"{owner}: act", ACTIVATIONS)
        super().__init__(owner, in_chans, num_classes, total_stride=8 if small_input else 32, small_input=small_input)
        alpha = float(check_number(alpha, f"{owner}: alpha", above=0))
        check_number(dropout, f"{owner}: dropout", minimum=0, below=1)

        def scaled(c: int) -> int:
            return max(1, int(c * alpha))

        self.alpha = alpha
        #: options that change the function but not the weights' shapes (imported weights: docs/pretrained.md)
        self.arch = {"act": act, "padding": padding, "bn_eps": float(bn_eps)}
        arch: dict[str, Any] = {"act": ACTIVATIONS[act], "padding": padding, "bn_eps": bn_eps}
        in_ch = scaled(STEM_CHANNELS)
        layers: list[nn.Module] = [ConvBNAct(in_chans, in_ch, 3, stride=1 if small_input else 2, **arch)]
        first_downsample = True
        for c, s in BLOCKS:
            if s == 2 and first_downsample:
                first_downsample = False
                s = 1 if small_input else 2
            layers.append(DepthwiseSeparableConv(in_ch, scaled(c), s, **arch))
            in_ch = scaled(c)
        self.features = nn.Sequential(*layers)
        self.num_features = in_ch
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_ch, num_classes))
        init_weights(self)

    def feature_taps(self) -> list[FeatureTap]:
        """Stage outputs: the last block before each stride-2 block of Table 1 and the last block (timm's five:
        64, 128, 256, 512, 1024 channels at width 1)."""
        ends = [i for i in range(1, len(BLOCKS)) if BLOCKS[i][1] == 2] + [len(BLOCKS)]
        return [FeatureTap(f"features.{i}", cast(DepthwiseSeparableConv, self.features[i]).out_channels)
                for i in ends]


# Published figures: MACs from Tables 6 and 7, params (M) and ImageNet top-1 error (%) from Table 6.


@register_model("mobilenet_v1", Published("MobileNet V1 Tables 6/7", {224: 41}, params=0.5, top1_error=49.4))
def mobilenet_v1_x0_25(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                     dropout: float = 0.0, act: str = "relu", padding: str = "symmetric",
                     bn_eps: float = 1e-5) -> MobileNetV1:
    """MobileNet V1 width 0.25."""
    return MobileNetV1(0.25, num_classes, in_chans, small_input, dropout, act, padding, bn_eps)


@register_model("mobilenet_v1", Published("MobileNet V1 Tables 6/7", {224: 149}, params=1.3, top1_error=36.3))
def mobilenet_v1_x0_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                     dropout: float = 0.0, act: str = "relu", padding: str = "symmetric",
                     bn_eps: float = 1e-5) -> MobileNetV1:
    """MobileNet V1 width 0.5."""
    return MobileNetV1(0.5, num_classes, in_chans, small_input, dropout, act, padding, bn_eps)


@register_model("mobilenet_v1", Published("MobileNet V1 Tables 6/7", {224: 325}, params=2.6, top1_error=31.6))
def mobilenet_v1_x0_75(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                     dropout: float = 0.0, act: str = "relu", padding: str = "symmetric",
                     bn_eps: float = 1e-5) -> MobileNetV1:
    """MobileNet V1 width 0.75."""
    return MobileNetV1(0.75, num_classes, in_chans, small_input, dropout, act, padding, bn_eps)


@register_model("mobilenet_v1", Published("MobileNet V1 Tables 6/7", {224: 569, 192: 418, 160: 290, 128: 186},
                                          params=4.2, top1_error=29.4))
def mobilenet_v1_x1_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                     dropout: float = 0.0, act: str = "relu", padding: str = "symmetric",
                     bn_eps: float = 1e-5) -> MobileNetV1:
    """MobileNet V1 width 1."""
    return MobileNetV1(1.0, num_classes, in_chans, small_input, dropout, act, padding, bn_eps)
