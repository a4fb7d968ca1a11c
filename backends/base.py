"""The backend protocol: one way to call any model, looped or not.

A backend turns chat messages into a :class:`Completion` (text, usage, loop
statistics). ``acomplete`` is the one method to implement; sync, batch and
async-batch forms are derived (a backend that batches natively, like a local
looped model, overrides ``abatch``).

Loop budgets: ``loops`` is the number of recurrent-block iterations a looped
model runs per token for this call. Non-looped backends (API models) accept
only ``None`` and report ``loops=None``.
"""

from __future__ import annotations

import asyncio
import copy
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from loopagent.aio import run_sync as _run_sync
from loopagent.errors import InvalidLoopsError
from loopagent.tokens import token_counter
from loopagent.validation import check_loops

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


class LoopStats(BaseModel):
    """What a looped model did with its loop budget on one call.

    Three figures, never conflated: the budget asked for (``requested``, with the gate's
    ``min_loops`` / ``exit_threshold`` where one was on), the depth each token reached
    (``executed_mean``, ``exit_histogram``) and the work done (``computed_loop_tokens``:
    token rows that went through the core block, summed over loops, as counted by the
    backend where it ran them). ``Usage.loop_tokens`` is the computed figure wherever the
    backend can count it (``counted=True``); otherwise it is tokens x ``requested``.
    """

    requested: int = Field(description="Loop budget the call ran with (the most loops a token may run).")
    executed_mean: float = Field(description="Mean loops executed per processed token (its exit depth).")
    exit_histogram: dict[int, int] | None = Field(
        default=None, description="Tokens by the loop they exited at (adaptive exit only)."
    )
    computed_loop_tokens: int | None = Field(
        default=None, description="Token rows run through the core block, summed over loops (counted work)."
    )
    counted: bool = Field(
        default=False, description="True when computed_loop_tokens was counted where the model ran, not inferred."
    )
    min_loops: int | None = Field(default=None, description="Loops every token ran before the gate could stop it.")
    exit_threshold: float | None = Field(default=None, description="Exit-gate threshold of the call (adaptive).")


