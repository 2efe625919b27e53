"""The weights-file format: safetensors only (no pickle), written atomically, with the model described in
its metadata so that a lone file rebuilds the exact model (``create_model(name, weights=W)``).

Metadata (all strings; JSON where structured), the one schema for files written by ``train`` (each
checkpoint's ``model.safetensors``/``ema.safetensors``) and by ``mobilecnn weights import``:

* ``format`` = ``mobilecnn``, ``model`` (registry name), ``num_classes``, ``in_chans``, ``small_input``;
* ``model_kwargs``: the architecture options the weights need (``padding``, ``bn_eps``, ``act``...);
* ``data``: the dataset description (``DataInfo.to_dict()``, or an imported file's preprocessing);
* imported files add ``source``, ``license`` and ``headless``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..files import atomic_write

__all__ = ["SIDECAR_SUFFIX", "WEIGHTS_FORMAT", "MODEL_KEYS", "weights_metadata", "model_metadata", "check_state_values",
           "written_by_mobilecnn", "described_model", "plain_state", "save_weights", "read_metadata", "load_weights",
           "check_state_fits"]

#: The JSON description written beside a model file (an export or an imported weights file): model, labels,
#: preprocessing, verification numbers; ``predict`` and ``bench`` read it.
SIDECAR_SUFFIX = ".mobilecnn.json"

#: ``format`` of every file mobilecnn writes.
WEIGHTS_FORMAT = "mobilecnn"
#: The metadata keys that identify the model a file fits, and what each is called in messages.
MODEL_KEYS = {"model": "model", "num_classes": "class count", "in_chans": "input channels",
              "small_input": "small_input stem"}


def weights_metadata(model: str, num_classes: Any, in_chans: Any, small_input: Any,
                     model_kwargs: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
    """The metadata of a weights file (see the module docstring); ``model_kwargs`` is recorded when not None,
    ``extra`` (``data``, ``source``...) as given."""
    meta = {"format": WEIGHTS_FORMAT, "model": str(model), "num_classes": str(num_classes),
            "in_chans": str(in_chans), "small_input": str(small_input)}
    if model_kwargs is not None:
        meta["model_kwargs"] = json.dumps(model_kwargs, sort_keys=True)
    return {**meta, **extra}


def model_metadata(model: nn.Module) -> dict[str, str]:
    """What identifies a model's weights: registry name, class count, input channels, stem, and the
    architecture options (``padding``, ``bn_eps``, ``act``) when they are not the defaults."""
    return weights_metadata(getattr(model, "model_name", type(model).__name__), getattr(model, "num_classes", ""),
                            getattr(model, "in_chans", ""), getattr(model, "small_input", ""),
                            getattr(model, "model_kwargs", None) or None)


def written_by_mobilecnn(meta: dict[str, str]) -> bool:
    """Whether a file's metadata is mobilecnn's (it names its model)."""
    return meta.get("format") == WEIGHTS_FORMAT and bool(meta.get("model"))


def described_model(path: str | os.PathLike) -> dict[str, Any]:
    """What a weights file's metadata says about the model it fits: ``model``, ``num_classes``,
    ``in_chans``, ``small_input`` and ``model_kwargs`` (architecture options such as ``padding``,
    ``bn_eps``, ``act``), each only when recorded. Errors name the file."""
    meta = read_metadata(path)
    out: dict[str, Any] = {}
    try:
        if meta.get("model"):
            out["model"] = meta["model"]
        for key in ("num_classes", "in_chans"):
            if meta.get(key):
                out[key] = int(meta[key])
        if meta.get("small_input") in ("True", "False"):
            out["small_input"] = meta["small_input"] == "True"
        kwargs = json.loads(meta.get("model_kwargs") or "{}")
    except ValueError as exc:
        raise CheckpointError(f"{path}: unreadable model description in its metadata ({exc})") from None
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: model_kwargs in its metadata is not an object")
    out["model_kwargs"] = kwargs
    return out


def plain_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors as safetensors wants them: contiguous, sharing no memory; weights on a GPU as host copies."""
    return {k: v.detach().cpu().contiguous().clone() if v.data_ptr() else v.detach().cpu().contiguous()
            for k, v in state.items()}


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write ``state`` to ``path`` as safetensors, atomically."""
    tensors = plain_state(state)
    try:
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    except SafetensorError as exc:  # e.g. disk full
        raise OSError(f"could not write {path}: {exc}") from None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata stored in a safetensors file's header (no tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:2] in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        raise CheckpointError(
            f"{path} is a pickle/torch.save file; mobilecnn loads only safetensors (unpickling can run code). "
            "Convert trusted weights with safetensors.torch.save_file."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None


def _check_described(path: Path, model: nn.Module) -> None:
    """Refuse a file whose metadata describes another model, or the same shapes with other architecture
    options (e.g. Keras weights without TF padding: the same tensors, another function)."""
    meta = read_metadata(path)
    mine = model_metadata(model)
    for key, what in MODEL_KEYS.items():
        if meta.get(key) and mine.get(key) and meta[key] != mine[key]:
            raise CheckpointError(
                f"{path} holds weights for {meta.get('model')} (num_classes={meta.get('num_classes')}, "
                f"in_chans={meta.get('in_chans')}, small_input={meta.get('small_input')}), but the model is "
                f"{mine['model']} (num_classes={mine['num_classes']}, in_chans={mine['in_chans']}, "
                f"small_input={mine['small_input']}): the {what} differs"
            )
    arch = getattr(model, "arch", None) or {}
    try:
        recorded = json.loads(meta.get("model_kwargs") or "{}")
    except ValueError:
        recorded = {}
    differ = [k for k, v in (recorded.items() if isinstance(recorded, dict) else ()) if k in arch and arch[k] != v]
    if differ:
        shown = ", ".join(f"{k}={recorded[k]!r} in the file vs {arch[k]!r}" for k in differ)
        raise CheckpointError(f"{path} was made for {meta.get('model')} with {shown} in the model; build it with "
                              f"create_model({meta.get('model')!r}, weights=...) and the file's own options")


#: The integer buffers a state holds: BN's step counter and an EMA's (``torch.optim.swa_utils.AveragedModel``).
COUNTERS = ("num_batches_tracked", "n_averaged")


def check_state_values(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first tensor no trained network holds: a non-floating dtype
    (only the :data:`COUNTERS` are integers), a NaN or infinite value, a negative BN running
    variance. Such a file is corrupted or diverged; loading it would only fail later, far from the cause."""
    for key, tensor in state.items():
        if key.rsplit(".", 1)[-1] in COUNTERS and not tensor.is_complex() and not tensor.is_floating_point():
            continue
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key!r} is {str(tensor.dtype).replace('torch.', '')}; weights "
                                  "are floating point (float32, float16, bfloat16, float64)")
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values (a diverged or corrupted "
                                  "checkpoint); refused")
        if key.endswith("running_var") and bool((tensor < 0).any()):
            raise CheckpointError(f"{path}: tensor {key!r} holds a negative batch-norm variance (min "
                                  f"{float(tensor.min()):.3g}); refused: a variance is at least 0")


