"""The RLM controller: a root model writes REPL code over a long context and
calls child models on pieces, each call with its own loop budget.

One :class:`RLM` holds the configuration; every ``run`` builds a tree of runs
(the root run, and a child run per ``rlm_query``) that share one budget, one
usage account and one trajectory log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loopagent import prompts
from loopagent.aio import run_sync as _run_sync
from loopagent.backends.base import Backend, Completion
from loopagent.cache import CacheKey, DiskCache, SubCallCache
from loopagent.callbacks import CallbackDispatcher, check_callbacks
from loopagent.compaction import HISTORY_VARIABLE, Compactor
from loopagent.environments import (
    ContextInfo,
    Environment,
    ExecResult,
    SandboxError,
    SandboxLimits,
    SandboxREPL,
    VariableError,
    describe_context,
)
from loopagent.environments.base import ContextLike
from loopagent.errors import BackendError, BudgetExceededError, ConfigError, SubCallError
from loopagent.guard import OversizePolicy, check_oversize, prompt_budget, split_prompt, too_long
from loopagent.models import model as build_model
from loopagent.parsing import find_code_blocks, find_final_in_text, strip_code_blocks
from loopagent.policies import CallKind, LoopChoice, LoopPolicy, LoopRequest, get_policy
from loopagent.stream import RunStream, extra_listeners
from loopagent.subcalls import CallSettings, build_models, pick_model
from loopagent.tools import Tool, Tools, build_tools, describe_error, shown, shown_call
from loopagent.trajectory import (
    Compaction,
    FinalAnswer,
    LimitHit,
    ReplExec,
    RootTurn,
    RunEnd,
    RunStart,
    SubCall,
    SubCallStart,
    ToolCall,
    TrajectoryWriter,
)
from loopagent.usage import RunUsage
from loopagent.validation import check_int, check_loops

#: Makes a run's REPL from the sandbox limits: ``SandboxREPL`` itself, or any class or
#: function returning an :class:`~loopagent.environments.Environment`.
EnvironmentFactory = Callable[[SandboxLimits], Environment]


class Budget(BaseModel):
    """Limits over a whole run, children included. None means unlimited."""

    model_config = ConfigDict(extra="forbid")

    max_loop_tokens: int | None = Field(default=None, gt=0, description="Sum of tokens x loops over looped calls.")
    max_tokens: int | None = Field(default=None, gt=0, description="Prompt + completion tokens over all calls.")
    max_usd: float | None = Field(default=None, gt=0, description="Spend where the provider's prices are known.")
    timeout_s: float | None = Field(default=None, gt=0, description="Wall time of the run.")


class Result(BaseModel):
    """The outcome of a run."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    answer: str | None = Field(description="The final answer, or the best partial answer when a limit ended the run.")
    finished: bool = Field(description="True when the model gave a final answer itself.")
    reason: str = Field(description="'final', or the limit that ended the run: max_iterations, max_loop_tokens, "
                        "max_tokens, max_usd, timeout, consecutive_errors, model_error.")
    detail: str = ""
    usage: RunUsage
    iterations: int
    wall_s: float
    run_id: str
    trajectory: Path | None = Field(default=None, description="The JSONL log of the run, if logging is on.")


class _RunTree:
    """What all runs started by one ``run()`` share."""

    def __init__(self, rlm: RLM, writer: TrajectoryWriter) -> None:
        self.rlm = rlm
        self.writer = writer
        self.usage = RunUsage()
        self.start = time.monotonic()
        self.stop: BudgetExceededError | None = None
        self.calls = asyncio.Semaphore(rlm.concurrency)
        #: identical greedy sub-calls of this run tree are answered once (None: cache=False)
        self.cache = SubCallCache(rlm._disk_cache) if rlm.cache is not False else None
        # the tasks serving host calls (llm_query, rlm_query...) of REPL cells: a cancelled run
        # cancels them, since the cell threads waiting on them are not the run's own tasks
        self.host_tasks: set[asyncio.Task[Any]] = set()

    def cancel(self) -> None:
        """The run was cancelled: no model call from now on, and every host call still going stops."""
        if self.stop is not None and self.stop.reason == "cancelled":
            return  # once: a second cancel would cut the host calls' own cleanup short
        self.stop = BudgetExceededError("cancelled", "the run was cancelled")
        current = asyncio.current_task()
        for task in list(self.host_tasks):
            if task is not current:
                task.cancel()

    async def settle(self, timeout_s: float = 10.0) -> None:
        """Wait (a bounded time) for the cancelled host calls, so that child runs log their end
        and close their REPLs before the log closes."""
        current = asyncio.current_task()
        pending = [t for t in self.host_tasks if t is not current]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    def remaining_s(self) -> float | None:
        timeout = self.rlm.budget.timeout_s
        return None if timeout is None else timeout - (time.monotonic() - self.start)

    def remaining_loop_tokens(self) -> int | None:
        cap = self.rlm.budget.max_loop_tokens
        return None if cap is None else cap - self.usage.total.loop_tokens

    def check(self) -> None:
        """Raise if a limit is spent (the call that crosses a limit may finish; the next may not)."""
        if self.stop is not None:
            raise self.stop
        b, t = self.rlm.budget, self.usage.total
        hit = None
        if b.max_loop_tokens is not None and t.loop_tokens >= b.max_loop_tokens:
            hit = ("max_loop_tokens", f"{t.loop_tokens:,} loop-tokens used of {b.max_loop_tokens:,}")
        elif b.max_tokens is not None and t.total_tokens >= b.max_tokens:
            hit = ("max_tokens", f"{t.total_tokens:,} tokens used of {b.max_tokens:,}")
        elif b.max_usd is not None and (t.usd or 0.0) >= b.max_usd:
            hit = ("max_usd", f"${t.usd:.4f} spent of ${b.max_usd:.4f}")
        elif (left := self.remaining_s()) is not None and left <= 0:
            hit = ("timeout", f"the run passed its time limit of {b.timeout_s:g} s")
        if hit:
            self.stop = BudgetExceededError(*hit)
            raise self.stop


