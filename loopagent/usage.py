"""Run-wide usage accounting: every model call, children included."""

from __future__ import annotations

from pydantic import BaseModel, Field

from loopagent.backends.base import Usage


class UsageTotals(BaseModel):
    """Sums over a set of calls."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    loop_tokens: int = Field(default=0, description="Sum over looped calls of tokens x loops executed.")
    usd: float | None = Field(default=None, description="Sum of known prices; None when no call had one.")
    wall_s: float = Field(default=0.0, description="Sum of call times (concurrent calls overlap).")
    tokens_estimated: bool = False
    cache_hits: int = Field(default=0, description="Sub-calls answered from the cache: no call, tokens, "
                            "loop-tokens or USD (not counted in calls).")

    def add(self, usage: Usage) -> None:
        self.calls += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.loop_tokens += usage.loop_tokens or 0
        if usage.usd is not None:
            self.usd = (self.usd or 0.0) + usage.usd
        self.wall_s += usage.wall_s
        self.tokens_estimated |= usage.tokens_estimated

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RunUsage(BaseModel):
    """Totals of a run, also by depth and by model.

    Example::

        result.usage.total.loop_tokens
        result.usage.by_depth[1].calls       # child calls made from the root's REPL
        result.usage.by_model["litellm:openai/gpt-4o-mini"].usd
        result.usage.total.cache_hits        # sub-calls answered from the cache
    """

    total: UsageTotals = Field(default_factory=UsageTotals)
    by_depth: dict[int, UsageTotals] = Field(default_factory=dict)
    by_model: dict[str, UsageTotals] = Field(default_factory=dict)

    def add(self, depth: int, model: str, usage: Usage) -> None:
        self.total.add(usage)
        self.by_depth.setdefault(depth, UsageTotals()).add(usage)
        self.by_model.setdefault(model, UsageTotals()).add(usage)

    def add_hit(self, depth: int, model: str) -> None:
        """A sub-call answered from the cache (it costs nothing)."""
        for totals in (self.total, self.by_depth.setdefault(depth, UsageTotals()),
                       self.by_model.setdefault(model, UsageTotals())):
            totals.cache_hits += 1
