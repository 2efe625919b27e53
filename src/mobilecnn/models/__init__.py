"""The model zoo: the registry, the three families (importing this package imports each family file, which
registers its models) and the weights-file format."""

from .base import ClassifierNet
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .published import Published
from .registry import ListConfig, ModelEntry, create_model, get_model_entry, list_models, published, register_model
from .shufflenet_v1 import ShuffleNetV1, shufflenet_v1_channels
from .weights_file import load_weights, read_metadata, save_weights

__all__ = ["create_model", "list_models", "get_model_entry", "published", "register_model", "ModelEntry", "ListConfig",
           "Published", "ClassifierNet", "MobileNetV1", "MobileNetV2", "ShuffleNetV1", "shufflenet_v1_channels",
           "load_weights", "read_metadata", "save_weights"]
