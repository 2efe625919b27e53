"""The front door: load a file safely, convert it from its source's layout, find (or check) the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..models.weights_file import check_state_values
from .common import SOURCES, Converted
from .infer import check_fits, in_model_order, infer_model_name
from .keras import convert_keras, resolution_from_name
from .megvii import convert_megvii
from .sources import is_h5, load_weights_file, unwrap_state_dict
from .timm import check_variant, convert_timm
from .torchvision import convert_torchvision

__all__ = ["convert_file", "convert_state", "guess_source"]

_FAMILY = {"torchvision": ("mobilenet_v2_",), "timm": ("mobilenet_v2_", "mobilenet_v1_"),
           "keras": ("mobilenet_v2_", "mobilenet_v1_"), "megvii": ("shufflenet_v1_",)}


def guess_source(keys: Any) -> str | None:
    keys = set(keys)
    if "first_conv.0.weight" in keys:
        return "megvii"
    if "conv_stem.weight" in keys:
        return "timm"
    if "features.0.0.weight" in keys:
        return "torchvision"
    return None


def convert_state(obj: Any, source: str, *, model: str | None = None, variant: str | None = None,
                  resolution: int | None = None) -> Converted:
    """Convert what :func:`load_weights_file` returned (a state_dict, or Keras layers for ``source="keras"``)."""
    if source not in SOURCES:
        raise UsageError(f"unknown source {source!r}; accepted: {', '.join(SOURCES)}")
    if variant is not None and source != "timm":
        raise UsageError("--variant names a timm model; other sources need none")
    if source == "keras":
        if not isinstance(obj, Mapping) or not all(isinstance(v, Mapping) for v in obj.values()):
            raise UsageError("--from keras needs a Keras HDF5 (.h5) weights file")
        sd, conv = convert_keras(obj, resolution or 224)
    else:
        state = unwrap_state_dict(obj)
        sd, conv = {"torchvision": convert_torchvision, "megvii": convert_megvii}[source](state) \
            if source != "timm" else convert_timm(state, variant)
    ignore = ("classifier.",) if conv.headless else ()
    head = sd.get("classifier.1.weight", sd.get("classifier.weight"))
    num_classes = int(head.shape[0]) if head is not None else None
    if model is not None:
        check_fits(sd, model, ignore, num_classes)
        name = model
    else:
        from ..models import list_models

        candidates = [m for m in list_models() if m.startswith(_FAMILY[source])]
        name = infer_model_name(sd, candidates, ignore, num_classes)
    if source == "timm" and (expected := check_variant(variant)) is not None and expected != name:
        raise UsageError(f"timm {variant}: the tensors fit {name}, but that variant is {expected}")
    if resolution is not None and source != "keras":
        conv.preprocessing = dataclasses.replace(conv.preprocessing, resolution=int(resolution))
    return dataclasses.replace(conv, state_dict=in_model_order(sd, name), model_name=name)


def convert_file(path: str | Path, source: str | None = None, *, model: str | None = None,
                 variant: str | None = None, resolution: int | None = None) -> Converted:
    """Load ``path`` safely (:mod:`.sources`) and convert it; ``source`` is guessed from the keys when None.

    Keras: the resolution defaults to the one in the published file name (``..._224.h5``), else 224.
    """
    obj = load_weights_file(path)
    if is_h5(path):
        if source not in (None, "keras"):
            raise UsageError(f"{path}: an HDF5 file can only come from Keras (--from keras)")
        conv = convert_state(obj, "keras", model=model, resolution=resolution or resolution_from_name(path))
    else:
        if source is None:
            source = guess_source(unwrap_state_dict(obj).keys())
            if source is None:
                raise UsageError(f"{path}: cannot tell the source from its keys; pass --from {'|'.join(SOURCES)}")
        if source == "keras":
            raise UsageError(f"{path}: --from keras needs a Keras HDF5 (.h5) weights file")
        conv = convert_state(obj, source, model=model, variant=variant, resolution=resolution)
    check_state_values(conv.state_dict, path)  # before anything is written: no file from garbage
    return conv
