"""The ``mobilecnn`` command line (``python -m mobilecnn.cli`` under torchrun).

:func:`main` is the entry point: the commands' modules (torch among them) load only once it runs, with Ctrl-C
ending the process with exit 130 and no traceback while they load.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser"]


def _exit_130(signum: int, frame: object) -> None:
    os._exit(130)  # mid-import: nothing of ours to clean up yet, and unwinding would print a traceback


def main(argv: Sequence[str] | None = None) -> int:
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _exit_130) if on_main else None
    try:
        from .app import main as run
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return run(argv)


def build_parser() -> Any:
    from .app import build_parser as build

    return build()
