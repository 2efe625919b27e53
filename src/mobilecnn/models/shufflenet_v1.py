"""ShuffleNet v1 (Zhang, Zhou, Lin, Sun; CVPR 2018, arXiv 1707.01083).

Network (Table 1): 3x3 conv s2 -> 3x3 max pool s2 -> Stage 2/3/4 of 4/8/4 :class:`ShuffleNetUnit`
(the first of each with stride 2) -> global average pool -> Linear (with bias; the authors' released
code has none: +num_classes params).

Channel rule (``shufflenet_v1_channels``, docs/shufflenet_channels.md). The authors released exact lists
for g=3 and g=8 (kept below as :data:`RELEASED_CHANNELS` and used verbatim). For every other (g, s):

* stage 2 width = Table 1 width x s rounded to the nearest multiple of 4g (ties to the wider
  one), so that the bottleneck (width / 4) is divisible by g; stages 3 and 4 double it;
* stem = 24 for 1 <= s < 2, 48 for s >= 2 and, for s < 1, 24 s rounded up to a multiple of g.

This rule reproduces every released list exactly (a test checks it). It gives 37.6-40.9 MFLOPs at
0.5x and 10.4-12.4 at 0.25x, where Table 2 prints "~38" and "~13": those two columns are marked
approximate in their published figures (tolerance 8% and 20%).

Params: the released figures count BN and no classifier bias (g=3 2x: 5.4498M prints as 5.4M).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..layers import ConvBNAct, ShuffleNetUnit
from ..validators import check_number, check_positive_int
from .base import ClassifierNet, FeatureTap, init_weights
from .published import Published
from .registry import register_model

__all__ = ["ShuffleNetV1", "shufflenet_v1_channels", "RELEASED_CHANNELS", "TABLE1_STAGE_WIDTH", "TABLE2_TOP1_ERROR",
           "TABLE3_TOP1_ERROR"]

#: Table 1: Stage 2 output channels at 1x for each group count (stages 3, 4 double it).
TABLE1_STAGE_WIDTH = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
#: Table 1: units per stage.
STAGE_UNITS = (4, 8, 4)

#: The authors' released lists [stem, stage2, stage3, stage4] (megvii-model/ShuffleNet-Series).
RELEASED_CHANNELS: dict[tuple[int, float], tuple[int, int, int, int]] = {
    (3, 0.5): (12, 120, 240, 480),
    (3, 1.0): (24, 240, 480, 960),
    (3, 1.5): (24, 360, 720, 1440),
    (3, 2.0): (48, 480, 960, 1920),
    (8, 0.5): (16, 192, 384, 768),
    (8, 1.0): (24, 384, 768, 1536),
    (8, 1.5): (24, 576, 1152, 2304),
    (8, 2.0): (48, 768, 1536, 3072),
}

GROUPS = (1, 2, 3, 4, 8)

# Table 5 variants (~40 MFLOPs). arch2: the first arXiv version's g=8 0.5x network. With
# Stage 2's first 1x1 ungrouped, as in every other model, it counts 43.0 MFLOPs (+7.5%); grouping that
# conv too would give 40.5. We keep the unit as specified and widen this figure's tolerance to 8%.
ARCH2_CHANNELS = (16, 224, 416, 832)
ARCH2_UNITS = (4, 6, 4)
# shallow: half the units of each stage, g=3, widened until ~40 MFLOPs; the paper gives no widths.
# Stage 2 = 168 (0.7x of Table 1, a multiple of 4g) with stem 18 (0.75 x 24, a multiple of g) gives
# 39.8 MFLOPs at 224.
SHALLOW_CHANNELS = (18, 168, 336, 672)
SHALLOW_UNITS = (2, 4, 2)


def shufflenet_v1_channels(groups: int, scale: float) -> tuple[int, int, int, int]:
    """[stem, stage2, stage3, stage4] for ``groups`` and width ``scale`` (rule in the module docstring)."""
    if groups not in TABLE1_STAGE_WIDTH:
        raise ValueError(f"ShuffleNet v1: groups must be one of {sorted(TABLE1_STAGE_WIDTH)}, got {groups!r}")
    check_number(scale, "ShuffleNet v1: scale", above=0)
    if (groups, scale) in RELEASED_CHANNELS:
        return RELEASED_CHANNELS[(groups, scale)]
    unit = 4 * groups
    stage2 = max(unit, int(math.floor(TABLE1_STAGE_WIDTH[groups] * scale / unit + 0.5)) * unit)
    if scale >= 2:
        stem = 48
    elif scale >= 1:
        stem = 24
    else:
        stem = max(groups, math.ceil(24 * scale / groups) * groups)
    return (stem, stage2, 2 * stage2, 4 * stage2)


class ShuffleNetV1(ClassifierNet):
    """ShuffleNet v1 with explicit channels; see :func:`shufflenet_v1_channels` for the zoo's widths.

    ``small_input=True``: stride-1 stem and no max pool (for 28-64 px images), total
    stride 8 instead of 32. ``shuffle=False`` removes every channel shuffle (Table 3 ablation);
    ``shuffle="megvii"`` puts it where megvii's ShuffleNet-Series checkpoints have it
    (:class:`~mobilecnn.layers.ShuffleNetUnit`).
    """

    def __init__(
        self,
        channels: tuple[int, int, int, int],
        groups: int,
        stage_units: tuple[int, int, int] = STAGE_UNITS,
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        shuffle: bool | str = True,
    ) -> None:
        owner = f"ShuffleNet v1 (g={groups})"
        super().__init__(owner, in_chans, num_classes, total_stride=8 if small_input else 32, small_input=small_input)
        check_positive_int(groups, f"{owner}: groups")
        if not (isinstance(shuffle, bool) or shuffle == "megvii"):
            raise ValueError(f"{owner}: shuffle={shuffle!r}; accepted: True (the paper's channel shuffle), False "
                             "(none: Table 3's ablation) or 'megvii' (after the depthwise conv with the inverse "
                             "permutation: megvii's released checkpoints)")
        stem, *stage_channels = channels
        for i, (width, prev) in enumerate(zip(stage_channels, channels[:-1])):
            first_groups = 1 if i == 0 else groups
            branch = width - prev
            if (width // 4) % groups or width % 4 or branch < 1 or branch % groups or prev % first_groups:
                raise ValueError(
                    f"{owner}: groups={groups} does not divide stage {i + 2}'s channels evenly "
                    f"(stage width {width}, bottleneck {width / 4:g}, first-unit branch {branch}); "
                    f"accepted groups for these channels: "
                    f"{[g for g in GROUPS if width % (4 * g) == 0 and branch % g == 0] or 'none'}"
                )
        self.groups, self.channels, self.shuffle = groups, tuple(channels), shuffle
        layers: list[nn.Module] = [ConvBNAct(in_chans, stem, 3, stride=1 if small_input else 2)]
        if not small_input:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        in_ch = stem
        for stage_index, (width, units) in enumerate(zip(stage_channels, stage_units)):
            stage = []
            for unit_index in range(units):
                stage.append(
                    ShuffleNetUnit(
                        in_ch,
                        width,
                        stride=2 if unit_index == 0 else 1,
                        groups=groups,
                        group_first_pointwise=not (stage_index == 0 and unit_index == 0),
                        shuffle=shuffle,
                    )
                )
                in_ch = width
            layers.append(nn.Sequential(*stage))
        self.features = nn.Sequential(*layers)
        self.num_features = in_ch
        self.classifier = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def feature_taps(self) -> list[FeatureTap]:
        """Every child of ``features``: the stem conv, the max pool (none with ``small_input``), Stages 2-4."""
        stem, *stages = self.channels
        before = len(self.features) - len(stages)  # the stem conv and its max pool
        return [FeatureTap(f"features.{i}", stem if i < before else stages[i - before])
                for i in range(len(self.features))]

    def stride_units(self) -> list[nn.Module]:
        """The stem conv, the max pool, then every unit of every stage."""
        units: list[nn.Module] = []
        for m in self.features:
            units.extend(m if type(m) is nn.Sequential else [m])
        return units


# The authors' released params count BN and have no classifier bias (see the module docstring).
_RELEASED_PARAMS_CONVENTION: dict[str, Any] = {"params_include_bn": True, "params_include_classifier_bias": False}

#: Table 2: ImageNet top-1 error (%) by width ("1_0" = 1x) and group count.
TABLE2_TOP1_ERROR = {
    "1_0": {1: 33.6, 2: 32.7, 3: 32.6, 4: 32.8, 8: 32.4},
    "0_5": {1: 45.1, 2: 44.4, 3: 43.2, 4: 41.6, 8: 42.3},
    "0_25": {1: 57.1, 2: 56.8, 3: 55.0, 4: 54.2, 8: 52.7},
}
#: Table 1: MFLOPs at 1x by group count.
TABLE1_MFLOPS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}
#: (MFLOPs, params M) of the authors' released models by (groups, width).
RELEASED_FIGURES = {
    (3, "0_5"): (38, 0.7), (3, "1_0"): (138, 1.9), (3, "1_5"): (292, 3.4), (3, "2_0"): (524, 5.4),
    (8, "0_5"): (40, 1.0), (8, "1_0"): (138, 2.4), (8, "1_5"): (290, 4.3), (8, "2_0"): (522, 6.5),
}
#: Table 3 (the shuffle ablation): top-1 error (%) without the channel shuffle by (groups, width); with the
#: shuffle the networks are Table 2's.
_TABLE3_NO_SHUFFLE = {(3, "1_0"): 34.5, (8, "1_0"): 37.6, (3, "0_5"): 45.7, (8, "0_5"): 48.1}
#: Table 3 by model name: (top-1 error with shuffle, without shuffle) in %, in the paper's row order.
TABLE3_TOP1_ERROR: dict[str, tuple[float, float]] = {
    f"shufflenet_v1_g{g}_x{s}": (TABLE2_TOP1_ERROR[s][g], without) for (g, s), without in _TABLE3_NO_SHUFFLE.items()
}


def _published_for(groups: int, scale_key: str) -> Published | None:
    """Table 1/2 and the figures of the released models for one (g, s)."""
    released = RELEASED_FIGURES
    error = TABLE2_TOP1_ERROR.get(scale_key, {}).get(groups)
    if scale_key == "1_0":
        params = released.get((groups, scale_key), (None, None))[1]
        note = "Table 1 complexity; released code reports 138 MFLOPs" if params else "Table 1 complexity"
        return Published("ShuffleNet Table 1/2", {224: TABLE1_MFLOPS[groups]}, params=params, top1_error=error,
                         note=note, **_RELEASED_PARAMS_CONVENTION)
    if (groups, scale_key) in released:
        mflops, params = released[(groups, scale_key)]
        source = "ShuffleNet released models" + (", Table 5" if scale_key in ("1_5", "2_0") and groups == 3 else "")
        return Published(source, {224: mflops}, params=params, top1_error=error, **_RELEASED_PARAMS_CONVENTION)
    if scale_key == "0_5":
        return Published("ShuffleNet Table 2", {224: 38}, top1_error=error, approximate=True, macs_tolerance=0.08,
                         note="Table 2 prints ~38 for every 0.5x; scaled Table 1 channels give 37.6-40.9")
    if scale_key == "0_25":
        return Published("ShuffleNet Table 2", {224: 13}, top1_error=error, approximate=True, macs_tolerance=0.20,
                         note="Table 2 prints ~13 for every 0.25x; scaled Table 1 channels give 10.4-12.4")
    return None


# The registry: one entry per name. Widths come from shufflenet_v1_channels; published figures from
# Tables 1, 2 and 5 and the released models (_published_for).


def _build(groups: int, scale: float, stage_units: tuple[int, int, int] = STAGE_UNITS,
           channels: tuple[int, int, int, int] | None = None, **kwargs) -> ShuffleNetV1:
    return ShuffleNetV1(channels or shufflenet_v1_channels(groups, scale), groups, stage_units, **kwargs)


@register_model("shufflenet_v1", _published_for(1, "0_25"))
def shufflenet_v1_g1_x0_25(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                           shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 0.25x, g=1."""
    return _build(1, 0.25, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(1, "0_5"))
