"""mobilecnn: ShuffleNet v1, MobileNetV2 and MobileNet V1 exact to the papers, from training to device.

The road: image file (:mod:`.data`) -> model (:mod:`.models`, built from :mod:`.layers`) -> training
(:mod:`.train`) -> run directory and checkpoints (:mod:`.runs`) -> verified device file and predictions
(:mod:`.deploy`); :mod:`.analysis` counts complexity, :mod:`.deploy.bench` times, :mod:`.reproduce` tests the
papers' claims, :mod:`.cli` is the command line. The ground floor every part may use: :mod:`.errors`,
:mod:`.validators`, :mod:`.files`, :mod:`.device`, :mod:`.fields` (the floors: tests/test_architecture.py).
"""

import importlib
from typing import TYPE_CHECKING, Any

from .errors import MobileCNNError, UnknownModelError

if TYPE_CHECKING:
    from .analysis import ModelProfile, profile
    from .models import get_model_entry, list_models, published

__version__ = "0.1.0"

#: Loaded on first use, so that ``import mobilecnn`` (and the command line's start, where Ctrl-C must end
#: cleanly) does not wait for torch.
_LAZY = {"profile": ".analysis", "ModelProfile": ".analysis", "list_models": ".models",
         "get_model_entry": ".models", "published": ".models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mobilecnn' has no attribute {name!r}")


def create_model(name: str, weights: Any = None, pretrained: str | None = None, **kwargs: Any) -> Any:
    """:func:`mobilecnn.models.create_model`; ``pretrained="torchvision"|"timm"|"keras"``: that source's published
    ImageNet weights (``mobilecnn weights get``: downloaded once into the cache, hash checked, imported)."""
    from .models import create_model as build

    if pretrained is not None:
        from .errors import UsageError
        from .weights import GetConfig, get_weights

        if weights is not None:
            raise UsageError("pass weights= or pretrained=, not both")
        weights = get_weights(GetConfig(name, pretrained))["out"]
    return build(name, weights=weights, **kwargs)


__all__ = ["create_model", "list_models", "get_model_entry", "published", "profile", "ModelProfile",
           "MobileCNNError", "UnknownModelError", "__version__"]
