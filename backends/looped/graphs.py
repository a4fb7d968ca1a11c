"""Greedy decoding of a looped model with static shapes, replayed as CUDA graphs.

A decode step of a looped model is a long chain of small kernels (``loops`` times the core
block per token), so at small batch the time goes to Python and kernel launches, not math.
:class:`GraphDecoder` runs the whole step, embed -> prelude -> ``loops`` x core -> coda ->
norm -> lm_head, with shapes and addresses that never change, and captures it once per
batch-size bucket in a ``torch.cuda.CUDAGraph``; each token is then one graph replay.

What makes the step static:

- :class:`StaticSlot`: every layer's keys/values (per prelude layer, per (loop, core layer)
  or per core layer with ``kv_cache="shared"``, per coda layer) live in preallocated
  ``[bucket, kv_heads, max_len, head_dim]`` buffers; a step writes its column in place
  (``index_copy_`` at a device-tensor position) and attends to the whole buffer under a
  boolean key mask ``[bucket, 1, 1, max_len]`` (columns not written yet and left padding
  are masked).
- Dense loops: every row of the bucket runs every loop, so nothing is gathered. The decoder
  therefore takes one uniform loop budget and no exit gate; mixed budgets and the gate
  (tokens that stop early) decode eagerly with ``model.generate`` / ``model(...)``.
- Batches are padded up to the next bucket (1, 2, 4, ... by default); padded rows are
  masked garbage that nobody reads.

Prefill is the model's normal eager forward (a :class:`LoopedCache`); its keys/values are
then copied into the static buffers. ``capture=False`` (always on CPU) runs the very same
static step eagerly: that is what the CPU tests compare with the model's cached decoding.

Work accounting is honest: ``core_tokens`` counts, per real row, the token rows its prompt
sent through the core block (the eager prefill's count) plus ``loops`` for every decode
step that fed one of its tokens, which is what the eager decode computes for it. The graph
runs every row of the bucket every step, so rows of nobody also compute: padded bucket rows,
and rows that already finished while others go on; that work is reported apart, as
``idle_core_tokens`` (waste: the price of static shapes, not any request's work).

Example::

    decoder = GraphDecoder(model, loops=4, max_len=512)               # CUDA: graphs, CPU: eager
    out = decoder.generate(input_ids, attention_mask=mask, max_new_tokens=64, eos_token_id=tok.eos_token_id)
    out.tokens, out.lengths, out.core_tokens
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from loopagent.errors import ConfigError, InvalidLoopsError

from .functional import initial_state
from .modeling_looped import LoopedForCausalLM, _rope

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32)


class StaticSlot:
    """One layer's keys/values for static decoding: ``keys``/``values`` [b, kv_heads, max_len,
    head_dim], written in place at column ``pos`` (a shared [1] long tensor on the device, so
    that a captured graph reads the step's position from memory, not from Python).

    ``LoopedAttention`` calls :meth:`update` instead of concatenating when it gets a slot as
    its ``past``.

    Example::

        slot = StaticSlot(torch.zeros(2, 4, 16, 8), torch.zeros(2, 4, 16, 8), pos=torch.tensor([3]))
        keys, values = slot.update(k, v)   # k, v: [2, 4, 1, 8] land in column 3; keys is slot.keys
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor) -> None:
        self.keys, self.values, self.pos = keys, values, pos

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's ``k``/``v`` ([b, kv_heads, 1, head_dim]) at ``pos``; return the whole buffers."""
        self.keys.index_copy_(2, self.pos, k)
        self.values.index_copy_(2, self.pos, v)
        return self.keys, self.values


