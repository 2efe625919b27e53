"""The model families; importing this package registers every model."""

from . import mobilenet_v1, mobilenet_v2, shufflenet_v1
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .shufflenet_v1 import ShuffleNetV1, shufflenet_v1_channels

__all__ = ["MobileNetV1", "MobileNetV2", "ShuffleNetV1", "shufflenet_v1_channels",
           "mobilenet_v1", "mobilenet_v2", "shufflenet_v1"]
