"""A tiny OpenAI-compatible HTTP server for tests (standard library only).

It serves ``GET /v1/models`` and non-streaming ``POST /v1/chat/completions`` on
127.0.0.1 from a background thread, records every request body, and replies
with scripted texts: a queue (:meth:`FakeOpenAIServer.queue`) or a function of
the request (:attr:`FakeOpenAIServer.responder`). A request whose body has a
``loops`` that is not a positive integer gets HTTP 400 with an OpenAI-style
error body, like ``loopagent serve`` would. ``latency_s`` (seconds, or a
function of the request) delays completions; a ``ScriptedError`` in the script
makes that call fail with its status. The ``server`` fixture of this folder's
conftest.py starts one per test and shuts it down after.

Example::

    with FakeOpenAIServer(model_id="tiny-looped") as server:
        server.queue("hello")
        backend = LiteLLMBackend.served(server.base_url)
        backend.complete([{"role": "user", "content": "hi"}]).text   # 'hello'
        server.requests[-1]["messages"]
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loopagent.errors import InvalidLoopsError
from loopagent.validation import check_loops


@dataclass
class ScriptedError:
    """A scripted failure: the call gets this status and an OpenAI-style error body."""

    status: int
    message: str
    type: str = "invalid_request_error"


def count_tokens(text: str) -> int:
    """The server's own (crude, deterministic) token count: whitespace words."""
    return len(text.split())


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers at shutdown

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": type_, "param": param, "code": None}})

    def do_GET(self) -> None:  # noqa: N802
        fake = self.server.fake
        if self.path.rstrip("/") == "/v1/models":
            with fake.lock:
                fake.model_list_requests += 1
            entry: dict[str, Any] = {"id": fake.model_id, "object": "model", "created": 0,
                                     "owned_by": "loopagent-tests"}
            if fake.max_model_len is not None:
                entry["max_model_len"] = fake.max_model_len
            self._send(200, {"object": "list", "data": [entry]})
            return
        self._error(404, f"no route GET {self.path}", "not_found_error")

    def do_POST(self) -> None:  # noqa: N802
        fake = self.server.fake
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route POST {self.path}", "not_found_error")
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._error(400, "the request body is not JSON")
            return
        with fake.lock:
            fake.requests.append(body)
            fake.headers.append(dict(self.headers))
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            delay = fake.latency_s(body) if callable(fake.latency_s) else fake.latency_s
            if delay:
                time.sleep(delay)
            loops = body.get("loops")
            if "loops" in body:
                try:
                    check_loops(loops)
                except InvalidLoopsError as e:
                    self._error(400, str(e), param="loops")
                    return
            reply = fake.next_reply(body)
            if isinstance(reply, ScriptedError):
                self._error(reply.status, reply.message, reply.type)
                return
            prompt_tokens = sum(count_tokens(str(m.get("content") or "")) for m in body.get("messages", []))
            completion_tokens = count_tokens(reply)
            usage: dict[str, Any] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            if "loops" in body and (executed := fake.executed_mean(loops)) is not None:
                usage["loops_executed_mean"] = executed
            if "loops" in body and fake.loop_usage is not None:
                usage.update(fake.loop_usage(body, prompt_tokens + completion_tokens))
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", fake.model_id),
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }],
                "usage": usage,
            })
        finally:
            with fake.lock:
                fake.in_flight -= 1


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many concurrent connects without SYN drops
    fake: FakeOpenAIServer


class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 (a free port) in a background thread."""

    # Reachable through a fixture's instance (test files cannot import this module
    # by name under --import-mode=importlib).
    ScriptedError = ScriptedError
    count_tokens = staticmethod(count_tokens)

    def __init__(self, *, model_id: str = "tiny-looped",
                 latency_s: float | Callable[[dict[str, Any]], float] = 0.0) -> None:
        self.model_id = model_id
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.model_list_requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.replies: collections.deque[Any] = collections.deque()
        #: Called with the request body when the queue is empty; returns the reply text (or a ScriptedError).
        self.responder: Callable[[dict[str, Any]], Any] | None = None
        #: Mean executed loops reported for a request with ``loops`` (an adaptive server
        #: exits early); None leaves ``loops_executed_mean`` out of the usage.
        self.executed_mean: Callable[[int], float | None] = lambda loops: loops * 0.75
        #: Extra usage fields for a request with ``loops`` (what ``loopagent serve`` counts:
        #: ``loop_tokens``, ``loop_exit_histogram``...), from the body and the token count.
        self.loop_usage: Callable[[dict[str, Any], int], dict[str, Any]] | None = None
        #: Listed as the model's ``max_model_len`` at /v1/models (as vLLM does) when set.
        self.max_model_len: int | None = None
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-openai-{self.port}", daemon=True)
        self._thread.start()

    # -- scripting -------------------------------------------------------------------
    def queue(self, *replies: Any) -> None:
        """Replies for the next calls, in order (texts or ScriptedError)."""
        with self.lock:
            self.replies.extend(replies)

    def next_reply(self, body: dict[str, Any]) -> Any:
        with self.lock:
            if self.replies:
                return self.replies.popleft()
        if self.responder is not None:
            return self.responder(body)
        return "ok"

    def completions(self) -> list[dict[str, Any]]:
        """Bodies of the chat-completion requests so far."""
        with self.lock:
            return list(self.requests)

    # -- lifetime --------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
