"""Keras ``keras.applications`` ``MobileNetV2`` / ``MobileNet`` weights (the papers' own TF models), Keras-2
HDF5 layout, read with h5py only -> ``mobilenet_v2_x*`` / ``mobilenet_v1_x*``.

Exactness needs three architecture options and the Keras input scaling:

* ``padding="tf_same"``: Keras pads stride-2 convs right/bottom only (``correct_pad`` in V2,
  ``ZeroPadding2D(((0, 1), (0, 1)))`` in V1; both equal TF "SAME" on the even sides of the published
  resolutions 96-224, all multiples of 32);
* ``bn_eps=1e-3`` (Keras' BatchNormalization epsilon);
* V1: ``act="relu6"`` (Keras ``MobileNet`` uses ReLU6);
* inputs in [-1, 1] (``preprocess_input``: ``x / 127.5 - 1``), i.e. ``scale=2/255, mean=1, std=1``:
  ``(x * 2/255 - 1) / 1``.

Widths: Keras V2 rounds block outputs as ``make_divisible(int(c * alpha))`` (truncation first), ours
``make_divisible(c * alpha)``; for every alpha in {0.35, 0.5, 0.75, 1.0, 1.3, 1.4} the results agree.
Keras V1 uses ``int(c * alpha)`` as ours. The resolution is not part of the architecture (global
average pooling): a file published for 128 px converts to the same model; the resolution goes into
the preprocessing (from the published file name, or ``--resolution``).

Layers (V2): ``Conv1``/``bn_Conv1`` -> ``features.0``; ``expanded_conv_{depthwise,project}`` (+``_BN``)
-> ``features.1.block.{0,1}``; ``block_i_{expand,depthwise,project}`` (+``_BN``) ->
``features.(i+1).block.{0,1,2}``; ``Conv_1``/``Conv_1_bn`` -> ``features.18``; ``predictions`` ->
``classifier.1``. (V1): ``conv1``/``conv1_bn`` -> ``features.0``; ``conv_dw_i``/``conv_pw_i`` (+``_bn``) ->
``features.i.{depthwise,pointwise}``; the 1x1 ``conv_preds`` (with bias) -> ``classifier.1``.
Tensors: kernels HWIO -> OIHW, depthwise (kh, kw, C, 1) -> (C, 1, kh, kw), Dense (in, out) -> (out, in);
BN gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..data.images import Preprocessing
from ..errors import CheckpointError
from .common import Converted

__all__ = ["convert_keras", "keras_preprocessing", "resolution_from_name"]

_BN = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var"))


def keras_preprocessing(resolution: int = 224) -> Preprocessing:
    """Keras MobileNet ``preprocess_input``: ``x / 127.5 - 1`` = ``(x * 2/255 - 1) / 1``."""
    return Preprocessing(resolution, 3, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), resize="center_crop", crop_fraction=0.875,
                         scale=2.0 / 255.0)


def resolution_from_name(path: str | Path | None) -> int | None:
    """``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5`` / ``mobilenet_1_0_128_tf_no_top.h5`` -> R."""
    if path is None:
        return None
    m = re.search(r"_(\d{2,4})(?:_tf)?(?:_no_top)?\.h(?:df)?5$", Path(path).name.lower())
    return int(m[1]) if m and 32 <= int(m[1]) <= 1024 else None


def _conv(w: np.ndarray, depthwise: bool) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(w)).float()
    if t.dim() != 4:
        raise CheckpointError(f"Keras kernel of shape {tuple(t.shape)} is not 4-D")
    if depthwise:
        if t.shape[3] != 1:
            raise CheckpointError(f"depthwise kernel with depth multiplier {t.shape[3]} (mobilecnn needs 1)")
        return t.permute(2, 3, 0, 1).contiguous()
    return t.permute(3, 2, 0, 1).contiguous()


def convert_keras(layers: Mapping[str, Mapping[str, np.ndarray]], resolution: int = 224
                  ) -> tuple[OrderedDict[str, torch.Tensor], Converted]:
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    if "Conv1" in layers:
        family = "mobilenet_v2_"
        plan: list[tuple[str, str, str, bool]] = [("Conv1", "bn_Conv1", "features.0", False),
                                                  ("expanded_conv_depthwise", "expanded_conv_depthwise_BN",
                                                   "features.1.block.0", True),
                                                  ("expanded_conv_project", "expanded_conv_project_BN",
                                                   "features.1.block.1", False)]
        i = 1
        while f"block_{i}_project" in layers:
            for j, part in enumerate(("expand", "depthwise", "project")):
                plan.append((f"block_{i}_{part}", f"block_{i}_{part}_BN", f"features.{i + 1}.block.{j}",
                             part == "depthwise"))
            i += 1
        plan.append(("Conv_1", "Conv_1_bn", f"features.{i + 1}", False))
        head = "predictions"
    elif "conv1" in layers:
        family = "mobilenet_v1_"
        plan = [("conv1", "conv1_bn", "features.0", False)]
        i = 1
        while f"conv_dw_{i}" in layers:
            plan.append((f"conv_dw_{i}", f"conv_dw_{i}_bn", f"features.{i}.depthwise", True))
            plan.append((f"conv_pw_{i}", f"conv_pw_{i}_bn", f"features.{i}.pointwise", False))
            i += 1
        head = "conv_preds"
    else:
        raise CheckpointError("Keras weights: neither a MobileNetV2 ('Conv1') nor a MobileNet ('conv1') layer layout")
    used = set()
    for conv, bn, dst, depthwise in plan:
        for layer in (conv, bn):
            if layer not in layers:
                raise CheckpointError(f"Keras weights: missing layer {layer}")
        key = "depthwise_kernel" if depthwise and "depthwise_kernel" in layers[conv] else "kernel"
        if set(layers[conv]) != {key}:
            raise CheckpointError(f"Keras layer {conv}: weights {sorted(layers[conv])}, expected only {key!r}")
        out[f"{dst}.conv.weight"] = _conv(layers[conv][key], depthwise)
        for src, name in _BN:
            if src not in layers[bn]:
                raise CheckpointError(f"Keras layer {bn}: no {src}")
            out[f"{dst}.bn.{name}"] = torch.from_numpy(np.asarray(layers[bn][src])).float()
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
        used |= {conv, bn}
    notes: list[str] = []
    headless = head not in layers
    if not headless:
        w = np.asarray(layers[head]["kernel"])
        w = w.reshape(w.shape[-2], w.shape[-1])  # Dense (in, out); conv_preds (1, 1, in, out)
        out["classifier.1.weight"] = torch.from_numpy(np.ascontiguousarray(w.T)).float()
        out["classifier.1.bias"] = torch.from_numpy(np.asarray(layers[head]["bias"])).float()
        used.add(head)
    else:
        notes.append("no classifier in the file (include_top=False): usable with `train --init` only, which "
                     "creates a new classifier")
    leftover = sorted(set(layers) - used)
    if leftover:
        raise CheckpointError(f"Keras weights: layers with no counterpart in mobilecnn: {leftover[:5]}")
    kwargs: dict = {"padding": "tf_same", "bn_eps": 1e-3}
    if family == "mobilenet_v1_":
        kwargs["act"] = "relu6"
    return out, Converted(out, "", "keras", kwargs, keras_preprocessing(resolution), notes, headless=headless)
