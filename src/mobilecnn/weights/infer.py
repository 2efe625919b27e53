"""Which registered model a converted state_dict fits: exact keys and shapes, or an error naming the
closest model and its first mismatching tensor."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch

from ..errors import CheckpointError

__all__ = ["model_shapes", "infer_model_name", "first_mismatch", "in_model_order"]

_SHAPES: dict[str, OrderedDict[str, tuple[int, ...]]] = {}


def model_shapes(name: str) -> OrderedDict[str, tuple[int, ...]]:
    """``{key: shape}`` of a registered model at 1000 classes, built on the meta device (no memory)."""
    if name not in _SHAPES:
        from ..models import create_model

        with torch.device("meta"):
            model = create_model(name)
        _SHAPES[name] = OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())
    return _SHAPES[name]


def first_mismatch(shapes: Mapping[str, tuple], ref: Mapping[str, tuple], ignore: tuple[str, ...] = ()) -> str | None:
    """The first difference between a converted state_dict's shapes and a model's, in the model's order."""
    for key, shape in ref.items():
        if key.startswith(ignore) if ignore else False:
            continue
        if key not in shapes:
            return f"missing {key} {shape}"
        if tuple(shapes[key]) != shape:
            return f"{key}: file {tuple(shapes[key])} vs model {shape}"
    for key in shapes:
        if key not in ref:
            return f"unexpected {key} {tuple(shapes[key])}"
    return None


def infer_model_name(state_dict: Mapping[str, torch.Tensor], candidates: Iterable[str] | None = None,
                     ignore_prefixes: tuple[str, ...] = (), num_classes: int | None = None) -> str:
    """The one registered model whose keys and shapes equal ``state_dict``'s.

    The classifier's output width is not compared (``num_classes`` is free); ``ignore_prefixes`` (e.g.
    ``("classifier.",)`` for a headless file) are left out. No match: :class:`CheckpointError` naming the
    closest model (most tensors with equal shapes, extra tensors counting against it) and its first mismatch.
    """
    from ..models import list_models

    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith(ignore_prefixes or ("\0",))}
    names = list(candidates) if candidates is not None else list_models()
    matches, scored = [], []
    for name in names:
        ref = _with_classes(model_shapes(name), num_classes)
        mismatch = first_mismatch(shapes, ref, ignore_prefixes)
        if mismatch is None:
            matches.append(name)
        else:
            agree = sum(1 for k, s in ref.items() if shapes.get(k) == s)
            scored.append((agree - len(set(shapes) - set(ref)), name, mismatch))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CheckpointError(f"the tensor shapes fit several models ({', '.join(matches)}); pass --model")
    if not scored:
        raise CheckpointError("no candidate models to compare with")
    scored.sort(key=lambda t: -t[0])
    _, name, mismatch = scored[0]
    raise CheckpointError(f"no registered model has these tensor shapes; closest: {name} (first mismatch: {mismatch})")


def check_fits(state_dict: Mapping[str, torch.Tensor], name: str, ignore_prefixes: tuple[str, ...] = (),
               num_classes: int | None = None) -> None:
    """``--model NAME`` given: the converted tensors must fit it exactly (error names the first mismatch)."""
    from ..models import get_model_entry

    get_model_entry(name)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    mismatch = first_mismatch(shapes, _with_classes(model_shapes(name), num_classes), ignore_prefixes)
    if mismatch is not None:
        raise CheckpointError(f"the file does not fit {name} (first mismatch: {mismatch})")


def _with_classes(ref: OrderedDict[str, tuple[int, ...]], num_classes: int | None) -> OrderedDict[str, tuple]:
    if num_classes is None:
        return ref
    out = OrderedDict(ref)
    for key in ("classifier.1.weight", "classifier.weight"):
        if key in out:
            out[key] = (num_classes,) + out[key][1:]
    for key in ("classifier.1.bias", "classifier.bias"):
        if key in out:
            out[key] = (num_classes,)
    return out


def in_model_order(state_dict: Mapping[str, torch.Tensor], name: str) -> OrderedDict[str, torch.Tensor]:
    rank = {k: i for i, k in enumerate(model_shapes(name))}
    return OrderedDict(sorted(state_dict.items(), key=lambda kv: rank.get(kv[0], len(rank))))
