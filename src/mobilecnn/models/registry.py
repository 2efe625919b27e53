"""Model registry: ``@register_model``, ``create_model(name, weights=...)``, ``list_models(pattern)``.

Each family file defines one decorated builder per model name, with the figures its paper publishes
(:class:`Published`) beside it, so tables, tests and docs all read one source (:func:`published`).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from ..errors import UnknownModelError
from ..fields import cli
from .published import Published
from .weights_file import described_model, load_weights

__all__ = ["ModelEntry", "ListConfig", "register_model", "create_model", "list_models", "get_model_entry", "published"]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    published: Published | None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(family: str, published: Published | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under its function name (timm's ``@register_model`` idea).

    The builder is called as ``builder(num_classes=, in_chans=, small_input=, **kwargs)``; one
    explicit, greppable function per model name.
    """

    def decorate(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, family, builder, published)
        return builder

    return decorate


@dataclass
class ListConfig:
    """``mobilecnn list``: which names."""

    pattern: str | None = field(default=None, metadata=cli(
        "shell wildcard, e.g. 'shufflenet_v1_g3*' (default: every model)", positional=True, nargs="?",
        metavar="PATTERN"))


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell wildcard (``"shufflenet_v1_g3*"``)."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names raise :class:`UnknownModelError`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "see `mobilecnn list` for all names"
        raise UnknownModelError(f"unknown model {name!r}; {hint}") from None


def published(name: str) -> Published | None:
    """Published figures for a registered model (``None`` when the papers give none)."""
    return get_model_entry(name).published


def create_model(
    name: str,
    weights: str | os.PathLike | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    small_input: bool | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally loading ``weights`` (a safetensors file).

    ``small_input=True`` selects the stem for 28-64 px images (stride-1 stem, total stride 8);
    ``in_chans=1`` for grayscale. Extra keyword arguments go to the family's builder (e.g.
    ``shuffle=False`` for ShuffleNet, ``dropout``, ``padding="tf_same"``, ``bn_eps``, MobileNet V1's
    ``act``). The weights must fit the built model exactly. Arguments not given default to what the
    weights file's metadata records (a file from ``mobilecnn weights import`` or ``train``: class count,
    input channels, stem and the architecture options), else to 1000 classes, 3 channels, the 224 px stem.
    """
    entry = get_model_entry(name)
    params = inspect.signature(entry.builder).parameters
    if weights is not None:
        described = described_model(weights)
        num_classes = described.get("num_classes", 1000) if num_classes is None else num_classes
        in_chans = described.get("in_chans", 3) if in_chans is None else in_chans
        small_input = described.get("small_input", False) if small_input is None else small_input
        kwargs = {**{k: v for k, v in described.get("model_kwargs", {}).items() if k in params}, **kwargs}
    num_classes = 1000 if num_classes is None else num_classes
    in_chans = 3 if in_chans is None else in_chans
    small_input = False if small_input is None else small_input
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        accepted = [p for p in params if p not in ("num_classes", "in_chans", "small_input")]
        raise TypeError(
            f"{name}: unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted: num_classes, in_chans, small_input, {', '.join(accepted)}"
        )
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, small_input=small_input, **kwargs)
    # nn.Module.__setattr__ takes any value; its stub only admits Tensor | Module
    model.model_name = name  # type: ignore[assignment]
    model.model_kwargs = dict(kwargs)  # type: ignore[assignment]  # recorded in saved weights' metadata
    if weights is not None:
        load_weights(weights, model)
    return model
