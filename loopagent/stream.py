"""A run as an async stream of its trajectory events; see :meth:`loopagent.RLM.stream`."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loopagent.errors import LoopagentError

if TYPE_CHECKING:
    from loopagent.rlm import Result

#: Listeners the next run tree's writer subscribes (set by a stream for the task of its run;
#: a context variable so the run's own code needs no extra argument, and child tasks inherit it).
extra_listeners: contextvars.ContextVar[tuple[Callable[[Any], None], ...]] = contextvars.ContextVar(
    "loopagent_extra_listeners", default=()
)

_DONE = object()


class StreamError(LoopagentError, RuntimeError):
    """A :class:`RunStream` used the wrong way (iterated twice)."""


class RunStream:
    """The events of one run as they are logged, then its :class:`~loopagent.rlm.Result`.

    Iterate it once with ``async for``; the events are those of the trajectory, in order,
    child runs included (their ``run_id``/``parent_id``/``depth`` say where they belong), and
    the last one is the root run's ``run_end``. :attr:`result` is set when the iteration ends.
    Leaving the loop early (``break``, an exception) cancels the run: its REPL workers are
    stopped and the log is closed, with a ``limit`` event of reason ``cancelled``. Use
    ``async with`` (or ``await stream.aclose()``) to wait for that cleanup; after a bare
    ``break`` it happens as soon as the loop finalizes the iteration.

    Example::

        async with rlm.stream("Who signed it?", context=text) as events:
            async for event in events:
                if event.type == "sub_call":
                    print(event.depth, event.prompt[:60], "->", event.response)
        print(events.result.answer)
    """

    def __init__(self, start: Callable[[], Awaitable[Result]]) -> None:
        self._start = start
        self._queue: asyncio.Queue[Any] | None = None
        self._task: asyncio.Task[Result] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._iterated = False
        self._cancelled = False
        self.result: Result | None = None
        """The run's result once the stream is exhausted; None before, or when the run was cancelled."""

    @property
    def closed(self) -> bool:
        """True once the run is over (finished, failed or cancelled) and cleaned up."""
        return self._task is not None and self._task.done()

    def _put(self, event: Any) -> None:
        assert self._loop is not None and self._queue is not None
        if threading.get_ident() == self._thread:
            self._queue.put_nowait(event)
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def _begin(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queue = queue
        context = contextvars.copy_context()
        context.run(extra_listeners.set, (*extra_listeners.get(), self._put))
        self._task = self._loop.create_task(self._start(), context=context)
        self._task.add_done_callback(lambda _: queue.put_nowait(_DONE))

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._iterated:
            raise StreamError("a RunStream can be iterated once; call rlm.stream(...) again for another run")
        self._iterated = True
        self._begin()
        return self._events()

    async def _events(self) -> AsyncIterator[Any]:
        assert self._queue is not None and self._task is not None
        try:
            while True:
                item = await self._queue.get()
                if item is _DONE:
                    break
                yield item
            self.result = self._task.result()  # the run's own exception, if it raised one
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Cancel the run if it is still going and wait until it has cleaned up. Idempotent."""
        task = self._task
        if task is None or task.done():
            return
        if not self._cancelled:  # once: a second cancel would cut the run's own cleanup short
            self._cancelled = True
            task.cancel()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():  # this caller was cancelled itself, not (only) the run
                raise
        except Exception:  # noqa: S110 - the run failed while stopping; nobody asked for its result
            pass

    async def __aenter__(self) -> RunStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
