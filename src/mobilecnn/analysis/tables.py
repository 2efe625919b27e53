"""Regenerate the papers' complexity tables from the registered models, beside the published figures.

Every "published" number comes from :func:`mobilecnn.models.published` (the data kept next to
each model; a segmentation model's rows from :func:`mobilecnn.models.published_segmentation`, a detector's from
:func:`mobilecnn.models.published_detection`); every "ours"
number is counted by :mod:`mobilecnn.analysis.complexity` on the built model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import torch

from ..fields import cli
from ..files import atomic_write_text
from ..models import PublishedDetection, PublishedSegmentation, create_model, published
from ..models.deeplab import TABLE7
from ..models.ssd import TABLE5, TABLE6
from .complexity import count_macs, evaluation_macs

__all__ = ["TableRow", "SegmentationRow", "DetectionRow", "TablesConfig", "paper_tables", "segmentation_row",
           "segmentation_table", "segmentation_markdown", "detection_row", "detection_markdown", "tables_markdown",
           "write_tables", "TABLE7_TITLE", "TABLE6_TITLE", "TABLE5_TITLE", "DETECTION_HEAD"]

TABLE7_TITLE = "MobileNetV2 Table 7: Mobile DeepLabv3 on PASCAL VOC 2012 at 513x513, 21 classes (MAdds, B)"
TABLE6_TITLE = "MobileNetV2 Table 6: real-time detectors on COCO test-dev (SSDLite at 320x320, 80 classes + background)"
TABLE5_TITLE = "MobileNetV2 Table 5: SSD and SSDLite prediction layers on MobileNetV2 at 320x320"
#: The parts of a detector Table 5 counts (its "prediction layers"): the extra layers and the predictors.
DETECTION_HEAD = ("extras", "box_head", "class_head")


@dataclass
class TableRow:
    label: str
    model: str
    resolution: int
    macs_m: float
    published_macs_m: float | None
    params_m: float | None = None
    published_params_m: float | None = None
    approximate: bool = False

    @property
    def diff_percent(self) -> float | None:
        if self.published_macs_m is None:
            return None
        return 100.0 * (self.macs_m - self.published_macs_m) / self.published_macs_m


@cache
def _macs(name: str, resolution: int) -> float:
    return count_macs(create_model(name), resolution)[0] / 1e6


@cache
def _params(name: str) -> float:
    """Params in the convention of the model's published figure."""
    pub = published(name)
    model = create_model(name)
    count = sum(p.numel() for p in model.parameters())
    if pub is None or not pub.params_include_bn:
        count -= sum(p.numel() for m in model.modules() if "BatchNorm" in type(m).__name__ for p in m.parameters())
    if pub is not None and not pub.params_include_classifier_bias:
        count -= 1000
    return count / 1e6


def _row(label: str, name: str, resolution: int = 224, with_params: bool = False) -> TableRow:
    pub = published(name)
    return TableRow(
        label,
        name,
        resolution,
        _macs(name, resolution),
        pub.macs.get(resolution) if pub else None,
        _params(name) if with_params else None,
        pub.params if (pub and with_params) else None,
        bool(pub and pub.approximate),
    )


