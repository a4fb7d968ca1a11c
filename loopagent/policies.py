"""Loop policies: how many loops each model call gets.

Every model call of a run (root turns, ``llm_query``/``llm_batch`` children,
``rlm_query`` sub-runs) asks the run's policy for a loop budget, given the call's
depth and kind, an explicit ``loops=`` from the REPL code, the model's default and
maximum, and what is left of the run's loop-token budget. Non-looped models get
``None`` whatever the policy says.

| policy      | choice                                                                 |
|-------------|------------------------------------------------------------------------|
| ``fixed``   | the explicit ``loops=``, else the model's default                      |
| ``by-depth``| like fixed at depth <= 1; deeper calls get ``decay`` times fewer loops per level |
| ``budgeted``| like fixed, capped so one call (or batch) spends at most ``fraction`` of the remaining loop-tokens |
| ``adaptive``| the model's maximum with an exit threshold: exit gates stop tokens early |
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

from pydantic import BaseModel, Field

from loopagent.errors import ConfigError
from loopagent.validation import check_int

CallKind = Literal["root", "llm_query", "llm_batch", "rlm_query"]


class LoopRequest(BaseModel):
    """What a policy knows about a call."""

    depth: int = Field(description="0 for the root model's turns; calls made from depth d are at d + 1.")
    kind: CallKind
    looped: bool
    explicit: int | None = Field(default=None, description="loops= passed in REPL code.")
    default: int | None = None
    max_loops: int | None = None
    est_tokens: int = 0
    n_calls: int = 1
    remaining_loop_tokens: int | None = None


class LoopChoice(BaseModel):
    loops: int | None
    exit_threshold: float | None = None
    min_loops: int | None = Field(default=None, description="Loops every token runs before the exit gate may stop it.")


class LoopPolicy(ABC):
    name: str = "policy"
    #: Whether the policy's calls use the exit gate (every looped model of the run needs one).
    needs_exit_gate: bool = False

    def choose(self, request: LoopRequest) -> LoopChoice:
        if not request.looped:
            return LoopChoice(loops=None)
        choice = self._choose(request)
        if choice.loops is not None:
            cap = request.max_loops
            choice.loops = max(1, min(choice.loops, cap) if cap else choice.loops)
            if choice.min_loops is not None:
                choice.min_loops = min(choice.min_loops, choice.loops)
        return choice

    @abstractmethod
    def _choose(self, request: LoopRequest) -> LoopChoice: ...

    def describe(self) -> dict[str, object]:
        return {"name": self.name}


def _base(request: LoopRequest) -> int:
    return request.explicit or request.default or 1


class FixedPolicy(LoopPolicy):
    name = "fixed"

    def _choose(self, request: LoopRequest) -> LoopChoice:
        return LoopChoice(loops=_base(request))


class ByDepthPolicy(LoopPolicy):
    """Fewer loops the deeper a call sits: depth 0 and 1 use the models' defaults,
    each further level multiplies by ``decay``; ``schedule`` pins depths exactly."""

    name = "by-depth"

    def __init__(self, decay: float = 0.5, schedule: dict[int, int] | None = None) -> None:
        if not 0 < decay <= 1:
            raise ConfigError(f"by-depth decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.schedule = dict(schedule or {})

    def _choose(self, request: LoopRequest) -> LoopChoice:
        if request.explicit:
            return LoopChoice(loops=request.explicit)
        if request.depth in self.schedule:
            return LoopChoice(loops=self.schedule[request.depth])
        levels = max(0, request.depth - 1)
        return LoopChoice(loops=max(1, round(_base(request) * self.decay**levels)))

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "decay": self.decay, "schedule": self.schedule}


class BudgetedPolicy(LoopPolicy):
    """Keep a run inside ``max_loop_tokens``: a call (or a whole batch) may spend at
    most ``fraction`` of what is left, so later calls still get loops."""

    name = "budgeted"

    def __init__(self, fraction: float = 0.25) -> None:
        if not 0 < fraction <= 1:
            raise ConfigError(f"budgeted fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def _choose(self, request: LoopRequest) -> LoopChoice:
        loops = _base(request)
        if request.remaining_loop_tokens is not None and request.est_tokens > 0:
            affordable = int(
                self.fraction * request.remaining_loop_tokens // (request.est_tokens * max(1, request.n_calls))
            )
            loops = max(1, min(loops, affordable))
        return LoopChoice(loops=loops)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "fraction": self.fraction}


class AdaptivePolicy(LoopPolicy):
    """Give each call the model's maximum and let exit gates stop tokens once their
    cumulative exit probability passes ``threshold`` (per-token depth), never before
    ``min_loops`` loops. Every looped model of the run needs an exit gate: ``RLM``
    checks that when it is built.

    Example::

        RLM("hf:ckpt", loop_policy="adaptive", policy_options={"threshold": 0.8, "min_loops": 2})
    """

    name = "adaptive"
    needs_exit_gate = True

    def __init__(self, threshold: float = 0.9, min_loops: int | None = None) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ConfigError(f"adaptive threshold must be a number in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.min_loops = None if min_loops is None else check_int(min_loops, "adaptive min_loops", minimum=1)

    def _choose(self, request: LoopRequest) -> LoopChoice:
        loops = request.explicit or request.max_loops or _base(request)
        return LoopChoice(loops=loops, exit_threshold=self.threshold, min_loops=self.min_loops)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "threshold": self.threshold, "min_loops": self.min_loops}


_POLICIES: dict[str, type[LoopPolicy]] = {
    "fixed": FixedPolicy,
    "by-depth": ByDepthPolicy,
    "budgeted": BudgetedPolicy,
    "adaptive": AdaptivePolicy,
}


def get_policy(policy: str | LoopPolicy, **options: object) -> LoopPolicy:
    """A policy by name (``fixed``, ``by-depth``, ``budgeted``, ``adaptive``) or as given."""
    if isinstance(policy, LoopPolicy):
        return policy
    cls = _POLICIES.get(str(policy).replace("_", "-"))
    if cls is None:
        raise ConfigError(f"unknown loop policy {policy!r}; choose one of {', '.join(_POLICIES)}")
    try:
        return cls(**options)  # type: ignore[arg-type]
    except TypeError as e:
        raise ConfigError(f"bad options for loop policy {policy!r}: {e}") from None