def shufflenet_v1_g1_x0_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 0.5x, g=1."""
    return _build(1, 0.5, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(1, "1_0"))
def shufflenet_v1_g1_x1_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 1x, g=1."""
    return _build(1, 1.0, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(1, "1_5"))
def shufflenet_v1_g1_x1_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 1.5x, g=1."""
    return _build(1, 1.5, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(1, "2_0"))
def shufflenet_v1_g1_x2_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 2x, g=1."""
    return _build(1, 2.0, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(2, "0_25"))
def shufflenet_v1_g2_x0_25(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                           shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 0.25x, g=2."""
    return _build(2, 0.25, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(2, "0_5"))
def shufflenet_v1_g2_x0_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 0.5x, g=2."""
    return _build(2, 0.5, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(2, "1_0"))
def shufflenet_v1_g2_x1_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 1x, g=2."""
    return _build(2, 1.0, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(2, "1_5"))
def shufflenet_v1_g2_x1_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 1.5x, g=2."""
    return _build(2, 1.5, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(2, "2_0"))
def shufflenet_v1_g2_x2_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 2x, g=2."""
    return _build(2, 2.0, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(3, "0_25"))
def shufflenet_v1_g3_x0_25(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                           shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 0.25x, g=3."""
    return _build(3, 0.25, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(3, "0_5"))
def shufflenet_v1_g3_x0_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 0.5x, g=3."""
    return _build(3, 0.5, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(3, "1_0"))
def shufflenet_v1_g3_x1_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 1x, g=3."""
    return _build(3, 1.0, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(3, "1_5"))
def shufflenet_v1_g3_x1_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 1.5x, g=3."""
    return _build(3, 1.5, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(3, "2_0"))
def shufflenet_v1_g3_x2_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 2x, g=3."""
    return _build(3, 2.0, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(4, "0_25"))
def shufflenet_v1_g4_x0_25(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                           shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 0.25x, g=4."""
    return _build(4, 0.25, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(4, "0_5"))
def shufflenet_v1_g4_x0_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 0.5x, g=4."""
    return _build(4, 0.5, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(4, "1_0"))
def shufflenet_v1_g4_x1_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 1x, g=4."""
    return _build(4, 1.0, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(4, "1_5"))
def shufflenet_v1_g4_x1_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 1.5x, g=4."""
    return _build(4, 1.5, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(4, "2_0"))
def shufflenet_v1_g4_x2_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 2x, g=4."""
    return _build(4, 2.0, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(8, "0_25"))
def shufflenet_v1_g8_x0_25(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                           shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 0.25x, g=8."""
    return _build(8, 0.25, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(8, "0_5"))
def shufflenet_v1_g8_x0_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 0.5x, g=8."""
    return _build(8, 0.5, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(8, "1_0"))
def shufflenet_v1_g8_x1_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 1x, g=8."""
    return _build(8, 1.0, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(8, "1_5"))
def shufflenet_v1_g8_x1_5(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 1.5x, g=8."""
    return _build(8, 1.5, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _published_for(8, "2_0"))
def shufflenet_v1_g8_x2_0(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                          shuffle: bool | str = True) -> ShuffleNetV1:
    """ShuffleNet 2x, g=8."""
    return _build(8, 2.0, num_classes=num_classes, in_chans=in_chans, small_input=small_input, shuffle=shuffle)


_TABLE5 = Published("ShuffleNet Table 5", {224: 40}, approximate=True, macs_tolerance=0.08, note="Table 5 prints ~40")


@register_model("shufflenet_v1", _TABLE5)
def shufflenet_v1_g8_x0_5_arch2(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                                shuffle: bool | str = True) -> ShuffleNetV1:
    """Table 5 "ShuffleNet 0.5x (arch2, g=8)": stem 16, stages 224/416/832 of 4/6/4 units."""
    return _build(8, 0.5, ARCH2_UNITS, ARCH2_CHANNELS, num_classes=num_classes, in_chans=in_chans,
                  small_input=small_input, shuffle=shuffle)


@register_model("shufflenet_v1", _TABLE5)
def shufflenet_v1_g3_x0_5_shallow(num_classes: int = 1000, in_chans: int = 3, small_input: bool = False,
                                  shuffle: bool | str = True) -> ShuffleNetV1:
    """Table 5 "ShuffleNet 0.5x (shallow, g=3)": 2/4/2 units, widened to ~40 MFLOPs (stem 18, 168/336/672)."""
    return _build(3, 0.5, SHALLOW_UNITS, SHALLOW_CHANNELS, num_classes=num_classes, in_chans=in_chans,
                  small_input=small_input, shuffle=shuffle)
