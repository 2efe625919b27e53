"""Figures the papers (or the authors' released code) publish for a model, kept as data beside it.

Tables, tests and docs all read these through :func:`mobilecnn.models.published`; the counting
convention they are compared under is docs/counting.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Published", "PublishedSegmentation", "PublishedDetection", "DILATED_COUNTINGS"]


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


#: How a dilated (atrous) conv is charged (docs/counting.md): ``"plain"`` at its output positions,
#: ``"space_to_batch"`` as TensorFlow runs it (``r * ceil(H / r)`` by ``r * ceil(W / r)`` positions at rate r).
DILATED_COUNTINGS = ("plain", "space_to_batch")


@dataclass(frozen=True)
class PublishedSegmentation:
    """One row of a published segmentation table (MobileNetV2 Table 7): the network, its options and figures.

    ``model`` is the registered name (``None`` for a network mobilecnn does not build, ResNet-101), built with
    ``output_stride`` and ``aspp``; ``multi_scale_flip`` (MF) sums the MAdds over the evaluation inputs (each
    scale, each also flipped). ``params_m`` is millions of parameters, BN included (2.1136 M with BN prints
    2.11, 2.0805 M without does not), ``madds_b`` billions of multiply-adds at ``resolution`` x ``resolution``,
    ``num_classes`` outputs; ``madds_step_b`` is the precision the figure is printed with (5.8B: 0.1).
    ``counting`` is the dilated-conv convention the figure is counted in (:data:`DILATED_COUNTINGS`),
    ``madds_tolerance`` how far (relative to the figure) a count may lie outside the printed interval, with
    the reason in ``note`` when it is not 0; ``miou`` is PASCAL VOC 2012 val mIOU (%).
    """

    source: str
    label: str
    model: str | None
    output_stride: int
    aspp: bool
    multi_scale_flip: bool
    miou: float
    params_m: float
    madds_b: float
    madds_step_b: float
    params_step_m: float = 0.01
    resolution: int = 513
    num_classes: int = 21
    counting: str = "space_to_batch"
    madds_tolerance: float = 0.0
    note: str = ""

    def options(self) -> dict[str, Any]:
        """The builder options of this row's model."""
        return {"output_stride": self.output_stride, "aspp": self.aspp, "num_classes": self.num_classes}

    def params_matches(self, params: int) -> bool:
        """Whether a parameter count (BN included) prints as the published figure."""
        return abs(params / 1e6 - self.params_m) <= self.params_step_m / 2 + 1e-9

    def madds_matches(self, macs: int) -> bool:
        """Whether a MAdds count (summed over the MF inputs when ``multi_scale_flip``) lies within
        ``madds_tolerance`` of the printed interval ``[P - step/2, P + step/2]``."""
        value, half = macs / 1e9, self.madds_step_b / 2
        distance = max(self.madds_b - half - value, value - self.madds_b - half, 0.0)
        return distance <= self.madds_tolerance * self.madds_b + 1e-9


@dataclass(frozen=True)
class PublishedDetection:
    """One row of a published detection table (MobileNetV2 Tables 5 and 6): the network and its figures.

    ``model`` is the registered name (``None`` for a network mobilecnn does not build: SSD300, YOLOv2), built
    with ``num_classes`` outputs per anchor (80 COCO classes + background); ``map`` is COCO test-dev mAP (%),
    ``params_m`` millions of parameters (BN included), ``madds_b`` billions of multiply-adds at ``resolution``
    x ``resolution`` (``None`` where the table gives none), ``latency_ms`` Table 6's Pixel 1 time (one large
    core). ``head_only`` (Table 5): the figures count the extra layers and predictors alone, not the backbone.
    ``params_step_m`` / ``madds_step_b`` are the precision the figures are printed with (4.3M: 0.1);
    ``madds_tolerance`` how far (relative to the figure) a count may lie outside the printed interval, and
    ``madds_reproduced=False`` marks a figure our count does not give; ``note`` says why in both cases.
    """

    source: str
    label: str
    model: str | None
    map: float | None
    params_m: float
    madds_b: float
    resolution: int | None = 320
    num_classes: int = 81
    latency_ms: float | None = None
    head_only: bool = False
    params_step_m: float = 0.1
    madds_step_b: float = 0.1
    madds_tolerance: float = 0.0
    madds_reproduced: bool = True
    note: str = ""

    def params_matches(self, params: int) -> bool:
        """Whether a parameter count (BN included) prints as the published figure."""
        return abs(params / 1e6 - self.params_m) <= self.params_step_m / 2 + 1e-9

    def madds_matches(self, macs: int) -> bool:
        """Whether a MAdds count lies within ``madds_tolerance`` of the printed interval
        ``[P - step/2, P + step/2]``."""
        value, half = macs / 1e9, self.madds_step_b / 2
        distance = max(self.madds_b - half - value, value - self.madds_b - half, 0.0)
        return distance <= self.madds_tolerance * self.madds_b + 1e-9
