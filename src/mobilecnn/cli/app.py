"""The ``mobilecnn`` command line: the parser, printing, and the one place errors become exit codes.

Only the CLI prints. Every string a user or a file supplied (paths, labels, messages quoting them) goes
through :func:`safe` before it reaches the terminal, so a label holding an escape sequence or a newline
cannot rewrite the screen or forge output lines.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.text import Text

from ..errors import exit_code

__all__ = ["main", "build_parser", "safe", "out", "err"]

err = Console(stderr=True, soft_wrap=True, highlight=False)


def safe(value: Any) -> str:
    """``value`` as text with every control character (escape sequences, newlines, tabs) made visible."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def out(text: str = "", end: str = "\n") -> None:
    """Print a line of results to stdout (callers pass user strings through :func:`safe`)."""
    print(text, end=end, flush=False)


def error(message: str) -> None:
    """Print ``error: message`` to stderr; rich markup in the message is not interpreted."""
    err.print(Text("error: ", style="bold red") + Text(safe(message)))


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from . import deploy, models, training

    parser = argparse.ArgumentParser(
        prog="mobilecnn", description="ShuffleNet v1, MobileNetV2 and MobileNet V1: exact models, complexity, training, export."
    )
    parser.add_argument("--version", action="version", version=f"mobilecnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.add_parsers(sub)
    training.add_parsers(sub)
    deploy.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:  # `mobilecnn tables | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (Exception, KeyboardInterrupt) as exc:
        code = exit_code(exc)
        if code is None:
            raise
        if isinstance(exc, KeyboardInterrupt):
            err.print("interrupted")
        else:
            error(str(exc))
        return code