class _Bucket:
    """The static tensors of one batch-size bucket (inputs, KV slots, logits) and its graph."""

    def __init__(self, model: LoopedForCausalLM, size: int, max_len: int, loops: int) -> None:
        c = model.config
        device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
        self.size = size
        self.input_ids = torch.zeros(size, 1, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(size, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # the column this step writes
        self.key_mask = torch.zeros(size, max_len, dtype=torch.bool, device=device)
        self.logits = torch.zeros(size, c.vocab_size, dtype=torch.float32, device=device)
        core = ([("core", i) for i in range(c.num_core_layers)] if c.kv_cache == "shared"
                else [("core", loop, i) for loop in range(loops) for i in range(c.num_core_layers)])
        keys = [("prelude", i) for i in range(c.num_prelude_layers)] + core + [
            ("coda", i) for i in range(c.num_coda_layers)]
        shape = (size, c.num_key_value_heads, max_len, c.head_dim)
        self.slots = {key: StaticSlot(torch.zeros(shape, dtype=dtype, device=device),
                                      torch.zeros(shape, dtype=dtype, device=device), self.pos) for key in keys}
        self.graph: torch.cuda.CUDAGraph | None = None


def _static_step(model: LoopedForCausalLM, bucket: _Bucket, loops: int) -> None:
    """One decode step on ``bucket``'s static tensors: reads ``input_ids``, ``position_ids``,
    ``pos`` and ``key_mask``, writes every layer's K/V column ``pos`` and the ``logits``.

    Dense: every row runs all ``loops`` (no gate, one budget). The loop body calls the
    model's own modules as the dense branch of ``LoopedModel._loops`` does (``run_core``),
    through the kernels when ``model.model.uses_kernels`` says so. Idempotent for fixed
    inputs, so warm-up runs before a capture change nothing.
    """
    m, c = model.model, model.config
    bucket.key_mask.index_fill_(1, bucket.pos, True)  # the new token: seen by itself and later ones
    mask = bucket.key_mask[:, None, None, :]
    x = m.embed_tokens(bucket.input_ids)
    if c.embedding_scale != 1.0:
        x = x * c.embedding_scale
    rope = _rope(c, bucket.position_ids, x.dtype)
    fused = m.uses_kernels(x.device)
    for i, module in enumerate(m.prelude):
        x = module.forward_stack(x, rope, mask, bucket.slots["prelude", i], fused)[0]
    e = x
    s = initial_state(e, c.initial_state, c.initial_state_std)
    shared = c.kv_cache == "shared"
    invariant = m.injection.loop_invariant(e) if fused else None
    for loop in range(loops):
        if fused:
            s, normed = m.injection.forward_fused(s, invariant, m.core[0].input_layernorm)
        else:
            s = m.injection(s, e)
        for i, module in enumerate(m.core):
            slot = bucket.slots[("core", i) if shared else ("core", loop, i)]
            if fused:
                nxt = m.core[i + 1].input_layernorm if i + 1 < len(m.core) else m.loop_norm
                s, normed, _ = module.forward_fused(s, normed, rope, mask, slot, loop, None, nxt)
            else:
                s, _ = module(s, rope, mask, slot, loop)
        if m.loop_norm is not None:
            s = normed if fused else m.loop_norm(s)
    h = m.norm(s) if c.norm_before_coda else s
    for i, module in enumerate(m.coda):
        h = module.forward_stack(h, rope, mask, bucket.slots["coda", i], fused)[0]
    bucket.logits.copy_(model.lm_head(m.norm(h)[:, -1]).float())


@dataclass
class GraphGeneration:
    """What :meth:`GraphDecoder.generate` returns.

    ``tokens`` [b, n]: the greedy token of every step (a row that finished early keeps
    getting tokens until the batch stops; they are not its output). ``lengths`` [b]: the
    row's new tokens before its first EOS. ``finished`` [b]: it produced EOS.
    ``core_tokens`` [b]: token rows the row sent through the core block (prefill + ``loops``
    per decode step that fed one of its tokens, as eager decoding computes). ``row_steps``
    [b]: those decode steps. ``idle_core_tokens``: core rows run for nobody (the bucket's
    padded rows, and rows already finished while others went on: waste). ``steps``: decode
    steps (graph replays).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor
    core_tokens: torch.Tensor
    row_steps: torch.Tensor
    idle_core_tokens: int
    steps: int

    def row_tokens(self, row: int) -> list[int]:
        """The new tokens of ``row`` (up to, not including, its first EOS)."""
        return self.tokens[row, : int(self.lengths[row])].tolist()


class GraphDecoder:
    """Greedy decoding with a static decode step, captured as one CUDA graph per batch bucket.

    Built for a model, one uniform loop budget, a max length (prompt + new tokens, the
    columns of the static KV buffers) and batch-size buckets; the buffers and the graph of
    a bucket are made on its first use (graphs share one memory pool). ``capture``: None
    captures on CUDA and runs eagerly elsewhere; False always runs the static step eagerly.

    Not covered, decode eagerly instead (``model.generate`` / ``model(..., cache=...)``):
    mixed per-row budgets and the exit gate (``InvalidLoopsError`` / ``ConfigError`` here),
    sampling. A graph is captured with the kernel mode in force at capture time.
    ``compile=True`` runs the static step through ``torch.compile`` (under the graph too, when
    capturing).

    Memory per bucket used: K and V buffers of ``[bucket, kv_heads, max_len, head_dim]`` for
    every prelude and coda layer and every (loop, core layer) (every core layer with
    ``kv_cache="shared"``). Each step attends over all ``max_len`` columns (masked): choose
    ``max_len`` near the longest prompt + new tokens.

    Example::

        decoder = GraphDecoder(model, loops=4, max_len=256, buckets=(1, 2, 4, 8))
        out = decoder.generate(ids, attention_mask=mask, max_new_tokens=32, eos_token_id=2)
        # or step by step:
        logits = decoder.prefill(ids, attention_mask=mask)
        logits = decoder.step(logits.argmax(-1))
    """

    def __init__(
        self,
        model: LoopedForCausalLM,
        loops: int | Sequence[int] | None = None,
        max_len: int = 1024,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        capture: bool | None = None,
        exit_threshold: float | None = None,
        min_loops: int | None = None,
        compile: bool = False,
    ) -> None:
        if exit_threshold is not None or min_loops is not None:
            raise ConfigError("GraphDecoder runs every loop for every token: no exit gate (exit_threshold/min_loops); "
                              "decode gated models eagerly with model.generate(...)")
        if isinstance(loops, torch.Tensor):
            loops = loops.tolist()
        if isinstance(loops, Sequence) and not isinstance(loops, str):
            if len(set(loops)) != 1:
                raise InvalidLoopsError(f"GraphDecoder takes one loop budget for the batch, got loops={list(loops)}; "
                                        "decode mixed budgets eagerly with model.generate(..., loops=[...])")
            loops = loops[0]
        self.loops = model.model.check_loops(loops)
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
            raise ConfigError(f"max_len must be an integer >= 2 (prompt + new tokens), got {max_len!r}")
        sizes = sorted(set(buckets))
        if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
            raise ConfigError(f"buckets must be positive batch sizes, got {list(buckets)!r}")
        self.device = model.lm_head.weight.device
        cuda = self.device.type == "cuda"
        if capture and not cuda:
            raise ConfigError(f"CUDA graphs need the model on a CUDA device, it is on {self.device}; use capture=False")
        self.model = model
        self.max_len = max_len
        self.buckets = tuple(sizes)
        self.capture = cuda if capture is None else capture
        # torch.compile of the static step (shapes never change: one compilation per bucket):
        # the baseline bench/kernels.py compares the kernels with, alone or under the graphs
        self._static_step = torch.compile(_static_step, dynamic=False) if compile else _static_step
        self._buckets: dict[int, _Bucket] = {}
        self._pool: Any = None
        # the decode in progress (prefill starts one)
        self._current: _Bucket | None = None
        self._rows = 0
        self._seen = 0
        self._core_tokens = torch.zeros(0, dtype=torch.long)
        self._idle_core_tokens = 0

    def bucket_for(self, b: int) -> int:
        """The bucket a batch of ``b`` rows runs in: the smallest one that holds it."""
        for size in self.buckets:
            if size >= b:
                return size
        raise ConfigError(f"a batch of {b} rows is bigger than the largest bucket ({self.buckets[-1]}); "
                          f"split it or build the GraphDecoder with a bigger bucket")

    @property
    def core_tokens(self) -> torch.Tensor:
        """Token rows each real row of the current decode sent through the core block so far."""
        return self._core_tokens.clone()

    @property
    def idle_core_tokens(self) -> int:
        """Core rows run so far for nobody in the current decode: padded bucket rows, and rows
        :meth:`step` was told are finished (waste)."""
        return self._idle_core_tokens

    @torch.no_grad()
    def prefill(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Start a decode: run the prompt eagerly (left padding allowed), copy its keys/values
        into the bucket's static buffers, return the logits of its last position ([b, vocab])."""
        b, t = input_ids.shape
        size = self.bucket_for(b)
        if t >= self.max_len:
            raise ConfigError(f"a prompt of {t} tokens leaves no room to decode within max_len={self.max_len}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.model(input_ids, attention_mask=attention_mask, loops=self.loops, use_cache=True)
        bucket = self._buckets.get(size)
        if bucket is None:
            bucket = self._buckets[size] = _Bucket(self.model, size, self.max_len, self.loops)
        for key, slot in bucket.slots.items():
            k, v = out.cache.get(key)
            # stale columns of an earlier decode are masked, but must stay finite (0 * nan is nan)
            slot.keys.zero_()
            slot.values.zero_()
            slot.keys[:b, :, :t].copy_(k)
            slot.values[:b, :, :t].copy_(v)
        bucket.key_mask.zero_()
        bucket.key_mask[:b, :t] = attention_mask.bool()
        bucket.input_ids.zero_()
        bucket.position_ids.zero_()
        bucket.position_ids[:b, 0] = attention_mask.long().sum(1)  # the first new token's position
        self._current, self._rows, self._seen = bucket, b, t
        self._core_tokens = out.core_tokens.detach().to(torch.long).clone()
        self._idle_core_tokens = 0
        return out.logits[:, -1]

    @torch.no_grad()
    def step(self, token_ids: torch.LongTensor, live: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per row ([b]); return the next logits ([b, vocab], a copy).

        ``live`` [b] (bool): the rows whose token this is (None: all); the others already
        finished, run anyway (static shapes) and are counted as idle work, not theirs."""
        return self._step(token_ids, live).clone()

    def _step(self, token_ids: torch.LongTensor, live: torch.Tensor | None = None) -> torch.Tensor:
        bucket, b = self._current, self._rows
        if bucket is None:
            raise ConfigError("GraphDecoder.step needs a prefill first")
        if token_ids.shape != (b,):
            raise ConfigError(f"step takes one token per row ([{b}]), got shape {list(token_ids.shape)}")
        if self._seen >= self.max_len:
            raise ConfigError(f"the decode reached max_len={self.max_len}; build the GraphDecoder with a larger one")
        bucket.input_ids[:b, 0].copy_(token_ids)
        bucket.pos.fill_(self._seen)
        if self.capture:
            with torch.cuda.device(self.device):  # graphs capture and replay on the current device
                if bucket.graph is None:
                    bucket.graph = self._capture(bucket)
                bucket.graph.replay()
        else:
            self._static_step(self.model, bucket, self.loops)
        bucket.position_ids[:b] += 1
        self._seen += 1
        if live is None:
            self._core_tokens += self.loops
            self._idle_core_tokens += (bucket.size - b) * self.loops
        else:
            self._core_tokens += self.loops * live.to(self._core_tokens.device, torch.long)
            self._idle_core_tokens += (bucket.size - int(live.sum())) * self.loops
        return bucket.logits[:b]

    def _capture(self, bucket: _Bucket) -> torch.cuda.CUDAGraph:
        # Warm up on a side stream (lazy init, Triton compilation, cuBLAS workspaces), as
        # torch.cuda.graphs requires; the step is idempotent, so this leaves the state as is.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._static_step(self.model, bucket, self.loops)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # One pool for all buckets: every tensor a capture allocates is a temporary (inputs,
        # KV and logits are preallocated outside), and graphs never replay concurrently.
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA work another thread runs meanwhile (another model) does not break the capture
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            self._static_step(self.model, bucket, self.loops)
        return graph

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        eos_token_id: int | Sequence[int] | None = None,
    ) -> GraphGeneration:
        """Greedy decoding: prefill, then one static step (graph replay) per new token, until
        every row produced ``eos_token_id`` or ``max_new_tokens`` were generated (the last
        token is never fed). Needs ``prompt length + max_new_tokens <= max_len``."""
        b, t = input_ids.shape
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if t + max_new_tokens > self.max_len:
            raise ConfigError(f"a prompt of {t} tokens + max_new_tokens={max_new_tokens} exceeds "
                              f"max_len={self.max_len}; build the GraphDecoder with max_len >= {t + max_new_tokens}")
        eos = None if eos_token_id is None else torch.tensor(
            [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=input_ids.device)
        logits = self.prefill(input_ids, attention_mask)
        picks: list[torch.Tensor] = []
        done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        row_steps = torch.zeros(b, dtype=torch.long, device=input_ids.device)
        steps = 0
        for i in range(max_new_tokens):
            nxt = logits.argmax(-1)
            picks.append(nxt)
            if eos is not None:
                done |= torch.isin(nxt, eos)
            if i == max_new_tokens - 1 or bool(done.all()):
                break  # the last token is never fed: nothing would read its logits
            logits = self._step(nxt, ~done)  # a finished row's token is fed for nobody
            row_steps += (~done).long()
            steps += 1
        tokens = torch.stack(picks, 1)
        n = tokens.shape[1]
        if eos is None:
            lengths = torch.full((b,), n, dtype=torch.long, device=tokens.device)
        else:
            hit = torch.isin(tokens, eos)
            lengths = torch.where(hit, torch.arange(n, device=tokens.device), n).min(1).values
        return GraphGeneration(tokens=tokens, lengths=lengths, finished=done.clone(),
                               core_tokens=self.core_tokens, row_steps=row_steps,
                               idle_core_tokens=self._idle_core_tokens, steps=steps)


__all__ = ["DEFAULT_BUCKETS", "GraphDecoder", "GraphGeneration", "StaticSlot"]
