"""Building blocks: the channel shuffle and the convolution blocks of the three papers."""

from .blocks import (
    ConvBNAct,
    DepthwiseSeparableConv,
    InvertedResidual,
    ShuffleNetUnit,
    group_pointwise_conv,
    make_divisible,
)
from .shuffle import ChannelShuffle, channel_shuffle

__all__ = ["channel_shuffle", "ChannelShuffle", "ConvBNAct", "group_pointwise_conv", "DepthwiseSeparableConv",
           "InvertedResidual", "ShuffleNetUnit", "make_divisible"]
