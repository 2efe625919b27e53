"""timm ``mobilenetv2_035/050/075/100/140`` and ``mobilenetv1_100`` -> ours; other variants refused.

Checked layer by layer (shapes, strides, padding, groups, BN eps, activations):

* ``mobilenetv2_035/050/075/100/140`` are exactly ``mobilenet_v2_x0_35/x0_5/x0_75/x1_0/x1_4``
  (``round_channels`` is ``make_divisible``, head ``max(1280, round(1280 m))``, ReLU6, eps 1e-5).
* ``mobilenetv1_100`` is ``mobilenet_v1_x1_0`` with ReLU6 (ours follows the paper's ReLU): imported
  with ``act="relu6"``. timm evaluates it with mean = std = 0.5 (inputs in [-1, 1]).
* Refused: ``mobilenetv2_110d/120d`` (depth multiplier: more blocks, fixed 32/1280 stem/head),
  ``mobilenetv1_100h`` (an extra 1x1 conv head), ``mobilenetv1_125`` (width 1.25), any block with SE.

Keys: ``conv_stem``/``bn1`` -> ``features.0``; blocks in (stage, index) order -> ``features.1..``:
``InvertedResidual`` ``conv_pw/bn1, conv_dw/bn2, conv_pwl/bn3`` -> ``block.{0,1,2}``; MobileNetV2's first
``DepthwiseSeparableConv`` ``conv_dw/bn1, conv_pw/bn2`` -> ``block.{0,1}``; V1 blocks -> ``depthwise``,
``pointwise``; ``conv_head``/``bn2`` -> ``features.18``; ``classifier`` -> ``classifier.1``.
"""

from __future__ import annotations

import re
from collections import OrderedDict, defaultdict
from collections.abc import Mapping

import torch

from ..errors import CheckpointError
from .common import BN_KEYS, Converted, imagenet_preprocessing

__all__ = ["TIMM_EXACT", "TIMM_RELU6", "TIMM_REFUSED", "convert_timm"]

TIMM_EXACT = {"mobilenetv2_035": "mobilenet_v2_x0_35", "mobilenetv2_050": "mobilenet_v2_x0_5",
              "mobilenetv2_075": "mobilenet_v2_x0_75", "mobilenetv2_100": "mobilenet_v2_x1_0",
              "mobilenetv2_140": "mobilenet_v2_x1_4"}
#: same layers and shapes; exact with ``act="relu6"``
TIMM_RELU6 = {"mobilenetv1_100": "mobilenet_v1_x1_0"}
_DEPTH = ("is width {w} with depth multiplier {d} (more blocks per stage) and a fixed 32/1280 stem/head: no "
          "registered mobilecnn model has that architecture")
TIMM_REFUSED = {
    "mobilenetv2_110d": "timm mobilenetv2_110d " + _DEPTH.format(w=1.1, d=1.2),
    "mobilenetv2_120d": "timm mobilenetv2_120d " + _DEPTH.format(w=1.2, d=1.4),
    "mobilenetv1_100h": "timm mobilenetv1_100h adds a 1x1 conv head (1024 channels + BN + ReLU6) before the "
                        "classifier: mobilecnn's MobileNet V1 has none",
    "mobilenetv1_125": "timm mobilenetv1_125 is width 1.25: no registered mobilecnn MobileNet V1 has that width",
}


def check_variant(variant: str | None) -> str | None:
    """The registered model a named timm variant must give; refuses variants that are not ours."""
    if variant is None:
        return None
    base = variant.split(".")[0]
    if base in TIMM_REFUSED:
        raise CheckpointError(TIMM_REFUSED[base])
    if base not in TIMM_EXACT and base not in TIMM_RELU6:
        raise CheckpointError(f"timm variant {variant!r} is not one mobilecnn can reproduce; accepted: "
                              f"{', '.join(list(TIMM_EXACT) + list(TIMM_RELU6))}")
    return {**TIMM_EXACT, **TIMM_RELU6}[base]


