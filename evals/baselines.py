"""How each kind of configuration answers an item: strategies over the controller.

Every strategy builds an :class:`~loopagent.rlm.RLM` over the sweep's shared models
and lets it make the calls and write the trajectory, so budgets, timeouts, error
handling, answer parsing and logs are the controller's own:

- ``rlm``: the RLM with the configuration's root/child loops and depth;
- ``no_loops``: the same with root and child loops forced to 1 (the grid sets them);
- ``root_only``: one root call, no REPL (:meth:`RLM.arun_direct
  <loopagent.rlm.RLM.arun_direct>`), with the question and the first
  ``baseline_chars`` characters of the context (:func:`root_only_prompt`).

Example::

    strategies = make_strategies(root, child, {"max_iterations": 4}, baseline_chars=100_000)
    attempt = await strategies[config.kind].attempt(config, item, log_dir)
    attempt.result.answer, attempt.setup_s, attempt.run_s
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopagent.backends.base import Backend, Completion, Message
from loopagent.evals.base import Item
from loopagent.evals.grid import Kind, RunConfig
from loopagent.rlm import RLM, Result

#: Schedules clean-up work (stopping a sandbox) off an item's critical path.
Background = Callable[[Awaitable[Any]], None]


@dataclass(frozen=True)
class Attempt:
    """What a strategy did on one item: the controller's result and the runner's timings."""

    result: Result
    setup_s: float  #: sandbox start and context load
    run_s: float  #: the controller's run, sandbox start excluded


class Strategy(ABC):
    """One way to answer an item under a configuration."""

    def __init__(self, root: Backend, child: Backend, rlm_options: Mapping[str, Any]) -> None:
        self.root, self.child, self.rlm_options = root, child, dict(rlm_options)

    def rlm(self, config: RunConfig, log_dir: Path | None = None) -> RLM:
        """The controller for ``config``: the shared models seen with its loop budgets."""
        return RLM(root=_LoopView(self.root, config.root_loops), child=_LoopView(self.child, config.child_loops),
                   max_depth=config.depth or 1, log_dir=log_dir, **self.rlm_options)

    @abstractmethod
    async def attempt(self, config: RunConfig, item: Item, log_dir: Path) -> Attempt:
        """Answer ``item``; the run's trajectory goes to a file in ``log_dir``."""


class RecursiveStrategy(Strategy):
    """The RLM with its REPL over the item's context (kinds ``rlm`` and ``no_loops``)."""

    def __init__(self, root: Backend, child: Backend, rlm_options: Mapping[str, Any], *,
                 background: Background | None = None) -> None:
        super().__init__(root, child, rlm_options)
        self.background = background

    async def attempt(self, config: RunConfig, item: Item, log_dir: Path) -> Attempt:
        rlm = self.rlm(config, log_dir)
        t0 = time.perf_counter()
        # Starting the sandbox and loading the context blocks, so it runs in a thread:
        # items in flight do not wait for each other's sandboxes.
        session = await asyncio.to_thread(rlm.session, item.context)
        t1 = time.perf_counter()
        try:
            result = await session.aask(item.question)
        finally:
            # Stopping the worker and deleting its directory takes a few ms: a sweep does it in
            # the background (awaited before it returns), off the item's critical path.
            closing = asyncio.to_thread(session.close)
            if self.background is None:
                await closing
            else:
                self.background(closing)
        return Attempt(result=result, setup_s=t1 - t0, run_s=time.perf_counter() - t1)


class RootOnlyStrategy(Strategy):
    """The root model alone: one call, no REPL, the context cut to ``baseline_chars``."""

    def __init__(self, root: Backend, child: Backend, rlm_options: Mapping[str, Any], *, baseline_chars: int) -> None:
        super().__init__(root, child, rlm_options)
        self.baseline_chars = baseline_chars

    async def attempt(self, config: RunConfig, item: Item, log_dir: Path) -> Attempt:
        rlm = self.rlm(config, log_dir)
        t0 = time.perf_counter()
        context = item.context
        text = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False, default=str)
        shown = text[: self.baseline_chars]
        prompt = root_only_prompt(item.question, shown, omitted=len(text) - len(shown))
        described = {"baseline": "root_only", "root": rlm.root.name, "root_loops": config.root_loops,
                     "baseline_chars": self.baseline_chars, "shown_chars": len(shown)}
        result = await rlm.arun_direct(item.question, prompt, context=context, loops=config.root_loops,
                                       log_config=described)
        return Attempt(result=result, setup_s=0.0, run_s=time.perf_counter() - t0)


def make_strategies(root: Backend, child: Backend, rlm_options: Mapping[str, Any], *, baseline_chars: int,
                    background: Background | None = None) -> dict[Kind, Strategy]:
    """The strategy of each kind of configuration, sharing ``root`` and ``child``.

    ``background`` takes clean-up work (stopping sandboxes) for the caller to await later;
    without it each run cleans up before it returns.
    """
    recursive = RecursiveStrategy(root, child, rlm_options, background=background)
    return {"rlm": recursive, "no_loops": recursive,
            "root_only": RootOnlyStrategy(root, child, rlm_options, baseline_chars=baseline_chars)}


def root_only_prompt(question: str, context: str, *, omitted: int) -> str:
    """The root_only baseline's one prompt: the (truncated) context, then the question."""
    note = f"\n[... {omitted:,} more characters of the document were cut off ...]" if omitted > 0 else ""
    return (
        "Answer the question about the document below.\n\n"
        f"<document>\n{context}{note}\n</document>\n\n"
        f"Question: {question}\n\n"
        "Reply with the answer only, no explanation."
    )


class _LoopView(Backend):
    """A backend seen with another default loop budget (shares the model, copies nothing)."""

    def __init__(self, inner: Backend, loops: int | None) -> None:
        self.inner = inner
        self.name = inner.name
        self.looped = inner.looped
        self.max_loops = inner.max_loops
        self.default_loops = inner.validate_loops(loops) if inner.looped else None

    async def acomplete(
        self, messages: Sequence[Message], *, loops: int | None = None, max_tokens: int | None = None, **kwargs: Any
    ) -> Completion:
        if loops is None:
            loops = self.default_loops
        return await self.inner.acomplete(messages, loops=loops, max_tokens=max_tokens, **kwargs)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    # what the controller's prompt guard and sub-call cache read, as the inner model says
    @property
    def context_window(self) -> int | None:  # type: ignore[override]
        return self.inner.context_window

    @property
    def default_temperature(self) -> float | None:  # type: ignore[override]
        return self.inner.default_temperature

    @property
    def default_max_tokens(self) -> int | None:  # type: ignore[override]
        return self.inner.default_max_tokens

    def check(self) -> None:
        self.inner.check()


__all__ = ["Attempt", "RecursiveStrategy", "RootOnlyStrategy", "Strategy", "make_strategies", "root_only_prompt"]
