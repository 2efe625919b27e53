"""``mobilecnn list``, ``profile`` and ``tables``: the zoo and its complexity."""

from __future__ import annotations

import argparse
import json

from ..analysis import profile, tables_markdown
from ..errors import UsageError
from ..models import create_model, list_models, published
from ..runs.files import atomic_write_text
from .console import out, safe

__all__ = ["add_parsers"]


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise UsageError(f"no model matches {safe(args.pattern)!r}; try `mobilecnn list` for all names")
    for name in names:
        out(name)
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    resolution = args.resolution if args.resolution is not None else (32 if args.small_input else 224)
    model = create_model(args.name, small_input=args.small_input, in_chans=args.in_chans)
    result = profile(model, resolution)
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
    pub = published(args.name)
    ref = pub.macs.get(resolution) if (pub and not args.small_input) else None
    out(f"MACs: {result.macs / 1e6:.2f} M" + (f" (published {ref:g} M)" if ref else ""))
    out(f"params: {result.params / 1e6:.3f} M, without BN {result.params_without_bn / 1e6:.3f} M")
    out(f"peak activation memory (batch 1, fp32): {result.peak_activation_bytes / 2**20:.2f} MiB")
    return 0


def _cmd_tables(args: argparse.Namespace) -> int:
    text = tables_markdown()
    if args.out:
        atomic_write_text(args.out, text)
        out(f"wrote {safe(args.out)}")
    else:
        out(text, end="")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered models (optionally matching a wildcard PATTERN)")
    p.add_argument("pattern", nargs="?", default=None, metavar="PATTERN")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("profile", help="MACs, params, peak activation memory and per-layer table of a model")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--resolution", type=int, default=None, help="input side in pixels (224, or 32 with --small-input)")
    p.add_argument("--small-input", action="store_true", help="the stem for 28-64 px images (stride-1 stem, total stride 8)")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("tables", help="regenerate the papers' complexity tables beside the published figures")
    p.add_argument("--out", default=None, help="write the Markdown to this file instead of stdout")
    p.set_defaults(func=_cmd_tables)