def paper_tables() -> dict[str, list[TableRow]]:
    """The tables by title: ShuffleNet Tables 1, 2, 5; MobileNetV2 grid; MobileNet V1 width/resolution."""
    groups = (1, 2, 3, 4, 8)
    tables: dict[str, list[TableRow]] = {}
    tables["ShuffleNet Table 1: complexity of ShuffleNet 1x at 224 (MFLOPs)"] = [
        _row(f"g={g}", f"shufflenet_v1_g{g}_x1_0", with_params=True) for g in groups
    ]
    tables["ShuffleNet Table 2: complexity of every scale factor and group count (MFLOPs)"] = [
        _row(f"ShuffleNet {s}x g={g}", f"shufflenet_v1_g{g}_x{k}", with_params=True)
        for k, s in (("2_0", "2"), ("1_5", "1.5"), ("1_0", "1"), ("0_5", "0.5"), ("0_25", "0.25"))
        for g in groups
    ]
    tables["ShuffleNet Table 5: ShuffleNet vs MobileNet at matched complexity (MFLOPs)"] = [
        _row("1.0 MobileNet-224", "mobilenet_v1_x1_0"),
        _row("ShuffleNet 2x (g=3)", "shufflenet_v1_g3_x2_0"),
        _row("0.75 MobileNet-224", "mobilenet_v1_x0_75"),
        _row("ShuffleNet 1.5x (g=3)", "shufflenet_v1_g3_x1_5"),
        _row("0.5 MobileNet-224", "mobilenet_v1_x0_5"),
        _row("ShuffleNet 1x (g=8)", "shufflenet_v1_g8_x1_0"),
        _row("0.25 MobileNet-224", "mobilenet_v1_x0_25"),
        _row("ShuffleNet 0.5x (arch2, g=8)", "shufflenet_v1_g8_x0_5_arch2"),
        _row("ShuffleNet 0.5x (shallow, g=3)", "shufflenet_v1_g3_x0_5_shallow"),
    ]
    tables["MobileNetV2: MAdds by width multiplier and resolution (M)"] = [
        _row(f"width {w} @ {r}", f"mobilenet_v2_x{k}", r, with_params=(r == 224))
        for k, w in (("1_4", "1.4"), ("1_3", "1.3"), ("1_0", "1.0"), ("0_75", "0.75"), ("0_5", "0.5"), ("0_35", "0.35"))
        for r in ((224,) if k in ("1_4", "1_3") else (224, 192, 160, 128, 96))
    ]
    tables["MobileNet V1 Table 6: width multiplier at 224 (MMACs)"] = [
        _row(f"{w} MobileNet-224", f"mobilenet_v1_x{k}", with_params=True)
        for k, w in (("1_0", "1.0"), ("0_75", "0.75"), ("0_5", "0.5"), ("0_25", "0.25"))
    ]
    tables["MobileNet V1 Table 7: resolution at width 1.0 (MMACs)"] = [
        _row(f"1.0 MobileNet-{r}", "mobilenet_v1_x1_0", r) for r in (224, 192, 160, 128)
    ]
    return tables


@dataclass
class SegmentationRow:
    """A published segmentation row beside our counts (``None`` for a network we do not build): params with BN,
    MAdds of one evaluation (summed over the MF inputs) with dilated convs charged plain and the TF way."""

    published: PublishedSegmentation
    params_m: float | None
    macs_plain_b: float | None
    macs_space_to_batch_b: float | None

    @property
    def macs_b(self) -> float | None:
        """Our count in the convention of the published figure."""
        return self.macs_space_to_batch_b if self.published.counting == "space_to_batch" else self.macs_plain_b

    @property
    def diff_percent(self) -> float | None:
        return None if self.macs_b is None else 100.0 * (self.macs_b - self.published.madds_b) / self.published.madds_b


@cache
def segmentation_row(row: PublishedSegmentation) -> SegmentationRow:
    """Count ``row``'s model (built on the meta device: shapes only, so the 897 px MF inputs cost nothing)."""
    if row.model is None:
        return SegmentationRow(row, None, None, None)
    with torch.device("meta"):
        model = create_model(row.model, **row.options())
    macs = [evaluation_macs(model, row.resolution, row.multi_scale_flip, conv) / 1e9
            for conv in ("plain", "space_to_batch")]
    return SegmentationRow(row, sum(p.numel() for p in model.parameters()) / 1e6, macs[0], macs[1])


def segmentation_table() -> list[SegmentationRow]:
    """MobileNetV2 Table 7, every row (ResNet-101's without our counts)."""
    return [segmentation_row(row) for row in TABLE7]


@dataclass
class DetectionRow:
    """A published detection row beside our counts (``None`` for a network we do not build): params with BN and
    MAdds of one ``resolution`` image, of the whole network or, for a ``head_only`` row, of :data:`DETECTION_HEAD`."""

    published: PublishedDetection
    params_m: float | None
    macs_b: float | None

    @property
    def diff_percent(self) -> float | None:
        return None if self.macs_b is None else 100.0 * (self.macs_b - self.published.madds_b) / self.published.madds_b


@cache
def detection_row(row: PublishedDetection) -> DetectionRow:
    """Count ``row``'s model, built on the meta device (shapes only) with the row's class count."""
    if row.model is None or row.resolution is None:
        return DetectionRow(row, None, None)
    with torch.device("meta"):
        model = create_model(row.model, num_classes=row.num_classes)
    macs, layers = count_macs(model, row.resolution)
    params = sum(p.numel() for p in model.parameters())
    if row.head_only:
        macs = sum(r.macs for r in layers if r.kind != "block" and r.name.split(".")[0] in DETECTION_HEAD)
        params = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in DETECTION_HEAD)
    return DetectionRow(row, params / 1e6, macs / 1e9)


