"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov, Chen; CVPR 2018, arXiv 1801.04381).

Table 2 body as data (:data:`INVERTED_RESIDUAL_SETTING`), built from :class:`InvertedResidual`.
Widths are rounded with :func:`make_divisible` (divisor 8, the authors' TF-slim rule); the final
1280-channel conv is not reduced for widths below 1 (section 6.1).

The ablations of the paper's Figure 6 are options of every builder (:class:`Ablation`), with the same
parameters as the published network: ``linear_bottleneck=False`` puts a ReLU6 after each projection
(Figure 6a's "relu6 in bottleneck"); ``shortcut="expansion"`` joins the residuals between the expanded
tensors of consecutive blocks instead of the thin bottlenecks, ``shortcut="none"`` drops them (Figure 6b).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from ..layers import ConvBNAct, InvertedResidual, make_divisible
from ..layers.blocks import check_arch_options
from ..validators import check_bool, check_choice, check_number
from .base import ClassifierNet, FeatureTap, init_weights
from .published import Published
from .registry import register_model

__all__ = ["MobileNetV2", "INVERTED_RESIDUAL_SETTING", "Ablation", "SHORTCUTS", "ExpansionShortcuts"]

#: Table 2: expansion t, output channels c, repeats n, first stride s.
INVERTED_RESIDUAL_SETTING: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
RESOLUTIONS = (224, 192, 160, 128, 96)
#: Figure 6b: where the residual connections join (the paper's network: between the bottlenecks).
SHORTCUTS = ("bottleneck", "expansion", "none")


@dataclass(frozen=True)
class Ablation:
    """Figure 6's variants (module docstring); the defaults are the published network."""

    linear_bottleneck: bool = True
    shortcut: str = "bottleneck"

    def check(self, owner: str) -> Ablation:
        check_bool(self.linear_bottleneck, f"{owner}: linear_bottleneck")
        check_choice(self.shortcut, f"{owner}: shortcut", SHORTCUTS)
        return self

    def apply(self, block: InvertedResidual) -> None:
        """Make a built block this variant: a ReLU6 after the projection, the thin residual off."""
        if not self.linear_bottleneck:
            block.block[-1].add_module("act", nn.ReLU6(inplace=True))
        if self.shortcut != "bottleneck":
            block.use_residual = False


class ExpansionShortcuts(nn.Sequential):
    """MobileNetV2's layers with Figure 6b's "shortcut between expansions": the expanded tensor of a block (the
    output of its expansion 1x1, or its input when it has none) is added to the next block's when their shapes
    agree (same width, the block in between at stride 1); no residual joins the thin bottlenecks. The same
    children as ``nn.Sequential`` (the state_dict keys do not change)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        carried: torch.Tensor | None = None
        for layer in self:
            if not isinstance(layer, InvertedResidual):
                x, carried = layer(x), None
                continue
            expands = len(layer.block) == 3
            h = layer.block[0](x) if expands else x
            if carried is not None and carried.shape == h.shape:
                h = h + carried
            x = layer.block[1:](h) if expands else layer.block(h)
            carried = h if layer.stride == 1 else None
        return x


class MobileNetV2(ClassifierNet):
    """MobileNetV2 at width ``width_mult``.

    ``small_input=True``: stride-1 stem and the first stride-2 stage (t=6, c=24) at stride 1,
    total stride 8 instead of 32 (for 28-64 px images).
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        dropout: float = 0.2,
        padding: str = "symmetric",
        bn_eps: float = 1e-5,
        ablation: Ablation = Ablation(),
    ) -> None:
        owner = f"MobileNetV2 (width {width_mult})"
        check_arch_options(owner, padding, bn_eps)
        ablation.check(owner)
        super().__init__(owner, in_chans, num_classes, total_stride=8 if small_input else 32, small_input=small_input)
        width_mult = float(check_number(width_mult, f"{owner}: width_mult", above=0))
        check_number(dropout, f"{owner}: dropout", minimum=0, below=1)
        self.width_mult = width_mult
        #: options that change the function but not the weights' shapes (imported weights: docs/pretrained.md)
        self.arch = {"padding": padding, "bn_eps": float(bn_eps)}
        if ablation != Ablation():  # recorded only when used: the published network's metadata is unchanged
            self.arch.update(linear_bottleneck=ablation.linear_bottleneck, shortcut=ablation.shortcut)
        self.ablation = ablation
        arch: dict[str, Any] = {"padding": padding, "bn_eps": bn_eps}
        in_ch = make_divisible(STEM_CHANNELS * width_mult)
        last = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(in_chans, in_ch, 3, stride=1 if small_input else 2, act=nn.ReLU6, **arch)]
        first_downsample_done = False
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_ch = make_divisible(c * width_mult)
            if s == 2 and not first_downsample_done:
                first_downsample_done = True
                if small_input:
                    s = 1
            for i in range(n):
                block = InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t, **arch)
                ablation.apply(block)
                layers.append(block)
                in_ch = out_ch
        layers.append(ConvBNAct(in_ch, last, 1, act=nn.ReLU6, bn_eps=bn_eps))
        self.features = ExpansionShortcuts(*layers) if ablation.shortcut == "expansion" else nn.Sequential(*layers)
        self.num_features = last
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def feature_taps(self) -> list[FeatureTap]:
        """Stage outputs: the last block before each stride-2 row of Table 2 and the last (320-channel) block,
        timm's five (16, 24, 32, 96, 320 channels at width 1). Then two taps detection heads use: the
        expansion output of the first 160-channel block (TF's ``layer_15/expansion_output``, 576 channels,
        before the stride that leads to 32) and the final 1x1 conv (``layer_19``, 1280 channels)."""
        if self.ablation.shortcut == "expansion":
            raise ValueError(f"{self.owner}: shortcut='expansion' joins the blocks' expanded tensors, so its stage "
                             "outputs are not taps; use it as a classifier")
        taps, end, first_of_last_stride2 = [], 0, 0
        for row, (_, _, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            if s == 2:
                first_of_last_stride2 = end + 1
            end += n
            if row + 1 == len(INVERTED_RESIDUAL_SETTING) or INVERTED_RESIDUAL_SETTING[row + 1][3] == 2:
                taps.append(FeatureTap(f"features.{end}", cast(InvertedResidual, self.features[end]).out_channels))
        expansion = cast(InvertedResidual, self.features[first_of_last_stride2]).block[0]
        taps.append(FeatureTap(f"features.{first_of_last_stride2}.block.0",
                               cast(ConvBNAct, expansion).conv.out_channels, stage=False))
        taps.append(FeatureTap(f"features.{end + 1}", self.num_features, stage=False))
        return taps


#: Figures of the MobileNetV2 paper (Table 4 and the width x resolution MAdds grid); params are without
#: BN at 1000 classes (the paper's 6.9M for 1.4 is a known error: 6.06M). The grid truncates to the
#: million: every count here lies in [P, P + 1), e.g. 0.35 @ 96 is 11.93 M, printed 11.


def _published(madds: list[int], params: float | None = None, top1_error: float | None = None) -> Published:
    return Published("MobileNetV2 Table 4 / MAdds grid", dict(zip(RESOLUTIONS, madds)), params=params, params_step=0.01,
                     top1_error=top1_error, macs_rounding="floor",
                     note="the MAdds grid truncates to the million (0.35 @ 96: 11.93 M printed as 11)")


@register_model("mobilenet_v2", _published([59, 43, 30, 20, 11]))
def mobilenet_v2_x0_35(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                     dropout: float = 0.2, padding: str = "symmetric", bn_eps: float = 1e-5,
                     linear_bottleneck: bool = True, shortcut: str = "bottleneck") -> MobileNetV2:
    """MobileNetV2 width 0.35."""
    return MobileNetV2(0.35, num_classes, in_chans, small_input, dropout, padding, bn_eps,
                       Ablation(linear_bottleneck, shortcut))


@register_model("mobilenet_v2", _published([97, 71, 50, 32, 18]))
def mobilenet_v2_x0_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                     dropout: float = 0.2, padding: str = "symmetric", bn_eps: float = 1e-5,
                     linear_bottleneck: bool = True, shortcut: str = "bottleneck") -> MobileNetV2:
    """MobileNetV2 width 0.5."""
    return MobileNetV2(0.5, num_classes, in_chans, small_input, dropout, padding, bn_eps,
                       Ablation(linear_bottleneck, shortcut))


