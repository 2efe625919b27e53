"""The ``mobilecnn`` command line: the parser (one module per command group) and the one place where
errors become exit codes (:data:`mobilecnn.errors.EXIT_CODES`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import exit_code
from . import data, deploy, models, training
from . import weights as weights_cli
from .commands import top_level_parser
from .console import err, error

__all__ = ["main", "build_parser"]

def build_parser() -> argparse.ArgumentParser:
    parser = top_level_parser(__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.add_parsers(sub)
    training.add_parsers(sub)
    deploy.add_parsers(sub)
    data.add_parsers(sub)
    weights_cli.add_parsers(sub)
    return parser


def _interrupt_on_sigterm() -> None:
    """SIGTERM (``kill``, a scheduler, torchrun stopping its workers) unwinds like Ctrl-C: every
    ``finally`` runs, so staging folders and temporary files are removed."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
