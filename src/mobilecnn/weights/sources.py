"""Safe readers, one per file type. Nothing here can run code from a file:

* ``.pth`` / ``.pth.tar`` / ``.pt`` / ``.bin`` / ``.ckpt``: ``torch.load(weights_only=True)`` only; a pickle
  that would call anything (a malicious ``__reduce__``) is refused, never run;
* ``.safetensors``: read directly (a header and raw tensors);
* ``.h5`` / ``.hdf5``: h5py (Keras and TensorFlow are never imported).

Every other suffix (``.pkl``, ``.npy``...) is refused.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, UsageError

__all__ = ["TORCH_SUFFIXES", "H5_SUFFIXES", "SAFETENSORS_SUFFIXES", "load_weights_file", "unwrap_state_dict",
           "read_keras_h5", "is_h5"]

TORCH_SUFFIXES = (".pth.tar", ".pth", ".pt", ".bin", ".ckpt")
H5_SUFFIXES = (".h5", ".hdf5")
SAFETENSORS_SUFFIXES = (".safetensors",)


def is_h5(path: str | Path) -> bool:
    return str(path).lower().endswith(H5_SUFFIXES)


def load_weights_file(path: str | Path) -> Any:
    """A dict of tensors (torch / safetensors files) or ``{layer: {weight: array}}`` (Keras HDF5)."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if name.endswith(SAFETENSORS_SUFFIXES):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    if name.endswith(H5_SUFFIXES):
        return read_keras_h5(path)
    if name.endswith(TORCH_SUFFIXES):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError, ValueError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(
                f"{path}: refused to load: torch.load(weights_only=True) rejected the file (not a plain tensor "
                f"checkpoint, or a pickle that would run code): {first}") from None
    raise UsageError(f"{path}: unsupported file type; accepted: "
                     f"{', '.join(TORCH_SUFFIXES + SAFETENSORS_SUFFIXES + H5_SUFFIXES)}")


def unwrap_state_dict(obj: Any) -> OrderedDict[str, torch.Tensor]:
    """``{'state_dict': ...}`` / ``{'model': ...}`` / ``{'state_dict_ema': ...}`` unwrapped, ``module.``
    (``nn.DataParallel``) stripped; every value must be a tensor."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model", "model_state", "model_state_dict", "state_dict_ema"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def read_keras_h5(path: str | Path) -> OrderedDict[str, OrderedDict[str, np.ndarray]]:
    """A Keras-2 layout weights file (the published ``keras.applications`` files; Keras 3 writes it with
    ``keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group``), read with h5py only.

    Root attribute ``layer_names``; one group per layer with attribute ``weight_names`` (``Conv1/kernel:0``
    in Keras 2, ``Conv1/kernel`` in Keras 3); a full-model save nests it under ``model_weights``; long
    attributes are split into ``attr0, attr1...``. Returns ``{layer: {short name: array}}`` in file order,
    layers without weights left out; short names drop the path and ``:0`` (``kernel``, ``gamma``...).
    """
    try:
        import h5py
    except ImportError:
        from ..errors import MissingBackendError

        raise MissingBackendError("reading Keras .h5 weights needs h5py: pip install 'mobilecnn[weights]'") from None

    def text(value: Any) -> str:
        return value.decode("utf8") if isinstance(value, bytes) else str(value)

    def names(group: Any, attr: str) -> list[str]:
        if attr in group.attrs:
            return [text(v) for v in group.attrs[attr]]
        chunks: list[str] = []
        i = 0
        while f"{attr}{i}" in group.attrs:
            chunks.extend(text(v) for v in group.attrs[f"{attr}{i}"])
            i += 1
        return chunks

    out: OrderedDict[str, OrderedDict[str, np.ndarray]] = OrderedDict()
    try:
        with h5py.File(str(path), "r") as f:
            root = _h5_member(h5py, f, "model_weights", path, h5py.Group) if "model_weights" in f else f
            layer_names = names(root, "layer_names")
            if not layer_names:
                raise CheckpointError(f"{path}: not a Keras-2 layout weights file (no 'layer_names' attribute; "
                                      "a Keras 3 '.weights.h5' file is not supported)")
            for layer in layer_names:
                group = _h5_member(h5py, root, layer, path, h5py.Group)
                weights: OrderedDict[str, np.ndarray] = OrderedDict()
                for wname in names(group, "weight_names"):
                    short = wname.split("/")[-1].split(":")[0]
                    if short in weights:
                        raise CheckpointError(f"{path}: layer {layer!r} has two weights named {short!r}")
                    weights[short] = _h5_weights(_h5_member(h5py, group, wname, path, h5py.Dataset), path)
                if weights:
                    out[layer] = weights
    except OSError as exc:
        raise CheckpointError(f"{path} is not a readable HDF5 file ({exc})") from None
    return out


#: The largest weight tensor read from an HDF5 file (MobileNet's largest is 5 MB).
MAX_H5_TENSOR_BYTES = 1 << 30


def _h5_member(h5py: Any, group: Any, name: str, path: str | Path, kind: type) -> Any:
    """``group[name]``, refused unless it is a ``kind`` stored in this file: an external link would read
    another file, as would a dataset with external storage or a virtual one (checked in :func:`_h5_weights`)."""
    link = group.get(name, getlink=True)
    if link is None:
        raise CheckpointError(f"{path}: {group.name!r} names {name!r}, which the file does not hold")
    if isinstance(link, h5py.ExternalLink):
        raise CheckpointError(f"{path}: {name!r} is a link into another file ({link.filename!r}); refused: weights "
                              "must be stored in the file itself")
    member = group.get(name)
    if not isinstance(member, kind):
        raise CheckpointError(f"{path}: {name!r} is not an HDF5 {kind.__name__.lower()} (a dangling or odd link)")
    return member


def _h5_weights(dataset: Any, path: str | Path) -> np.ndarray:
    """A dataset's values, read only if they lie in this file (no external storage, not virtual), are floating
    point, and are of a size a weight tensor has."""
    if dataset.external or dataset.is_virtual:
        where = "external storage in " + repr(dataset.external[0][0]) if dataset.external else "a virtual dataset"
        raise CheckpointError(f"{path}: weight {dataset.name!r} is {where}; refused: weights must be stored in the "
                              "file itself")
    if dataset.dtype.kind != "f":
        raise CheckpointError(f"{path}: weight {dataset.name!r} is {dataset.dtype}; weights are floating point")
    if dataset.size * dataset.dtype.itemsize > MAX_H5_TENSOR_BYTES:
        raise CheckpointError(f"{path}: weight {dataset.name!r} has shape {dataset.shape}, over "
                              f"{MAX_H5_TENSOR_BYTES >> 20} MiB: not a MobileNet weight")
    return np.asarray(dataset)
