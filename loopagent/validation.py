"""Argument checks shared by every layer: one place for "a positive integer" and
"a loop budget within a model's maximum".

Example::

    from loopagent.validation import check_int, check_loops

    check_int(4, "concurrency", minimum=1)            # 4
    check_loops(12, max_loops=8, model="hf:ckpt")     # raises InvalidLoopsError
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from loopagent.errors import ConfigError, InvalidLoopsError

#: Builds the exception to raise from a message (a class, or a factory such as vLLM's
#: validation error).
ErrorFactory = Callable[[str], Exception]


def is_int(value: Any) -> bool:
    """True for integers (Python and numpy), False for ``bool`` and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: ErrorFactory = ConfigError,
) -> int:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``; else raise ``error``.

    The message names the argument and the bounds: "concurrency must be a positive
    integer, got 0", "depth must be an integer in 1..8, got 9".
    """
    if is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return int(value)
    if minimum == 1 and maximum is None:
        what = "a positive integer"
    elif minimum is not None and maximum is not None:
        what = f"an integer in {minimum}..{maximum}"
    elif minimum is not None:
        what = f"an integer >= {minimum}"
    elif maximum is not None:
        what = f"an integer <= {maximum}"
    else:
        what = "an integer"
    raise error(f"{name} must be {what}, got {value!r}")


def check_loops(
    loops: Any,
    *,
    max_loops: int | None = None,
    model: str | None = None,
    error: ErrorFactory = InvalidLoopsError,
) -> int:
    """A loop budget: a positive integer, at most ``max_loops`` when the model has one.

    Messages: "loops must be a positive integer, got 0"; "loops=12 exceeds the maximum of 8
    for hf:ckpt" (with ``model``), "loops=12 exceeds this model's max_loops=8" (without: a
    check inside the model names the config field to change).
    """
    loops = check_int(loops, "loops", minimum=1, error=error)
    if max_loops is not None and loops > max_loops:
        if model:
            raise error(f"loops={loops} exceeds the maximum of {max_loops} for {model}")
        raise error(f"loops={loops} exceeds this model's max_loops={max_loops}")
    return loops


__all__ = ["ErrorFactory", "check_int", "check_loops", "is_int"]
