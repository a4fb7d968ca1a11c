"""Callbacks: user code that sees every event of a run, in the order the trajectory logs them.

A callback is either a callable (sync or async) that takes each event, or an object whose
methods are named after the events it wants (all optional). Each event goes to exactly one
method: the one :data:`EVENT_METHODS` names for its type when the object has it, else
``on_event`` when it has that, else nowhere.

=================  ==================  ==============================================
event ``type``     method              when
=================  ==================  ==============================================
``run_start``      ``on_run_start``    a run (the root, or a child ``rlm_query`` run) starts
``root_turn``      ``on_iteration``    the run's model replied (one turn)
``repl_exec``      ``on_repl_cell``    a REPL cell ran
``sub_call_start`` ``on_sub_call_start`` a sub-call was sent
``sub_call``       ``on_sub_call``     a sub-call returned (or failed)
``compaction``     ``on_compaction``   older turns were summarized
``limit``          ``on_limit``        a limit ended the run
``final``          ``on_final``        the final (or partial) answer
``run_end``        ``on_run_end``      the run ended
``warning``        ``on_warning``      a callback raised
=================  ==================  ==============================================

Events are the pydantic objects of :mod:`loopagent.trajectory` (the same the log file holds,
``run_id``/``parent_id``/``depth`` telling nested runs apart). They are delivered one at a
time on the run's event loop, so a callback never sees two events at once and an async
callback may await; a sync callback that blocks holds the run up, so keep it quick. A run
returns after every callback has had every event. A callback that raises does not stop the
run: the first error of each callback is logged as a ``warning`` event (and to the
``loopagent`` logger), later ones are dropped.

Example::

    class Progress:
        def on_iteration(self, event):
            print("turn", event.iteration, event.usage.get("completion_tokens"))

        def on_run_end(self, event):
            print("done:", event.reason)

    async def record(event):
        await queue.put(event.model_dump())

    RLM(root, callbacks=[Progress(), record, print]).run("q", context=text)
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from loopagent.errors import ConfigError
from loopagent.trajectory import CallbackWarning, TrajectoryWriter

#: The method of an object-style callback each event type goes to.
EVENT_METHODS: dict[str, str] = {
    "run_start": "on_run_start",
    "root_turn": "on_iteration",
    "repl_exec": "on_repl_cell",
    "sub_call_start": "on_sub_call_start",
    "sub_call": "on_sub_call",
    "compaction": "on_compaction",
    "limit": "on_limit",
    "final": "on_final",
    "run_end": "on_run_end",
    "warning": "on_warning",
}
_METHODS = frozenset(EVENT_METHODS.values()) | {"on_event"}

_log = logging.getLogger("loopagent")
_STOP = object()


def _is_object_style(callback: object) -> bool:
    return any(callable(getattr(callback, name, None)) for name in _METHODS)


def check_callbacks(callbacks: Sequence[Any] | None) -> list[Any]:
    """The callbacks as a list, each checked; :class:`ConfigError` naming a bad one."""
    if callbacks is None:
        return []
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Sequence):
        raise ConfigError(f"callbacks must be a list of callables or callback objects, got {type(callbacks).__name__}")
    for i, cb in enumerate(callbacks):
        if not callable(cb) and not _is_object_style(cb):
            raise ConfigError(
                f"callbacks[{i}] ({type(cb).__name__}) is neither callable nor has any of the callback methods "
                f"({', '.join(sorted(_METHODS))})"
            )
    return list(callbacks)


def _name(callback: object) -> str:
    name = getattr(callback, "__qualname__", None) or type(callback).__qualname__
    return str(name)


class _Handler:
    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self.name = _name(callback)
        self.object_style = _is_object_style(callback)
        self.failed = False

    def target(self, event: Any) -> Callable[[Any], Any] | None:
        if not self.object_style:
            return self.callback
        method = getattr(self.callback, EVENT_METHODS.get(event.type, "on_event"), None)
        if not callable(method):
            method = getattr(self.callback, "on_event", None)
        return method if callable(method) else None


class CallbackDispatcher:
    """Feeds one run tree's events to its callbacks, in order, from a task on the run's loop.

    Subscribed to the run's :class:`TrajectoryWriter`; events written from another thread
    are handed to the loop thread-safely. :meth:`aclose` delivers what is queued, then stops.
    """

    def __init__(self, callbacks: Sequence[Any], writer: TrajectoryWriter) -> None:
        self._handlers = [_Handler(cb) for cb in callbacks]
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = self._loop.create_task(self._pump())
        writer.subscribe(self._put)

    def _put(self, event: Any) -> None:
        if threading.get_ident() == self._thread:
            self._queue.put_nowait(event)
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    async def _pump(self) -> None:
        while True:
            event = await self._queue.get()
            if event is _STOP:
                if self._queue.empty():
                    return
                self._queue.put_nowait(_STOP)  # a warning logged while the queue drained comes after it
                continue
            for handler in self._handlers:
                await self._deliver(handler, event)

    async def _deliver(self, handler: _Handler, event: Any) -> None:
        fn = handler.target(event)
        if fn is None:
            return
        try:
            value = fn(event)
            if inspect.isawaitable(value):
                await value
        except Exception as e:  # a callback's bug must not end the run
            if handler.failed:
                return
            handler.failed = True
            message = (f"callback {handler.name} raised {type(e).__name__}: {e} on a {event.type} event; "
                       "the run goes on, and later errors of this callback are not logged")
            _log.warning(message)
            if event.type == "run_end" and event.parent_id is None:
                return  # the log (and a stream) ends with the root's run_end: only the logger hears of this
            self._writer.write(CallbackWarning(run_id=event.run_id, parent_id=event.parent_id, depth=event.depth,
                                               source=handler.name, message=message))

    async def aclose(self) -> None:
        """Deliver every queued event, then stop (call before the writer is closed)."""
        self._put(_STOP)
        await asyncio.shield(self._task)
