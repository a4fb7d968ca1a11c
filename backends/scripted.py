"""A deterministic backend for tests, docs and benchmarks.

Replies come from a list (consumed in call order) or a function of the
messages and loop budget. It can pretend to be looped, so loop policies and
loop-token accounting can be exercised without a model.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loopagent.errors import BackendError, ModelSpecError
from loopagent.validation import check_gate, check_int, check_temperature

from .base import Backend, Completion, LoopStats, Message, Usage, loop_usage, messages_text

Responder = Callable[[Sequence[Message], int | None], Any]


class ScriptedBackend(Backend):
    """Replies from a script.

    Example::

        root = ScriptedBackend(["```repl\\nFINAL(len(context))\\n```"])
        child = ScriptedBackend(lambda messages, loops: f"answer at {loops} loops",
                                looped=True, default_loops=4, max_loops=8)
        gated = ScriptedBackend(["x"], looped=True, max_loops=8, exit_gate=True)  # takes exit_threshold=
        small = ScriptedBackend(echo, temperature=0.0, context_window=4096)   # greedy, 4,096-token window

    A script computes nothing, so its loop figures are the requested ones
    (``LoopStats.counted`` is False). Each call is recorded in ``calls`` (messages, loops,
    and the gate options, ``max_tokens`` and ``temperature`` it was given). ``temperature``
    is the decoding the script stands for: None (default) is unknown, like an API model's
    provider default; 0.0 declares it greedy, so an RLM caches its sub-calls. A reply is
    never cut to ``max_tokens`` (a script has no tokens to stop at).
    """

    def __init__(
        self,
        replies: Sequence[str] | Responder,
        *,
        name: str = "scripted",
        looped: bool = False,
        default_loops: int | None = None,
        max_loops: int | None = None,
        latency_s: float = 0.0,
        exit_gate: bool = False,
        temperature: float | None = None,
        context_window: int | None = None,
    ) -> None:
        self.name = name
        self.default_temperature = None if temperature is None else check_temperature(temperature, model=name)
        self.context_window = None if context_window is None else check_int(context_window, "context_window",
                                                                             minimum=1)
        self.looped = looped
        self.has_exit_gate = bool(exit_gate and looped)
        self.default_loops = (default_loops or 1) if looped else None
        self.max_loops = max_loops if looped else None
        self.latency_s = latency_s
        self._responder = replies if callable(replies) else None
        self._replies = [] if callable(replies) else list(replies)
        self._next = 0
        self._lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> ScriptedBackend:
        """Load replies from JSON: a list of strings, or ``{"replies": [...], "looped": ...}``."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ModelSpecError(f"scripted replies file {str(p)!r} does not exist") from None
        except json.JSONDecodeError as e:
            raise ModelSpecError(f"{str(p)!r} line {e.lineno}: not valid JSON ({e.msg})") from None
        options: dict[str, Any] = {}
        if isinstance(data, dict):
            options = {k: v for k, v in data.items() if k != "replies"}
            data = data.get("replies")
        if not isinstance(data, list) or not all(isinstance(r, str) for r in data):
            raise ModelSpecError(f"{str(p)!r}: expected a list of reply strings (or {{'replies': [...]}})")
        return cls(data, **{**options, **kwargs})

    def _reply(self, messages: Sequence[Message], loops: int | None) -> Any:
        if self._responder is not None:
            return self._responder(messages, loops)
        with self._lock:
            if self._next >= len(self._replies):
                raise BackendError(f"{self.name}: the script has no reply left (it had {len(self._replies)})")
            reply = self._replies[self._next]
            self._next += 1
        return reply

    async def acomplete(
        self, messages: Sequence[Message], *, loops: int | None = None, max_tokens: int | None = None, **kwargs: Any
    ) -> Completion:
        loops = self.validate_loops(loops)
        gate = {k: kwargs[k] for k in ("exit_threshold", "min_loops") if kwargs.get(k) is not None}
        if gate:
            check_gate(gate.get("exit_threshold"), gate.get("min_loops"), loops=loops or 0,
                       has_gate=self.has_exit_gate, model=self.name)
        settings: dict[str, Any] = {}
        if max_tokens is not None:
            settings["max_tokens"] = check_int(max_tokens, "max_tokens", minimum=1)
        if kwargs.get("temperature") is not None:
            settings["temperature"] = check_temperature(kwargs["temperature"], model=self.name)
        start = time.perf_counter()
        self.calls.append({"messages": list(messages), "loops": loops, **gate, **settings})
        reply = self._reply(messages, loops)  # taken before awaiting: call order decides
        if inspect.isawaitable(reply):
            reply = await reply
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        text = str(reply)
        prompt_tokens = self.count_tokens(messages_text(messages))
        completion_tokens = self.count_tokens(text)
        return Completion(
            text=text,
            model=self.name,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                loop_tokens=loop_usage(prompt_tokens, completion_tokens, loops),
                wall_s=time.perf_counter() - start,
            ),
            # a script computes nothing: the loop figures are the requested ones (counted=False)
            loops=LoopStats(requested=loops, executed_mean=float(loops), min_loops=gate.get("min_loops"),
                            exit_threshold=gate.get("exit_threshold")) if loops is not None else None,
            finish_reason="stop",
        )
