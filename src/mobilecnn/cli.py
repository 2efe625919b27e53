"""``mobilecnn`` command line: a thin layer over the library. Only this module prints."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from rich.console import Console

__all__ = ["main", "build_parser", "UserError"]


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit status 2."""


_err = Console(stderr=True)


def _cmd_list(args: argparse.Namespace) -> int:
    from . import list_models

    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches {args.pattern!r}; try `mobilecnn list` for all names")
    for name in names:
        print(name)
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from . import create_model, profile, published

    model = create_model(args.name, small_input=args.small_input, in_chans=args.in_chans)
    result = profile(model, args.resolution)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
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
    print(f"{result.model} @ {result.resolution}px (block rows: seed's cost of a standard 3x3 conv F^2 D K^2 C, "
          "of a depthwise separable conv F^2 D (K^2 + C), saving = standard / actual)")
    for r in [header] + rows:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    pub = published(args.name)
    ref = pub.macs.get(args.resolution) if (pub and not args.small_input) else None
    print(f"MACs: {result.macs / 1e6:.2f} M" + (f" (published {ref:g} M)" if ref else ""))
    print(f"params: {result.params / 1e6:.3f} M, without BN {result.params_without_bn / 1e6:.3f} M")
    print(f"peak activation memory (batch 1, fp32): {result.peak_activation_bytes / 2**20:.2f} MiB")
    return 0


def _cmd_tables(args: argparse.Namespace) -> int:
    from .tables import tables_markdown

    text = tables_markdown()
    if args.out:
        from .utils import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="mobilecnn", description="ShuffleNet v1, MobileNetV2 and MobileNet V1: exact models, complexity, training, export."
    )
    parser.add_argument("--version", action="version", version=f"mobilecnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list registered models (optionally matching a wildcard PATTERN)")
    p.add_argument("pattern", nargs="?", default=None, metavar="PATTERN")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("profile", help="MACs, params, peak activation memory and per-layer table of a model")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--resolution", type=int, default=None, help="input side in pixels (224, or 32 with --small-input)")
    p.add_argument("--small-input", action="store_true", help="the 28-64 px stem of SPEC.md")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("tables", help="regenerate the papers' complexity tables beside the published figures")
    p.add_argument("--out", default=None, help="write the Markdown to this file instead of stdout")
    p.set_defaults(func=_cmd_tables)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "resolution", 0) is None:
        args.resolution = 32 if getattr(args, "small_input", False) else 224
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UserError, ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError) as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        return 2
    except KeyboardInterrupt:
        _err.print("interrupted")
        return 130
    except BrokenPipeError:  # `mobilecnn tables | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
