"""Running coroutines from sync code (also from inside a running event loop)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(awaitable: Awaitable[T], loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Wait for ``awaitable`` from sync code.

    With ``loop`` (a running loop owned by another thread) it runs there; else on
    a fresh loop, in a helper thread when this thread already runs a loop (e.g. a
    notebook), since ``asyncio.run`` cannot nest.
    """

    async def wrap() -> Any:
        return await awaitable

    if loop is not None and loop.is_running():
        return asyncio.run_coroutine_threadsafe(wrap(), loop).result()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wrap())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, wrap()).result()
