"""megvii-model/ShuffleNet-Series ``ShuffleNetV1`` checkpoints -> ``shufflenet_v1_g{3,8}_x*``, with a
channel permutation inside every unit so that our model, with the paper's shuffle, computes their function.

Their checkpoint: ``{'state_dict': ...}`` from ``nn.DataParallel`` (``module.`` prefix); ``first_conv.{0,1}``
(conv3x3 s2, BN; then ReLU and max pool), 16 units ``features.N`` with ``branch_main_1.{0,1,3,4}`` (1x1
[group] conv, BN, [ReLU], 3x3 dw conv, BN) and ``branch_main_2.{0,1}`` (1x1 group conv, BN),
``AvgPool2d(3, 2, 1)`` shortcut, head ``AvgPool2d(7)`` + ``Linear(bias=False)``; input BGR 0-255.

Permutation (bottleneck C, g groups, n = C/g). Theirs: pw1 -> BN -> ReLU -> dw -> BN -> shuffle_T -> pw2,
shuffle_T putting channel ``t(k) = (k % n) g + k // n`` at position k (applied *after* the depthwise conv).
Ours: pw1' -> BN -> ReLU -> shuffle_O -> dw' -> BN -> pw2', ``o(k) = (k % g) n + k // g`` (the inverse).
dw, BN and ReLU act per channel, so both are "pw1, permute, pw2". A bijection k' <-> k between our and
their post-shuffle positions keeping (1) k' and k in the same pw2 group and (2) our pw1 channel o(k') and
their t(k) in the same pw1 group gives ``pw1'[o(k')] = pw1[t(k)]``, ``dw'[k'] = dw[t(k)]`` (with their
BN rows) and our pw2 column k' = their column k: every grouped conv stays grouped, the shortcut channels
are untouched, the unit computes the same function. It exists iff both shuffles join every (pw1 group,
pw2 group) pair by the same number of channels: ``n mod g in {0, 1, g - 1}`` (the ungrouped first unit:
always). g=3: every width; g=8: only 2.0x (n = 24, 48, 96). For g=8 0.5x/1.0x/1.5x no channel permutation of
the paper's unit reproduces theirs (docs/pretrained.md): they are imported as they are into the model built
with ``shuffle="megvii"`` (their shuffle position and order), recorded in the file's ``model_kwargs``.
"""

from __future__ import annotations

import re
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping

import torch

from ..data.images import Preprocessing
from ..errors import CheckpointError
from .common import BN_KEYS, Converted

__all__ = ["convert_megvii", "unit_permutation", "megvii_preprocessing"]


def megvii_preprocessing() -> Preprocessing:
    """BGR, 0-255, no normalisation (their ``ToBGRTensor``); shorter side 256, centre crop 224."""
    return Preprocessing(224, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), resize="center_crop", crop_fraction=0.875,
                         scale=1.0, channel_order="BGR")


