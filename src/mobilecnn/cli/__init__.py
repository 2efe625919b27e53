"""The ``mobilecnn`` command line (``python -m mobilecnn.cli`` under torchrun).

:func:`main` is the entry point: ``mobilecnn --help`` / ``--version`` are answered without loading torch; a
command's modules (torch among them) load only once it runs, with Ctrl-C ending the process with exit 130 and no
traceback while they load.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser"]


def _exit_130(signum: int, frame: object) -> None:
    os._exit(130)  # mid-import: nothing of ours to clean up yet, and unwinding would print a traceback


def _top_level_only(argv: Sequence[str] | None) -> int | None:
    """``mobilecnn``, ``--help`` or ``--version`` alone: answered from :mod:`.commands` (no torch); else None."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in ("-h", "--help", "--version"):
        return None
    from .. import __version__
    from .commands import COMMANDS, top_level_parser

    parser = top_level_parser(__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return 2  # not reached: no command was given, or --help / --version exited


def main(argv: Sequence[str] | None = None) -> int:
    quick = _top_level_only(argv)
    if quick is not None:
        return quick
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _exit_130) if on_main else None
    try:  # the command's modules load here, torch among them
        from .app import build_parser, command_word
        from .app import main as run

        parser = build_parser(command_word(argv))
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return run(argv, parser)


def build_parser() -> Any:
    from .app import build_parser as build

    return build()
