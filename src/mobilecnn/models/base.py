"""What every model in the zoo shares: argument checks, input checks, pool + classifier head, and the
output stride by dilation (TF-slim's rule, :func:`dilate_to_output_stride`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from ..layers import ConvBNAct, InvertedResidual, ShuffleNetUnit
from ..layers.shuffle import is_tracing
from ..validators import check_bool, check_choice, check_positive_int

# Upper bounds that keep a typo (num_classes=10**9) from allocating terabytes: ImageNet-21k has 21,841
# classes; hyperspectral images have a few hundred bands.
MAX_NUM_CLASSES = 100_000
MAX_IN_CHANS = 4096
#: The output strides a classifier can be dilated to (DeepLab's 8 and 16; 32 is the classifier itself).
OUTPUT_STRIDES = (8, 16, 32)


class ImageModel(nn.Module):
    """Base of every model: who it is (``owner``, for messages), input channels, stem, total stride and the
    input checks.

    ``total_stride`` is the network's downsampling factor; an input smaller than it would be
    reduced to a padding-only feature map, so :meth:`check_input_once` refuses it with a clear message.
    """

    def __init__(self, owner: str, in_chans: int, total_stride: int, small_input: bool) -> None:
        super().__init__()
        self.owner = owner
        self.in_chans = check_positive_int(in_chans, f"{owner}: in_chans", maximum=MAX_IN_CHANS)
        self.small_input = check_bool(small_input, f"{owner}: small_input")
        self.total_stride = total_stride

    @property
    def min_input_size(self) -> int:
        """Smallest input side the network accepts (one output pixel per stride)."""
        return self.total_stride

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the problem when ``x`` cannot go through this network."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.owner}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{self.owner}: expected a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{self.owner}: expected {self.in_chans} input channel(s) (in_chans={self.in_chans}), got "
                f"{x.shape[1]} in a tensor of shape {tuple(x.shape)}"
            )
        height, width = int(x.shape[2]), int(x.shape[3])
        if min(height, width) < self.min_input_size:
            hint = "" if self.small_input else "; for 28-64 px images build it with small_input=True"
            raise ValueError(
                f"{self.owner}: input {height}x{width} is too small: this network downsamples by "
                f"{self.total_stride}, so height and width must be at least {self.min_input_size}{hint}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{self.owner}: expected a floating-point tensor, got dtype {x.dtype}")

    def check_input_once(self, x: torch.Tensor) -> None:
        """:meth:`check_input`, once per input signature: the checks cost ~1.5 us of Python each, a few % of a
        small model's forward; a tensor of the same type, shape and dtype passes them again. Skipped when tracing."""
        if is_tracing():
            return
        key = (type(x), x.shape, x.dtype) if isinstance(x, torch.Tensor) else None
        if key is None or key != self.__dict__.get("_checked_input"):
            self.check_input(x)
            self.__dict__["_checked_input"] = key


@dataclass(frozen=True)
class FeatureTap:
    """A feature map a backbone can return (timm's ``feature_info`` entry, less the reduction, which depends
    on the output stride): the module whose output it is, its channels, and whether it is a stage output (the
    default ``out_indices``) or an extra tap inside a block or after the last stage."""

    module: str
    num_chs: int
    stage: bool = True


