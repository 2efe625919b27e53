"""Command-line options generated from config dataclasses, so defaults, choices and help live in one place.

A dataclass field becomes ``--field-name`` when its metadata holds ``"cli"`` (see :func:`mobilecnn.fields.cli`):
the type comes from the annotation (``bool`` fields become ``--x``, or ``--x/--no-x`` when they default to
true or are ``negatable``), the default from the field, ``choices``/``required``/``help``/``type`` from the
metadata; ``positional``, ``flag`` and ``exclusive`` place it as an argument, under another option name or
in a mutually exclusive group. Integer fields are parsed as integers; a field whose zero is meaningless
names :func:`~mobilecnn.fields.positive_int` as its ``type``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

from ..fields import int_list, integer, number, positive_int

__all__ = ["add_config_arguments", "config_from_args", "add_json_option", "positive_int", "int_list", "number"]

_PARSERS: dict[type, Callable[[str], Any]] = {int: integer, float: number, str: str}


def _base_type(annotation: Any) -> type:
    """``int | None`` -> ``int``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def _add_field(target: Any, f: dataclasses.Field, kind: type, meta: dict[str, Any]) -> None:
    default = None if f.default is dataclasses.MISSING else f.default
    if meta.pop("positional", False):
        if kind is not str:
            meta.setdefault("type", _PARSERS.get(kind, str))
        if f.default is not dataclasses.MISSING:
            meta["default"] = default
        target.add_argument(f.name, **meta)
        return
    flag = meta.pop("flag", None)
    if flag is None:
        flag = "--" + f.name.replace("_", "-")
    elif kind is not bool and "action" not in meta and "choices" not in meta:  # --out OUT, not --out OUT_DIR
        meta.setdefault("metavar", flag.lstrip("-").replace("-", "_").upper())
    if "action" in meta:  # e.g. --no-ema storing False into prefer_ema
        target.add_argument(flag, dest=f.name, default=default, **meta)
    elif kind is bool:
        if default is False and not meta.pop("negatable", False):
            target.add_argument(flag, dest=f.name, action="store_true", default=False, **meta)
        else:
            target.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, **meta)
    else:
        if "choices" not in meta and not meta.get("required") and default is not None:
            meta["help"] = f"{meta['help']} (default: {default})"
        meta.setdefault("type", _PARSERS.get(kind, str))  # a field may bring its own parser (--resume [auto])
        target.add_argument(flag, dest=f.name, default=default, **meta)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one argument or option per CLI field of dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("cli")
        if meta is None or f.name in skip:
            continue
        meta = dict(meta)
        group = meta.pop("exclusive", None)
        if group is not None and group not in groups:
            groups[group] = parser.add_mutually_exclusive_group()
        target = parser if group is None else groups[group]
        _add_field(target, f, _base_type(hints[f.name]), meta)


def add_json_option(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json``: print ``what`` as JSON instead of text (a presentation choice of the command line)."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from the parsed options its CLI fields produced (plus ``overrides``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if "cli" in f.metadata and hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
