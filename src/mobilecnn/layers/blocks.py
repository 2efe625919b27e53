"""The convolution blocks the three papers describe; every model in :mod:`mobilecnn.models` is built from these.

* :class:`ConvBNAct` -- convolution + BatchNorm + optional activation.
* :func:`group_pointwise_conv` -- 1x1 group convolution (ShuffleNet section 3.1).
* :class:`DepthwiseSeparableConv` -- MobileNet V1 (arXiv 1704.04861) section 3.1, Figure 3.
* :class:`InvertedResidual` -- MobileNetV2 (arXiv 1801.04381) section 3.3, Table 1.
* :class:`ShuffleNetUnit` -- ShuffleNet Figure 2 (b) stride 1 and (c) stride 2.

Every block can run at a smaller stride with its 3x3 convs dilated (``set_stride_dilation``: DeepLab's
atrous convolution, the weights untouched); ``built_stride`` keeps the stride it was built with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..validators import check_choice, check_number, check_positive_int
from .shuffle import ChannelShuffle

__all__ = [
    "ConvBNAct",
    "group_pointwise_conv",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "ShuffleNetUnit",
    "make_divisible",
    "PADDINGS",
    "tf_same_pad",
    "DilatedAvgPool3x3",
]

ActFactory = Callable[[], nn.Module] | None

#: ``"symmetric"``: ``(k - 1) // 2`` on every side (the papers' PyTorch form, the default);
#: ``"tf_same"``: TensorFlow "SAME" on strided convs (the odd pixel of padding goes right/bottom: 0
#: before and 1 after for a 3x3 stride-2 conv on an even side), what the Keras/TF-slim weights expect.
PADDINGS = ("symmetric", "tf_same")


def tf_same_pad(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Zero-pad ``x`` as TensorFlow "SAME" does before a ``kernel_size`` / ``stride`` conv: total
    ``max((ceil(H / s) - 1) * s + k - H, 0)`` per side pair, the larger half after (right/bottom)."""
    pads = []
    for size in (int(x.shape[-1]), int(x.shape[-2])):  # F.pad order: (left, right, top, bottom)
        total = max((-(-size // stride) - 1) * stride + kernel_size - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


def check_arch_options(owner: str, padding: str, bn_eps: float) -> None:
    """Refuse an unknown ``padding`` or a BN epsilon that is not a small positive number."""
    check_choice(padding, f"{owner}: padding", PADDINGS)
    check_number(bn_eps, f"{owner}: bn_eps", above=0, below=1)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going below 90% of it.

    This is the MobileNetV2 width rounding of the authors' TF-slim code (``_make_divisible`` in
    their ``mobilenet.py``):
    ``max(divisor, int(v + divisor / 2) // divisor * divisor)``, plus one ``divisor`` if that fell
    below 0.9 v.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _check_stride(owner: str, stride: int) -> None:
    if stride not in (1, 2):
        raise ValueError(f"{owner}: stride must be 1 or 2, got {stride!r}")


def _restride(owner: str, built: int, stride: int) -> None:
    """A block runs at its built stride or, dilated, at stride 1."""
    if stride not in (1, built):
        can = "stride 1 only" if built == 1 else f"stride 1 or {built}"
        raise ValueError(f"{owner}: built with stride {built}, it can run at {can}, not {stride!r}")


def _inplace(act: nn.Module) -> nn.Module:
    """ReLU / ReLU6 computed in place (as torchvision's blocks do): the activation always follows a
    BatchNorm (or, in the deploy form, a convolution) whose backward does not need its output, so
    autograd stays correct, and the forward saves one allocation + memory pass per block (eager
    MobileNetV2 went from 1.06-1.09x torchvision's latency to 1.00x). Parameters are unchanged."""
    if type(act) in (nn.ReLU, nn.ReLU6):
        cast("nn.ReLU | nn.ReLU6", act).inplace = True
    return act


class ConvBNAct(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d -> activation`` with "same" padding for odd kernels.

    ``act=None`` leaves the output linear (MobileNetV2's projection, ShuffleNet's last 1x1).
    Children are named ``conv``, ``bn`` and ``act`` so BN folding and quantization find them.
    ``padding="tf_same"`` pads strided convs as TensorFlow does (see :data:`PADDINGS`; done in
    :meth:`forward`, so the state_dict keys are the same); ``bn_eps`` is the BatchNorm epsilon
    (1e-5, PyTorch's; the Keras/TF weights were trained with 1e-3).
    """

    conv: nn.Conv2d
    bn: nn.BatchNorm2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: ActFactory = nn.ReLU,
        padding: str = "symmetric",
        bn_eps: float = 1e-5,
    ) -> None:
        check_arch_options("ConvBNAct", padding, bn_eps)
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            check_positive_int(value, f"ConvBNAct: {arg}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"ConvBNAct: groups={groups} must divide both in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        _check_stride("ConvBNAct", stride)
        layers: dict[str, nn.Module] = {
            "conv": nn.Conv2d(in_channels, out_channels, kernel_size, stride, groups=groups, bias=False),
            "bn": nn.BatchNorm2d(out_channels) if bn_eps == 1e-5 else nn.BatchNorm2d(out_channels, eps=bn_eps),
        }
        if act is not None:
            layers["act"] = _inplace(act())
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.pad_mode, self.built_stride = padding, stride
        self.tf_same: tuple[int, int] | None = None
        self.set_stride_dilation(stride, 1)

    @property
    def dilation(self) -> int:
        return int(self.conv.dilation[0])

    def set_stride_dilation(self, stride: int, dilation: int) -> None:
        """Run the conv at ``stride`` with its kernel dilated by ``dilation`` ("same" output size at stride 1;
        a 1x1 kernel ignores the dilation). TF "SAME" equals the symmetric padding at stride 1 (odd kernels):
        only strided convs pad as TF does."""
        _check_stride("ConvBNAct", stride)
        check_positive_int(dilation, "ConvBNAct: dilation")
        k = self.conv.kernel_size[0]
        rate = dilation if k > 1 else 1
        effective = rate * (k - 1) + 1
        tf_same = self.pad_mode == "tf_same" and stride > 1
        self.conv.stride, self.conv.dilation = (stride, stride), (rate, rate)
        self.conv.padding = (0, 0) if tf_same else ((effective - 1) // 2, (effective - 1) // 2)
        self.tf_same = (effective, stride) if tf_same else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_same is not None:
            x = tf_same_pad(x, *self.tf_same)
        return super().forward(x)


class DilatedAvgPool3x3(nn.Module):
    """3x3 average pool, stride 1, holes of ``dilation`` between the taps, zero padding counted (the
    ``AvgPool2d(3, padding=1)`` of a ShuffleNet shortcut, dilated); output the size of the input.

    ``nn.AvgPool2d`` has no dilation: the sum of the 9 shifted copies over 9, as two 3-tap sums. No conv, so
    no MACs (pooling is free in the papers' count)."""

    def __init__(self, dilation: int) -> None:
        super().__init__()
        self.dilation = check_positive_int(dilation, "DilatedAvgPool3x3: dilation")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, (h, w) = self.dilation, x.shape[-2:]
        p = F.pad(x, (d, d, d, d))
        rows = p[..., :, :w] + p[..., :, d:d + w] + p[..., :, 2 * d:2 * d + w]
        return (rows[..., :h, :] + rows[..., d:d + h, :] + rows[..., 2 * d:2 * d + h, :]) / 9


def group_pointwise_conv(in_channels: int, out_channels: int, groups: int, act: ActFactory = nn.ReLU) -> ConvBNAct:
    """1x1 group convolution + BN (+ activation): ShuffleNet's pointwise group convolution.

    Each output channel sees only the ``in_channels / groups`` inputs of its own group, cutting the
    1x1 cost by ``groups`` (ShuffleNet section 3.1).
    """
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"group pointwise conv: groups={groups} must divide in_channels={in_channels} and "
            f"out_channels={out_channels}"
        )
    return ConvBNAct(in_channels, out_channels, kernel_size=1, groups=groups, act=act)


class DepthwiseSeparableConv(nn.Module):
    """MobileNet V1 block (Figure 3): 3x3 depthwise + BN + ReLU, then 1x1 pointwise + BN + ReLU.

    Cost on an F x F output: F^2 D K^2 + F^2 D C instead of F^2 D K^2 C (MobileNet V1 eq. 5).
    """


    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, act: ActFactory = nn.ReLU,
                 padding: str = "symmetric", bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.depthwise = ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels, act=act, padding=padding,
                                   bn_eps=bn_eps)
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, act=act, bn_eps=bn_eps)
        self.built_stride = stride

    def set_stride_dilation(self, stride: int, dilation: int) -> None:
        """Run at ``stride`` (1 or the built one) with the depthwise 3x3 dilated by ``dilation``."""
        _restride("DepthwiseSeparableConv", self.built_stride, stride)
        self.depthwise.set_stride_dilation(stride, dilation)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck (Table 1): expand 1x1 (ReLU6) -> 3x3 depthwise (ReLU6) -> linear 1x1.

    There is no expansion conv when ``expand_ratio == 1`` and the residual is added only when
    ``stride == 1`` and ``in_channels == out_channels`` (section 3.3 / Figure 4).
    """


    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, act: ActFactory = nn.ReLU6,
                 padding: str = "symmetric", bn_eps: float = 1e-5) -> None:
        super().__init__()
        _check_stride("InvertedResidual", stride)
        if expand_ratio < 1:
            raise ValueError(f"InvertedResidual: expand_ratio must be >= 1, got {expand_ratio!r}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act=act, bn_eps=bn_eps))
        layers.append(ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=act, padding=padding, bn_eps=bn_eps))
        layers.append(ConvBNAct(hidden, out_channels, 1, act=None, bn_eps=bn_eps))
        self.block = nn.Sequential(*layers)
        self.built_stride = stride

    def set_stride_dilation(self, stride: int, dilation: int) -> None:
        """Run at ``stride`` (1 or the built one) with the depthwise 3x3 dilated by ``dilation``; the residual
        stays as built (a stride-2 block changes the width, so it has none either way)."""
        _restride("InvertedResidual", self.built_stride, stride)
        cast(ConvBNAct, self.block[-2]).set_stride_dilation(stride, dilation)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class ShuffleNetUnit(nn.Module):
    """ShuffleNet unit (Figure 2 b/c).

    Branch: 1x1 group conv (BN, ReLU) -> channel shuffle -> 3x3 depthwise, stride s (BN, no ReLU)
    -> 1x1 group conv (BN). Bottleneck width = ``out_channels / 4``.

    * stride 1: ``ReLU(x + branch(x))``; requires ``in_channels == out_channels``.
    * stride 2: ``concat(AvgPool3x3s2(x), ReLU(branch(x)))``; the branch makes
      ``out_channels - in_channels`` channels (``concat``). Run at stride 1 (:meth:`set_stride_dilation`), it
      stays a concat unit: the shortcut pool becomes stride 1 (dilated like the depthwise conv), the size kept.

    ``group_first_pointwise=False`` leaves the first 1x1 ungrouped (Stage 2's first unit, section 3.3);
    ``shuffle=False`` removes the shuffle for the Table 3 ablation. ``shuffle="megvii"`` is the layout of
    megvii's released ShuffleNet-Series checkpoints: the shuffle after the depthwise conv (and its BN), with the
    inverse permutation (theirs views the channels as (C/g, g) where the paper views them as (g, C/g): the
    paper's shuffle with C/g groups). The same parameters, another function.
    """


    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        groups: int,
        group_first_pointwise: bool = True,
        shuffle: bool | str = True,
    ) -> None:
        super().__init__()
        _check_stride("ShuffleNetUnit", stride)
        if not (isinstance(shuffle, bool) or shuffle == "megvii"):
            raise ValueError(f"ShuffleNetUnit: shuffle={shuffle!r}; accepted: True (the paper's), False (none) or "
                             "'megvii' (after the depthwise conv, megvii's checkpoints)")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"ShuffleNetUnit: a stride-1 unit adds its input, so in_channels ({in_channels}) must equal "
                f"out_channels ({out_channels})"
            )
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        if branch_out < 1:
            raise ValueError(
                f"ShuffleNetUnit: a stride-2 unit needs out_channels ({out_channels}) > in_channels ({in_channels})"
            )
        mid = out_channels // 4
        first_groups = groups if group_first_pointwise else 1
        for what, value, div in (
            ("bottleneck width out_channels/4", mid, groups),
            ("input channels", in_channels, first_groups),
            ("branch output channels", branch_out, groups),
        ):
            if value % div:
                raise ValueError(f"ShuffleNetUnit: groups={div} does not divide the {what} ({value})")
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.compress = group_pointwise_conv(in_channels, mid, first_groups, act=nn.ReLU)
        self.shuffle_after_depthwise = shuffle == "megvii"
        shuffle_groups = mid // groups if self.shuffle_after_depthwise else groups
        self.shuffle = ChannelShuffle(shuffle_groups) if shuffle and groups > 1 else nn.Identity()
        self.depthwise = ConvBNAct(mid, mid, 3, stride, groups=mid, act=None)
        self.expand = group_pointwise_conv(mid, branch_out, groups, act=None)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.built_stride, self.concat = stride, stride == 2

    def set_stride_dilation(self, stride: int, dilation: int) -> None:
        """Run at ``stride`` (1 or the built one) with the depthwise 3x3 and, in a concat unit, the shortcut's
        3x3 average pool dilated by ``dilation`` (the pool at stride 1 pads to keep the size)."""
        _restride("ShuffleNetUnit", self.built_stride, stride)
        self.depthwise.set_stride_dilation(stride, dilation)
        if self.concat:
            if stride == 2:
                self.shortcut = nn.AvgPool2d(3, stride=2, padding=1)
            else:
                self.shortcut = nn.AvgPool2d(3, 1, 1) if dilation == 1 else DilatedAvgPool3x3(dilation)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle_after_depthwise:
            branch = self.expand(self.shuffle(self.depthwise(self.compress(x))))
        else:
            branch = self.expand(self.depthwise(self.shuffle(self.compress(x))))
        if not self.concat:
            return F.relu_(x + branch)  # the sum is a fresh tensor: in place is safe
        return torch.cat((self.shortcut(x), F.relu(branch)), dim=1)
