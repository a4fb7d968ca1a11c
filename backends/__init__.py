"""Model backends behind one protocol (``loopagent.backends``).

- ``base``: the protocol: :class:`~loopagent.backends.base.Backend` (``acomplete``, with
  sync, batch and async-batch forms derived), ``Completion``, ``Usage``, ``LoopStats``.
- ``scripted``: ``ScriptedBackend``, deterministic replies for tests and docs.
- ``litellm``: ``LiteLLMBackend``, every API provider and any OpenAI-compatible server
  (``served:URL``, loop budget per request).
- ``local``: ``LocalLoopedBackend``, the base of the in-process looped backends (checkpoint,
  loop budgets, tokenizer, lazy loading); ``checkpoint``: reading a looped checkpoint's config.
- ``hf``: ``HFLoopedBackend``, a looped checkpoint generated with transformers and torch.
- ``vllm/``: the vLLM model class and plugin, ``VLLMBackend`` (offline engine) and
  ``loopagent serve``; per-request loop budgets in shared batches.
- ``looped/``: the reference model ``LoopedForCausalLM`` (config, modeling, the shared tensor
  math in ``functional``), its byte tokenizer, training utilities and checkpoint converters.
- ``looped/graphs``: ``GraphDecoder``, static-shape decoding replayed as CUDA graphs.
- ``kernels/``: Triton kernels of the loop step (fused norms, injection, SwiGLU, the exit
  gate's halting update, compaction), each next to its torch reference; used on CUDA.
- ``embedded/``: the small looped models shipped with the package (``model("embedded")``).

``model(spec, loops=...)`` in :mod:`loopagent.models` builds any of them from a spec string.
"""
