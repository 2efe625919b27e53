"""Figures the papers (or the authors' released code) publish for a model, kept as data beside it.

Tables, tests and docs all read these through :func:`mobilecnn.models.published`; the counting
convention they are compared under is docs/counting.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Published"]


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