class ClassifierNet(ImageModel):
    """Base: ``features`` (an ``nn.Sequential``), global average pool, ``classifier``.

    ``features`` can be dilated to an output stride of 16 or 8 (:meth:`set_output_stride`); its taps
    (:meth:`feature_taps`) are what ``create_model(name, features_only=True)`` returns.
    """

    # set by each subclass's __init__
    features: nn.Sequential
    classifier: nn.Module  # a Linear, or a Sequential ending in one

    def __init__(self, owner: str, in_chans: int, num_classes: int, total_stride: int, small_input: bool) -> None:
        super().__init__(owner, in_chans, total_stride, small_input)
        self.num_classes = check_positive_int(num_classes, f"{owner}: num_classes", maximum=MAX_NUM_CLASSES)
        self.natural_stride = self.output_stride = total_stride

    def feature_taps(self) -> list[FeatureTap]:
        """The feature maps a backbone of this network can return, in network order (each family says which)."""
        raise NotImplementedError(f"{self.owner}: no feature taps defined")

    def stride_units(self) -> list[nn.Module]:
        """The layers that may downsample, in network order: what :meth:`set_output_stride` walks."""
        return list(self.features)

    def set_output_stride(self, output_stride: int) -> int:
        """Dilate ``features`` so the last feature map has stride ``output_stride`` (8, 16 or 32; never more than
        the network's own stride, e.g. 8 for ``small_input``): :func:`dilate_to_output_stride`. Weights are
        untouched. Returns the output stride reached (also ``self.output_stride`` and ``total_stride``)."""
        check_choice(output_stride, f"{self.owner}: output_stride", OUTPUT_STRIDES)
        reached = dilate_to_output_stride(self.stride_units(), output_stride)
        self.output_stride = self.total_stride = reached
        return reached

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_once(x)
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear with a fresh one for ``num_classes`` classes (fine-tuning)."""
        check_positive_int(num_classes, f"{self.owner}: num_classes", maximum=MAX_NUM_CLASSES)
        linear = cast(nn.Linear, self.classifier[-1] if isinstance(self.classifier, nn.Sequential) else self.classifier)
        new = nn.Linear(linear.in_features, num_classes)
        if isinstance(self.classifier, nn.Sequential):
            self.classifier[-1] = new
        else:
            self.classifier = new
        self.num_classes = num_classes


def built_stride(unit: nn.Module) -> int:
    """The stride ``unit`` was built with (a block's ``built_stride``; a pooling layer's first stride)."""
    if not hasattr(unit, "built_stride") and isinstance(unit, (nn.MaxPool2d, nn.AvgPool2d)):
        stride = unit.stride
        unit.__dict__["built_stride"] = stride if isinstance(stride, int) else stride[0]
    return int(getattr(unit, "built_stride", 1))


def _set_stride_dilation(unit: nn.Module, stride: int, rate: int) -> None:
    if isinstance(unit, nn.MaxPool2d):
        k = unit.kernel_size if isinstance(unit.kernel_size, int) else unit.kernel_size[0]
        unit.stride, unit.dilation, unit.padding = stride, rate, rate * (k - 1) // 2
    elif hasattr(unit, "set_stride_dilation"):
        cast(Any, unit).set_stride_dilation(stride, rate)
    elif built_stride(unit) != 1:
        raise TypeError(f"cannot dilate a {type(unit).__name__}")


def dilate_to_output_stride(units: list[nn.Module], output_stride: int) -> int:
    """TF-slim's rule (``mobilenet_base``/``mobilenet_v1_base``, used by DeepLab): walk ``units`` in order with
    the running stride; once it has reached ``output_stride``, every later unit runs at stride 1 and its
    3x3 convs at the running rate, which then multiplies by the stride the unit was built with. So the unit
    whose stride is removed keeps the previous rate (1 for the first) and the units after it get the larger
    one: MobileNetV2 at output stride 16 runs its first 160-channel block at rate 1, the blocks after it at 2.
    Units before that run as built, undilated (calling it again with 32 restores the classifier).
    Returns the stride reached (the network's own when ``output_stride`` is larger)."""
    current, rate = 1, 1
    for unit in units:
        stride = built_stride(unit)
        if current >= output_stride:
            _set_stride_dilation(unit, 1, rate)
            rate *= stride
        else:
            _set_stride_dilation(unit, stride, 1)
            current *= stride
    return current


def init_weights(model: nn.Module, zero_init_residual: bool = True) -> None:
    """He-normal (fan-out) convs, unit BN, small-normal classifier: the torchvision/timm default.

    ``zero_init_residual``: the last BN of every residual branch starts at zero, so each residual
    block starts as the identity (Goyal et al. 2017; torchvision's ``zero_init_residual``). It keeps
    the first steps of high-learning-rate training stable; the architecture is unchanged.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, ShuffleNetUnit) and not m.concat:
                nn.init.zeros_(m.expand.bn.weight)
            elif isinstance(m, InvertedResidual) and m.use_residual:
                nn.init.zeros_(cast(ConvBNAct, m.block[-1]).bn.weight)
