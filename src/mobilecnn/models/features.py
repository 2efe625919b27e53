"""Backbone taps: ``create_model(name, features_only=True, out_indices=..., output_stride=...)``, timm's convention.

A :class:`FeatureNet` is the classifier's own feature extractor: the very ``features`` modules, under the same
names, cut after the last tap and without the pool and classifier, so a classification state_dict loads into
it (``load_state_dict(strict=False)`` sets every parameter; the left-over keys are the head's). Its forward
returns a list of feature maps, one per requested tap, in ``out_indices`` order; ``feature_info`` says for
each its channels, reduction (stride w.r.t. the input) and module name, as timm's ``FeatureInfo`` does.

Each family lists its taps (:meth:`~mobilecnn.models.base.ClassifierNet.feature_taps`): the stage outputs
first (the default ``out_indices``), then the extra taps inside a block or after the last stage (MobileNetV2's
``layer_15/expansion_output`` and final 1x1 conv). ``out_indices`` takes tap indices (negative ones count
from the end) or module names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from ..layers import ConvBNAct, InvertedResidual
from .base import ClassifierNet, ImageModel

__all__ = ["FeatureInfo", "FeatureNet", "reduction_at"]


class FeatureInfo:
    """timm's ``FeatureInfo``: ``info`` holds every tap of the network (dicts with ``module``, ``num_chs``,
    ``reduction``, ``index``, ``stage``); ``out_indices`` the ones returned, in order.

    ``channels()``, ``reduction()``, ``module_name()`` give the value for each returned tap; with ``idx`` (an
    index or a list of indices into ``info``) for those taps instead.
    """

    def __init__(self, info: list[dict[str, Any]], out_indices: Sequence[int]) -> None:
        self.info = info
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, int):
            return self.info[idx][key]
        return [self.info[i][key] for i in idx]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None) -> Any:
        """The returned taps' dicts (only ``keys`` when given)."""
        indices = self.out_indices if idx is None else idx
        pick = [self.info[i] for i in ([indices] if isinstance(indices, int) else indices)]
        out = [dict(d) if keys is None else {k: d[k] for k in keys} for d in pick]
        return out[0] if isinstance(idx, int) else out

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, info={self.info})"


def _stride_of(module: nn.Module) -> int:
    """The stride ``module`` runs at now (a chain's: the product of its parts')."""
    if isinstance(module, ConvBNAct):
        return int(module.conv.stride[0])
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        stride = module.stride
        return int(stride if isinstance(stride, int) else stride[0])
    if isinstance(module, nn.Sequential):
        total = 1
        for child in module:
            total *= _stride_of(child)
        return total
    stride = getattr(module, "stride", 1)
    return int(stride) if isinstance(stride, int) else 1


def reduction_at(root: nn.Module, path: str) -> int:
    """Stride of the output of submodule ``path`` of ``root`` w.r.t. the input: everything run before it in
    the chains on the way (``features.14.block.0``: ``features.0``-``13``, then nothing inside block 14 before its
    expansion conv) times its own stride."""
    total, module = 1, root
    for part in path.split("."):
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                if name == part:
                    break
                total *= _stride_of(child)
        module = cast(nn.Module, getattr(module, part))
    return total * _stride_of(module)


def _resolve(owner: str, taps: list[dict[str, Any]], out_indices: Sequence[int | str] | None) -> list[int]:
    if out_indices is None:
        return [i for i, t in enumerate(taps) if t["stage"]]
    if isinstance(out_indices, (str, int)) or not isinstance(out_indices, Sequence) or not out_indices:
        raise TypeError(f"{owner}: out_indices must be a non-empty list of tap indices or module names, "
                        f"got {out_indices!r}")
    names = [t["module"] for t in taps]
    resolved = []
    for i in out_indices:
        if isinstance(i, str) and i in names:
            resolved.append(names.index(i))
        elif isinstance(i, int) and not isinstance(i, bool) and -len(taps) <= i < len(taps):
            resolved.append(i % len(taps))
        else:
            shown = ", ".join(f"{n}: {t['module']} ({t['num_chs']} ch, /{t['reduction']})" for n, t in enumerate(taps))
            raise ValueError(f"{owner}: out_indices entry {i!r} is not a tap; taps: {shown}")
    return resolved


class FeatureNet(ImageModel):
    """The feature extractor of ``model`` (a classifier, already dilated to its output stride): its
    ``features`` up to the last requested tap, under the same names; forward returns the requested feature
    maps as a list, in ``out_indices`` order (timm's ``features_only``)."""

    def __init__(self, model: ClassifierNet, out_indices: Sequence[int | str] | None = None) -> None:
        owner = f"{model.owner} features"
        taps: list[dict[str, Any]] = [
            {"module": t.module, "num_chs": t.num_chs, "reduction": reduction_at(model, t.module), "index": i,
             "stage": t.stage} for i, t in enumerate(model.feature_taps())]
        chosen = _resolve(owner, taps, out_indices)
        super().__init__(owner, model.in_chans, max(taps[i]["reduction"] for i in chosen), model.small_input)
        self.feature_info = FeatureInfo(taps, chosen)
        self.output_stride = model.output_stride
        self.arch = dict(getattr(model, "arch", {}))
        last = max(int(m.split(".")[1]) for m in self.feature_info.module_name())
        self.features = nn.Sequential(*list(model.features)[:last + 1])
        self._wanted = frozenset(self.feature_info.module_name())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input_once(x)
        found: dict[str, torch.Tensor] = {}
        _run(self.features, x, "features", self._wanted, found)
        return [found[name] for name in self.feature_info.module_name()]


def _run(module: nn.Module, x: torch.Tensor, prefix: str, wanted: frozenset[str],
         found: dict[str, torch.Tensor]) -> torch.Tensor:
    """``module(x)``, keeping in ``found`` the outputs of the ``wanted`` submodules (named from ``prefix``)."""
    if not any(w.startswith(prefix + ".") for w in wanted):
        out = module(x)
    elif type(module) is nn.Sequential:
        out = x
        for name, child in module.named_children():
            out = _run(child, out, f"{prefix}.{name}", wanted, found)
    elif isinstance(module, InvertedResidual):
        out = _run(module.block, x, prefix + ".block", wanted, found)
        out = x + out if module.use_residual else out
    else:
        raise ValueError(f"cannot tap inside {prefix} ({type(module).__name__})")
    if prefix in wanted:
        found[prefix] = out
    return out
