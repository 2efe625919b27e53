"""mobilecnn: ShuffleNet v1, MobileNetV2 and MobileNet V1 exact to the papers, from training to device.

The road: image file (:mod:`.data`) -> model (:mod:`.models`, built from :mod:`.layers`) -> training
(:mod:`.train`) -> run directory and checkpoints (:mod:`.runs`) -> verified device file and predictions
(:mod:`.deploy`); :mod:`.analysis` counts complexity, :mod:`.deploy.bench` times, :mod:`.reproduce` tests the
papers' claims, :mod:`.cli` is the command line. The ground floor every part may use: :mod:`.errors`,
:mod:`.validators`, :mod:`.files`, :mod:`.device`, :mod:`.fields` (the floors: tests/test_architecture.py).
"""

from typing import Any

from .analysis import ModelProfile, profile
from .errors import MobileCNNError, UnknownModelError
from .models import create_model as _create_model
from .models import get_model_entry, list_models, published

__version__ = "0.1.0"


def create_model(name: str, weights: Any = None, pretrained: str | None = None, **kwargs: Any) -> Any:
    """:func:`mobilecnn.models.create_model`; ``pretrained="torchvision"|"timm"|"keras"``: that source's published
    ImageNet weights (``mobilecnn weights get``: downloaded once into the cache, hash checked, imported)."""
    if pretrained is not None:
        from .errors import UsageError
        from .weights import GetConfig, get_weights

        if weights is not None:
            raise UsageError("pass weights= or pretrained=, not both")
        weights = get_weights(GetConfig(name, pretrained))["out"]
    return _create_model(name, weights=weights, **kwargs)

__all__ = ["create_model", "list_models", "get_model_entry", "published", "profile", "ModelProfile",
           "MobileCNNError", "UnknownModelError", "__version__"]
