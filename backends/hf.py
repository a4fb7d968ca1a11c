"""Looped checkpoints through transformers: ``model("hf:/path/to/ckpt", loops=4)``.

Loads a :class:`LoopedForCausalLM` checkpoint (and its tokenizer) on first use and
generates with each call's own loop budget: conversations with different budgets share
one left-padded batch and one cached decode (the model takes a budget per row; a row
stops computing after its budget, a finished row is fed masked and computes nothing).
The figures reported are counted where the model ran them: ``Usage.loop_tokens`` is the
token rows a conversation sent through the core block, summed over loops and over
prefill and decode (exit gates stop tokens early, and a stopped token computes nothing).

On a CUDA device, greedy calls with one budget for the batch and no exit gate decode through
``looped.graphs.GraphDecoder``: each token is one CUDA graph replay of the whole step (one
graph per batch bucket and budget, cached on the loaded model). There every row of the bucket
runs every loop of every step until the batch stops; a row's ``loop_tokens`` is what eager
decoding computes for it (its prompt, and its loops for each token fed while it is live), and
what ran for finished and padded rows is idle work, nobody's. Sampling, mixed budgets, the
gate, the CPU, and ``LOOPAGENT_KERNELS=off`` keep the eager loop.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopagent.errors import BackendError, ModelSpecError

from .base import Completion, LoopStats, Message, Usage
from .local import Gate, LocalLoopedBackend, with_chat_template

#: CUDA graph decoders kept per loaded model (least recently used dropped first).
_KEPT_DECODERS = 2


@dataclass
class _HFModel:
    """What the backend loads on first use (shared with its copies)."""

    model: Any
    tokenizer: Any
    #: One generation at a time: the model's forward is not thread-safe.
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: CUDA graph decoders (``looped.graphs.GraphDecoder``) by (loop budget, batch buckets).
    decoders: dict[tuple[int, tuple[int, ...]], Any] = field(default_factory=dict)


class HFLoopedBackend(LocalLoopedBackend):
    """A looped model run in-process with torch.

    Example::

        child = HFLoopedBackend("ckpt/", loops=4, max_new_tokens=64)   # threads=N to pin torch's threads
        child.batch([[{"role": "user", "content": "x=1;y=x;?y"}]] * 8, loops=[1, 2, 4, 8] * 2)  # one batch
    """

    scheme = "hf"

    def __init__(
        self,
        path: str | Path,
        *,
        loops: int | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int = 32,
        seed: int = 0,
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(path, loops=loops, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         name=name)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.threads = threads

    # -- loading ---------------------------------------------------------------------------
    def _open(self) -> _HFModel:
        import torch
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .looped import LoopedForCausalLM

        dtype = getattr(torch, self.dtype) if self.dtype else torch.float32
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a run
        try:
            model = LoopedForCausalLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        try:
            tok = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as e:
            raise ModelSpecError(
                f"{str(self.path)!r} has no usable tokenizer ({e}); save one next to the weights"
            ) from None
        # Decoding a small model is a long chain of tiny ops: a second intra-op thread
        # buys nothing and costs 10-30x when the other core is busy. torch's thread
        # count is process-wide, so it is only changed for small models or on request.
        small = sum(p.numel() for p in model.parameters()) < 50_000_000
        if self.threads is not None or small:
            torch.set_num_threads(self.threads or 1)
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return _HFModel(model, with_chat_template(tok))

    @property
    def model(self) -> Any:
        """The ``LoopedForCausalLM`` (loaded on first use)."""
        return self._loaded().model

    # -- calls -----------------------------------------------------------------------------
    async def _agenerate(
        self, conversations: list[Sequence[Message]], budgets: list[int], max_new: int, gate: Gate | None,
        temperature: float,
    ) -> list[Completion]:
        return await asyncio.to_thread(self._generate_all, conversations, budgets, max_new, gate, temperature)

    def _generate_all(
        self, conversations: list[Sequence[Message]], budgets: list[int], max_new: int, gate: Gate | None,
        temperature: float,
    ) -> list[Completion]:
        # Mixed budgets share a batch: the model runs each row to its own budget.
        results: list[Completion] = []
        with self._loaded().lock:
            for start in range(0, len(conversations), self.batch_size):
                chunk = slice(start, start + self.batch_size)
                results += self._generate(conversations[chunk], budgets[chunk], max_new, gate, temperature)
        return results

    def _generate(
        self, conversations: list[Sequence[Message]], budgets: list[int], max_new: int, gate: Gate | None,
        temperature: float,
    ) -> list[Completion]:
        import torch

        start = time.perf_counter()
        tok = self.tokenizer
        exit_threshold, min_loops = (gate.exit_threshold, gate.min_loops) if gate is not None else (None, None)
        prompts = self._prompts(conversations)
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        prompt_lens = mask.sum(1).tolist()
        graph_loops = self._graph_loops(budgets, gate, max_new, temperature)
        try:
            with torch.no_grad():
                if graph_loops is not None:
                    new_tokens, done, work, depths = self._decode_graphed(ids, mask, graph_loops, max_new)
                else:
                    new_tokens, done, work, depths = self._decode_eager(ids, mask, budgets, max_new, gate,
                                                                        temperature)
        except RuntimeError as e:
            raise BackendError(f"{self.name}: generation failed: {e}") from None
        wall = time.perf_counter() - start
        completions = []
        for row in range(len(conversations)):
            steps, computed = depths[row], int(work[row])
            histogram = ({int(k): int(v) for k, v in zip(*torch.unique(steps, return_counts=True))}
                         if exit_threshold is not None else None)
            completions.append(Completion(
                text=tok.decode(new_tokens[row], skip_special_tokens=True),
                model=self.name,
                usage=Usage(prompt_tokens=int(prompt_lens[row]), completion_tokens=len(new_tokens[row]),
                            loop_tokens=computed, wall_s=wall),
                loops=LoopStats(requested=budgets[row], executed_mean=float(steps.float().mean()),
                                exit_histogram=histogram, computed_loop_tokens=computed, counted=True,
                                min_loops=min_loops, exit_threshold=exit_threshold),
                finish_reason="stop" if bool(done[row]) else "length",
                model_input=prompts[row],
            ))
        return completions

    def _decode_eager(self, ids: Any, mask: Any, budgets: list[int], max_new: int, gate: Gate | None,
                      temperature: float) -> tuple:
        """The model's cached decode, one forward per token: (new tokens, done, work, depths) per row."""
        import torch

        model = self.model
        exit_threshold, min_loops = (gate.exit_threshold, gate.min_loops) if gate is not None else (None, None)
        run = dict(loops=list(budgets), exit_threshold=exit_threshold, min_loops=min_loops, use_cache=True)
        eos = self.tokenizer.eos_token_id
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        rows = ids.shape[0]
        new_tokens: list[list[int]] = [[] for _ in range(rows)]
        depths = [mask.new_zeros(0) for _ in range(rows)]  # depth of every token a row processed
        work = torch.zeros(rows, dtype=torch.long, device=self.device)  # core rows per row, counted by the model
        done = torch.zeros(rows, dtype=torch.bool, device=self.device)
        out = model(ids, attention_mask=mask, **run)
        work += out.core_tokens
        for row in range(rows):
            depths[row] = out.exit_steps[row][mask[row].bool()]
        cache = out.cache
        for step in range(max_new):
            nxt = self._pick(out.logits[:, -1], generator, temperature)
            for row in range(rows):
                if not done[row]:
                    if nxt[row].item() == eos:
                        done[row] = True
                    else:
                        new_tokens[row].append(int(nxt[row]))
            if bool(done.all()) or step == max_new - 1:
                break  # the last token is never fed: nothing would read its logits
            # Finished rows are fed masked: they compute nothing in the core.
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
            out = model(nxt[:, None], attention_mask=mask, cache=cache, **run)
            work += out.core_tokens
            for row in range(rows):
                if not done[row]:
                    depths[row] = torch.cat([depths[row], out.exit_steps[row]])
        return new_tokens, done, work, depths

    def _graph_loops(self, budgets: Sequence[int], gate: Gate | None, max_new: int, temperature: float) -> int | None:
        """The loop budget to decode with :class:`~loopagent.backends.looped.graphs.GraphDecoder`
        (one CUDA graph replay per token), or None for the eager loop: graphs need a CUDA device,
        greedy decoding, one budget for the batch and no exit gate; ``LOOPAGENT_KERNELS=off``
        turns them off with the kernels (the one switch)."""
        import torch

        from .kernels import current_mode

        if (torch.device(self.device).type != "cuda" or temperature > 0 or gate is not None
                or len(set(budgets)) != 1 or max_new < 1 or current_mode() == "off"):
            return None
        return int(budgets[0])

    def _decode_graphed(self, ids: Any, mask: Any, loops: int, max_new: int) -> tuple:
        """:meth:`_decode_eager` through the graph decoder of ``loops`` (cached on the loaded
        model, the two used last: one per budget, holding one graph per batch bucket). A row's
        work is what eager decoding computes for it (prompt, and ``loops`` per token fed while
        it is live); what the graph runs for finished and padded rows is idle, nobody's."""
        import torch

        from .looped.graphs import DEFAULT_BUCKETS, GraphDecoder

        buckets = tuple(n for n in DEFAULT_BUCKETS if n < self.batch_size) + (self.batch_size,)
        needed = ids.shape[1] + max_new
        decoders = self._loaded().decoders
        decoder = decoders.pop((loops, buckets), None)  # re-inserted below: the most recently used last
        if decoder is None or decoder.max_len < needed:
            decoder = None  # free the smaller one's buffers before allocating
            while len(decoders) >= _KEPT_DECODERS:  # each holds static KV buffers for every loop and layer
                decoders.pop(next(iter(decoders)))
            # lengths rounded up to a power of two: few distinct decoders, each captured once per bucket
            max_len = max(256, 1 << (needed - 1).bit_length())
            decoder = GraphDecoder(self.model, loops=loops, max_len=max_len, buckets=buckets)
        decoders[loops, buckets] = decoder
        out = decoder.generate(ids, attention_mask=mask, max_new_tokens=max_new,
                               eos_token_id=self.tokenizer.eos_token_id)
        rows = ids.shape[0]
        new_tokens = [out.row_tokens(row) for row in range(rows)]
        # every token a row processed ran all loops: its real prompt tokens and the steps it was
        # live (what ran for it after it finished is idle work, nobody's: out.idle_core_tokens)
        depths = [torch.full((int(mask[row].sum()) + int(out.row_steps[row]),), loops) for row in range(rows)]
        return new_tokens, out.finished, out.core_tokens, depths

    def _pick(self, logits: Any, generator: Any, temperature: float) -> Any:
        import torch

        if temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, -1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
