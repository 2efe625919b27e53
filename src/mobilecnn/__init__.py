"""mobilecnn: ShuffleNet v1, MobileNetV2 and MobileNet V1 exact to the papers, from training to device.

The road: image file (:mod:`.data`) -> model (:mod:`.models`, built from :mod:`.layers`) -> training
(:mod:`.train`) -> run directory and checkpoints (:mod:`.runs`) -> verified device file and predictions
(:mod:`.deploy`); :mod:`.analysis` counts complexity, :mod:`.deploy.bench` times, :mod:`.reproduce` tests the
papers' claims, :mod:`.cli` is the command line. The ground floor every part may use: :mod:`.errors`,
:mod:`.validators`, :mod:`.files`, :mod:`.device`, :mod:`.fields` (the floors: tests/test_architecture.py).
"""

from .analysis import ModelProfile, profile
from .errors import MobileCNNError, UnknownModelError
from .models import create_model, get_model_entry, list_models, published

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "get_model_entry", "published", "profile", "ModelProfile",
           "MobileCNNError", "UnknownModelError", "__version__"]
