"""Printing for the command line: the only place output is written, with user strings made safe.

Every string a user or a file supplied (paths, labels, messages quoting them) goes through :func:`safe`
before it reaches the terminal, so a label holding an escape sequence or a newline cannot rewrite
the screen or forge output lines; rich markup in messages is never interpreted.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

__all__ = ["err", "safe", "out", "error"]

err = Console(stderr=True, soft_wrap=True, highlight=False)


def safe(value: Any) -> str:
    """``value`` as text with every control character (escape sequences, newlines, tabs) made visible."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def out(text: str = "", end: str = "\n") -> None:
    """Print results to stdout (callers pass user strings through :func:`safe`)."""
    print(text, end=end)


def error(message: str) -> None:
    """Print ``error: message`` to stderr."""
    err.print(Text("error: ", style="bold red") + Text(safe(message)))
