"""What every classifier in the zoo shares: argument checks, input checks, pool + classifier head."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ..layers import ConvBNAct, InvertedResidual, ShuffleNetUnit
from ..layers.shuffle import is_tracing
from ..validators import check_bool, check_positive_int

# Upper bounds that keep a typo (num_classes=10**9) from allocating terabytes: ImageNet-21k has 21,841
# classes; hyperspectral images have a few hundred bands.
MAX_NUM_CLASSES = 100_000
MAX_IN_CHANS = 4096


class ClassifierNet(nn.Module):
    """Base: ``features`` (an ``nn.Sequential``), global average pool, ``classifier``.

    ``total_stride`` is the network's downsampling factor; an input smaller than it would be
    reduced to a padding-only feature map, so :meth:`forward` refuses it with a clear message.
    """

    # set by each subclass's __init__
    features: nn.Sequential
    classifier: nn.Module  # a Linear, or a Sequential ending in one

    def __init__(self, owner: str, in_chans: int, num_classes: int, total_stride: int, small_input: bool) -> None:
        super().__init__()
        self.owner = owner
        self.in_chans = check_positive_int(in_chans, f"{owner}: in_chans", maximum=MAX_IN_CHANS)
        self.num_classes = check_positive_int(num_classes, f"{owner}: num_classes", maximum=MAX_NUM_CLASSES)
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_tracing():
            # check once per input signature: the checks cost ~1.5 us of Python each, a few % of a
            # small model's forward; a tensor of the same type, shape and dtype passes them again.
            key = (type(x), x.shape, x.dtype) if isinstance(x, torch.Tensor) else None
            if key is None or key != self.__dict__.get("_checked_input"):
                self.check_input(x)
                self.__dict__["_checked_input"] = key
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
            if isinstance(m, ShuffleNetUnit) and m.stride == 1:
                nn.init.zeros_(m.expand.bn.weight)
            elif isinstance(m, InvertedResidual) and m.use_residual:
                nn.init.zeros_(cast(ConvBNAct, m.block[-1]).bn.weight)