def detection_markdown() -> list[str]:
    """MobileNetV2 Tables 6 and 5, every row (those of networks not built here without our counts)."""
    out: list[str] = []
    for title, table, what in ((TABLE6_TITLE, TABLE6, "the whole network"),
                               (TABLE5_TITLE, TABLE5, "the extra layers and predictors only")):
        out += ["", f"## {title}", "",
                "Params include BN; MAdds are conv multiply-adds up to the raw head outputs (no box decoding or NMS),",
                f"of {what}; ms: Pixel 1, one large core (docs/counting.md).", "",
                "| network | registry name | res | mAP | ms | params (M) | published | MAdds (B) | published | diff |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (detection_row(row) for row in table):
            p = r.published
            diff = "-" if r.diff_percent is None else f"{r.diff_percent:+.1f}%"
            diff += "" if p.madds_reproduced else " (not reproduced)"
            out.append(f"| {p.label} | {f'`{p.model}`' if p.model else '-'} | {p.resolution or '-'} | "
                       f"{_fmt(p.map)} | {_fmt(p.latency_ms, 0)} | {_fmt(r.params_m, 3)} | {p.params_m:g} | "
                       f"{_fmt(r.macs_b, 3)} | {_fmt(p.madds_b, _decimals(p.madds_step_b))} | {diff} |")
    return out


def _decimals(step: float) -> int:
    """Digits after the point of a figure printed to ``step`` (0.01 -> 2, 1 -> 0)."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


def segmentation_markdown(rows: list[SegmentationRow]) -> list[str]:
    out = ["", f"## {TABLE7_TITLE}", "",
           "MAdds: conv multiply-adds of one evaluation, summed over the 12 inputs with MF (scales 0.5-1.75, each",
           "flipped); dilated convs charged plain (at their output) and as TensorFlow's space-to-batch runs them,",
           "the convention of the published figures (docs/counting.md). Params include BN.", "",
           "| network | registry name | OS | ASPP | MF | mIOU | params (M) | published | MAdds plain | MAdds TF "
           "| published | diff |",
           "|---|---|---:|:---:|:---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = r.published
        diff = "-" if r.diff_percent is None else f"{r.diff_percent:+.2f}%"
        out.append(f"| {p.label} | {f'`{p.model}`' if p.model else '-'} | {p.output_stride} | "
                   f"{'yes' if p.aspp else ''} | {'yes' if p.multi_scale_flip else ''} | {p.miou:.2f} | "
                   f"{_fmt(r.params_m, 3)} | {p.params_m:g} | {_fmt(r.macs_plain_b, 3)} | "
                   f"{_fmt(r.macs_space_to_batch_b, 3)} | {_fmt(p.madds_b, _decimals(p.madds_step_b))} | {diff} |")
    return out


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tables_markdown() -> str:
    """All tables as Markdown, ours beside published with the difference in %."""
    out = [
        "# Paper complexity tables, regenerated by mobilecnn",
        "",
        "MACs count conv and FC multiply-adds only (the papers' FLOPs/MAdds). `~` marks figures the paper",
        "rounds coarsely (see each model's docstring). Params are in the convention of the published figure.",
    ]
    for title, rows in paper_tables().items():
        show_params = any(r.params_m is not None for r in rows)
        out += ["", f"## {title}", ""]
        header = "| model | registry name | res | MACs (M) | published | diff |"
        sep = "|---|---|---:|---:|---:|---:|"
        if show_params:
            header += " params (M) | published |"
            sep += "---:|---:|"
        out += [header, sep]
        for r in rows:
            pub = "-" if r.published_macs_m is None else ("~" if r.approximate else "") + f"{r.published_macs_m:g}"
            diff = "-" if r.diff_percent is None else f"{r.diff_percent:+.1f}%"
            line = f"| {r.label} | `{r.model}` | {r.resolution} | {_fmt(r.macs_m)} | {pub} | {diff} |"
            if show_params:
                pub_params = "-" if r.published_params_m is None else f"{r.published_params_m:g}"
                line += f" {_fmt(r.params_m, 2)} | {pub_params} |"
            out.append(line)
    out += segmentation_markdown(segmentation_table())
    out += detection_markdown()
    return "\n".join(out) + "\n"


@dataclass
class TablesConfig:
    """``mobilecnn tables``: where the Markdown goes."""

    out: str | None = field(default=None, metadata=cli("write the Markdown to this file instead of stdout"))


def write_tables(config: TablesConfig) -> str:
    """:func:`tables_markdown`, written atomically to ``config.out`` when it names a file; returns the text."""
    text = tables_markdown()
    if config.out:
        atomic_write_text(config.out, text)
    return text
