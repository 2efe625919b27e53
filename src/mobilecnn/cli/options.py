"""Command-line options generated from config dataclasses, so defaults, choices and help live in one place.

A dataclass field becomes ``--field-name`` when its metadata holds ``"cli"`` (see
:func:`mobilecnn.train.config.cli`): the type comes from the annotation (``bool`` fields become
``--x/--no-x``), the default from the field, ``choices``/``required``/``help`` from the metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any, Callable

__all__ = ["add_config_arguments", "config_from_args", "positive_int", "int_list", "number"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
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


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


_PARSERS: dict[type, Callable[[str], Any]] = {int: _integer, float: number, str: str}


def _base_type(annotation: Any) -> type:
    """``int | None`` -> ``int``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one option per CLI field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("cli")
        if meta is None or f.name in skip:
            continue
        meta = dict(meta)
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is dataclasses.MISSING else f.default
        kind = _base_type(hints[f.name])
        if kind is bool:
            if default is False and not meta.pop("negatable", False):
                parser.add_argument(flag, action="store_true", default=False, **meta)
            else:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, **meta)
            continue
        if "choices" not in meta and not meta.get("required"):
            meta["help"] = f"{meta['help']} (default: {default})" if default is not None else meta["help"]
        meta.setdefault("type", _PARSERS.get(kind, str))  # a field may bring its own parser (--resume [auto])
        parser.add_argument(flag, default=default, **meta)


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from the parsed options its CLI fields produced (plus ``overrides``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if "cli" in f.metadata and hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
