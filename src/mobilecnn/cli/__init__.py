"""The ``mobilecnn`` command line (``python -m mobilecnn.cli`` under torchrun)."""

from .app import build_parser, main

__all__ = ["main", "build_parser"]