class _Run:
    """One level of the tree: a root model, its REPL and its conversation."""

    def __init__(
        self,
        tree: _RunTree,
        env: Environment,
        *,
        depth: int,
        root: Backend,
        parent: _Run | None = None,
        explicit_loops: int | None = None,
        earlier: list[tuple[str, str | None]] | None = None,
    ) -> None:
        self.tree = tree
        self.rlm = tree.rlm
        self.env = env
        self.depth = depth
        self.root = root
        self.parent = parent
        self.explicit_loops = explicit_loops
        self.earlier = earlier or []
        self.run_id = uuid.uuid4().hex[:12]
        self.tools = tree.rlm.tools if depth == 0 else tree.rlm.child_tools
        self.usage = RunUsage()
        self.final: tuple[str, str] | None = None  # (answer, source)
        self.answer_chars: int | None = None  # the length of an answer that was cut, else None
        self.turns = 0  # root turns logged
        self.compactor = Compactor.for_run(root, fraction=self.rlm.compact_at, keep_turns=self.rlm.compact_keep_turns,
                                           window=self.rlm.root_context_window if depth == 0 else None)

    # -- bookkeeping -----------------------------------------------------------------
    def _log(self, cls: type, **fields: Any) -> None:
        self.tree.writer.write(
            cls(run_id=self.run_id, parent_id=self.parent.run_id if self.parent else None, depth=self.depth, **fields)
        )

    def _account(self, depth: int, completion: Completion) -> None:
        self.tree.usage.add(depth, completion.model, completion.usage)
        run: _Run | None = self
        while run is not None:
            run.usage.add(depth, completion.model, completion.usage)
            run = run.parent

    def _account_hit(self, depth: int, model: str) -> None:
        self.tree.usage.add_hit(depth, model)
        run: _Run | None = self
        while run is not None:
            run.usage.add_hit(depth, model)
            run = run.parent

    async def _call(
        self, backend: Backend, messages: list[dict[str, str]], choice: LoopChoice, depth: int,
        settings: CallSettings | None = None,
    ) -> Completion:
        self.tree.check()
        kwargs: dict[str, Any] = {}
        if choice.exit_threshold is not None:
            kwargs["exit_threshold"] = choice.exit_threshold
        if choice.min_loops is not None:
            kwargs["min_loops"] = choice.min_loops
        max_tokens = self.rlm.max_tokens_per_call
        if settings is not None:
            max_tokens = settings.max_tokens if settings.max_tokens is not None else max_tokens
            if settings.temperature is not None:
                kwargs["temperature"] = settings.temperature
        call = backend.acomplete(messages, loops=choice.loops, max_tokens=max_tokens, **kwargs)
        left = self.tree.remaining_s()
        try:
            completion = await (asyncio.wait_for(call, left) if left is not None else call)
        except TimeoutError:
            self.tree.stop = BudgetExceededError("timeout",
                                                 f"the run passed its time limit of {self.rlm.budget.timeout_s:g} s")
            raise self.tree.stop from None
        self._account(depth, completion)
        return completion

    def _choose(self, backend: Backend, kind: CallKind, depth: int, explicit: int | None, est_tokens: int,
                n: int = 1) -> LoopChoice:
        if explicit is not None:
            check_loops(explicit, max_loops=backend.max_loops if backend.looped else None, model=backend.name)
        return self.rlm.policy.choose(
            LoopRequest(
                depth=depth, kind=kind, looped=backend.looped, explicit=explicit, default=backend.default_loops,
                max_loops=backend.max_loops, est_tokens=est_tokens, n_calls=n,
                remaining_loop_tokens=self.tree.remaining_loop_tokens(),
            )
        )

    def _log_turn(self, iteration: int, prompt: str, completion: Completion, choice: LoopChoice) -> None:
        self.turns += 1
        clip = self.tree.writer.clip
        self._log(RootTurn, iteration=iteration, prompt=clip(prompt) or "", completion=clip(completion.text) or "",
                  model=completion.model, loops_chosen=choice.loops,
                  loops_executed=completion.loops.executed_mean if completion.loops else None,
                  usage=completion.usage.model_dump(), model_input=clip(completion.model_input))

    def _capped(self, answer: str) -> str:
        """``answer`` cut to ``max_answer_chars`` and marked where it was cut.

        Cut as soon as an answer arrives, so a huge one is held once and never copied into
        the log or the result (a 600 MB ``FINAL`` made the parent hold 2.4 GB).
        """
        limit = self.rlm.max_answer_chars
        if limit is None or len(answer) <= limit:
            return answer
        self.answer_chars = len(answer)
        return answer[:limit] + (f"\n... [answer cut: {len(answer) - limit:,} more characters over "
                                 f"max_answer_chars={limit:,}]")

    def _record_final(self, answer: str, source: str) -> str:
        """Keep the final answer (capped); returns what ``FINAL`` tells the code."""
        self.final = (self._capped(answer), source)
        if self.answer_chars is None:
            return "final answer recorded"
        return (f"final answer recorded, cut to its first {self.rlm.max_answer_chars:,} of {self.answer_chars:,} "
                "characters (max_answer_chars): give a shorter answer, e.g. a summary")

    # -- host functions ----------------------------------------------------------------
    def _register(self) -> None:
        self.final = None
        self.answer_chars = None
        env = self.env

        async def llm_query(prompt: str, loops: int | None = None, model: str | None = None,
                            max_tokens: int | None = None, temperature: float | None = None) -> str:
            settings = CallSettings.parse(max_tokens=max_tokens, temperature=temperature, fn="llm_query")
            reply = (await self._children([prompt], loops, "llm_query", model=model, settings=settings))[0]
            if isinstance(reply, Exception):
                raise reply
            return reply

        async def llm_batch(prompts_: list[str], loops: int | None = None, model: str | None = None,
                            max_tokens: int | None = None, temperature: float | None = None) -> list[str]:
            settings = CallSettings.parse(max_tokens=max_tokens, temperature=temperature, fn="llm_batch")
            replies = await self._children(_str_list(prompts_, "llm_batch"), loops, "llm_batch", model=model,
                                           settings=settings)
            return [r if isinstance(r, str) else f"[error: {_error_text(r)}]" for r in replies]

        async def rlm_query(prompt: str, context: Any = None, loops: int | None = None,
                            model: str | None = None) -> str:
            reply = (await self._subruns([prompt], [context], loops, model=model))[0]
            if isinstance(reply, Exception):
                raise reply
            return reply

        async def rlm_batch(prompts_: list[str], contexts: list[Any] | None = None,
                            loops: int | None = None, model: str | None = None) -> list[str]:
            prompts_ = _str_list(prompts_, "rlm_batch")
            if contexts is None:
                contexts = [None] * len(prompts_)
            if not isinstance(contexts, list) or len(contexts) != len(prompts_):
                raise TypeError("rlm_batch(): contexts must be a list with one context per prompt")
            replies = await self._subruns(prompts_, contexts, loops, model=model)
            return [r if isinstance(r, str) else f"[error: {_error_text(r)}]" for r in replies]

        def FINAL(answer: Any) -> str:  # noqa: N802 - the RLM convention
            return self._record_final(answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False),
                                      "FINAL")

        def FINAL_VAR(name: str) -> str:  # noqa: N802
            if not isinstance(name, str):
                raise TypeError("FINAL_VAR() takes the variable's name as a string, e.g. FINAL_VAR('answer')")
            return self._record_final(env.get_variable(name, as_text=True), "FINAL_VAR")

        for name, fn in (("llm_query", self._tracked(llm_query)), ("llm_batch", self._tracked(llm_batch)),
                         ("rlm_query", self._tracked(rlm_query)), ("rlm_batch", self._tracked(rlm_batch)),
                         ("FINAL", FINAL), ("FINAL_VAR", FINAL_VAR)):
            env.register(name, fn)
        for tool in self.tools.values():
            env.register(tool.name, self._tracked(self._tool_function(tool)))

    def _tool_function(self, tool: Tool) -> Callable[..., Any]:
        """The host function behind a tool: budget and time limit, the call, its log event."""

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.tree.check()
            limit = self.tree.writer.text_limit
            start = time.perf_counter()
            value: Any = None
            error: BaseException | None = None
            try:
                # the run's time limit holds inside a tool too (a sync one keeps its thread until it returns)
                async with asyncio.timeout(self.tree.remaining_s()) as deadline:
                    value = await tool.invoke(args, kwargs, max_result_chars=self.rlm.sandbox.max_message_bytes)
            except TimeoutError as e:
                error = e
                if deadline.expired():
                    error = self.tree.stop = BudgetExceededError(
                        "timeout", f"the run passed its time limit of {self.rlm.budget.timeout_s:g} s")
            except Exception as e:
                error = e
            except (SystemExit, GeneratorExit) as e:  # e.g. an argparse-based tool given bad arguments
                # the tool's failure, not a reason to stop this process: the model reads it
                error = RuntimeError(f"{tool.name}() raised {type(e).__name__}"
                                     + (f": {e}" if str(e) else "") + " (it tried to exit)")
            clip = self.tree.writer.clip
            self._log(ToolCall, name=tool.name, arguments=clip(shown_call(args, kwargs, limit)) or "",
                      result=shown(value, limit) if error is None else None,
                      error=clip(describe_error(error)) if error is not None else None,
                      error_type=type(error).__name__ if error is not None else None,
                      duration_s=time.perf_counter() - start)
            if error is not None:
                raise error
            return value

        call.__name__ = tool.name
        return call

    def _tracked(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """``fn`` run as a task the tree can cancel (see :meth:`_RunTree.cancel`)."""
        tasks = self.tree.host_tasks

        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            if task is not None:
                tasks.add(task)
            try:
                return await fn(*args, **kwargs)
            finally:
                tasks.discard(task)  # type: ignore[arg-type]

        return call

    async def _children(self, prompts_: Sequence[str], loops: int | None, kind: CallKind, *,
                        model: str | None = None, settings: CallSettings | None = None) -> list[str | Exception]:
        """Plain child-model calls (the default child, or the named ``model``), concurrent up to
        the run's bound; each guarded against the model's context window and cached when greedy."""
        for p in prompts_:
            if not isinstance(p, str):
                raise TypeError(f"{kind}(): prompts must be str, got {type(p).__name__}")
        alias, backend = pick_model(self.rlm.models, self.rlm.child, model, kind)
        settings = settings or CallSettings()
        depth = self.depth + 1
        n = len(prompts_)

        async def one(index: int, prompt: str) -> str | Exception:
            tokens = backend.count_tokens(prompt)
            choice = self._choose(backend, kind, depth, loops, tokens, n)
            entry: dict[str, Any] = dict(kind=kind, index=index, model=backend.name, alias=alias,
                                         settings=settings.logged(), prompt=self.tree.writer.clip(prompt),
                                         loops_requested=loops, loops_chosen=choice.loops)
            try:
                self.tree.check()  # as _call does first: no start is logged for a call a limit stops
                # one start per sub-call, paired with its SubCall (a cache hit, a refusal or a split included)
                self._log(SubCallStart, kind=kind, index=index, model=backend.name, loops_chosen=choice.loops)
                reply = await self._subcall(backend, prompt, tokens, choice, depth, settings, kind)
            except BudgetExceededError:
                raise  # a spent budget stops the whole run, not just this call
            except SubCallError as e:  # refused before it was sent (the guard): the model reads why
                self._log(SubCall, error=f"{type(e).__name__}: {e}", **entry)
                return e
            except Exception as e:
                # Any failure of one call (a backend may raise more than BackendError) costs that
                # call only: its siblings' replies come back. CancelledError and KeyboardInterrupt
                # are BaseExceptions and pass.
                error = e if isinstance(e, BackendError) else BackendError(
                    f"{backend.name} failed: {type(e).__name__}: {e}")
                self._log(SubCall, error=str(error), **entry)
                return error
            self._log(SubCall, response=self.tree.writer.clip(reply.text), usage=reply.usage,
                      loops_executed=reply.loops_executed, exit_histogram=reply.exit_histogram, cached=reply.cached,
                      parts=reply.parts, **entry)
            return reply.text

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts_))))

    async def _subcall(self, backend: Backend, prompt: str, tokens: int, choice: LoopChoice, depth: int,
                       settings: CallSettings, kind: CallKind) -> _Reply:
        """One plain sub-call of ``tokens`` prompt tokens, through the guard (a prompt over the
        model's window is refused, or split with ``oversize="split"``) and the cache."""
        max_tokens = settings.max_tokens if settings.max_tokens is not None else self.rlm.max_tokens_per_call
        budget = prompt_budget(backend, max_tokens, kind)
        if budget is None or tokens <= budget:
            return await self._ask(backend, prompt, choice, depth, settings, max_tokens)
        if self.rlm.oversize == "error":
            raise too_long(backend, prompt, tokens, budget, kind)
        pieces = [p for p in split_prompt(prompt, budget, backend.count_tokens) if p.strip()]
        if not pieces:  # nothing but white space: nothing to ask a piece of
            raise too_long(backend, prompt, tokens, budget, kind)
        outcomes = await asyncio.gather(*(self._ask(backend, p, choice, depth, settings, max_tokens) for p in pieces),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return _Reply.joined(outcomes)  # type: ignore[arg-type]

    async def _ask(self, backend: Backend, prompt: str, choice: LoopChoice, depth: int, settings: CallSettings,
                   max_tokens: int | None) -> _Reply:
        """One model call, or its cached reply when the call is greedy and the cache is on."""
        made: list[Completion] = []

        async def call() -> str:
            async with self.tree.calls:
                completion = await self._call(backend, [{"role": "user", "content": prompt}], choice, depth, settings)
            made.append(completion)
            return completion.text

        temperature = settings.temperature if settings.temperature is not None else backend.default_temperature
        cache = self.tree.cache
        if cache is None or temperature is None or temperature != 0:
            await call()
            return _Reply.of(made[0])
        key = CacheKey(model=backend.cache_identity, prompt=prompt, loops=choice.loops,
                       exit_threshold=choice.exit_threshold, min_loops=choice.min_loops, temperature=0.0,
                       max_tokens=max_tokens if max_tokens is not None else backend.default_max_tokens)
        self.tree.check()  # no call after a limit, not even a free one
        text, source = await cache.get_or_call(key, call)
        if source == "call":
            return _Reply.of(made[0])
        self._account_hit(depth, backend.name)
        return _Reply(text=text, cached=True, usage={"calls": 0, "cache_hits": 1})

    async def _subruns(self, prompts_: Sequence[str], contexts: Sequence[Any], loops: int | None, *,
                       model: str | None = None) -> list[str | Exception]:
        """Child RLMs with their own REPLs, whose root is the named ``model`` (default: the
        child); at the depth limit, plain calls with the context inlined. A child that fails
        (e.g. its context is refused) is that item's error: its siblings run to their end."""
        if self.depth + 1 >= self.rlm.max_depth:
            inlined = [p if c is None else f"{p}\n\nContext:\n{c if isinstance(c, str) else json.dumps(c)}"
                       for p, c in zip(prompts_, contexts)]
            return await self._children(inlined, loops, "rlm_query", model=model)
        alias, backend = pick_model(self.rlm.models, self.rlm.child, model, "rlm_query")
        if loops is not None:
            self._choose(backend, "rlm_query", self.depth + 1, loops, 0)  # validate early
        gate = asyncio.Semaphore(self.rlm.concurrency)

        async def one(index: int, prompt: str, context: Any) -> str | Exception:
            entry: dict[str, Any] = dict(kind="rlm_query", index=index, model=backend.name, alias=alias,
                                         prompt=self.tree.writer.clip(prompt), loops_requested=loops)
            async with gate:
                self._log(SubCallStart, kind="rlm_query", index=index, model=backend.name)
                try:
                    env, info = await self.rlm._aopen(context)
                except BudgetExceededError:
                    raise
                except Exception as e:  # a refused context fails this child only
                    self._log(SubCall, error=f"{type(e).__name__}: {e}", **entry)
                    return e
                try:
                    child = _Run(self.tree, env, depth=self.depth + 1, root=backend, parent=self,
                                 explicit_loops=loops)
                    result = await child.execute(prompt, info)
                finally:
                    await _aclose(env)
            self._log(SubCall, response=self.tree.writer.clip(result.answer), child_run_id=child.run_id,
                      usage=child.usage.total.model_dump(), **entry)
            if result.answer is None:
                return f"[no answer: the child run ended with {result.reason}: {result.detail}]"
            return result.answer

        return list(await asyncio.gather(*(one(i, p, c) for i, (p, c) in enumerate(zip(prompts_, contexts)))))

    # -- the loop ----------------------------------------------------------------------
    def _system_prompt(self, info: ContextInfo) -> str:
        b, rlm = self.rlm.budget, self.rlm
        limits = [f"{rlm.max_iterations} turns"]
        if b.max_loop_tokens:
            limits.append(f"{b.max_loop_tokens:,} loop-tokens for all calls")
        if b.max_tokens:
            limits.append(f"{b.max_tokens:,} tokens")
        if b.max_usd:
            limits.append(f"${b.max_usd:g}")
        if b.timeout_s:
            limits.append(f"{b.timeout_s:g} s")
        return prompts.system_prompt(
            context=info, max_output=rlm.sandbox.max_output_chars,
            can_recurse=self.depth + 1 < rlm.max_depth, child_looped=rlm.child.looped,
            child_default_loops=rlm.child.default_loops, child_max_loops=rlm.child.max_loops,
            limits=limits, earlier=self.earlier, tools=[t.describe() for t in self.tools.values()],
            child_tools=sorted(rlm.child_tools) if self.depth + 1 < rlm.max_depth else None,
            child_window=rlm.child.context_window, oversize=rlm.oversize, cache=rlm.cache is not False,
            models=[prompts.NamedModel(name=n, spec=b.name, looped=b.looped, default_loops=b.default_loops,
                                       max_loops=b.max_loops, context_window=b.context_window)
                    for n, b in rlm.models.items()],
            history_variable=HISTORY_VARIABLE if self.compactor is not None and _can_set(self.env) else None,
        )

    async def execute(self, query: str, info: ContextInfo) -> Result:
        """Run the loop over this run's environment, whose context ``info`` describes.

        A cancelled run (a stream left early) stops the host calls still going, logs a
        ``cancelled`` limit and its end, and re-raises.
        """
        start = time.monotonic()
        try:
            return await self._loop(query, info, start)
        except asyncio.CancelledError:
            self.tree.cancel()
            if self.parent is None:
                with contextlib.suppress(asyncio.CancelledError):  # cancelled again: it is re-raised below anyway
                    await self.tree.settle()
            self._finish("cancelled", "the run was cancelled before it ended", iterations=self.turns, start=start)
            raise

    async def _loop(self, query: str, info: ContextInfo, start: float) -> Result:
        self._register()
        system = self._system_prompt(info)
        self._log(RunStart, query=query, context=info.summary(), config=self.rlm.config(),
                  system_prompt=system)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": query}]
        reason, detail, errors, iterations = (
            "max_iterations", f"no final answer after {self.rlm.max_iterations} turns", 0, 0
        )
        last_text = ""
        for iteration in range(self.rlm.max_iterations):
            iterations = iteration + 1
            try:
                if iteration and self.compactor is not None:
                    messages = await self._compact(messages, iteration)
                choice = self._choose(self.root, "root", self.depth, self.explicit_loops,
                                      self.root.count_tokens(messages[-1]["content"]) if iteration else 0)
                completion = await self._call(self.root, messages, choice, self.depth)
            except BudgetExceededError as e:
                reason, detail = e.reason, e.detail
                break
            except BackendError as e:
                reason, detail = "model_error", str(e)
                break
            text = completion.text
            clip = self.tree.writer.clip
            self._log_turn(iteration, messages[-1]["content"], completion, choice)
            if strip_code_blocks(text):
                last_text = strip_code_blocks(text)
            blocks = find_code_blocks(text)
            if not blocks:
                reply = self._final_from_text(text)
                if reply is None:
                    break
                errors += 1
                messages += [{"role": "assistant", "content": text}, {"role": "user", "content": reply}]
            else:
                outputs, had_error = [], False
                for code in blocks:
                    result = await self.env.aexecute(code)
                    self._log(ReplExec, iteration=iteration, code=clip(code) or "", stdout=clip(result.stdout) or "",
                              error=clip(result.error),
                              error_type=result.error_type, duration_s=result.duration_s,
                              host_calls=result.host_calls, restarted=result.restarted)
                    if result.restarted and self.compactor is not None and self.compactor.summarized:
                        await self._set_history(self.compactor.history(messages))  # the new worker lacks it
                    outputs.append(result.text)
                    had_error = not result.ok
                    if self.final is not None or self.tree.stop is not None or not result.ok:
                        break
                if self.final is not None:
                    break
                errors = errors + 1 if had_error else 0
                messages += [{"role": "assistant", "content": text},
                             {"role": "user", "content": prompts.repl_feedback(outputs)}]
            if self.tree.stop is not None:
                reason, detail = self.tree.stop.reason, self.tree.stop.detail
                break
            if errors >= self.rlm.max_consecutive_errors:
                reason, detail = "consecutive_errors", f"{errors} turns in a row ended in an error or without code"
                break
        if self.final is not None:
            reason, detail = "final", ""
        elif reason == "max_iterations":
            await self._force_final(messages)
        return self._finish(reason, detail, iterations=iterations, start=start, last_text=last_text)

    async def _compact(self, messages: list[dict[str, str]], iteration: int) -> list[dict[str, str]]:
        """``messages`` with older turns folded into notes, when they reach the threshold (see
        :mod:`loopagent.compaction`); the summary call is a root call like any other. A model
        error leaves the messages as they are (logged); a spent budget raises."""
        assert self.compactor is not None
        plan = self.compactor.plan(messages)
        if plan is None:
            if self.compactor.summarized:  # `history` holds every message before this turn
                await self._set_history(self.compactor.history(messages))
            return messages
        choice = self._choose(self.root, "root", self.depth, self.explicit_loops,
                              self.compactor.tokens(plan.request))
        entry: dict[str, Any] = dict(iteration=iteration, turns_folded=plan.turns, window=self.compactor.window,
                                     tokens_before=plan.tokens_before, model=self.root.name,
                                     loops_chosen=choice.loops)
        try:
            completion = await self._call(self.root, plan.request, choice, self.depth)
        except BackendError as e:
            self._log(Compaction, turns_folded_total=len(self.compactor.folded) // 2,
                      tokens_after=plan.tokens_before, error=f"the summary call failed: {e}",
                      **{**entry, "turns_folded": 0})
            return messages
        variable = await self._set_history(self.compactor.history(messages))
        compacted = self.compactor.apply(messages, plan, completion.text, variable)
        self._log(Compaction, turns_folded_total=len(self.compactor.folded) // 2,
                  tokens_after=self.compactor.tokens(compacted), summary=self.tree.writer.clip(completion.text) or "",
                  usage=completion.usage.model_dump(), history_variable=variable, **entry)
        return compacted

    async def _set_history(self, history: list[dict[str, Any]]) -> str | None:
        """Put every message of the run in the REPL; the variable's name, or None where the
        environment cannot set variables or refused this one."""
        setter = getattr(self.env, "set_variable", None)
        if not callable(setter):
            return None
        try:
            await asyncio.to_thread(setter, HISTORY_VARIABLE, history)
        except (SandboxError, ValueError, TypeError):
            return None
        return HISTORY_VARIABLE

    def _final_from_text(self, text: str) -> str | None:
        """Record a final answer written as text (a reply without code); else return what
        to tell the model: why its FINAL could not be taken, or that it wrote neither."""
        found = find_final_in_text(text)
        if found is None:
            return prompts.NO_CODE
        kind, value = found
        if kind == "unreadable":
            return prompts.final_unreadable(value)
        if kind == "FINAL_VAR":
            try:
                self._record_final(self.env.get_variable(value, as_text=True), "FINAL_VAR")
            except VariableError as e:
                return prompts.final_var_missing(value) if e.missing else prompts.final_var_unreadable(value, str(e))
            except SandboxError as e:  # the worker failed while reading it (it is replaced on the next cell)
                return prompts.final_var_unreadable(value, str(e))
        else:
            self._record_final(value, "text")
        return None

    async def _force_final(self, messages: list[dict[str, str]]) -> None:
        """Out of turns: ask once for a final answer (if the budget allows)."""
        try:
            choice = self._choose(self.root, "root", self.depth, self.explicit_loops, 0)
            completion = await self._call(self.root, messages + [{"role": "user", "content": prompts.OUT_OF_TURNS}],
                                          choice, self.depth)
        except (BudgetExceededError, BackendError):
            return
        found = find_final_in_text(completion.text)
        if found and found[0] == "FINAL":
            self._record_final(found[1], "forced")
        elif strip_code_blocks(completion.text):
            self._record_final(strip_code_blocks(completion.text), "forced")

    def _answer(self, last_text: str, reason: str) -> tuple[str | None, bool]:
        if self.final is not None:
            answer, source = self.final
            self._log(FinalAnswer, answer=answer, source=source)  # type: ignore[arg-type]
            return answer, source in ("FINAL", "FINAL_VAR", "text")
        if last_text:
            last_text = self._capped(last_text)
            self._log(FinalAnswer, answer=last_text, source="partial")
            return last_text, False
        return None, False

    # -- a run without a REPL ---------------------------------------------------------
    async def execute_direct(self, query: str, prompt: str, *, context: ContextLike = None,
                             log_config: dict[str, Any] | None = None) -> Result:
        """One root call on ``prompt`` as the only message, no REPL; see :meth:`RLM.arun_direct`."""
        start = time.monotonic()
        self._log(RunStart, query=query, context=describe_context(context).summary(),
                  config=self.rlm.config() if log_config is None else log_config)
        reason, detail = "final", ""
        try:
            choice = self._choose(self.root, "root", self.depth, self.explicit_loops, 0)
            completion = await self._call(self.root, [{"role": "user", "content": prompt}], choice, self.depth)
        except BudgetExceededError as e:
            reason, detail = e.reason, e.detail
        except BackendError as e:
            reason, detail = "model_error", str(e)
        else:
            text = completion.text
            self._log_turn(0, prompt, completion, choice)
            # With nothing to run, the reply is the answer: FINAL(...) where it gives one, else its prose.
            found = find_final_in_text(text)
            answer = found[1] if found and found[0] == "FINAL" else (strip_code_blocks(text) or text.strip())
            self._record_final(answer, "text")
        return self._finish(reason, detail, iterations=1, start=start)

    def _finish(self, reason: str, detail: str, *, iterations: int, start: float, last_text: str = "") -> Result:
        """Log how the run ended (limit, final answer, totals) and build its result."""
        if reason != "final":
            self._log(LimitHit, reason=reason, detail=detail)
        elif self.answer_chars is not None:
            detail = (f"the answer was cut to {self.rlm.max_answer_chars:,} of {self.answer_chars:,} characters "
                      "(max_answer_chars)")
        answer, finished = self._answer(last_text, reason)
        wall = time.monotonic() - start
        # The final event holds the answer (capped); the end event repeats it clipped like any logged text.
        self._log(RunEnd, answer=self.tree.writer.clip(answer), finished=finished, reason=reason,
                  iterations=iterations, wall_s=wall, usage=self.usage.model_dump())
        return Result(answer=answer, finished=finished, reason=reason, detail=detail, usage=self.usage,
                      iterations=iterations, wall_s=wall, run_id=self.run_id, trajectory=self.tree.writer.path)


class _Reply(BaseModel):
    """What one plain sub-call gave: its text and what to log about it."""

    text: str
    usage: dict[str, Any] = Field(default_factory=dict)
    loops_executed: float | None = None
    exit_histogram: dict[int, int] | None = None
    cached: bool = False
    parts: int | None = None

    @classmethod
    def of(cls, completion: Completion) -> _Reply:
        stats = completion.loops
        return cls(text=completion.text, usage=completion.usage.model_dump(),
                   loops_executed=stats.executed_mean if stats else None,
                   exit_histogram=stats.exit_histogram if stats else None)

    @classmethod
    def joined(cls, pieces: list[_Reply]) -> _Reply:
        """The pieces of a split prompt as one reply: answers joined by a blank line, usage summed."""
        usage: dict[str, Any] = {}
        for piece in pieces:
            for name, value in piece.usage.items():
                if isinstance(value, bool):
                    usage[name] = usage.get(name, False) or value
                elif isinstance(value, (int, float)):
                    usage[name] = (usage.get(name) or 0) + value
                else:  # None: unknown for this piece (a price, a non-looped model's loop-tokens)
                    usage.setdefault(name, value)
        histogram: dict[int, int] = {}
        for piece in pieces:
            for depth, count in (piece.exit_histogram or {}).items():
                histogram[depth] = histogram.get(depth, 0) + count
        # the calls actually made (a trajectory reader counts a sub-call without "calls" as one)
        usage["calls"] = sum(not p.cached for p in pieces)
        usage["cache_hits"] = sum(p.cached for p in pieces)
        executed = [p.loops_executed for p in pieces if p.loops_executed is not None]
        return cls(text="\n\n".join(p.text for p in pieces), usage=usage,
                   loops_executed=sum(executed) / len(executed) if executed else None,
                   exit_histogram=histogram or None, cached=all(p.cached for p in pieces), parts=len(pieces))


def _error_text(error: Exception) -> str:
    """A failed call as an llm_batch item shows it; refusals name their type (the model may act on it)."""
    return f"{type(error).__name__}: {error}" if isinstance(error, SubCallError) else str(error)


def _check_cache_identities(models: list[tuple[str, Backend]]) -> None:
    """Two different models whose cached replies would be one another's (same cache identity:
    e.g. two scripted backends, or two servers' models, under one name) are refused."""
    seen: dict[str, tuple[str, Backend]] = {}
    for role, backend in models:
        first = seen.setdefault(backend.cache_identity, (role, backend))
        if first[1] is not backend and first[1] is not getattr(backend, "inner", None):
            raise ConfigError(f"the {first[0]} and the {role} are different models with the same cache identity "
                              f"({backend.name!r}): the sub-call cache would answer one with the other's replies; "
                              "give them distinct names (name=...) or pass cache=False")


def _can_set(env: Any) -> bool:
    """Whether ``env`` can set REPL variables (an optional method of environments)."""
    return callable(getattr(env, "set_variable", None))


async def _aclose(env: Environment) -> None:
    """Close ``env`` and wait until it is closed, even when cancelled meanwhile (then re-raise)."""
    # In a thread: a cancelled run closes its REPL while a cell may still hold it, and that
    # cell's thread may wait on a host call that needs this loop to finish.
    closing = asyncio.ensure_future(asyncio.to_thread(env.close))
    cancelled = False
    while not closing.done():
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            cancelled = True
    closing.result()
    if cancelled:
        raise asyncio.CancelledError


def _close_opened(opening: asyncio.Future[tuple[Environment, ContextInfo]]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result()[0].close()


def _str_list(values: Any, fn: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{fn}(): the first argument must be a list of str")
    return values


class RLM:
    """A Recursive Language Model over looped (or any) models.

    Example::

        from loopagent import RLM, model

        rlm = RLM(root=model("litellm:openai/gpt-4o-mini"),
                  child=model("served:http://127.0.0.1:8000/v1", loops=4),
                  max_depth=2, budget=dict(max_loop_tokens=2_000_000, timeout_s=600),
                  loop_policy="by-depth", log_dir="runs/")
        result = rlm.run("Which ... ?", context=long_text)
        result.answer, result.reason, result.usage.total, result.trajectory

    ``root`` and ``child`` are backends or spec strings; ``child`` defaults to
    ``root``. ``max_depth=1`` makes ``rlm_query`` a plain child call; each level
    above allows one more level of child RLMs with their own REPLs.
    ``max_answer_chars`` caps a final answer (None: no cap); a longer one is cut, marked
    at the cut and named in ``Result.detail``. ``log_text_limit`` clips each text the
    trajectory logs (prompts, replies, code, output; None: no clip).

    ``tools`` (``{name: function}``, sync or async) puts the user's own functions in the
    root's REPL: they run in this process, take and return plain data (None, bool, int,
    float, str, lists, tuples, dicts with str keys), are listed in the root's system prompt
    with their signature and docstring, and each call is logged. ``child_tools`` are the
    tools of child RLMs (``rlm_query`` with ``max_depth`` of 2 or more): None inherits
    ``tools``, ``{}`` gives them none. See :mod:`loopagent.tools`.

    Sub-calls: ``models`` names more child models (backends or specs, built like ``child``)
    that REPL code picks with ``llm_query(prompt, model="deep", loops=8, max_tokens=256,
    temperature=0.0)`` (also ``llm_batch``, and ``rlm_query``/``rlm_batch``, whose child
    RLM then has that model as its root); without ``model=`` the ``child`` answers.
    ``oversize`` says what happens to a sub-call prompt longer than the model's context
    window: ``"error"`` (not sent; the model reads both sizes and a chunk size) or
    ``"split"`` (see :mod:`loopagent.guard`). ``cache``: identical greedy sub-calls of a
    run are answered once (True, default), never (False), or also across runs and
    processes through a folder (a path; see :mod:`loopagent.cache`)::

        rlm = RLM(root, child, models={"fast": "litellm:openai/gpt-4o-mini", "deep": deep_backend},
                  oversize="split", cache="cache/")

    ``callbacks`` see every event of a run as it is logged (callables, sync or async, or
    objects with ``on_iteration``, ``on_sub_call``... methods; see :mod:`loopagent.callbacks`);
    :meth:`stream` yields the same events. ``compact_at`` is the fraction of the root model's
    context window at which older turns (all but the last ``compact_keep_turns``) are folded
    into notes the model writes (None: never); the window is ``root_context_window`` or the
    backend's ``context_window`` attribute, and where neither is known compaction never
    happens (see :mod:`loopagent.compaction`).
    """

    def __init__(
        self,
        root: Backend | str,
        child: Backend | str | None = None,
        *,
        max_depth: int = 1,
        max_iterations: int = 20,
        budget: Budget | dict[str, Any] | None = None,
        loop_policy: str | LoopPolicy = "fixed",
        policy_options: dict[str, Any] | None = None,
        max_consecutive_errors: int = 5,
        concurrency: int = 64,
        max_tokens_per_call: int | None = None,
        sandbox: SandboxLimits | dict[str, Any] | None = None,
        environment: EnvironmentFactory | None = None,
        log_dir: str | Path | None = None,
        log_text_limit: int | None = 20_000,
        max_answer_chars: int | None = 1_000_000,
        tools: Tools | None = None,
        child_tools: Tools | None = None,
        models: dict[str, Backend | str] | None = None,
        oversize: OversizePolicy = "error",
        cache: bool | str | Path = True,
        callbacks: Sequence[Any] | None = None,
        compact_at: float | None = 0.8,
        compact_keep_turns: int = 2,
        root_context_window: int | None = None,
    ) -> None:
        root_backend = build_model(root) if isinstance(root, str) else root
        child_backend = root_backend if child is None else (build_model(child) if isinstance(child, str) else child)
        self.root = root_backend.for_role("root")
        self.child = child_backend.for_role("child")
        self.models = build_models(models)
        self.oversize: OversizePolicy = check_oversize(oversize)
        if not isinstance(cache, (bool, str, Path)) or (not isinstance(cache, bool) and not str(cache).strip()
                                                         or isinstance(cache, Path) and str(cache) == "."):
            raise ConfigError(f"cache must be True, False or a folder path, got {cache!r}")
        self.cache: bool | Path = cache if isinstance(cache, bool) else Path(cache)
        if cache is not False:
            # the models sub-calls go to (the root is never cached)
            _check_cache_identities([("child", self.child), *((f"model {n!r}", m) for n, m in self.models.items())])
        #: the on-disk layer, shared by every run of this RLM (and every process using the folder)
        self._disk_cache = DiskCache.shared(self.cache) if isinstance(self.cache, Path) else None
        for name, value in (("max_depth", max_depth), ("max_iterations", max_iterations),
                            ("max_consecutive_errors", max_consecutive_errors), ("concurrency", concurrency)):
            check_int(value, name, minimum=1)
        if max_answer_chars is not None:
            check_int(max_answer_chars, "max_answer_chars", minimum=1)
        if environment is not None and not callable(environment):
            raise ConfigError(
                f"environment must be a class or factory called with the sandbox limits (e.g. SandboxREPL), "
                f"got {type(environment).__name__}"
            )
        self.environment: EnvironmentFactory = environment if environment is not None else SandboxREPL
        self.max_depth = max_depth
        self.max_iterations = max_iterations
        self.max_consecutive_errors = max_consecutive_errors
        self.concurrency = concurrency
        if max_tokens_per_call is not None:
            check_int(max_tokens_per_call, "max_tokens_per_call", minimum=1)
        self.max_tokens_per_call = max_tokens_per_call
        try:
            self.budget = budget if isinstance(budget, Budget) else Budget(**(budget or {}))
            self.sandbox = sandbox if isinstance(sandbox, SandboxLimits) else SandboxLimits(**(sandbox or {}))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.policy = get_policy(loop_policy, **(policy_options or {}))
        if self.policy.needs_exit_gate:
            for role, b in (("root", self.root), ("child", self.child),
                            *((f"{n!r}", m) for n, m in self.models.items())):
                if b.looped and not b.has_exit_gate:
                    raise ConfigError(
                        f"loop_policy={self.policy.name!r} stops tokens with an exit gate, but the {role} model "
                        f"{b.name} has none (config.exit_gate=False); use a gated checkpoint or another policy "
                        "(fixed, by-depth, budgeted)"
                    )
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.log_text_limit = log_text_limit
        self.max_answer_chars = max_answer_chars
        self.tools: dict[str, Tool] = build_tools(tools)
        self.child_tools: dict[str, Tool] = (dict(self.tools) if child_tools is None
                                             else build_tools(child_tools, argument="child_tools"))
        self.callbacks = check_callbacks(callbacks)
        if compact_at is not None and (isinstance(compact_at, bool) or not isinstance(compact_at, (int, float))
                                       or not 0 < compact_at <= 1):
            raise ConfigError(f"compact_at must be a fraction of the context window in (0, 1] or None (no "
                              f"compaction), got {compact_at!r}")
        check_int(compact_keep_turns, "compact_keep_turns", minimum=0)
        if root_context_window is not None:
            check_int(root_context_window, "root_context_window", minimum=1)
        self.compact_at = None if compact_at is None else float(compact_at)
        self.compact_keep_turns = compact_keep_turns
        self.root_context_window = root_context_window

    def config(self) -> dict[str, Any]:
        """The configuration as logged in every trajectory."""
        def backend(b: Backend) -> dict[str, Any]:
            return {"name": b.name, "looped": b.looped, "default_loops": b.default_loops, "max_loops": b.max_loops}

        config = {
            "root": backend(self.root), "child": backend(self.child), "max_depth": self.max_depth,
            "max_iterations": self.max_iterations, "max_consecutive_errors": self.max_consecutive_errors,
            "concurrency": self.concurrency, "budget": self.budget.model_dump(), "loop_policy": self.policy.describe(),
            "sandbox": self.sandbox.model_dump(), "max_tokens_per_call": self.max_tokens_per_call,
            "models": {n: backend(b) for n, b in self.models.items()}, "oversize": self.oversize,
            "cache": str(self.cache) if isinstance(self.cache, Path) else self.cache,
            "compaction": {"compact_at": self.compact_at, "keep_turns": self.compact_keep_turns,
                           "root_context_window": self.root_context_window},
        }
        if self.tools or self.child_tools:  # absent without tools: a config (an eval's identity) stays as it was
            config.update(tools=sorted(self.tools), child_tools=sorted(self.child_tools))
        return config

    def check(self) -> None:
        """Check every model can work (API keys, reachable servers) without running anything."""
        checked: list[Backend] = []
        for b in (self.root, self.child, *self.models.values()):
            if not any(b is c for c in checked):
                b.check()
                checked.append(b)

    def _open(self, context: ContextLike) -> tuple[Environment, ContextInfo]:
        """The one place a run's environment is made: create it, load ``context`` into it.

        Bad or oversized contexts fail here, before any model call.
        """
        env = self.environment(self.sandbox)
        if not isinstance(env, Environment):
            name = getattr(self.environment, "__name__", type(self.environment).__name__)
            raise ConfigError(
                f"environment {name} made a {type(env).__name__}, which lacks the Environment methods "
                "(load_context, register, execute, aexecute, get_variable, reset, close)"
            )
        try:
            info = env.load_context(context)
        except BaseException:
            env.close()
            raise
        # an environment that describes nothing still gets an honest description
        return env, info if isinstance(info, ContextInfo) else describe_context(context)

    async def _aopen(self, context: ContextLike) -> tuple[Environment, ContextInfo]:
        """:meth:`_open` in a thread (starting a worker takes ~50 ms: the loop stays free for
        sibling runs); cancelled meanwhile, it closes what the thread goes on to open."""
        opening = asyncio.ensure_future(asyncio.to_thread(self._open, context))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise

    def run_direct(self, query: str, prompt: str, *, context: ContextLike = None, loops: int | None = None,
                   log_config: dict[str, Any] | None = None) -> Result:
        """Sync form of :meth:`arun_direct`."""
        return _run_sync(self.arun_direct(query, prompt, context=context, loops=loops, log_config=log_config))

    async def arun_direct(self, query: str, prompt: str, *, context: ContextLike = None, loops: int | None = None,
                          log_config: dict[str, Any] | None = None) -> Result:
        """Ask the root model once, without a REPL: ``prompt`` is the only message.

        The call goes through the run's budget, timeout, loop policy (``loops`` is the
        call's explicit budget) and usage accounting, and logs the events of a run
        (run start, root turn, limit, final answer, run end). The answer is ``FINAL(...)``
        where the reply gives one, else the reply outside code blocks. ``query`` is the
        question as logged; ``context`` is only described in the log (never sent);
        ``log_config`` replaces :meth:`config` in the run-start event.

        Example::

            prompt = f"<document>{text[:100_000]}</document>\n\nWho signed it? Reply with the name only."
            result = await rlm.arun_direct("Who signed it?", prompt, context=text)
            result.answer, result.reason, result.usage.total
        """
        self._check_query(query)
        self._check_query(prompt, "prompt")
        self.root.check()  # the only model a direct run calls
        async with self._log_to() as writer:
            # A direct run has no REPL: nothing it calls touches the environment.
            env: Any = None
            run = _Run(_RunTree(self, writer), env, depth=0, root=self.root, explicit_loops=loops)
            return await run.execute_direct(query, prompt, context=context, log_config=log_config)

    def _writer(self) -> TrajectoryWriter:
        if self.log_dir is None:
            return TrajectoryWriter(None)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return TrajectoryWriter(self.log_dir / f"{stamp}-{uuid.uuid4().hex[:8]}.jsonl", text_limit=self.log_text_limit)

    @contextlib.asynccontextmanager
    async def _log_to(self) -> AsyncIterator[TrajectoryWriter]:
        """The writer of one run tree, feeding a stream's queue and the callbacks; on exit the
        callbacks get what is queued before the log is closed."""
        writer = self._writer()
        for listener in extra_listeners.get():
            writer.subscribe(listener)
        dispatcher = CallbackDispatcher(self.callbacks, writer) if self.callbacks else None
        try:
            yield writer
        finally:
            try:
                if dispatcher is not None:
                    await dispatcher.aclose()
            finally:
                writer.close()

    def run(self, query: str, context: ContextLike = None) -> Result:
        """Answer ``query`` over ``context`` (str, bytes, list, dict or a Path)."""
        return _run_sync(self.arun(query, context))

    async def arun(self, query: str, context: ContextLike = None) -> Result:
        """Async form of :meth:`run`."""
        self._check_query(query)
        self.check()
        env, info = await self._aopen(context)
        try:
            return await self._arun(query, env, info, earlier=None)
        finally:
            await _aclose(env)

    def stream(self, query: str, context: ContextLike = None) -> RunStream:
        """Run ``query`` over ``context`` as an async stream of its trajectory events.

        The events are those the log holds (and callbacks get), in order, child runs
        included; the last is the root run's ``run_end``, and ``.result`` holds the
        :class:`Result` once the stream is exhausted. The run starts when iteration starts;
        leaving the loop early cancels it (REPL workers stopped, log closed).

        Example::

            async with rlm.stream("Who signed it?", context=text) as events:
                async for event in events:
                    print(event.depth, event.type)
            events.result.answer
        """
        self._check_query(query)
        return RunStream(lambda: self.arun(query, context))

    @staticmethod
    def _check_query(text: str, what: str = "query") -> None:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"the {what} must be a non-empty string")

    async def _arun(self, query: str, env: Environment, info: ContextInfo, *,
                    earlier: list[tuple[str, str | None]] | None) -> Result:
        async with self._log_to() as writer:
            run = _Run(_RunTree(self, writer), env, depth=0, root=self.root, earlier=earlier)
            return await run.execute(query, info)

    def session(self, context: ContextLike = None) -> Session:
        """Several questions over one context and one REPL (variables persist).

        Example::

            with rlm.session(long_text) as s:
                first = s.ask("Who ...?")
                second = s.ask("And where did they go next?")
        """
        return Session(self, context)


class Session:
    """A context and a REPL kept across several questions; see :meth:`RLM.session`."""

    def __init__(self, rlm: RLM, context: ContextLike) -> None:
        self.rlm = rlm
        self.context = context
        self.env, self.info = rlm._open(context)
        self.history: list[tuple[str, str | None]] = []

    def ask(self, query: str) -> Result:
        return _run_sync(self.aask(query))

    async def aask(self, query: str) -> Result:
        self.rlm._check_query(query)
        self.rlm.check()
        result = await self.rlm._arun(query, self.env, self.info, earlier=list(self.history))
        self.history.append((query, result.answer))
        return result

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RLM", "Budget", "Result", "RunStream", "Session", "ExecResult"]
