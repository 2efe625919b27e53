"""torchvision ``mobilenet_v2(width_mult=w)`` -> ``mobilenet_v2_x*``: exact for every registered width.

torchvision rounds the stem, every block and the last conv with the same ``_make_divisible`` (divisor
8, 90% rule), keeps ``1280 * max(1, w)``, the hidden width ``round(in * t)``, ReLU6, symmetric padding
and BN eps 1e-5: 0.35, 0.5, 0.75, 1.0, 1.3 and 1.4 map exactly. Keys:

| torchvision | mobilecnn |
|---|---|
| ``features.0.{0,1}.*`` | ``features.0.{conv,bn}.*`` |
| ``features.i.conv.j.{0,1}.*`` (Conv-BN-ReLU6) | ``features.i.block.j.{conv,bn}.*`` |
| ``features.i.conv.j.weight`` (4-D: the projection) | ``features.i.block.j.conv.weight`` |
| ``features.i.conv.(j+1).*`` (its BN) | ``features.i.block.j.bn.*`` |
| ``features.18.{0,1}.*`` | ``features.18.{conv,bn}.*`` |
| ``classifier.1.*`` | ``classifier.1.*`` |
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import torch

from ..errors import CheckpointError
from .common import Converted, imagenet_preprocessing

__all__ = ["convert_torchvision"]


def convert_torchvision(sd: Mapping[str, torch.Tensor]) -> tuple[OrderedDict[str, torch.Tensor], Converted]:
    """Map the keys; returns our state_dict and a :class:`Converted` template (model name filled in later)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    projection: dict[str, int] = {}  # block -> index of its plain Conv2d (key order may be sorted)
    for key, value in sd.items():
        m = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.weight", key)
        if m and value.dim() == 4:
            projection[m[1]] = int(m[2])
    for key, value in sd.items():
        if m := re.fullmatch(r"features\.(\d+)\.([01])\.(.+)", key):
            out[f"features.{m[1]}.{'conv' if m[2] == '0' else 'bn'}.{m[3]}"] = value
        elif m := re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.([01])\.(.+)", key):
            out[f"features.{m[1]}.block.{m[2]}.{'conv' if m[3] == '0' else 'bn'}.{m[4]}"] = value
        elif m := re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key):
            block, j, rest = m[1], int(m[2]), m[3]
            if rest == "weight" and value.dim() == 4:
                out[f"features.{block}.block.{j}.conv.weight"] = value
            elif projection.get(block) == j - 1:
                out[f"features.{block}.block.{j - 1}.bn.{rest}"] = value
            else:
                raise CheckpointError(f"torchvision MobileNetV2: unexpected key {key}")
        elif key.startswith("classifier.1."):
            out[key] = value
        else:
            raise CheckpointError(f"torchvision MobileNetV2: unexpected key {key} (only mobilenet_v2 is supported)")
    return out, Converted(out, "", "torchvision", {}, imagenet_preprocessing())
