"""Published weights -> mobilecnn: safe readers, one converter per source, model-name inference, the writer.

``mobilecnn weights import FILE --from torchvision|timm|keras|megvii --out W.safetensors`` (or
:func:`import_weights`) converts a published checkpoint into a mobilecnn safetensors file whose metadata
names the model and the architecture options it needs (``padding``, ``bn_eps``, ``act``) and carries its
preprocessing, so ``create_model(name, weights=W)``, ``predict``, ``train --init`` and ``export``
rebuild exactly that function. Which sources and widths convert exactly, and why: docs/pretrained.md.
``mobilecnn weights get MODEL --from SOURCE`` (or :func:`get_weights`) downloads the published file first,
checks its hash and caches both files.
"""

from .common import SOURCES, Converted
from .convert import convert_file, convert_state
from .download import GetConfig, get_weights
from .infer import infer_model_name
from .sources import load_weights_file, read_keras_h5, unwrap_state_dict
from .store import ImportConfig, import_weights, run_import, write_imported

__all__ = ["SOURCES", "Converted", "GetConfig", "get_weights",
           "convert_file", "convert_state", "infer_model_name", "load_weights_file",
           "read_keras_h5", "unwrap_state_dict", "ImportConfig", "import_weights", "run_import", "write_imported"]
