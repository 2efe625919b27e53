"""mobilecnn: ShuffleNet v1, MobileNetV2 and MobileNet V1 exact to the papers, from training to device."""

from . import models  # noqa: F401  (registers the models)
from .complexity import ModelProfile, profile
from .registry import UnknownModelError, create_model, get_model_entry, list_models, published

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "get_model_entry", "published", "profile", "ModelProfile",
           "UnknownModelError", "__version__"]