@register_model("mobilenet_v2", _published([209, 153, 107, 69, 39]))
def mobilenet_v2_x0_75(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                     dropout: float = 0.2, padding: str = "symmetric", bn_eps: float = 1e-5,
                     linear_bottleneck: bool = True, shortcut: str = "bottleneck") -> MobileNetV2:
    """MobileNetV2 width 0.75."""
    return MobileNetV2(0.75, num_classes, in_chans, small_input, dropout, padding, bn_eps,
                       Ablation(linear_bottleneck, shortcut))


# Table 4: 72.0% top-1
@register_model("mobilenet_v2", _published([300, 221, 154, 99, 56], params=3.47, top1_error=28.0))
def mobilenet_v2_x1_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                     dropout: float = 0.2, padding: str = "symmetric", bn_eps: float = 1e-5,
                     linear_bottleneck: bool = True, shortcut: str = "bottleneck") -> MobileNetV2:
    """MobileNetV2 width 1."""
    return MobileNetV2(1.0, num_classes, in_chans, small_input, dropout, padding, bn_eps,
                       Ablation(linear_bottleneck, shortcut))


@register_model("mobilenet_v2", _published([509]))
def mobilenet_v2_x1_3(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                     dropout: float = 0.2, padding: str = "symmetric", bn_eps: float = 1e-5,
                     linear_bottleneck: bool = True, shortcut: str = "bottleneck") -> MobileNetV2:
    """MobileNetV2 width 1.3."""
    return MobileNetV2(1.3, num_classes, in_chans, small_input, dropout, padding, bn_eps,
                       Ablation(linear_bottleneck, shortcut))


@register_model("mobilenet_v2", _published([582], params=6.06, top1_error=25.3))  # Table 4: 74.7% top-1
def mobilenet_v2_x1_4(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                     dropout: float = 0.2, padding: str = "symmetric", bn_eps: float = 1e-5,
                     linear_bottleneck: bool = True, shortcut: str = "bottleneck") -> MobileNetV2:
    """MobileNetV2 width 1.4."""
    return MobileNetV2(1.4, num_classes, in_chans, small_input, dropout, padding, bn_eps,
                       Ablation(linear_bottleneck, shortcut))
