"""Model registry: ``@register_model``, ``create_model(name, weights=...)``, ``list_models(pattern)``.

Each family file defines one decorated builder per model name, with the figures its paper publishes
(:class:`Published`; a segmentation model's :class:`PublishedSegmentation` rows, a detector's
:class:`PublishedDetection` rows) beside it, so tables, tests and docs all read one source (:func:`published`,
:func:`published_segmentation`, :func:`published_detection`). A classifier can also be
built as a backbone: ``create_model(name, features_only=True, out_indices=..., output_stride=...)``
(:mod:`.features`).
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
from .base import ClassifierNet
from .features import FeatureNet
from .published import Published, PublishedDetection, PublishedSegmentation
from .weights_file import described_model, load_weights

__all__ = ["ModelEntry", "ListConfig", "register_model", "create_model", "list_models", "get_model_entry", "published",
           "published_segmentation", "published_detection", "TASKS", "BACKBONE_OPTIONS"]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


#: What a model predicts: one label per image, one per pixel, or boxes with labels.
TASKS = ("classification", "segmentation", "detection")
#: ``create_model`` options that make a classifier a backbone (timm's names); see :mod:`.features`.
BACKBONE_OPTIONS = ("features_only", "out_indices", "output_stride")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    published: Published | None
    task: str = "classification"
    segmentation: tuple[PublishedSegmentation, ...] = ()
    detection: tuple[PublishedDetection, ...] = ()


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(family: str, published: Published | None = None, task: str = "classification",
                   segmentation: tuple[PublishedSegmentation, ...] = (),
                   detection: tuple[PublishedDetection, ...] = ()) -> Callable[[Builder], Builder]:
    """Decorator registering a builder under its function name (timm's ``@register_model`` idea).

    The builder is called as ``builder(num_classes=, in_chans=, small_input=, **kwargs)``; one
    explicit, greppable function per model name. ``task`` is one of :data:`TASKS`; a segmentation model
    brings its published table rows as ``segmentation``, a detector as ``detection``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def decorate(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, family, builder, published, task, tuple(segmentation), tuple(detection))
        return builder

    return decorate


@dataclass
class ListConfig:
    """``mobilecnn list``: which names."""

    pattern: str | None = field(default=None, metadata=cli(
        "shell wildcard, e.g. 'shufflenet_v1_g3*' (default: every model)", positional=True, nargs="?",
        metavar="PATTERN"))


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell wildcard (``"shufflenet_v1_g3*"``, ``"deeplabv3*"``),
    ``task`` one of :data:`TASKS` (default: every model)."""
    if task is not None and task not in TASKS:
        raise UnknownModelError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    names = sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)
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


def published_segmentation(name: str) -> tuple[PublishedSegmentation, ...]:
    """The published table rows of a registered segmentation model (MobileNetV2 Table 7), empty for the rest."""
    return get_model_entry(name).segmentation


def published_detection(name: str) -> tuple[PublishedDetection, ...]:
    """The published table rows of a registered detector (MobileNetV2 Tables 5 and 6), empty for the rest."""
    return get_model_entry(name).detection


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
    ``act``; a DeepLab model's ``output_stride`` and ``aspp``). The weights must fit the built model exactly.
    Arguments not given default to what the weights file's metadata records (a file from ``mobilecnn weights
    import`` or ``train``: class count, input channels, stem and the architecture options), else to the
    builder's defaults (1000 classes, 21 for a DeepLab model, 81 for a detector), 3 channels, the 224 px stem.

    A classifier also takes timm's backbone options (:mod:`.features`): ``output_stride=16`` or ``8`` dilates
    it (TF-slim's rule, :func:`~mobilecnn.models.base.dilate_to_output_stride`), and ``features_only=True``
    returns its feature extractor (a :class:`~mobilecnn.models.features.FeatureNet` whose forward returns the
    feature maps of ``out_indices``, described by its ``feature_info``); ``weights`` load into the classifier
    first, so a classification file initialises the backbone.
    """
    entry = get_model_entry(name)
    params = inspect.signature(entry.builder).parameters
    backbone = {k: kwargs.pop(k) for k in BACKBONE_OPTIONS if k in kwargs and k not in params}
    if weights is not None:
        described = described_model(weights)
        num_classes = described.get("num_classes") if num_classes is None else num_classes
        in_chans = described.get("in_chans") if in_chans is None else in_chans
        small_input = described.get("small_input") if small_input is None else small_input
        kwargs = {**{k: v for k, v in described.get("model_kwargs", {}).items() if k in params}, **kwargs}
    given = {"num_classes": num_classes, "in_chans": in_chans, "small_input": small_input}
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        accepted = list(given) + [p for p in params if p not in given] + (
            [] if entry.task != "classification" else list(BACKBONE_OPTIONS))
        raise TypeError(
            f"{name}: unexpected keyword argument(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}"
        )
    model = entry.builder(**{k: v for k, v in given.items() if v is not None}, **kwargs)
    # nn.Module.__setattr__ takes any value; its stub only admits Tensor | Module
    model.model_name = name  # type: ignore[assignment]
    model.model_kwargs = dict(kwargs)  # type: ignore[assignment]  # recorded in saved weights' metadata
    if weights is not None:
        load_weights(weights, model)
    return _as_backbone(name, model, backbone) if backbone else model


def _as_backbone(name: str, model: nn.Module, options: dict[str, Any]) -> nn.Module:
    """``model`` dilated to ``output_stride`` and, with ``features_only``, its :class:`FeatureNet`."""
    if not isinstance(model, ClassifierNet):
        raise TypeError(f"{name}: {', '.join(map(repr, options))} apply to classifiers only")
    features_only = options.get("features_only", False)
    if not isinstance(features_only, bool):
        raise TypeError(f"{name}: features_only must be True or False, got {features_only!r}")
    if "out_indices" in options and not features_only:
        raise TypeError(f"{name}: out_indices needs features_only=True")
    if options.get("output_stride") is not None:
        model.set_output_stride(options["output_stride"])
    if not features_only:
        return model
    net: nn.Module = FeatureNet(model, options.get("out_indices"))
    net.model_name = name  # type: ignore[assignment]
    net.model_kwargs = dict(getattr(model, "model_kwargs", {}))  # type: ignore[assignment]
    return net
