"""The grid of an eval sweep: lengths, loop budgets, depths and baselines, and the
configurations (:class:`RunConfig`) they make.

Example::

    from loopagent.evals.grid import format_length, parse_length, parse_loops_list

    parse_length("1.5m")                          # 1500000
    format_length(32_000)                         # '32k'
    parse_loops_list("1,4,default", "--loops")    # [1, 4, None]

Loop axes: ``None`` means the model's default loop budget (recorded resolved); a model
that is not looped accepts only ``[None]`` (a list of loop budgets for it is refused with
:class:`~loopagent.errors.ConfigError` rather than silently collapsed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from loopagent.backends.base import Backend
from loopagent.errors import ConfigError, InvalidLoopsError
from loopagent.validation import check_int

#: The baselines a sweep may add next to the RLM runs.
BASELINES = ("root_only", "no_loops")

Kind = Literal["rlm", "root_only", "no_loops"]

_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


# -- lengths and lists ----------------------------------------------------------------------------
def parse_length(spec: str | int) -> int:
    """Characters from a human length: ``"32k"`` -> 32,000, ``"1m"``/``"1M"`` -> 1,000,000,
    ``"1.5m"`` -> 1,500,000, ``"8000"`` -> 8,000 (decimal multiples: k = 10^3, m = 10^6, g = 10^9)."""
    if isinstance(spec, bool):
        raise ConfigError(f"a length must be a number of characters like 32k or 1m, got {spec!r}")
    if isinstance(spec, int):
        value = spec
    else:
        match = _LENGTH.match(str(spec).replace("_", ""))
        if not match:
            raise ConfigError(f"bad length {spec!r}: use characters like 8000, 32k, 1.5m or 10M")
        value = int(round(float(match.group(1)) * _SCALE[match.group(2).lower()]))
    if value < 1:
        raise ConfigError(f"a length must be at least 1 character, got {spec!r}")
    return value


def format_length(chars: int) -> str:
    """The short form of a length: 32000 -> '32k', 1500000 -> '1.5m'."""
    for suffix, scale in (("g", 10**9), ("m", 10**6), ("k", 10**3)):
        if chars >= scale and (chars * 1000) % scale == 0:
            return f"{chars / scale:g}{suffix}"
    return str(chars)


def parse_int_list(text: str, what: str) -> list[int]:
    """``"1,2"`` -> [1, 2]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}: expected comma-separated integers like 1,2 (got {text!r})") from None
    if not values:
        raise ConfigError(f"{what}: no values in {text!r}")
    return values


def parse_loops_list(text: str | None, what: str) -> list[int | None]:
    """``"1,4,8"`` -> [1, 4, 8]; ``""``/None/``"default"`` -> [None] (the model's default)."""
    if text is None or not text.strip():
        return [None]
    values: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() in ("default", "none", "-"):
            values.append(None)
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise ConfigError(f"{what}: expected loop budgets like 1,2,4,8 (or 'default'), got {part!r}") from None
    return values or [None]


# -- the axes of a sweep ---------------------------------------------------------------------------
def parse_lengths(lengths: Sequence[int | str]) -> list[int]:
    """The lengths axis in characters, duplicates dropped, order kept."""
    values = list(dict.fromkeys(parse_length(x) for x in lengths))
    if not values:
        raise ConfigError("give at least one length")
    return values


def check_depths(depths: Sequence[int]) -> list[int]:
    """The depths axis (each >= 1), duplicates dropped, order kept."""
    values = list(dict.fromkeys(depths))
    if not values:
        raise ConfigError("give at least one depth")
    return [check_int(d, "depth", minimum=1) for d in values]


def check_baselines(baselines: Sequence[str]) -> list[str]:
    """The baselines asked for (each one of :data:`BASELINES`), duplicates dropped."""
    values = list(dict.fromkeys(baselines))
    for b in values:
        if b not in BASELINES:
            raise ConfigError(f"unknown baseline {b!r}; choose from {', '.join(BASELINES)}")
    return values


def resolve_loops(backend: Backend, values: Sequence[int | None], what: str) -> list[int | None]:
    """A loop axis as the model will run it: None resolved to its default, each budget checked
    by the model, duplicates dropped; a model that is not looped takes only ``[None]``."""
    values = list(values)
    if not values:
        raise ConfigError(f"{what}: give at least one loop budget (None = the model's default)")
    if not backend.looped:
        if any(v is not None for v in values):
            raise InvalidLoopsError(
                f"{what}: {backend.name} is not a looped model, so it takes no loop budgets "
                f"(got {values}); leave the option out"
            )
        return [None]
    resolved = []
    for v in values:
        r = backend.validate_loops(v)
        if r not in resolved:
            resolved.append(r)
    return resolved


# -- configurations -------------------------------------------------------------------------------
class RunConfig(BaseModel):
    """One point of the sweep (a model setting); every item runs under it once per length."""

    model_config = ConfigDict(frozen=True)

    kind: Kind
    root_loops: int | None = None
    child_loops: int | None = None
    depth: int | None = None

    @property
    def key(self) -> str:
        """Stable, filesystem-safe name, e.g. ``rlm.rl=4.cl=2.d=1``, ``root_only.rl=4``; a
        model that is not looped has no loops part."""
        parts = [self.kind]
        if self.root_loops is not None:
            parts.append(f"rl={self.root_loops}")
        if self.child_loops is not None:
            parts.append(f"cl={self.child_loops}")
        if self.depth is not None:
            parts.append(f"d={self.depth}")
        return ".".join(parts)


def build_grid(
    root: Backend,
    child: Backend,
    *,
    root_loops: Sequence[int | None],
    child_loops: Sequence[int | None],
    depths: Sequence[int],
    baselines: Sequence[str],
) -> list[RunConfig]:
    """Every configuration of a sweep, in a stable order: the RLM over ``root_loops x
    child_loops x depths``, then ``root_only`` once per root-loops value, then ``no_loops``
    (root and child loops forced to 1) once per depth.

    Example::

        build_grid(root, child, root_loops=[None], child_loops=[1, 2], depths=[1], baselines=["root_only"])
        # [rlm.cl=1.d=1, rlm.cl=2.d=1, root_only]
    """
    rl_values = resolve_loops(root, root_loops, "root_loops (--root-loops)")
    cl_values = resolve_loops(child, child_loops, "child_loops (--child-loops)")
    configs = [RunConfig(kind="rlm", root_loops=rl, child_loops=cl, depth=d)
               for rl in rl_values for cl in cl_values for d in depths]
    if "root_only" in baselines:
        configs += [RunConfig(kind="root_only", root_loops=rl) for rl in rl_values]
    if "no_loops" in baselines:
        if not (root.looped or child.looped):
            raise ConfigError("the no_loops baseline needs a looped root or child model (neither is looped)")
        configs += [RunConfig(kind="no_loops", root_loops=1 if root.looped else None,
                              child_loops=1 if child.looped else None, depth=d) for d in depths]
    return configs


__all__ = [
    "BASELINES", "Kind", "RunConfig", "build_grid", "check_baselines", "check_depths", "format_length",
    "parse_int_list", "parse_length", "parse_lengths", "parse_loops_list", "resolve_loops",
]
