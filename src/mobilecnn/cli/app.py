"""The ``mobilecnn`` command line: the parser (one module per command group) and the one place where
errors become exit codes (:data:`mobilecnn.errors.EXIT_CODES`)."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import exit_code
from .commands import COMMANDS, GROUPS, group_of, top_level_parser
from .console import err, error

__all__ = ["main", "build_parser"]

def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command``, only that command's group is loaded and the others are listed by name
    (their options, and the modules behind them, load only when they run)."""
    parser = top_level_parser(__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = group_of(command) if command is not None else None
    groups = list(GROUPS) if command is None else [chosen] if chosen else []
    added: set[str] = set()
    for group in groups:
        importlib.import_module(f"{__package__}.{group}").add_parsers(sub)
        added.update(GROUPS[group])
    for name, text in COMMANDS.items():  # in --help's order
        if name not in added:
            sub.add_parser(name, help=text, add_help=False)
    return parser


def command_word(argv: Sequence[str] | None) -> str:
    """The first word of the command line: the command, when there is one."""
    args = list(sys.argv[1:] if argv is None else argv)
    return args[0] if args else ""


def _interrupt_on_sigterm() -> None:
    """SIGTERM (``kill``, a scheduler, torchrun stopping its workers) unwinds like Ctrl-C: every
    ``finally`` runs, so staging folders and temporary files are removed."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run the command ``argv`` names; ``parser``: :func:`build_parser` of that command, when the caller built it
    already (:func:`mobilecnn.cli.main` does, while Ctrl-C still ends the process quietly)."""
    parser = parser or build_parser(command_word(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed usage and its one-line error (or --help / --version)
        return exc.code if isinstance(exc.code, int) else 2
    _interrupt_on_sigterm()
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
