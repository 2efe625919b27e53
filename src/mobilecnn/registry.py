"""Model registry: ``register_model``, ``create_model(name, ...)``, ``list_models(pattern)``.

Each model family file registers its builders with the figures its paper publishes, so tables,
tests and docs all read one source (:func:`published`).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

__all__ = [
    "Published",
    "ModelEntry",
    "UnknownModelError",
    "register_model",
    "create_model",
    "list_models",
    "get_model_entry",
    "published",
]


@dataclass(frozen=True)
class Published:
    """Figures a paper (or the authors' released code) gives for one model.

    ``macs`` maps input resolution to millions of multiply-adds (the papers' FLOPs/MAdds);
    ``params`` is millions of parameters as printed, ``params_step`` the precision it was printed
    with (0.1 for "1.9M"); ``top1_error`` is ImageNet top-1 error in %. ``approximate`` marks
    figures the paper rounds coarsely ("~38") that scaled channels cannot hit exactly; their
    ``macs_tolerance`` is widened and the reason is in ``note``.
    """

    source: str
    macs: dict[int, float] = field(default_factory=dict)
    params: float | None = None
    params_step: float = 0.1
    params_include_bn: bool = False
    params_include_classifier_bias: bool = True
    top1_error: float | None = None
    approximate: bool = False
    macs_tolerance: float = 0.015
    macs_rounding: str = "nearest"
    note: str = ""

    def params_matches(self, params: int, params_without_bn: int, num_classes: int = 1000) -> bool:
        """Whether a counted parameter total prints as the published figure (same convention, same rounding)."""
        if self.params is None:
            return True
        count = params if self.params_include_bn else params_without_bn
        if not self.params_include_classifier_bias:
            count -= num_classes
        return abs(count / 1e6 - self.params) <= self.params_step / 2 + 1e-9

    def macs_matches(self, macs: int, resolution: int = 224) -> bool:
        """Whether counted MACs agree with the published figure within :attr:`macs_tolerance`.

        A figure printed to the million stands for an interval: ``[P - 0.5, P + 0.5]`` when rounded
        (``macs_rounding="nearest"``), ``[P, P + 1)`` when truncated (``"floor"``: the MobileNetV2 grid,
        e.g. 11.93 M printed as 11). The count must lie within ``macs_tolerance * P`` of that interval.
        """
        ref = self.macs.get(resolution)
        if ref is None:
            return True
        lo, hi = (ref, ref + 1.0) if self.macs_rounding == "floor" else (ref - 0.5, ref + 0.5)
        value = macs / 1e6
        distance = max(lo - value, value - hi, 0.0)
        return distance <= self.macs_tolerance * ref


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    published: Published | None


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message lists the closest names."""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, builder: Callable[..., nn.Module], family: str, published: Published | None = None
) -> Callable[..., nn.Module]:
    """Register ``builder`` (called as ``builder(num_classes=, in_chans=, small_input=, **kw)``)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelEntry(name, family, builder, published)
    return builder


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
    name: str, num_classes: int = 1000, in_chans: int = 3, small_input: bool = False, **kwargs: Any
) -> nn.Module:
    """Build a registered model.

    ``small_input=True`` selects the 28-64 px stem of SPEC.md; ``in_chans=1`` for grayscale. Extra
    keyword arguments go to the family's builder (e.g. ``shuffle=False`` for ShuffleNet, ``dropout``).
    """
    entry = get_model_entry(name)
    params = inspect.signature(entry.builder).parameters
    unknown = [k for k in kwargs if k not in params or k.startswith("_")]  # _-prefixed: fixed per registered name
    if unknown:
        accepted = [p for p in params if p not in ("num_classes", "in_chans", "small_input") and not p.startswith("_")]
        raise TypeError(
            f"{name}: unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted: num_classes, in_chans, small_input, {', '.join(accepted)}"
        )
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, small_input=small_input, **kwargs)
    model.model_name = name
    return model