class Usage(BaseModel):
    """Cost of one model call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    loop_tokens: int | None = Field(
        default=None,
        description="Loop-tokens computed: token rows run through the core block, summed over loops (see "
        "LoopStats.counted); None for non-looped models.",
    )
    usd: float | None = Field(default=None, description="Price of the call where the provider's price is known.")
    wall_s: float = 0.0
    tokens_estimated: bool = Field(default=False, description="True when no exact tokenizer was available.")


class Completion(BaseModel):
    """One model reply."""

    text: str
    model: str
    usage: Usage = Field(default_factory=Usage)
    loops: LoopStats | None = None
    finish_reason: str | None = None
    #: The text the model read, after its chat template, where the backend renders it itself
    #: (local looped models): a template may leave out or cut parts of the messages.
    model_input: str | None = None


class Backend(ABC):
    """Base class of model backends.

    Example::

        backend = ScriptedBackend(["hello"])
        backend.complete([{"role": "user", "content": "hi"}]).text   # 'hello'
    """

    #: Spec-like name shown in usage tables and logs, e.g. "litellm:openai/gpt-5".
    name: str = "backend"
    #: Whether the model is looped (accepts a loop budget).
    looped: bool = False
    #: Largest loop budget the model accepts (looped models only).
    max_loops: int | None = None
    #: Loop budget used when a call does not choose one (looped models only).
    default_loops: int | None = None
    #: Whether calls accept ``exit_threshold`` / ``min_loops`` (a looped model with an exit gate).
    has_exit_gate: bool = False
    #: Tokens the model reads and writes per call (prompt + reply), where known; None: unknown.
    #: The controller refuses a sub-call whose prompt does not fit (a subclass may make it a property).
    context_window: int | None = None
    #: The temperature a call without ``temperature=`` decodes at: 0.0 is greedy (replies are a
    #: function of the prompt, so the controller may cache them); None: unknown (a provider's default).
    default_temperature: float | None = None
    #: The most tokens a reply may have when a call gives no ``max_tokens``; None: unknown.
    default_max_tokens: int | None = None

    @property
    def cache_identity(self) -> str:
        """What names this model's replies in the controller's sub-call cache: its ``name``,
        unless the name does not pin the replies (a backend with options beyond it says more)."""
        return self.name

    @abstractmethod
    async def acomplete(
        self, messages: Sequence[Message], *, loops: int | None = None, max_tokens: int | None = None, **kwargs: Any
    ) -> Completion:
        """Complete one conversation.

        Every backend honours ``max_tokens`` (the reply's length cap) and ``temperature=``
        (0: greedy) per call or refuses them with a clear error; the local looped backends
        refuse options they do not know, litellm hands them to the provider.
        """

    def complete(
        self, messages: Sequence[Message], *, loops: int | None = None, max_tokens: int | None = None, **kwargs: Any
    ) -> Completion:
        """Sync form of :meth:`acomplete`."""
        return _run_sync(self.acomplete(messages, loops=loops, max_tokens=max_tokens, **kwargs))

    async def abatch(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        loops: int | None | Sequence[int | None] = None,
        max_tokens: int | None = None,
        concurrency: int = 64,
        **kwargs: Any,
    ) -> list[Completion]:
        """Complete many conversations concurrently (at most ``concurrency`` at once).

        ``loops`` is one budget for all, or one per conversation.
        """
        per_call = _per_call_loops(loops, len(conversations))
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(messages: Sequence[Message], n: int | None) -> Completion:
            async with gate:
                return await self.acomplete(messages, loops=n, max_tokens=max_tokens, **kwargs)

        return list(await asyncio.gather(*(one(m, n) for m, n in zip(conversations, per_call))))

    def batch(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        loops: int | None | Sequence[int | None] = None,
        max_tokens: int | None = None,
        concurrency: int = 64,
        **kwargs: Any,
    ) -> list[Completion]:
        """Sync form of :meth:`abatch`."""
        return _run_sync(
            self.abatch(conversations, loops=loops, max_tokens=max_tokens, concurrency=concurrency, **kwargs)
        )

    def validate_loops(self, loops: int | None) -> int | None:
        """Check a loop budget; returns the budget to use (the default for None)."""
        if not self.looped:
            if loops is not None:
                raise InvalidLoopsError(
                    f"{self.name} is not a looped model; it takes no loop budget (got loops={loops!r})"
                )
            return None
        if loops is None:
            return self.default_loops
        return check_loops(loops, max_loops=self.max_loops, model=self.name)

    def with_default_loops(self, loops: int) -> Backend:
        """A shallow copy of this backend whose calls default to ``loops``; ``self`` is unchanged.

        The copy shares the model (and anything loaded) with this backend. Example::

            deep = child.with_default_loops(8)
            deep.default_loops, child.default_loops   # (8, 4)
        """
        budget = self.validate_loops(loops)
        clone = copy.copy(self)
        clone.default_loops = budget
        return clone

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for this model (tiktoken by default)."""
        return token_counter()[0](text)

    def for_role(self, role: str) -> Backend:
        """The backend to use as an RLM's ``"root"`` or ``"child"``; a backend that
        bundles role-specific models (the embedded default) returns one of them."""
        return self

    def check(self) -> None:
        """Raise a specific error if the backend cannot work (missing key, unreachable
        server); called before a run starts. Cheap and offline where possible."""

    def close(self) -> None:
        """Release resources (servers, engines, clients)."""


def _per_call_loops(loops: int | None | Sequence[int | None], n: int) -> list[int | None]:
    # Any scalar (None, 4, a bad 2.5 or "4") is one budget for all: a bad one is then
    # reported by validate_loops as a bad budget, not as a failed iteration.
    if loops is None or isinstance(loops, (str, bytes)) or not isinstance(loops, Iterable):
        return [loops] * n  # type: ignore[list-item]
    per_call = list(loops)
    if len(per_call) != n:
        raise InvalidLoopsError(f"got {len(per_call)} loop budgets for {n} conversations")
    return per_call


def messages_text(messages: Sequence[Message]) -> str:
    """All message contents joined; what prompt tokens are counted over."""
    return "\n".join(m.get("content", "") for m in messages)


def loop_usage(
    prompt_tokens: int, completion_tokens: int, loops: int | None, executed_mean: float | None = None
) -> int | None:
    """Loop-tokens of a call: tokens times the loops they ran through."""
    if loops is None:
        return None
    per_token = executed_mean if executed_mean is not None else float(loops)
    return int(round((prompt_tokens + completion_tokens) * per_token))
