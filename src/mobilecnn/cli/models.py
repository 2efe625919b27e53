"""``mobilecnn list``, ``profile`` and ``tables``: the zoo and its complexity."""

from __future__ import annotations

import argparse
import json

from ..analysis import ModelProfile, ProfileConfig, TablesConfig, profile_config, write_tables
from ..analysis.tables import detection_row, segmentation_row
from ..errors import UsageError
from ..models import ListConfig, list_models, published, published_detection, published_segmentation
from .commands import help_of
from .console import out, safe
from .options import add_config_arguments, add_json_option, config_from_args

__all__ = ["add_parsers"]


def _cmd_list(args: argparse.Namespace) -> int:
    cfg = config_from_args(ListConfig, args)
    names = list_models(cfg.pattern)
    if not names:
        raise UsageError(f"no model matches {safe(cfg.pattern)!r}; try `mobilecnn list` for all names")
    for name in names:
        out(name)
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    cfg = config_from_args(ProfileConfig, args)
    resolution = cfg.input_resolution
    result = profile_config(cfg)
    if args.json:
        out(json.dumps(result.to_dict(), indent=2))
        return 0
    header = ("layer", "kind", "output", "MACs", "params", "standard conv", "separable", "saving")
    rows = [
        (
            row.name, row.kind, "x".join(map(str, row.output_shape[1:])), f"{row.macs:,}", f"{row.params:,}",
            "" if row.standard_conv_macs is None else f"{row.standard_conv_macs:,}",
            "" if row.separable_conv_macs is None else f"{row.separable_conv_macs:,}",
            "" if row.saving is None else f"{row.saving:.1f}x",
        )
        for row in result.layers
    ]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    out(f"{result.model} @ {result.resolution}px (block rows: cost of a standard 3x3 conv F^2 D K^2 C, "
          "of a depthwise separable conv F^2 D (K^2 + C), saving = standard / actual)")
    for r in [header] + rows:
        out("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    pub = published(cfg.name)
    ref = pub.macs.get(resolution) if (pub and not cfg.small_input) else None
    out(f"MACs: {result.macs / 1e6:.2f} M" + (f" (published {ref:g} M)" if ref else "")
        + (f" (dilated convs charged {cfg.dilated}; TF space-to-batch: {result.macs_space_to_batch / 1e6:.2f} M)"
           if result.macs_space_to_batch != result.macs or cfg.dilated != "plain" else ""))
    for line in _segmentation_lines(cfg, result) + _detection_lines(cfg, result):
        out(line)
    out(f"params: {result.params / 1e6:.3f} M, without BN {result.params_without_bn / 1e6:.3f} M")
    out(f"peak activation memory (batch 1, fp32): {result.peak_activation_bytes / 2**20:.2f} MiB")
    return 0


def _segmentation_lines(cfg: ProfileConfig, result: ModelProfile) -> list[str]:
    """The published table rows of the model as profiled (same output stride, ASPP, input) beside our counts."""
    if cfg.small_input or cfg.in_chans != 3:
        return []
    lines = []
    for row in published_segmentation(cfg.name):
        if (row.output_stride, row.aspp, row.resolution) != (cfg.output_stride or 16, cfg.aspp, result.resolution):
            continue
        ours = segmentation_row(row)
        mf = " with multi-scale + flip (summed over its 12 inputs)" if row.multi_scale_flip else ""
        lines.append(f"{row.source} {row.label} OS{row.output_stride}{' ASPP' if row.aspp else ''}{mf}: published "
                     f"{row.params_m:g} M params, {row.madds_b:g} B MAdds (mIOU {row.miou:.2f}); counted "
                     f"{ours.params_m:.3f} M, {ours.macs_space_to_batch_b:.3f} B the TF way, "
                     f"{ours.macs_plain_b:.3f} B plain (docs/counting.md)")
    return lines


def _detection_lines(cfg: ProfileConfig, result: ModelProfile) -> list[str]:
    """The published table rows of a detector profiled at their input (Table 6: the whole network; Table 5: the
    extra layers and predictors alone) beside our counts (built with the rows' 81 class slots)."""
    if cfg.small_input or cfg.in_chans != 3:
        return []
    lines = []
    for row in published_detection(cfg.name):
        if row.resolution != result.resolution:
            continue
        ours = detection_row(row)
        part = " (extra layers + predictors only)" if row.head_only else ""
        extra = ("" if row.map is None else f", mAP {row.map:g}") + (
            "" if row.latency_ms is None else f", {row.latency_ms:g} ms on a Pixel 1")
        lines.append(f"{row.source} {row.label}{part}: published {row.params_m:g} M params, {row.madds_b:g} B MAdds"
                     f"{extra}; counted {ours.params_m:.3f} M, {ours.macs_b:.3f} B"
                     + ("" if row.madds_reproduced else " (MAdds not reproduced: docs/counting.md)"))
    return lines


def _cmd_tables(args: argparse.Namespace) -> int:
    cfg = config_from_args(TablesConfig, args)
    text = write_tables(cfg)
    if cfg.out:
        out(f"wrote {safe(cfg.out)}")
    else:
        out(text, end="")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help=help_of("list"))
    add_config_arguments(p, ListConfig)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("profile", help=help_of("profile"))
    add_config_arguments(p, ProfileConfig)
    add_json_option(p, "the profile")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("tables", help=help_of("tables"))
    add_config_arguments(p, TablesConfig)
    p.set_defaults(func=_cmd_tables)