def load_weights(path: str | os.PathLike, model: nn.Module | None = None, *,
                 check_values: bool = True) -> dict[str, torch.Tensor]:
    """Read a safetensors weight file; with ``model``, check it belongs to that model, then load it.

    Only safetensors is accepted: a pickle (``.pt``/``.pth`` from ``torch.save``) is refused,
    because unpickling can run arbitrary code. The values are checked (:func:`check_state_values`) unless
    ``check_values`` is False (an optimizer's state: integer step counters are fine there).
    """
    path = Path(path)
    state = _read_state(path)
    if check_values:
        check_state_values(state, path)
    if model is not None:
        _check_described(path, model)
        check_state_fits(state, model, path)
        model.load_state_dict(state)
    return state


def check_state_fits(state: dict[str, torch.Tensor], model: nn.Module, path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming the first missing, unknown or wrongly shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    wrong_type = [k for k in expected if k in state and state[k].is_floating_point() != expected[k].is_floating_point()]
    if missing or unexpected or wrong or wrong_type:
        detail = "; ".join(
            part for part in (
                f"missing {len(missing)} tensors (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unknown tensors (e.g. {unexpected[0]})" if unexpected else "",
                f"shape mismatch for {wrong[0]}: file {tuple(state[wrong[0]].shape)} vs model "
                f"{tuple(expected[wrong[0]].shape)}" if wrong else "",
                f"dtype mismatch for {wrong_type[0]}: file {state[wrong_type[0]].dtype}" if wrong_type else "",
            ) if part
        )
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"{path} does not fit {name}: {detail}")