def convert_timm(sd: Mapping[str, torch.Tensor], variant: str | None = None
                 ) -> tuple[OrderedDict[str, torch.Tensor], Converted]:
    check_variant(variant)
    blocks: dict[tuple[int, int], dict[str, torch.Tensor]] = defaultdict(dict)
    top: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)", key):
            blocks[(int(m[1]), int(m[2]))][m[3]] = value
        else:
            top[key] = value
    if "conv_stem.weight" not in top:
        raise CheckpointError("not a timm MobileNet state_dict (no conv_stem.weight)")
    is_v2 = any("conv_pwl.weight" in b for b in blocks.values())
    if not is_v2 and "conv_head.weight" in top:
        raise CheckpointError(TIMM_REFUSED["mobilenetv1_100h"])
    out: OrderedDict[str, torch.Tensor] = OrderedDict()

    def put(dst: str, src: Mapping[str, torch.Tensor], conv: str, bn: str, where: str) -> None:
        if f"{conv}.weight" not in src:
            raise CheckpointError(f"timm: {where} lacks {conv}.weight")
        out[f"{dst}.conv.weight"] = src[f"{conv}.weight"]
        for k in BN_KEYS:
            if f"{bn}.{k}" in src:
                out[f"{dst}.bn.{k}"] = src[f"{bn}.{k}"]
            elif k != "num_batches_tracked":
                raise CheckpointError(f"timm: {where} lacks {bn}.{k}")
            else:
                out[f"{dst}.bn.{k}"] = torch.tensor(0)

    put("features.0", top, "conv_stem", "bn1", "the stem")
    known = {"conv_pw", "conv_dw", "conv_pwl", "bn1", "bn2", "bn3"}
    for i, pos in enumerate(sorted(blocks), start=1):
        b = blocks[pos]
        unknown = sorted({k.split(".")[0] for k in b} - known)
        if unknown:
            raise CheckpointError(f"timm block {pos}: parts {unknown} (SE / attention?) have no counterpart in "
                                  "mobilecnn")
        where = f"block {pos[0]}.{pos[1]}"
        if is_v2 and "conv_pwl.weight" in b:
            for j, (conv, bn) in enumerate((("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))):
                put(f"features.{i}.block.{j}", b, conv, bn, where)
        elif is_v2:
            put(f"features.{i}.block.0", b, "conv_dw", "bn1", where)
            put(f"features.{i}.block.1", b, "conv_pw", "bn2", where)
        else:
            put(f"features.{i}.depthwise", b, "conv_dw", "bn1", where)
            put(f"features.{i}.pointwise", b, "conv_pw", "bn2", where)
    if is_v2:
        put(f"features.{len(blocks) + 1}", top, "conv_head", "bn2", "the head conv")
    for k in ("weight", "bias"):
        if f"classifier.{k}" in top:
            out[f"classifier.1.{k}"] = top[f"classifier.{k}"]
    used = {"conv_stem.weight", "conv_head.weight", "classifier.weight", "classifier.bias"} | {
        f"{bn}.{k}" for bn in ("bn1", "bn2") for k in BN_KEYS}
    if set(top) - used:
        raise CheckpointError(f"timm: keys with no counterpart in mobilecnn: {sorted(set(top) - used)[:5]}")
    notes, kwargs = [], {}
    if is_v2:
        pre = imagenet_preprocessing()
    else:
        kwargs["act"] = "relu6"
        pre = imagenet_preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        notes.append("timm MobileNet V1 uses ReLU6 (mobilecnn's default follows the paper's ReLU): imported with "
                     "act='relu6'")
    notes.append("timm evaluates with bicubic resizing; mobilecnn resizes bilinearly (antialiased): the model is "
                 "exact, the pixels of a resized photo differ slightly")
    return out, Converted(out, "", "timm", kwargs, pre, notes, variant=variant)
