"""Argument checks shared by every layer: one place for "a positive integer" and
"a loop budget within a model's maximum".

Example::

    from loopagent.validation import check_int, check_loops

    check_int(4, "concurrency", minimum=1)            # 4
    check_loops(12, max_loops=8, model="hf:ckpt")     # raises InvalidLoopsError
"""

from __future__ import annotations

import math
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


def check_temperature(value: Any, *, model: str | None = None, error: ErrorFactory = ConfigError) -> float:
    """A sampling temperature: a finite number >= 0 (0 is greedy decoding).

    Example::

        check_temperature(0.7)      # 0.7
        check_temperature(-1)       # raises: temperature must be a finite number >= 0 (0: greedy), got -1
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        ok = ok and math.isfinite(float(value)) and float(value) >= 0
    except OverflowError:  # an int too large for a float (10**400)
        ok = False
    if not ok:
        where = f" for {model}" if model else ""
        raise error(f"temperature must be a finite number >= 0 (0: greedy){where}, got {value!r}")
    return float(value)


def check_gate(
    exit_threshold: Any,
    min_loops: Any,
    *,
    loops: int,
    has_gate: bool,
    model: str | None = None,
    error: ErrorFactory = InvalidLoopsError,
) -> tuple[float | None, int | None]:
    """The exit-gate options of one call, checked against its budget ``loops``.

    ``exit_threshold`` must be a number in [0, 1]; ``min_loops`` an integer in
    ``1..loops``; either needs a model with an exit gate (``has_gate``). Returns them
    as ``(float | None, int | None)``. Messages name the option and the model::

        check_gate(1.5, None, loops=8, has_gate=True)    # exit_threshold must be a number in [0, 1], got 1.5
        check_gate(0.9, 9, loops=8, has_gate=True)       # min_loops=9 exceeds the call's loops=8
        check_gate(0.9, None, loops=8, has_gate=False, model="hf:ckpt")
        # hf:ckpt has no exit gate (config.exit_gate=False): exit_threshold/min_loops need one
    """
    where = f" for {model}" if model else ""
    if exit_threshold is None and min_loops is None:
        return None, None
    if not has_gate:
        raise error(
            f"{model or 'this model'} has no exit gate (config.exit_gate=False): exit_threshold/min_loops need one; "
            "use a fixed loop budget (loops=N) or a gated checkpoint"
        )
    threshold = None
    if exit_threshold is not None:
        ok = isinstance(exit_threshold, numbers.Real) and not isinstance(exit_threshold, bool)
        if not ok or not 0.0 <= float(exit_threshold) <= 1.0:
            raise error(f"exit_threshold must be a number in [0, 1]{where}, got {exit_threshold!r}")
        threshold = float(exit_threshold)
    floor = None
    if min_loops is not None:
        floor = check_int(min_loops, "min_loops", minimum=1, error=error)
        if floor > loops:
            raise error(f"min_loops={floor} exceeds the call's loops={loops}{where} (min_loops <= loops)")
    return threshold, floor


__all__ = ["ErrorFactory", "check_gate", "check_int", "check_loops", "check_temperature", "is_int"]
