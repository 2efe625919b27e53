"""Config fields that are also command-line options: :func:`cli` field metadata and the text parsers.

A config dataclass (``TrainConfig``, ``EvalConfig``, ``ProfileConfig``...) lives beside the library
function it configures; a field whose metadata comes from :func:`cli` is an option of the command
(:func:`mobilecnn.cli.options.add_config_arguments` builds the parser), so every default, choice and help
text is written once, on the field. The parsers turn an option's text into a value or raise
``argparse.ArgumentTypeError``, which the command line prints as its one-line usage error.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

__all__ = ["cli", "positive_int", "integer", "int_list", "number"]


def cli(help: str, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata that puts a config field on the command line.

    ``argparse_kwargs`` go to ``add_argument`` (``choices``, ``required``, ``type``, ``nargs``, ``metavar``...),
    plus ``positional=True`` (an argument, not an option), ``flag="--from"`` (an option name other than
    ``--field-name``), ``exclusive="group"`` (mutually exclusive with the other fields of that group) and
    ``negatable=True`` (a ``False`` bool gets ``--no-x`` too).
    """
    return {"cli": {"help": help, **argparse_kwargs}}


def positive_int(text: str) -> int:
    """An integer >= 1 (0 and negatives are refused at the parser)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def integer(text: str) -> int:
    """Any integer."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers (``1,2``)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def number(text: str) -> float:
    """A finite float (``nan``/``inf`` are refused at the parser)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value
