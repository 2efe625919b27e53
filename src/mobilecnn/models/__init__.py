"""The model zoo: the registry, the three families, Mobile DeepLabv3 and SSD/SSDLite on them (importing this package
imports each family file, which registers its models), backbone taps and the weights-file format."""

from .base import ClassifierNet, FeatureTap
from .deeplab import DeepLabV3, load_backbone_weights
from .features import FeatureInfo, FeatureNet
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .published import Published, PublishedDetection, PublishedSegmentation
from .registry import (
    ListConfig,
    ModelEntry,
    create_model,
    get_model_entry,
    list_models,
    published,
    published_detection,
    published_segmentation,
    register_model,
)
from .shufflenet_v1 import ShuffleNetV1, shufflenet_v1_channels
from .ssd import SSD
from .weights_file import load_weights, read_metadata, save_weights

__all__ = ["create_model", "list_models", "get_model_entry", "published", "published_segmentation",
           "published_detection", "register_model", "ModelEntry", "ListConfig", "Published", "PublishedSegmentation",
           "PublishedDetection", "ClassifierNet", "FeatureTap",
           "FeatureInfo", "FeatureNet", "MobileNetV1", "MobileNetV2", "ShuffleNetV1", "shufflenet_v1_channels",
           "DeepLabV3", "SSD", "load_backbone_weights", "load_weights", "read_metadata", "save_weights"]
