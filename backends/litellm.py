"""Any API provider, and any OpenAI-compatible server, through litellm.

Specs: ``litellm:openai/gpt-5``, ``litellm:anthropic/claude-...`` (litellm's own
model names), and ``served:http://127.0.0.1:8000/v1`` for an OpenAI-compatible
server (vLLM, ``loopagent serve``, llama.cpp ...). A served model that is looped
takes its loop budget per request as ``{"loops": n}`` in the request body, and the
exit gate's options as ``{"exit_threshold": t, "min_loops": m}``; ``loopagent serve``
reports what it computed in ``usage`` (``loop_tokens``, ``loops_executed_mean``),
which the completion's ``Usage.loop_tokens`` / ``LoopStats`` carry (``counted=True``);
from a server that does not, they are the requested budget's estimate (``counted=False``).
``served:http://host1:8000/v1,http://host2:8000/v1`` lists replicas of one model:
calls are spread over them by litellm's Router (and retried on another replica when
one fails).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from loopagent.errors import BackendError, BackendUnavailableError, InvalidLoopsError, MissingAPIKeyError
from loopagent.validation import check_gate, check_int, check_temperature

from .base import Backend, Completion, LoopStats, Message, Usage, loop_usage, messages_text


def _litellm() -> Any:
    # Without this, importing litellm fetches a price list from the internet.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    # litellm warns on every sync call that its logging worker changed event loop.
    logger = logging.getLogger("LiteLLM")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    return litellm


class LiteLLMBackend(Backend):
    """A model behind litellm.

    Example::

        gpt = LiteLLMBackend("openai/gpt-4o-mini")                 # needs OPENAI_API_KEY
        local = LiteLLMBackend.served("http://127.0.0.1:8000/v1")  # no key needed
        gated = LiteLLMBackend.served("http://127.0.0.1:8000/v1", loops=8, exit_gate=True)  # adaptive-ready
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        name: str | None = None,
        timeout_s: float = 600.0,
        num_retries: int = 2,
        loops: int | None = None,
        max_loops: int | None = None,
        served: bool = False,
        exit_gate: bool = False,
        context_window: int | None = None,
        **completion_kwargs: Any,
    ) -> None:
        self.model = model
        if context_window is not None:
            context_window = check_int(context_window, "context_window", minimum=1)
        if completion_kwargs.get("temperature") is not None:
            check_temperature(completion_kwargs["temperature"], model=model)
        #: The window given here, else what the server lists (``max_model_len``) or litellm knows.
        self._window: int | None = context_window
        self._window_known = context_window is not None
        self.api_base = api_base.rstrip("/") if api_base else None
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.num_retries = num_retries
        self.served = served
        self.completion_kwargs = completion_kwargs
        self.name = name or (f"served:{self.api_base}" if served else f"litellm:{model}")
        # A served model is looped when the user gives it a loop budget.
        self.looped = loops is not None
        self.default_loops = loops
        self.max_loops = max_loops
        # A server's checkpoint cannot be inspected from here: the user says it has a gate
        # (what loop_policy="adaptive" needs; the server still refuses gate options without one).
        self.has_exit_gate = bool(exit_gate and self.looped)
        self._resolved = not served or "/" in model and not model.endswith("/")
        #: Replicas of a served model (``served:URL1,URL2``); balanced by litellm's Router.
        self.api_bases: list[str] = [self.api_base] if self.api_base else []
        self._router: Any = None

    @property
    def context_window(self) -> int | None:  # type: ignore[override]
        """Tokens per call: ``context_window=`` where given, else a served model's
        ``max_model_len`` (vLLM and ``loopagent serve`` list it; read by :meth:`check`), else
        litellm's ``max_input_tokens`` for the model (its bundled table, offline); None: unknown."""
        if not self._window_known:
            self._window_known = True
            if not self.served:
                try:
                    info = _litellm().get_model_info(self.model)
                    value = info.get("max_input_tokens") or info.get("max_tokens")
                except Exception:  # a model litellm has no entry for
                    value = None
                self._window = int(value) if isinstance(value, int) and value > 0 else None
        return self._window

    @property
    def default_temperature(self) -> float | None:  # type: ignore[override]
        """``temperature=`` given to the backend; None: the provider's default (usually sampling)."""
        value = self.completion_kwargs.get("temperature")
        return float(value) if value is not None else None

    @property
    def cache_identity(self) -> str:
        """The name plus what else decides replies: the model (a served one's id), the servers,
        and the provider options (``reasoning_effort``, ``top_p``, ``seed``, ...): two backends
        named alike but set apart never share cached replies."""
        options = json.dumps(self.completion_kwargs, sort_keys=True, default=repr)
        return f"{self.name}|{self.model}|{','.join(self.api_bases)}|{options}"

    @property
    def default_max_tokens(self) -> int | None:  # type: ignore[override]
        value = self.completion_kwargs.get("max_tokens")
        return int(value) if isinstance(value, int) else None

    @classmethod
    def served(cls, base_url: str, *, model: str | None = None, **kwargs: Any) -> LiteLLMBackend:
        """An OpenAI-compatible server at ``base_url`` (``.../v1``); the model name
        is read from its ``/models`` list unless given. Several comma-separated URLs are
        replicas of one model, balanced by litellm's Router."""
        urls = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()]
        if not urls:
            from loopagent.errors import ModelSpecError

            raise ModelSpecError(f"served: needs a base URL like http://127.0.0.1:8000/v1, got {base_url!r}")
        name = kwargs.pop("name", None) or (f"served:{','.join(urls)}" if len(urls) > 1 else None)
        backend = cls(f"openai/{model}" if model else "openai/", api_base=urls[0],
                      api_key=kwargs.pop("api_key", None) or "EMPTY", served=True, name=name, **kwargs)
        backend.api_bases = urls
        return backend

    # -- checks ------------------------------------------------------------------------
    def check(self) -> None:
        if self.served:
            self._resolve_served_model()
            return
        if self.api_key or self.api_base:
            return
        report = _litellm().validate_environment(self.model)
        missing = report.get("missing_keys") or []
        if not report.get("keys_in_environment", True) and missing:
            keys = ", ".join(missing)
            raise MissingAPIKeyError(
                f"{self.name} needs {keys} in the environment; set it (export {missing[0]}=...) "
                "or pass api_key=... to model()"
            )

    def _resolve_served_model(self) -> None:
        if len(self.api_bases) > 1:
            self._resolve_replicas()
            return
        listing = _served_listing(self.api_base, "URL", require=not self._resolved)
        if not self._resolved:
            self.model = f"openai/{listing[0]['id']}"
            self._resolved = True
        self._window_from(listing)

    def _window_from(self, listing: list[dict[str, Any]]) -> None:
        """Take the served model's ``max_model_len`` (vLLM lists it) unless a window was given."""
        if self._window_known and self._window is not None:
            return
        wanted = self.model.removeprefix("openai/")
        for entry in listing:
            value = entry.get("max_model_len")
            if entry.get("id") == wanted and isinstance(value, int) and value > 0:
                self._window, self._window_known = value, True
                return

    def _resolve_replicas(self) -> None:
        """Check every replica and build the Router (model names read per replica)."""
        deployments = []
        listings = []
        for base in self.api_bases:
            listing = _served_listing(base, "URLs")
            listings.append(listing)
            name = self.model if self._resolved else f"openai/{listing[0]['id']}"
            deployments.append({"model_name": "served", "litellm_params": {
                "model": name, "api_base": base, "api_key": self.api_key, "timeout": self.timeout_s}})
        self.model = deployments[0]["litellm_params"]["model"]
        self._router = _litellm().Router(model_list=deployments, num_retries=self.num_retries)
        self._resolved = True
        self._window_from(listings[0])

    # -- calls -------------------------------------------------------------------------
    async def acomplete(
        self, messages: Sequence[Message], *, loops: int | None = None, max_tokens: int | None = None, **kwargs: Any
    ) -> Completion:
        loops = self.validate_loops(loops)
        gate = _gate_options(kwargs, loops, self.name)
        if not self._resolved or (len(self.api_bases) > 1 and self._router is None):
            self._resolve_served_model()
        litellm = _litellm()
        params: dict[str, Any] = {**self.completion_kwargs, **kwargs}
        if max_tokens is not None:
            params["max_tokens"] = check_int(max_tokens, "max_tokens", minimum=1)
        if kwargs.get("temperature") is not None:
            params["temperature"] = check_temperature(kwargs["temperature"], model=self.name)
        if loops is not None:
            params["extra_body"] = {**params.get("extra_body", {}), "loops": loops, **gate}
        start = time.perf_counter()
        try:
            if self._router is not None:
                resp = await self._router.acompletion(model="served", messages=list(messages), timeout=self.timeout_s,
                                                      **params)
            else:
                resp = await litellm.acompletion(
                    model=self.model,
                    messages=list(messages),
                    api_base=self.api_base,
                    api_key=self.api_key,
                    timeout=self.timeout_s,
                    num_retries=self.num_retries,
                    **params,
                )
        except Exception as e:
            raise _translate(e, self.name) from None
        wall = time.perf_counter() - start
        choice = resp.choices[0]
        text = choice.message.content or ""
        usage = getattr(resp, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        estimated = prompt_tokens is None or completion_tokens is None
        if prompt_tokens is None:
            prompt_tokens = self.count_tokens(messages_text(messages))
        if completion_tokens is None:
            completion_tokens = self.count_tokens(text)
        stats = _loop_stats(usage, loops, int(prompt_tokens) + int(completion_tokens), gate)
        return Completion(
            text=text,
            model=self.name,
            usage=Usage(
                prompt_tokens=int(prompt_tokens),
                completion_tokens=int(completion_tokens),
                loop_tokens=(stats.computed_loop_tokens if stats is not None and stats.counted
                             else loop_usage(int(prompt_tokens), int(completion_tokens), loops,
                                             stats.executed_mean if stats is not None else None)),
                usd=self._price(resp),
                wall_s=wall,
                tokens_estimated=estimated,
            ),
            loops=stats,
            finish_reason=getattr(choice, "finish_reason", None),
        )

    def _price(self, resp: Any) -> float | None:
        if self.served:
            return None
        try:
            cost = _litellm().completion_cost(completion_response=resp)
        except Exception:  # unknown model price
            return None
        return float(cost) if cost else None


def _served_listing(base: str, what: str, *, require: bool = True) -> list[dict[str, Any]]:
    """The models an OpenAI-compatible server lists at ``base/models`` (entries with an ``id``;
    checks it is reachable)."""
    url = f"{base}/models"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - user-given local URL
            listing = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise BackendUnavailableError(
            f"cannot reach the model server at {base} ({e}); start it (e.g. `loopagent serve ...`) "
            f"or check the {what} in the served: spec"
        ) from None
    models = [m for m in listing.get("data", []) if isinstance(m, dict) and isinstance(m.get("id"), str)]
    if require and not models:
        raise BackendUnavailableError(f"the server at {base} lists no models at {url}")
    return models


def _gate_options(kwargs: dict[str, Any], loops: int | None, name: str) -> dict[str, Any]:
    """Pop the exit gate's options of a call (checked for form here; whether the served
    checkpoint has a gate is the server's check, HTTP 400)."""
    threshold, floor = kwargs.pop("exit_threshold", None), kwargs.pop("min_loops", None)
    if threshold is None and floor is None:
        return {}
    if loops is None:
        raise InvalidLoopsError(f"{name}: exit_threshold/min_loops need a looped served model (give it loops=N)")
    threshold, floor = check_gate(threshold, floor, loops=loops, has_gate=True, model=name)
    return {k: v for k, v in (("exit_threshold", threshold), ("min_loops", floor)) if v is not None}


def _usage_field(usage: Any, name: str) -> Any:
    value = getattr(usage, name, None) if usage is not None else None
    if value is None and isinstance(usage, dict):
        value = usage.get(name)
    return value


def _loop_stats(usage: Any, loops: int | None, tokens: int, gate: dict[str, Any]) -> LoopStats | None:
    """The call's ``LoopStats``: counted when the server reported ``loop_tokens``
    (``loopagent serve``), else from its ``loops_executed_mean`` or the budget."""
    if loops is None:
        return None
    computed = _usage_field(usage, "loop_tokens")
    executed = _usage_field(usage, "loops_executed_mean")
    histogram = _usage_field(usage, "loop_exit_histogram")
    counted = isinstance(computed, int) and not isinstance(computed, bool)
    if not isinstance(executed, (int, float)) or isinstance(executed, bool):
        executed = computed / tokens if counted and tokens else None
    return LoopStats(
        requested=loops,
        executed_mean=float(executed) if executed is not None else float(loops),
        exit_histogram={int(k): int(v) for k, v in histogram.items()} if isinstance(histogram, dict) else None,
        computed_loop_tokens=int(computed) if counted else None,
        counted=counted,
        min_loops=(_usage_field(usage, "loop_min_loops") or gate.get("min_loops")) if gate else None,
        exit_threshold=(_usage_field(usage, "loop_exit_threshold") or gate.get("exit_threshold")) if gate else None,
    )


def _translate(error: Exception, name: str) -> Exception:
    kind = type(error).__name__
    message = str(error).strip().splitlines()[0] if str(error).strip() else kind
    if kind in ("APIConnectionError", "ServiceUnavailableError", "InternalServerError", "Timeout"):
        return BackendUnavailableError(f"{name}: {kind}: {message}")
    if kind == "AuthenticationError":
        return MissingAPIKeyError(f"{name}: the provider rejected the API key: {message}")
    return BackendError(f"{name}: {kind}: {message}")
