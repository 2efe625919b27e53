"""Argument checks, written once: integers, positive integers, finite numbers, flags, choices, thread counts.

Every check returns the value it accepted and otherwise raises :class:`~mobilecnn.errors.UsageError`
(or the ``error`` class the caller names, e.g. :class:`~mobilecnn.errors.TrainError` for a training
option, :class:`~mobilecnn.errors.DataError` for a value read from a data file) with one line naming the
option, the value and what is accepted::

    --epochs 0.0 is not accepted: it must be a number in (0, 100000]

``bool`` is never taken for a number (``True`` is an ``int`` to Python, not a count to a user).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .device import available_cpus
from .errors import MobileCNNError, UsageError

__all__ = ["is_int", "is_number", "refuse", "check_int", "check_positive_int", "check_number", "check_bool",
           "check_choice", "check_threads"]

Error = type[MobileCNNError]


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def refuse(option: str, value: Any, accepted: str, error: Error = UsageError) -> MobileCNNError:
    """The error for ``value`` of ``option`` (the caller raises it): one line, the option, the value, what is
    accepted."""
    return error(f"{option} {value!r} is not accepted: it must be {accepted}")


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum == 1:
        return "a positive integer" + (f" <= {maximum}" if maximum is not None else "")
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an integer >= {minimum}"
    return "an integer" + (f" <= {maximum}" if maximum is not None else "")


def check_int(value: Any, option: str, *, minimum: int | None = None, maximum: int | None = None,
              accepted: str | None = None, error: Error = UsageError) -> int:
    """``value`` when it is an integer in ``[minimum, maximum]`` (either bound optional)."""
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise refuse(option, value, accepted or _int_range(minimum, maximum), error)
    return value


def check_positive_int(value: Any, option: str, *, maximum: int | None = None, error: Error = UsageError) -> int:
    """``value`` when it is an integer >= 1 (and <= ``maximum``)."""
    return check_int(value, option, minimum=1, maximum=maximum, error=error)


def _bound(low: float | None, low_open: bool, high: float | None, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def check_number(value: Any, option: str, *, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, below: float | None = None, accepted: str | None = None,
                 error: Error = UsageError) -> float:
    """``value`` when it is a finite number within the bounds: ``minimum``/``maximum`` inclusive,
    ``above``/``below`` exclusive (give at most one of each pair)."""
    ok = is_number(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum) \
        and (above is None or value > above) and (below is None or value < below)
    if not ok:
        low, low_open = (above, True) if above is not None else (minimum, False)
        high, high_open = (below, True) if below is not None else (maximum, False)
        raise refuse(option, value, accepted or _bound(low, low_open, high, high_open), error)
    return value


def check_bool(value: Any, option: str, error: Error = UsageError) -> bool:
    """``value`` when it is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise refuse(option, value, "True or False", error)
    return value


def check_choice(value: Any, option: str, choices: Iterable[Any], error: Error = UsageError) -> Any:
    """``value`` when it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise refuse(option, value, "one of " + ", ".join(map(str, choices)), error)
    return value


def check_threads(value: Any, option: str = "threads", error: Error = UsageError) -> int:
    """A thread count: an integer from 1 to the CPUs this process may use. More threads than CPUs is
    refused: oversubscribed runtimes run orders of magnitude slower (a 12 ms forward took 2.2 s)."""
    cpus = available_cpus()
    return check_int(value, option, minimum=1, maximum=cpus, error=error,
                     accepted=f"an integer from 1 to the {cpus} CPU(s) available (more threads than CPUs run "
                              "orders of magnitude slower)")
