"""The model zoo: the registry and the three families; importing this package registers every model."""

from . import mobilenet_v1, mobilenet_v2, shufflenet_v1
from .base import ClassifierNet
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .published import Published
from .registry import ModelEntry, create_model, get_model_entry, list_models, published, register_model
from .shufflenet_v1 import ShuffleNetV1, shufflenet_v1_channels

__all__ = ["create_model", "list_models", "get_model_entry", "published", "register_model", "ModelEntry", "Published",
           "ClassifierNet", "MobileNetV1", "MobileNetV2", "ShuffleNetV1", "shufflenet_v1_channels"]
