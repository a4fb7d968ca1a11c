"""The sub-call cache: identical greedy sub-calls of a run are answered once.

A plain sub-call (``llm_query``, ``llm_batch``, ``rlm_query`` at the depth limit) is keyed
by everything that decides its reply: the model (``Backend.cache_identity``: its name, plus
whatever else pins its replies, e.g. a litellm model's provider options), the prompt, the loop budget and
exit-gate options the policy chose, the reply's token cap and the temperature. Only
greedy calls are cached (temperature 0, given or the backend's
``default_temperature``): a sampled reply is not a function of its key. Concurrent
identical calls share one call in flight. A hit costs no model call: no tokens, no
loop-tokens (nothing was computed), no USD; it is counted in ``UsageTotals.cache_hits``
and logged with ``SubCall.cached=True``. A failed call is not cached.

``RLM(cache="dir/")`` adds an on-disk layer shared by every run (and process) using the
folder: one sqlite3 database in WAL mode (concurrent readers and writers in several
processes; a committed reply survives a crash of the writer). The key is a SHA-256 of the
key's JSON; a model's identity stands for the model, so clear the folder when it comes to
mean another model (a new checkpoint at the same path or URL). Its reads and writes run off
the event loop (a locked database must not stall the run), and one connection per folder
serves the whole process (eval sweeps build many RLMs).

Child RLMs (``rlm_query`` below the depth limit) are never cached: they run code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from loopagent.errors import ConfigError

#: Part of every key: a change of what a key means changes every key.
_KEY_VERSION = 2
_DB_NAME = "subcalls.sqlite3"


class CacheKey(BaseModel):
    """What decides a sub-call's reply."""

    model_config = ConfigDict(frozen=True)

    model: str
    prompt: str
    loops: int | None = None
    exit_threshold: float | None = None
    min_loops: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None

    def digest(self) -> str:
        # ensure_ascii: a prompt may hold lone surrogates (the REPL passes them through), which
        # have no UTF-8 form; escaped, every string has one key
        text = json.dumps(self.model_dump(), ensure_ascii=True, sort_keys=True)
        return hashlib.sha256(f"{_KEY_VERSION}:{text}".encode()).hexdigest()


Source = Literal["call", "memory", "disk", "shared"]


class DiskCache:
    """Replies kept in ``directory/subcalls.sqlite3``, shared by runs and processes.

    Example::

        disk = DiskCache("cache/")
        disk.put(key, "the reply"); disk.get(key)     # 'the reply'
    """

    _shared: dict[Path, DiskCache] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, directory: str | Path) -> DiskCache:
        """The process's one :class:`DiskCache` of ``directory`` (opened on first use)."""
        path = Path(directory).expanduser().resolve()
        with cls._shared_lock:
            cache = cls._shared.get(path)
            if cache is None:
                cache = cls._shared[path] = cls(path)
            return cache

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / _DB_NAME
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # one connection used from any thread, one statement at a time (the lock)
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                             "reply TEXT NOT NULL, created REAL NOT NULL)")
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"cannot use {str(self.directory)!r} as a sub-call cache: {e}") from None
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> str | None:
        try:
            with self._lock:
                row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key.digest(),)).fetchone()
        except (sqlite3.Error, UnicodeError):  # a locked or damaged file costs a call, never the run
            return None
        return None if row is None else str(row[0])

    def put(self, key: CacheKey, reply: str) -> None:
        try:
            with self._lock:
                self._db.execute("INSERT OR IGNORE INTO replies (key, model, reply, created) VALUES (?, ?, ?, ?)",
                                 (key.digest(), key.model, reply, time.time()))
        except (sqlite3.Error, UnicodeError):  # UnicodeError: a reply with lone surrogates
            pass  # not kept: the next run asks again

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SubCallCache:
    """The cache of one run tree: replies in memory, calls in flight, and an optional disk layer.

    Example::

        cache = SubCallCache(disk=None)
        text, source = await cache.get_or_call(key, ask)   # source: "call", "memory", "shared" or "disk"
    """

    def __init__(self, disk: DiskCache | None = None) -> None:
        self.disk = disk
        self._replies: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Future[str]] = {}

    async def get_or_call(self, key: CacheKey, call: Callable[[], Awaitable[str]]) -> tuple[str, Source]:
        """The reply for ``key``: remembered, shared with an identical call in flight, read
        from disk, or made by ``call()`` (whose failure reaches every caller sharing it)."""
        digest = key.digest()
        if digest in self._replies:
            return self._replies[digest], "memory"
        if digest in self._inflight:
            return await asyncio.shield(self._inflight[digest]), "shared"
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # a failure no other caller awaited must not be reported as "never retrieved"
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._inflight[digest] = future
        try:
            reply = await asyncio.to_thread(self.disk.get, key) if self.disk is not None else None
            source: Source = "disk"
            if reply is None:
                reply, source = await call(), "call"
                if self.disk is not None:
                    await asyncio.to_thread(self.disk.put, key, reply)
            self._replies[digest] = reply
            future.set_result(reply)
            return reply, source
        except BaseException as e:
            if isinstance(e, Exception):
                future.set_exception(e)
            else:  # cancelled: callers sharing it are cancelled too
                future.cancel()
            raise
        finally:
            del self._inflight[digest]


__all__ = ["CacheKey", "DiskCache", "Source", "SubCallCache"]
