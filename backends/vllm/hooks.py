"""How a request's loop budget travels from ``SamplingParams`` to the model's forward.

Installed by :func:`loopagent.backends.vllm.register` (vLLM runs it in every process
it starts). Both hooks do nothing unless the served model is a looped one.

1. **Admission** (``InputProcessor.process_inputs``, the front-end process, before the
   request reaches the engine): ``extra_args["loops"]`` is checked (a positive integer,
   at most ``max_loops``; absent means ``default_loops``) and a bad value raises
   ``VLLMValidationError``: ``LLM.generate`` raises it, the OpenAI server answers
   HTTP 400, and nothing is scheduled. The budget is then folded into the request's
   ``cache_salt`` (``loopagent-loops=N``, after any salt of the caller), so prefix-cache
   blocks are shared only between requests of the same budget: a prefix computed with
   2 loops holds no keys/values for loops 3..8 (its caches of those loops hold states
   frozen at loop 2, valid for no other budget).
2. **Model runner** (``GPUModelRunner._model_forward``, each worker; the CPU runner is a
   subclass): the runner keeps every scheduled request's sampling params in
   ``self.requests`` and its batch rows in order (``input_batch.req_ids``), with row
   ``i``'s tokens at ``query_start_loc[i]:query_start_loc[i+1]`` of the flattened batch.
   The hook repeats each row's budget over its tokens and calls the model with
   ``loop_budgets`` ([num_tokens] int tensor; padding tokens get the batch maximum) and
   ``loop_max``, ``loop_uniform`` and ``loop_levels`` (host values: the loop count, the
   fast path of a single-budget batch and the points where the set of still-looping
   tokens changes need no device sync).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loopagent.validation import check_loops

_INSTALLED = False
SALT_PREFIX = "loopagent-loops="


def is_looped_config(config: Any) -> bool:
    return (getattr(config, "model_type", None) == "looped"
            or "LoopedForCausalLM" in (getattr(config, "architectures", None) or []))


def resolve_loops(extra_args: dict[str, Any] | None, default: int, maximum: int) -> int:
    """The budget a request asks for; ``ValueError`` (vLLM's validation error when
    vLLM is importable) for anything but an integer in ``1..maximum``."""
    value = (extra_args or {}).get("loops")
    if value is None:
        return int(default)
    return check_loops(value, max_loops=maximum, error=lambda message: _validation_error(message, value))


_ERROR_CLASS: type[Exception] | None = None


def _validation_error(message: str, value: Any) -> Exception:
    """A ``ValueError`` that is also vLLM's ``VLLMValidationError`` (HTTP 400 in the server)."""
    global _ERROR_CLASS
    if _ERROR_CLASS is None:
        try:
            from vllm.exceptions import VLLMValidationError
        except ImportError:  # no vLLM here: a plain ValueError
            return ValueError(message)
        _ERROR_CLASS = type("LoopBudgetError", (VLLMValidationError, ValueError), {"__module__": __name__})
    return _ERROR_CLASS(message, parameter="loops", value=value)


def salted(cache_salt: str | None, loops: int) -> str:
    return f"{cache_salt}|{SALT_PREFIX}{loops}" if cache_salt else f"{SALT_PREFIX}{loops}"


def install() -> None:
    """Patch vLLM's input processor and V1 model runner (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    _patch_input_processor()
    _patch_model_runner()


def _patch_input_processor() -> None:
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor.process_inputs

    def process_inputs(self: Any, request_id: str, prompt: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        config = self.model_config.hf_config
        if not (is_looped_config(config) and isinstance(params, SamplingParams)):
            return original(self, request_id, prompt, params, *args, **kwargs)
        loops = resolve_loops(params.extra_args, config.default_loops, config.max_loops)
        request = original(self, request_id, prompt, params, *args, **kwargs)
        request.cache_salt = salted(request.cache_salt, loops)
        return request

    process_inputs.__wrapped__ = original  # type: ignore[attr-defined]
    InputProcessor.process_inputs = process_inputs


def _patch_model_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._model_forward

    def _model_forward(self: Any, input_ids: Any = None, positions: Any = None, intermediate_tensors: Any = None,
                       inputs_embeds: Any = None, **model_kwargs: Any) -> Any:
        if getattr(self.get_model(), "loopagent_loop_budgets", False):
            num_tokens = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            model_kwargs.update(loop_kwargs(self, num_tokens,
                                            (input_ids if input_ids is not None else inputs_embeds).device))
        return original(self, input_ids=input_ids, positions=positions, intermediate_tensors=intermediate_tensors,
                        inputs_embeds=inputs_embeds, **model_kwargs)

    _model_forward.__wrapped__ = original  # type: ignore[attr-defined]
    GPUModelRunner._model_forward = _model_forward


def loop_kwargs(runner: Any, num_tokens: int, device: Any) -> dict[str, Any]:
    """Per-token loop budgets of the batch the runner is about to run."""
    import torch

    config = runner.model_config.hf_config
    num_reqs = runner.input_batch.num_reqs
    starts = runner.query_start_loc.np[: num_reqs + 1]
    counts = np.diff(starts)
    budgets = np.empty(num_reqs, dtype=np.int64)
    for row, req_id in enumerate(runner.input_batch.req_ids[:num_reqs]):
        state = runner.requests[req_id]
        budget = getattr(state, "_loopagent_loops", None)
        if budget is None:
            params = state.sampling_params
            budget = resolve_loops(params.extra_args if params is not None else None, config.default_loops,
                                   config.max_loops)
            state._loopagent_loops = budget
        budgets[row] = budget
    loop_max = int(budgets.max()) if num_reqs else int(config.default_loops)
    per_token = np.repeat(budgets, counts)
    if per_token.size < num_tokens:  # padding tokens: their outputs are never read
        per_token = np.concatenate([per_token, np.full(num_tokens - per_token.size, loop_max, dtype=np.int64)])
    uniform = bool(num_reqs) and bool((budgets == loop_max).all())
    return {"loop_budgets": torch.from_numpy(per_token[:num_tokens]).to(device, non_blocking=True),
            "loop_max": loop_max, "loop_uniform": uniform, "loop_levels": frozenset(int(b) for b in budgets)}