def unit_permutation(mid: int, groups: int, first_groups: int) -> tuple[list[int], list[int]] | None:
    """``(src, pos)`` indexed by our post-shuffle position k': ``src[k']`` their pw1/dw channel our position
    k' carries, ``pos[k']`` their pw2 input column our column k' takes; ``None`` when no exact match exists."""
    g, n = groups, mid // groups
    pw1_size = mid // first_groups
    theirs: dict[tuple[int, int], list[int]] = defaultdict(list)
    ours: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k in range(mid):
        theirs[((k % n) * g + k // n) // pw1_size, k // n].append(k)
        ours[((k % g) * n + k // g) // pw1_size, k // n].append(k)
    if {key: len(v) for key, v in theirs.items()} != {key: len(v) for key, v in ours.items()}:
        return None
    src, pos = [0] * mid, [0] * mid
    for key, mine in ours.items():
        for kp, k in zip(mine, theirs[key]):
            pos[kp] = k
            src[kp] = (k % n) * g + k // n
    return src, pos


def _permutable(sd: Mapping[str, torch.Tensor], units: list[int], groups: int) -> bool:
    """Whether every unit's shuffle can be matched by a channel permutation of the paper's unit."""
    in_ch = sd["first_conv.0.weight"].shape[0]
    for u in units:
        pw1, pw2 = sd[f"features.{u}.branch_main_1.0.weight"], sd[f"features.{u}.branch_main_2.0.weight"]
        mid = pw1.shape[0]
        first_groups = in_ch // pw1.shape[1]
        if groups < 1 or mid % groups or first_groups not in (1, groups):
            raise CheckpointError(f"megvii unit {u}: pw1 {tuple(pw1.shape)} does not fit groups={groups}")
        if unit_permutation(mid, groups, first_groups) is None:
            return False
        in_ch = pw2.shape[0] + (in_ch if pw2.shape[0] != mid * 4 else 0)
    return True


def _permuted_unit(out: OrderedDict[str, torch.Tensor], sd: Mapping[str, torch.Tensor], p: str, q: str,
                   match: tuple[list[int], list[int]] | None, groups: int, bn: Callable[..., None]) -> None:
    """Unit ``p`` of theirs into our unit ``q`` with the paper's shuffle, through ``match`` (module docstring)."""
    assert match is not None  # _permutable said so
    pw1, dw, pw2 = (sd[f"{p}.branch_main_1.0.weight"], sd[f"{p}.branch_main_1.3.weight"],
                    sd[f"{p}.branch_main_2.0.weight"])
    src, pos = match
    mid = pw1.shape[0]
    n = mid // groups
    pw1_idx = [0] * mid
    for kp in range(mid):
        pw1_idx[(kp % groups) * n + kp // groups] = src[kp]
    out[f"{q}.compress.conv.weight"] = pw1[pw1_idx].clone()
    bn(f"{q}.compress.bn", f"{p}.branch_main_1.1", pw1_idx)
    out[f"{q}.depthwise.conv.weight"] = dw[src].clone()
    bn(f"{q}.depthwise.bn", f"{p}.branch_main_1.4", src)
    rows_per = pw2.shape[0] // groups
    new_pw2 = torch.empty_like(pw2)
    for b in range(groups):
        rows = slice(b * rows_per, (b + 1) * rows_per)
        new_pw2[rows] = pw2[rows][:, [pos[kp] % n for kp in range(b * n, (b + 1) * n)]]
    out[f"{q}.expand.conv.weight"] = new_pw2


def convert_megvii(sd: Mapping[str, torch.Tensor], stage_units: tuple[int, ...] = (4, 8, 4)
                   ) -> tuple[OrderedDict[str, torch.Tensor], Converted]:
    units = sorted({int(m[1]) for k in sd if (m := re.match(r"features\.(\d+)\.branch_main", k))})
    if not units or "first_conv.0.weight" not in sd:
        raise CheckpointError("not a megvii ShuffleNetV1 state_dict (no first_conv / features.N.branch_main_*)")
    if units != list(range(sum(stage_units))):
        raise CheckpointError(f"megvii ShuffleNetV1: {len(units)} units, expected {sum(stage_units)} {stage_units}")
    try:
        groups = sd["features.0.branch_main_1.0.weight"].shape[0] // sd["features.0.branch_main_2.0.weight"].shape[1]
        out: OrderedDict[str, torch.Tensor] = OrderedDict()

        def bn(dst: str, src: str, idx: list[int] | None = None) -> None:
            for k in BN_KEYS[:4]:
                v = sd[f"{src}.{k}"]
                out[f"{dst}.{k}"] = v[idx].clone() if idx is not None else v
            out[f"{dst}.num_batches_tracked"] = sd.get(f"{src}.num_batches_tracked", torch.tensor(0))

        megvii = not _permutable(sd, units, groups)
        out["features.0.conv.weight"] = sd["first_conv.0.weight"]
        bn("features.0.bn", "first_conv.1")
        in_ch = sd["first_conv.0.weight"].shape[0]
        u = 0
        for stage, count in enumerate(stage_units):
            for index in range(count):
                p, q = f"features.{u}", f"features.{2 + stage}.{index}"
                pw1, dw, pw2 = (sd[f"{p}.branch_main_1.0.weight"], sd[f"{p}.branch_main_1.3.weight"],
                                sd[f"{p}.branch_main_2.0.weight"])
                mid = pw1.shape[0]
                first_groups = in_ch // pw1.shape[1]  # 1 or groups: _permutable checked
                if megvii:  # their layout as is: our unit shuffles where theirs does
                    out[f"{q}.compress.conv.weight"] = pw1
                    bn(f"{q}.compress.bn", f"{p}.branch_main_1.1")
                    out[f"{q}.depthwise.conv.weight"] = dw
                    bn(f"{q}.depthwise.bn", f"{p}.branch_main_1.4")
                    out[f"{q}.expand.conv.weight"] = pw2
                else:
                    _permuted_unit(out, sd, p, q, unit_permutation(mid, groups, first_groups), groups, bn)
                bn(f"{q}.expand.bn", f"{p}.branch_main_2.1")
                in_ch = pw2.shape[0] + (in_ch if pw2.shape[0] != mid * 4 else 0)
                u += 1
        w = sd["classifier.0.weight"]
    except KeyError as exc:
        raise CheckpointError(f"megvii ShuffleNetV1: missing tensor {exc.args[0]}") from None
    out["classifier.weight"] = w
    out["classifier.bias"] = sd.get("classifier.0.bias", torch.zeros(w.shape[0], dtype=w.dtype))
    notes = ["megvii's head is AvgPool2d(7): the same as mobilecnn's global average pool at 224 x 224 input only",
             "megvii's Linear has no bias: imported with a zero bias"]
    if megvii:
        notes.append(f"g={groups}: no channel permutation of the paper's unit computes megvii's (n mod g not in "
                     "{0, 1, g-1}); imported with shuffle='megvii' (their shuffle position), exact")
    return out, Converted(out, "", "megvii", {"shuffle": "megvii"} if megvii else {}, megvii_preprocessing(), notes)
