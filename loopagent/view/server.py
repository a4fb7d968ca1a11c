"""A live page of a run while it writes its log (``loopagent view --follow``, ``run --view``).

A stdlib HTTP server in one background thread, bound to 127.0.0.1 only. ``/`` is the
run's page with the state of the log so far; the page polls ``/data?offset=N`` and
gets the rebuilt page data when the log has grown since state ``N`` (the tree is
built here, by the same code as the static page, so the script only draws).

Example::

    with FollowServer("runs/x.jsonl", port=0) as server:
        print(server.url)            # open it; the page updates as the run logs events
        ...
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from loopagent.view.load import Log, LogReader, ViewError
from loopagent.view.model import page_data
from loopagent.view.render import run_html

HOST = "127.0.0.1"  # never another interface: the page shows prompts and outputs of the run


class FollowServer:
    """Serves a live view of one log: a file, or the first new ``*.jsonl`` that appears in
    ``watch_dir`` (the log of a run about to start)."""

    def __init__(
        self,
        log: str | os.PathLike[str] | None = None,
        *,
        watch_dir: str | os.PathLike[str] | None = None,
        port: int = 0,
        interval_ms: int = 500,
    ) -> None:
        if (log is None) == (watch_dir is None):
            raise ValueError("pass exactly one of log and watch_dir")
        self.watch_dir = Path(watch_dir) if watch_dir is not None else None
        self._before = set(self.watch_dir.glob("*.jsonl")) if self.watch_dir and self.watch_dir.is_dir() else set()
        self.port = port
        self.interval_ms = interval_ms
        self._reader = LogReader(log) if log is not None else None
        self._lock = threading.Lock()
        self._state = 0  # bumped whenever what the page shows changes
        self._seen = (0, 0)
        self._delivered_done = threading.Event()
        self._polled = False
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the log ---------------------------------------------------------------------------------
    def _resolve(self) -> LogReader | None:
        if self._reader is None and self.watch_dir is not None:
            new = sorted(set(self.watch_dir.glob("*.jsonl")) - self._before, key=lambda p: p.stat().st_mtime)
            if new:
                self._reader = LogReader(new[-1])
        return self._reader

    def _current(self) -> tuple[int, Log]:
        with self._lock:
            if self._resolve() is None:
                return self._state, Log(self.watch_dir or Path("."), [], [f"waiting for a new log in {self.watch_dir}"])
            self._reader.poll()
            seen = (len(self._reader.events), len(self._reader.warnings))
            if seen != self._seen:
                self._seen = seen
                self._state += 1
            return self._state, Log(self._reader.path, list(self._reader.events), list(self._reader.warnings))

    def page(self) -> str:
        state, log = self._current()
        return run_html(log, follow={"endpoint": "data", "offset": state, "interval_ms": self.interval_ms})

    def data(self, offset: int) -> dict[str, Any]:
        """``{"offset": state, "run": page data or None when nothing changed since ``offset``}``."""
        self._polled = True
        state, log = self._current()
        if state == offset:
            return {"offset": state, "run": None}
        run = page_data(log)
        if run["done"]:
            self._delivered_done.set()
        return {"offset": state, "run": run}

    @property
    def log_path(self) -> Path | None:
        """The log being followed (None while waiting for it to appear)."""
        with self._lock:
            reader = self._resolve()
        return reader.path if reader is not None else None

    # -- the server ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not running; call start() first")
        return f"http://{HOST}:{self._httpd.server_address[1]}/"

    def start(self, *, any_port_if_busy: bool = False) -> str:
        """Listen and serve in a background thread; returns the page's URL."""
        handler = _handler(self)
        try:
            self._httpd = ThreadingHTTPServer((HOST, self.port), handler)
        except OSError as e:
            if not any_port_if_busy or self.port == 0:
                raise ViewError(
                    f"cannot listen on {HOST}:{self.port} ({e.strerror}); try --port 0 (any free port)") from None
            self._httpd = ThreadingHTTPServer((HOST, 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="loopagent-view", daemon=True)
        self._thread.start()
        return self.url

    def linger(self, timeout_s: float = 3.0) -> None:
        """After the run: give a page that is polling up to ``timeout_s`` to fetch the final state."""
        if self._polled:
            self._delivered_done.wait(timeout_s)

    def serve_until_interrupted(self, max_s: float | None = None) -> None:
        """Block until Ctrl-C or SIGTERM (or ``max_s`` seconds), then stop."""
        deadline = None if max_s is None else time.monotonic() + max_s
        stop = threading.Event()
        previous = None
        if threading.current_thread() is threading.main_thread():  # `kill` stops it as cleanly as Ctrl-C
            previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while self._thread is not None and self._thread.is_alive() and not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                stop.wait(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.stop()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._httpd = self._thread = None

    def __enter__(self) -> FollowServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(server: FollowServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            url = urlparse(self.path)
            try:
                if url.path == "/":
                    self._send(200, "text/html; charset=utf-8", server.page().encode("utf-8"))
                elif url.path == "/data":
                    raw = parse_qs(url.query).get("offset", ["-1"])[0]
                    offset = int(raw) if raw.lstrip("-").isdigit() else -1
                    self._send(200, "application/json", json.dumps(server.data(offset)).encode("utf-8"))
                else:
                    self._send(404, "text/plain", b"not found")
            except ViewError as e:
                self._send(500, "text/plain; charset=utf-8", str(e).encode("utf-8"))

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass  # one line per poll would bury the run's own output

    return Handler
