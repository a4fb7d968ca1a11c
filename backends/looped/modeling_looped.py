"""LoopedForCausalLM: a looped (recurrent-depth) transformer, the reference model.

    tokens -> embed -> prelude layers -> e
    s_0 = e (or zeros);  for l in range(loops):  s_{l+1} = Core(inject(s_l, e), loop=l)
    logits = lm_head(norm(coda(s_loops)))

``loops`` is chosen per forward (and per ``generate()`` call), one budget for the batch
or one per row; the core block's weights are shared across loops (plus optional per-loop
LoRA deltas). An optional exit gate lets each token stop once its cumulative exit
probability passes a threshold (never before ``min_loops``).

Adaptive depth saves real compute: at every loop only the *active* tokens go through the
core block (their rows are gathered; norms, projections and MLP run on ``[n, hidden]``,
attention runs queries of active tokens only against keys/values of all positions). A
token is inactive once its row's budget is reached, once the gate stopped it, and always
if it is masked (``attention_mask == 0``: left padding, or a finished row still fed in
batched decoding): those compute nothing in the core (depth 0). ``exit_steps`` is each
token's depth (the loops it computed) and ``core_tokens`` the token rows each batch row
sent through the core block, summed over loops: what is reported is what was computed.
When every token is active (no gate, one budget, no masked position) nothing is gathered.

KV rule of a stopped token: later tokens (and active tokens of the same loop) read, at
every loop ``l >= d`` of a token that stopped at depth ``d``, the keys/values of its last
computed loop ``d - 1`` ("reuse last exited", as in Ouro and continuous-depth batching);
a depth-0 (masked) position holds zeros, which no query reads (it is masked).

KV cache: ``per_loop`` keeps keys/values for every (loop, core layer), built for the
largest budget of the batch; the entries of loop ``l`` hold only the rows whose budget
exceeds ``l`` (the only ones that ever read them), so a mixed batch keeps and reads each
row's own loops and its still-looping rows attend without a gather. For each loop it stores
exactly what the uncached forward read at that loop (the rule above), so cached generation
equals an uncached forward exactly, with the gate and mixed budgets too. Entries grow in
place into spare room (a decoded token copies that token, not the cache). ``shared`` keeps
one entry per core layer (later positions read a position's K/V at the loop where it
stopped: its last computed loop) and processes positions one at a time, so it also matches
its own uncached forward exactly.

Kernels: on CUDA (with Triton, no gradient recorded) a forward runs its loop step through
``loopagent.backends.kernels``: the injection fused with the first core layer's pre-norm (its
loop-invariant part computed once per forward), each residual add fused with the norm after it,
SwiGLU in one pass, and with the exit gate one kernel for the gate, the halting update, the
state freeze and the depth count. Same semantics, float rounding aside; ``LOOPAGENT_KERNELS=off``
(or ``kernels.mode("off")``) runs plain torch everywhere.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from loopagent import validation
from loopagent.errors import InvalidLoopsError

from .. import kernels
from .configuration_looped import LoopedConfig
from .functional import apply_rope, fused_layer_tail, initial_state, lora_delta, rope_cos_sin, rope_inv_freq

# -- building blocks ------------------------------------------------------------------------


class LoopedRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class LoopLinear(nn.Linear):
    """``nn.Linear`` plus, optionally, a low-rank delta per loop (relaxed recursion)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int = 0, max_loops: int = 0) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.rank = rank
        if rank:
            self.lora_A = nn.Parameter(torch.randn(max_loops, rank, in_features) / math.sqrt(in_features))
            self.lora_B = nn.Parameter(torch.zeros(max_loops, out_features, rank))

    def forward(self, x: torch.Tensor, loop: int | None = None) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.rank and loop is not None:
            y = y + lora_delta(x, self.lora_A[loop], self.lora_B[loop])
        return y


def _rope(config: LoopedConfig, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_freq_scaling, positions.device)
    return rope_cos_sin(positions, inv_freq, dtype)  # [b, 1, t, head_dim]


class LayerKV(NamedTuple):
    """Keys/values a layer computed for a chunk (``k``, ``v``: [b, kv_heads, t, head_dim]; with
    ``_Active``, the chunk's latest: stopped tokens keep their last computed loop's). A cache
    entry passed as ``past`` was extended by them in place."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass
class _Active:
    """The tokens of a chunk that run one loop, and where they sit.

    Per-token ops see the active rows flattened, ``[n, d]`` in row-major order of
    (batch row, position); attention pads them per batch row into ``[b', m]`` query slots
    (``b'`` rows with an active token, ``m`` the most active tokens of a row) and reads
    keys/values of every position of those rows. ``latest_k``/``latest_v`` ([b, kv_heads,
    t, head_dim]) are the chunk's latest keys/values of the core layer being run.
    ``held``: the batch rows the loop's cache entry holds (``LoopedCache.rows_at``; None: all
    rows or no cache), and ``local``: where ``rows`` sit among those (None: they are all of them).
    """

    rows: torch.Tensor  # [b'] batch rows with an active token
    valid: torch.Tensor  # [b', m] bool: query slot j of row i holds an active token
    flat_rows: torch.Tensor  # [n] batch row of every active token
    flat_pos: torch.Tensor  # [n] its position in the chunk
    mask: torch.Tensor  # [b', 1, m, kv] attention mask of the query slots
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin of the active tokens: [n, 1, head_dim]
    latest_k: torch.Tensor | None = None
    latest_v: torch.Tensor | None = None
    held: torch.Tensor | None = None
    local: torch.Tensor | None = None
    runs: list[tuple[int, int, int]] | None = None

    def attend_from(self, local: torch.Tensor | None) -> None:
        """Where ``rows`` sit among the rows of the keys they attend to (None: they are all of them).

        On CPU attention then reads runs of consecutive rows in place, one call per run
        (``runs``: query row, key row, count): gathering the keys of a scattered subset copied
        all of their cache for every (loop, layer), as much as the attention itself read. On
        CUDA the gather is one kernel, cheaper than a launch per run."""
        self.local = local
        self.runs = None
        if local is not None and local.device.type == "cpu":
            idx = local.tolist()
            starts = [i for i in range(len(idx)) if i == 0 or idx[i] != idx[i - 1] + 1]
            self.runs = [(i, idx[i], end - i) for i, end in zip(starts, [*starts[1:], len(idx)])]

    @classmethod
    def of(cls, active: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> _Active:
        """The layout of ``active`` ([b, t] bool, at least one True); ``mask``: [b, 1, t, kv]."""
        counts = active.sum(1)
        rows = counts.nonzero().squeeze(1)
        m = int(counts.max())
        # active positions first, in order (a stable sort of "inactive" flags)
        order = torch.argsort((~active[rows]).to(torch.int8), dim=1, stable=True)[:, :m]
        valid = torch.arange(m, device=active.device)[None] < counts[rows][:, None]
        flat_rows = rows[:, None].expand(-1, m)[valid]
        flat_pos = order[valid]
        cos, sin = rope
        layout = cls(rows=rows, valid=valid, flat_rows=flat_rows, flat_pos=flat_pos,
                     mask=mask[rows[:, None], 0, order][:, None],
                     rope=(cos[flat_rows, 0, flat_pos][:, None], sin[flat_rows, 0, flat_pos][:, None]))
        layout.attend_from(None if rows.numel() == active.shape[0] else rows)
        return layout


class LoopedAttention(nn.Module):
    def __init__(self, config: LoopedConfig, core: bool) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        d, hd = config.hidden_size, config.head_dim
        rank = config.lora_rank if core else 0

        def proj(name: str, i: int, o: int, bias: bool) -> LoopLinear:
            return LoopLinear(i, o, bias, rank if name in config.lora_targets else 0, config.max_loops)

        qkv_bias = config.qkv_bias or config.attention_bias
        self.q_proj = proj("q_proj", d, self.num_heads * hd, qkv_bias)
        self.k_proj = proj("k_proj", d, self.num_kv_heads * hd, qkv_bias)
        self.v_proj = proj("v_proj", d, self.num_kv_heads * hd, qkv_bias)
        self.o_proj = proj("o_proj", self.num_heads * hd, d, config.attention_bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        loop: int | None,
        active: _Active | None = None,
    ) -> tuple[torch.Tensor, LayerKV]:
        """Dense: ``x`` [b, t, d] -> (out, this chunk's keys/values). With ``active``: ``x`` is
        the active tokens' rows [n, d]; returns their outputs and the chunk's latest keys/values.
        ``past`` is the cached (keys, values), or (dense path only) a static slot with
        ``update(k, v) -> (keys, values)`` that writes this chunk in place (``graphs.StaticSlot``)."""
        if active is not None:
            return self._forward_active(x, past, loop, active)
        b, t, _ = x.shape
        q = self.q_proj(x, loop).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x, loop).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x, loop).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is None:
            keys, values = k, v
        elif hasattr(past, "update"):  # a static slot (graphs.StaticSlot): written in place, fixed shapes
            keys, values = past.update(k, v)
        else:
            keys, values = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        out = self._attend(q, keys, values, mask).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.o_proj(out, loop), LayerKV(k, v)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention, keys/values repeated for grouped-query heads."""
        if self.num_kv_heads != self.num_heads:
            groups = self.num_heads // self.num_kv_heads
            keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)

    def _forward_active(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        loop: int | None,
        active: _Active,
    ) -> tuple[torch.Tensor, LayerKV]:
        n = x.shape[0]
        q = self.q_proj(x, loop).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x, loop).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, loop).view(n, self.num_kv_heads, self.head_dim)
        cos, sin = active.rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # The chunk's latest keys/values: fresh ones for the active tokens, the last computed
        # loop's for stopped tokens (zeros for masked ones). Out of place: the previous loop's
        # tensors may already sit in the cache.
        at = (active.flat_rows, active.flat_pos)
        chunk_k = active.latest_k.transpose(1, 2).index_put(at, k).transpose(1, 2)
        chunk_v = active.latest_v.transpose(1, 2).index_put(at, v).transpose(1, 2)
        if hasattr(past, "update"):  # a cache slot, extended in place by the rows it holds
            held = active.held
            all_k, all_v = past.update(*((chunk_k, chunk_v) if held is None else (chunk_k[held], chunk_v[held])))
        else:
            all_k, all_v = ((chunk_k, chunk_v) if past is None
                            else (torch.cat([past[0], chunk_k], 2), torch.cat([past[1], chunk_v], 2)))
        rows, m = active.valid.shape
        queries = q.new_zeros(rows, m, self.num_heads, self.head_dim).index_put((active.valid,), q).transpose(1, 2)
        # only the rows with an active token attend (see _Active.attend_from)
        if active.runs is not None:
            out = torch.cat([self._attend(queries[i : i + c], all_k[r : r + c], all_v[r : r + c],
                                          active.mask[i : i + c]) for i, r, c in active.runs])
        elif active.local is not None:
            out = self._attend(queries, all_k[active.local], all_v[active.local], active.mask)
        else:
            out = self._attend(queries, all_k, all_v, active.mask)
        out = out.transpose(1, 2)[active.valid].reshape(n, self.num_heads * self.head_dim)
        return self.o_proj(out, loop), LayerKV(chunk_k, chunk_v)


class LoopedMLP(nn.Module):
    def __init__(self, config: LoopedConfig, core: bool) -> None:
        super().__init__()
        d, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        rank = config.lora_rank if core else 0

        def proj(name: str, i: int, o: int) -> LoopLinear:
            return LoopLinear(i, o, bias, rank if name in config.lora_targets else 0, config.max_loops)

        self.gate_proj, self.up_proj, self.down_proj = (proj("gate_proj", d, f), proj("up_proj", d, f),
                                                        proj("down_proj", f, d))

    def forward(self, x: torch.Tensor, loop: int | None, fused: bool = False) -> torch.Tensor:
        gate, up = self.gate_proj(x, loop), self.up_proj(x, loop)
        return self.down_proj(kernels.silu_mul(gate, up) if fused else F.silu(gate) * up, loop)


class LoopedDecoderLayer(nn.Module):
    """Pre-norm attention + SwiGLU MLP; with ``sandwich_norm`` the outputs are normalized too."""

    def __init__(self, config: LoopedConfig, core: bool = False) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = LoopedRMSNorm(config.hidden_size, eps)
        self.self_attn = LoopedAttention(config, core)
        self.post_attention_layernorm = LoopedRMSNorm(config.hidden_size, eps)
        self.mlp = LoopedMLP(config, core)
        self.sandwich = config.sandwich_norm
        self.residual_sandwich = config.sandwich_norm and config.sandwich_style == "residual"
        if self.sandwich:
            self.attn_out_norm = LoopedRMSNorm(config.hidden_size, eps)
            self.mlp_out_norm = LoopedRMSNorm(config.hidden_size, eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        loop: int | None = None,
        active: _Active | None = None,
    ) -> tuple[torch.Tensor, LayerKV]:
        """``x`` [b, t, d], or with ``active`` the active tokens' rows [n, d] (see ``_Active``)."""
        attn, kv = self.self_attn(self.input_layernorm(x), rope, mask, past, loop, active)
        if self.residual_sandwich:  # Huginn: the residual stream itself is normalized
            x = self.attn_out_norm(x + attn)
            return self.mlp_out_norm(x + self.mlp(self.post_attention_layernorm(x), loop)), kv
        x = x + (self.attn_out_norm(attn) if self.sandwich else attn)
        mlp = self.mlp(self.post_attention_layernorm(x), loop)
        x = x + (self.mlp_out_norm(mlp) if self.sandwich else mlp)
        return x, kv

    def forward_stack(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        past: Any,
        fused: bool,
    ) -> tuple[torch.Tensor, LayerKV]:
        """A prelude or coda layer (no loop, all tokens): :meth:`forward`, or through the kernels
        (its input norm, then :meth:`forward_fused`) when ``fused``."""
        if not fused:
            return self(x, rope, mask, past, None)
        norm = self.input_layernorm
        x, _, kv = self.forward_fused(x, kernels.rms_norm(x, norm.weight, norm.eps), rope, mask, past, None, None, None)
        return x, kv

    def forward_fused(
        self,
        x: torch.Tensor,
        normed: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        loop: int | None,
        active: _Active | None,
        next_norm: LoopedRMSNorm | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, LayerKV]:
        """:meth:`forward` through the Triton kernels (``kernels``): ``normed`` is this layer's
        input norm of ``x``, computed by the caller fused with what came before; each residual
        add is fused with the norm after it, the last with ``next_norm`` (the next layer's
        input norm, or the loop norm), whose output is returned too (None without one). Not
        for ``sandwich_style="residual"`` (the norm sits on the residual stream there)."""
        attn, kv = self.self_attn(normed, rope, mask, past, loop, active)
        x, normed = fused_layer_tail(self, x, attn, loop, next_norm)
        return x, normed, kv


class LoopInjection(nn.Module):
    """How the prelude output ``e`` enters each loop (see ``LoopedConfig.injection``)."""

    def __init__(self, config: LoopedConfig) -> None:
        super().__init__()
        self.mode = config.injection
        d = config.hidden_size
        if self.mode == "concat":
            self.adapter = nn.Linear(2 * d, d, bias=False)
        elif self.mode == "stable":
            self.A_log = nn.Parameter(torch.zeros(d))
            # softplus(dt) ~ 0.5 at init: the state decays by exp(-0.5) per loop
            self.dt = nn.Parameter(torch.full((d,), math.log(math.expm1(0.5))))
            self.B = nn.Linear(d, d, bias=False)
            self.norm = LoopedRMSNorm(d, config.rms_norm_eps)

    def forward(self, s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return s
        if self.mode == "additive":
            return s + e
        if self.mode == "concat":
            return self.adapter(torch.cat([s, e], dim=-1))
        dt = F.softplus(self.dt)
        decay = torch.exp(-dt * torch.exp(self.A_log))  # in (0, 1): a contraction of the state
        return decay * s + dt * self.B(self.norm(e))

    def loop_invariant(self, e: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """What of the injection is the same at every loop, computed once per forward for the
        fused path: ``(scale, c)`` with ``inject(s, e) = scale * s' + c`` (``s'`` is ``s``, or
        for concat the adapter's ``s`` half applied to it); ``(None, None)`` for ``none``."""
        if self.mode == "none":
            return None, None
        if self.mode == "additive":
            return None, e
        if self.mode == "concat":
            return None, F.linear(e, self.adapter.weight[:, e.shape[-1]:])
        dt = F.softplus(self.dt)
        return torch.exp(-dt * torch.exp(self.A_log)), dt * self.B(self.norm(e))

    def forward_fused(
        self, s: torch.Tensor, invariant: tuple[torch.Tensor | None, torch.Tensor | None], norm: LoopedRMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inject(s, e), norm(inject(s, e)))`` in one kernel, from :meth:`loop_invariant`."""
        scale, c = invariant
        if c is None:
            return s, kernels.rms_norm(s, norm.weight, norm.eps)
        if self.mode == "concat":
            s = F.linear(s, self.adapter.weight[:, : s.shape[-1]])
        return kernels.inject_rms_norm(s, c, norm.weight, norm.eps, scale)


class _KVStore:
    """Key/value buffers with room to grow ([b, kv_heads, capacity, head_dim]); ``filled``: the
    positions written so far. Forks of a cache (a shallow copy of ``entries``) share a store,
    each with its own length: a fork that appends after another one did copies first."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
        self.keys, self.values, self.filled = keys, values, filled


class _Entry(NamedTuple):
    store: _KVStore
    length: int  # positions of the store this entry holds (a prefix)

    def views(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.store.keys[:, :, : self.length], self.store.values[:, :, : self.length]


def _grown(entry: _Entry | None, k: torch.Tensor, v: torch.Tensor) -> _Entry:
    """``entry`` extended by ``k``/``v`` ([b, kv_heads, t, head_dim]). Written in place into the
    store's spare room when it is this entry's alone to extend; else (no room, another fork
    wrote past this entry, or gradients recorded: autograd may hold views of the store) into a
    new store with room for half as many positions again, so that decoding a token costs a
    copy of that token, not of the whole cache (amortized)."""
    length = 0 if entry is None else entry.length
    need = length + k.shape[2]
    store = None if entry is None else entry.store
    in_place = (store is not None and store.filled == length and need <= store.keys.shape[2]
                and not (k.requires_grad or v.requires_grad or store.keys.requires_grad)
                and store.keys.dtype == k.dtype and store.keys.device == k.device)
    if not in_place:
        if k.requires_grad or v.requires_grad:  # exact size: autograd needs out-of-place tensors anyway
            keys = k if store is None else torch.cat([store.keys[:, :, :length], k], 2)
            values = v if store is None else torch.cat([store.values[:, :, :length], v], 2)
            return _Entry(_KVStore(keys, values, need), need)
        capacity = need + max(64, need // 2)
        shape = (k.shape[0], k.shape[1], capacity, k.shape[3])
        keys, values = k.new_empty(shape), v.new_empty(shape)
        if store is not None and length:
            keys[:, :, :length] = store.keys[:, :, :length]
            values[:, :, :length] = store.values[:, :, :length]
        store = _KVStore(keys, values, length)
    store.keys[:, :, length:need] = k
    store.values[:, :, length:need] = v
    store.filled = need
    return _Entry(store, need)


class _CacheSlot:
    """One cache entry as attention's ``past``: :meth:`update` appends a chunk in place and
    returns the past and the chunk (views of the entry's store)."""

    def __init__(self, cache: LoopedCache, key: tuple[Any, ...]) -> None:
        self.cache, self.key = cache, key

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.append(self.key, (k, v))


class LoopedCache:
    """Keys and values of a looped model: one entry per prelude/coda layer, and per
    (loop, core layer) or per core layer (``shared``). Built for one loop budget, or one
    per row (``loops`` a sequence): ``loops`` is then the largest, the number of loops
    the per-loop layout holds, and ``budgets`` the rows' budgets (None: all ``loops``).

    Entries grow in place into spare room (see ``_grown``); ``get`` returns views of the
    positions an entry holds. A shallow copy of ``entries`` is a fork that can be extended
    without changing the original (``bench/looped.py``'s ``clone_cache``)."""

    def __init__(self, config: LoopedConfig, loops: int | Sequence[int]) -> None:
        self.mode = config.kv_cache
        if isinstance(loops, int):
            self.loops, self.budgets = loops, None
        else:
            self.budgets = tuple(int(n) for n in loops)
            self.loops = max(self.budgets)
        self.entries: dict[tuple[Any, ...], _Entry] = {}
        self.seen = 0
        self._rows: dict[tuple[int, torch.device], torch.Tensor | None] = {}

    def row_budgets(self, b: int) -> tuple[int, ...]:
        """The budget of each of ``b`` rows."""
        return self.budgets if self.budgets is not None else (self.loops,) * b

    def rows_at(self, loop: int, device: torch.device | None = None) -> torch.Tensor | None:
        """The batch rows the per-loop entries of ``loop`` hold: those whose budget exceeds it,
        the only ones that ever read them (None: every row). With mixed budgets the cache thus
        holds each row's own loops, and the rows still looping at a loop attend to its entry
        as it is, without a gather."""
        if self.budgets is None or self.mode == "shared":
            return None
        key = (loop, torch.device(device or "cpu"))
        if key not in self._rows:
            rows = [r for r, n in enumerate(self.budgets) if n > loop]
            self._rows[key] = None if len(rows) == len(self.budgets) else torch.tensor(rows, device=device)
        return self._rows[key]

    def get(self, key: tuple[Any, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The keys and values of entry ``key`` ([b, kv_heads, positions, head_dim] views), or None."""
        entry = self.entries.get(key)
        return None if entry is None else entry.views()

    def slot(self, key: tuple[Any, ...]) -> _CacheSlot:
        """Entry ``key`` as a ``past`` that attention extends in place (``LoopedAttention``)."""
        return _CacheSlot(self, key)

    def append(self, key: tuple[Any, ...], kv: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Extend entry ``key`` by a chunk of keys and values ([b, kv_heads, t, head_dim]); returns
        the entry's keys and values now (views)."""
        entry = self.entries[key] = _grown(self.entries.get(key), *kv)
        return entry.views()

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def nbytes(self) -> int:
        """Bytes of the keys/values the entries hold (the per-loop layout grows with loops, shared
        does not); the buffers allocated are up to 1.5x that plus 64 positions (``allocated_nbytes``)."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                   for k, v in (e.views() for e in self.entries.values()))

    def allocated_nbytes(self) -> int:
        """Bytes of the buffers behind the entries, spare room included (shared stores counted once)."""
        stores = {id(e.store): e.store for e in self.entries.values()}
        return sum(s.keys.numel() * s.keys.element_size() + s.values.numel() * s.values.element_size()
                   for s in stores.values())

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        old = self.budgets
        if old is not None:
            self.budgets = tuple(old[int(i)] for i in beam_idx)
            self._rows = {}
        entries = {}
        for key, e in self.entries.items():
            pick = beam_idx
            if old is not None and key[0] == "core" and len(key) == 3:  # rows held: budget > loop
                loop = key[1]
                local = torch.cumsum(torch.tensor([n > loop for n in old]), 0) - 1  # row -> its place
                pick = torch.tensor([int(local[int(i)]) for i in beam_idx if old[int(i)] > loop], dtype=torch.long,
                                    device=beam_idx.device)
            entries[key] = _grown(None, *(x.index_select(0, pick) for x in e.views()))
        self.entries = entries


@dataclass
class LoopedCausalLMOutput(ModelOutput):
    """Output of :class:`LoopedForCausalLM`.

    ``exit_steps`` ([batch, seq]): each token's depth, the loops it computed (its row's
    budget without an exit threshold; 0 for masked positions). ``core_tokens`` ([batch]):
    token rows of each batch row that went through the core block, summed over loops
    (``core_tokens.sum() * num_core_layers`` rows were seen by the core layers; it equals
    ``exit_steps.sum(1)``). ``loop_states`` / ``loop_logits``: the state / logits after
    each loop (when asked for; a stopped token keeps its state). ``gate_probs`` ([loops,
    batch, seq]): the exit gate's per-loop conditional exit probabilities (training the gate).
    ``past_key_values``: the same object as ``cache``, under the name ``generate()`` carries
    from step to step (without it every step would rerun the whole sequence).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: LoopedCache | None = None
    exit_steps: torch.Tensor | None = None
    loop_states: tuple[torch.Tensor, ...] | None = None
    loop_logits: tuple[torch.Tensor, ...] | None = None
    gate_probs: torch.Tensor | None = None
    core_tokens: torch.Tensor | None = None
    past_key_values: LoopedCache | None = None


# -- the model ----------------------------------------------------------------------------------


class LoopedPreTrainedModel(PreTrainedModel):
    config_class = LoopedConfig
    base_model_prefix = "model"
    _no_split_modules = ["LoopedDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, LoopLinear) and module.rank:
                nn.init.normal_(module.lora_A, std=1.0 / math.sqrt(module.in_features))
                nn.init.zeros_(module.lora_B)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LoopedRMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, LoopInjection) and module.mode == "stable":
            nn.init.zeros_(module.A_log)
            nn.init.constant_(module.dt, math.log(math.expm1(0.5)))


class LoopedModel(LoopedPreTrainedModel):
    """The looped trunk: embeddings, prelude, looped core, coda, final norm."""

    def __init__(self, config: LoopedConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.prelude = nn.ModuleList(LoopedDecoderLayer(config) for _ in range(config.num_prelude_layers))
        self.core = nn.ModuleList(LoopedDecoderLayer(config, core=True) for _ in range(config.num_core_layers))
        self.coda = nn.ModuleList(LoopedDecoderLayer(config) for _ in range(config.num_coda_layers))
        self.injection = LoopInjection(config)
        self.loop_norm = LoopedRMSNorm(config.hidden_size, config.rms_norm_eps) if config.loop_norm else None
        self.exit_gate = nn.Linear(config.hidden_size, 1) if config.exit_gate else None
        self.norm = LoopedRMSNorm(config.hidden_size, config.rms_norm_eps) if config.final_norm else nn.Identity()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def check_loops(self, loops: int | None) -> int:
        """The budget to run: ``default_loops`` for None, else ``loops`` if it is a positive
        integer within ``max_loops`` (``InvalidLoopsError``, a ``ValueError``, if not)."""
        loops = self.config.default_loops if loops is None else loops
        return validation.check_loops(loops, max_loops=self.config.max_loops)

    def row_budgets(self, loops: int | Sequence[int] | torch.Tensor | None, b: int) -> tuple[int, ...]:
        """Each row's budget: one for all (int or None, see :meth:`check_loops`) or one per
        row (a sequence or LongTensor of ``b`` budgets, each checked)."""
        if loops is None or isinstance(loops, (int, float, str, bool)) or (
                isinstance(loops, torch.Tensor) and loops.dim() == 0):
            return (self.check_loops(loops.item() if isinstance(loops, torch.Tensor) else loops),) * b
        budgets = [self.check_loops(n.item() if isinstance(n, torch.Tensor) else n) for n in loops]
        if len(budgets) != b:
            raise InvalidLoopsError(f"got {len(budgets)} loop budgets for a batch of {b} rows")
        return tuple(budgets)

    def uses_kernels(self, device: torch.device) -> bool:
        """Whether a forward on ``device`` runs through the Triton kernels (``kernels.enabled``:
        on CUDA with Triton, no gradient recorded, unless ``LOOPAGENT_KERNELS`` says otherwise;
        never for ``sandwich_style="residual"``, whose norms sit on the residual stream)."""
        residual = self.config.sandwich_norm and self.config.sandwich_style == "residual"
        return not residual and kernels.enabled(device)

    def gate(self, s: torch.Tensor) -> torch.Tensor:
        """Conditional exit probability of every token after a loop."""
        assert self.exit_gate is not None
        normed = s if self.loop_norm is not None else self.norm(s)
        return torch.sigmoid(self.exit_gate(normed).squeeze(-1).float())

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: LoopedCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = False,
        loops: int | Sequence[int] | torch.Tensor | None = None,
        exit_threshold: float | None = None,
        output_loop_states: bool = False,
        backprop_loops: int | None = None,
        min_loops: int | None = None,
    ) -> dict[str, Any]:
        """Run the trunk. ``loops``: one budget or one per row; ``exit_threshold`` turns the
        exit gate on (``min_loops``: loops a token runs before the gate may stop it; given
        alone it uses ``config.exit_threshold``). Returns a dict: ``hidden``, ``cache``,
        ``exit_steps``, ``core_tokens``, ``loop_states``, ``gate_probs``."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.embedding_scale != 1.0:
            x = x * self.config.embedding_scale
        b, t, _ = x.shape
        budgets = self.row_budgets(loops, b)
        if exit_threshold is None and min_loops is not None:
            exit_threshold = self.config.exit_threshold
        exit_threshold, min_loops = validation.check_gate(exit_threshold, min_loops, loops=min(budgets),
                                                          has_gate=self.exit_gate is not None)
        if cache is None and (use_cache or self.config.kv_cache == "shared"):
            cache = LoopedCache(self.config, budgets[0] if len(set(budgets)) == 1 else budgets)
        if cache is not None and cache.row_budgets(b) != budgets:
            raise ValueError(f"this cache was built for loops={_budgets_text(cache.row_budgets(b))}; start a new one "
                             f"for loops={_budgets_text(budgets)}")
        past = cache.seen if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(b, past + t, dtype=torch.long, device=x.device)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past : past + t]
        gate = (exit_threshold, min_loops or 1) if exit_threshold is not None else None
        args = (cache, budgets, gate, output_loop_states, backprop_loops)
        if self.config.kv_cache == "shared" and t > 1:
            # Exact semantics of a shared cache: each position sees earlier ones at their final loop.
            parts = [self._run(x[:, i : i + 1], attention_mask[:, : past + i + 1], position_ids[:, i : i + 1], *args)
                     for i in range(t)]
            return _concat_parts(parts, cache)
        return self._run(x, attention_mask, position_ids, *args)

    def _mask(self, attention_mask: torch.Tensor, past: int, t: int) -> torch.Tensor:
        keys = attention_mask[:, : past + t].bool()  # [b, kv]
        rows = torch.arange(t, device=keys.device)[:, None] + past
        cols = torch.arange(past + t, device=keys.device)[None, :]
        causal = cols <= rows  # [t, kv]
        mask = causal[None] & keys[:, None, :]
        mask |= cols == rows  # a padding query still attends to itself (no empty rows)
        return mask[:, None]  # [b, 1, t, kv]

    def _run(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.LongTensor,
        cache: LoopedCache | None,
        budgets: tuple[int, ...],
        gate: tuple[float, int] | None,
        output_loop_states: bool,
        backprop_loops: int | None,
    ) -> dict[str, Any]:
        b, t, _ = x.shape
        past = cache.seen if cache is not None else 0
        mask = self._mask(attention_mask, past, t)
        rope = _rope(self.config, position_ids, x.dtype)
        fused = self.uses_kernels(x.device)

        def layer(module: LoopedDecoderLayer, h: torch.Tensor, key: tuple[Any, ...]) -> torch.Tensor:
            h, _ = module.forward_stack(h, rope, mask, cache.slot(key) if cache is not None else None, fused)
            return h

        for i, module in enumerate(self.prelude):
            x = layer(module, x, ("prelude", i))
        e = x
        s = initial_state(e, self.config.initial_state, self.config.initial_state_std)
        s, exit_steps, core_tokens, states, gates = self._loops(
            s, e, attention_mask[:, past : past + t].bool(), mask, rope, cache, budgets, gate, output_loop_states,
            backprop_loops, fused)
        h = self.norm(s) if self.config.norm_before_coda else s
        for i, module in enumerate(self.coda):
            h = layer(module, h, ("coda", i))
        if cache is not None:
            cache.seen = past + t
        return {
            "hidden": self.norm(h),
            "cache": cache,
            "exit_steps": exit_steps,
            "core_tokens": core_tokens,
            "loop_states": tuple(states) if output_loop_states else None,
            "gate_probs": torch.stack(gates) if gates else None,
        }

    def _loops(
        self,
        s: torch.Tensor,
        e: torch.Tensor,
        present: torch.Tensor,
        mask: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: LoopedCache | None,
        budgets: tuple[int, ...],
        gate: tuple[float, int] | None,
        output_loop_states: bool,
        backprop_loops: int | None,
        fused: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The core loops of one chunk (``present``: [b, t] positions that are not masked).

        Per loop, the active tokens run the core block: all of them as [b, t, d] when all
        are active (no gather), else gathered (``_Active``). Each core layer keeps the
        chunk's latest keys/values, which is what the cache stores for every loop (the
        module docstring's KV rule). Returns the final states, exit steps, core tokens per
        row, and (``output_loop_states``) the states and gate probabilities per loop.
        ``fused``: through the kernels (``uses_kernels``), the halting update included.
        """
        b, t, _ = s.shape
        loops = max(budgets)
        shared = self.config.kv_cache == "shared"
        device = s.device
        budget = torch.tensor(budgets, device=device)[:, None].expand(b, t)
        # Without a gate, one budget and no masked position, every token runs every loop.
        uniform = gate is None and len(set(budgets)) == 1 and bool(present.all())
        active = present.clone()
        exit_steps = torch.zeros(b, t, dtype=torch.long, device=device)
        if gate is not None:
            survive = torch.ones(b, t, device=device)
            cdf = torch.zeros(b, t, device=device)
        latest: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.core)
        states: list[torch.Tensor] = []
        gates: list[torch.Tensor] = []
        first_grad_loop = loops - backprop_loops if backprop_loops is not None else 0
        invariant = self.injection.loop_invariant(e) if fused else None
        # The fused halting update writes states in place (a stopped token keeps its state).
        fused_halt = fused and gate is not None and not output_loop_states
        if fused_halt:
            s, budget = s.clone(), budget.contiguous()
            gate_norm = self.norm.weight if self.loop_norm is None and isinstance(self.norm, LoopedRMSNorm) else None

        def run_core(h: torch.Tensor, lay: _Active | None, where: tuple[torch.Tensor, torch.Tensor] | None,
                     loop: int) -> torch.Tensor:
            if fused:
                scale, c = invariant
                inv = invariant if where is None or c is None else (scale, c[where])
                h, normed = self.injection.forward_fused(h, inv, self.core[0].input_layernorm)
            else:
                h = self.injection(h, e if where is None else e[where])
            for i, module in enumerate(self.core):
                # per loop: the entry is extended in place as the layer attends; shared: read
                # here, extended once after the last loop (with each token's final keys/values)
                past = (None if cache is None else cache.get(("core", i)) if shared
                        else cache.slot(("core", loop, i)))
                if lay is not None:
                    lay.latest_k, lay.latest_v = latest[i] if latest[i] is not None else self._zero_kv(s)
                if fused:
                    nxt = self.core[i + 1].input_layernorm if i + 1 < len(self.core) else self.loop_norm
                    h, normed, kv = module.forward_fused(h, normed, rope, mask, past, loop, lay, nxt)
                else:
                    h, kv = module(h, rope, mask, past, loop, lay)
                latest[i] = (kv.k, kv.v)
            if self.loop_norm is not None:
                h = normed if fused else self.loop_norm(h)
            return h

        for loop in range(loops):
            n = b * t if uniform else int(active.sum())
            held_rows = cache.rows_at(loop, device) if cache is not None and not shared else None
            grad = contextlib.nullcontext() if loop >= first_grad_loop else torch.no_grad()
            if n == b * t:  # dense: every token of the chunk runs this loop
                with grad:
                    h = run_core(s, None, None, loop)
                s = h.detach() if loop < first_grad_loop else h
                exit_steps += 1
                lam = self.gate(s) if gate is not None and not fused_halt else None
                where: tuple[torch.Tensor, torch.Tensor] | None = None
            elif n > 0:  # only the active tokens run: gather their rows
                lay = _Active.of(active, mask, rope)
                if held_rows is not None:  # the cache entries of this loop hold only the deeper rows
                    lay.held = held_rows
                    same = lay.rows.numel() == held_rows.numel()
                    lay.attend_from(None if same else torch.searchsorted(held_rows, lay.rows))
                where = (lay.flat_rows, lay.flat_pos)
                with grad:
                    h = run_core(s[where], lay, where, loop)
                if loop < first_grad_loop:
                    h = h.detach()
                if fused_halt:  # the kernel freezes the state and counts the depth
                    lam = None
                else:
                    s = s.index_put(where, h)
                    exit_steps[where] += 1
                    lam = self.gate(h) if gate is not None else None
            if n > 0 and fused_halt:
                threshold, floor = gate
                flat = None if where is None else where[0] * t + where[1]
                done = kernels.halt_step(
                    h.reshape(-1, h.shape[-1]), self.exit_gate.weight, self.exit_gate.bias, cdf, survive, budget,
                    loop, floor, threshold, index=flat, norm_weight=gate_norm, eps=self.config.rms_norm_eps,
                    state=None if where is None else s, depth=None if where is None else exit_steps)
                if where is None:
                    active = active & ~done.view(b, t)
                else:
                    active[where] = ~done
            elif n > 0 and not uniform:
                # A token stops after its row's budget, or when the gate says so (module docstring).
                done = (budget if where is None else budget[where]) <= loop + 1
                if gate is not None and lam is not None:
                    threshold, floor = gate
                    at = (slice(None), slice(None)) if where is None else where
                    c = cdf[at] + lam * survive[at]
                    survive[at] = survive[at] * (1 - lam)
                    cdf[at] = c
                    done = done | ((loop + 1 >= floor) & (c >= threshold))
                if where is None:
                    active = active & ~done
                else:
                    active[where] = ~done
            if cache is not None and not shared and n == 0:  # no layer ran (and appended): the chunk's latest
                for i in range(len(self.core)):
                    k, v = latest[i] if latest[i] is not None else self._zero_kv(s)
                    cache.append(("core", loop, i), (k, v) if held_rows is None else (k[held_rows], v[held_rows]))
            if output_loop_states:
                states.append(s)
                if self.exit_gate is not None:
                    gates.append(self.gate(s))
        if cache is not None and shared:
            # one entry per core layer: each token's K/V of the loop where it stopped
            for i in range(len(self.core)):
                cache.append(("core", i), latest[i] if latest[i] is not None else self._zero_kv(s))
        return s, exit_steps, exit_steps.sum(1), states, gates

    def _zero_kv(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of a chunk where no token has computed yet: zeros (masked positions keep them)."""
        c = self.config
        zeros = s.new_zeros(s.shape[0], c.num_key_value_heads, s.shape[1], c.head_dim)
        return zeros, zeros

    def head_states(
        self,
        states: tuple[torch.Tensor, ...],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
    ) -> list[torch.Tensor]:
        """Run the coda and final norm on intermediate loop states (uncached), e.g.
        to train on the logits of several loop depths. Mask and positions default as
        in :meth:`forward` (no past)."""
        t = states[0].shape[1]
        if attention_mask is None:
            attention_mask = torch.ones(states[0].shape[:2], dtype=torch.long, device=states[0].device)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        mask = self._mask(attention_mask, 0, t)
        rope = _rope(self.config, position_ids, states[0].dtype)
        outs = []
        for h in states:
            if self.config.norm_before_coda:
                h = self.norm(h)
            for module in self.coda:
                h, _ = module(h, rope, mask, None, None)
            outs.append(self.norm(h))
        return outs


def _concat_parts(parts: list[dict[str, Any]], cache: LoopedCache | None) -> dict[str, Any]:
    def cat(name: str, dim: int) -> Any:
        values = [p[name] for p in parts]
        return None if values[0] is None else torch.cat(values, dim)

    states = None
    if parts[0]["loop_states"] is not None:
        states = tuple(torch.cat([p["loop_states"][i] for p in parts], 1) for i in range(len(parts[0]["loop_states"])))
    return {"hidden": cat("hidden", 1), "cache": cache, "exit_steps": cat("exit_steps", 1),
            "core_tokens": torch.stack([p["core_tokens"] for p in parts]).sum(0),
            "loop_states": states, "gate_probs": cat("gate_probs", 2)}


def _budgets_text(budgets: Sequence[int]) -> str:
    return str(budgets[0]) if len(set(budgets)) == 1 else str(list(budgets))


class LoopedForCausalLM(LoopedPreTrainedModel, GenerationMixin):
    """A looped transformer with a language-modeling head.

    Example::

        model = LoopedForCausalLM(LoopedConfig(vocab_size=256, hidden_size=64, num_attention_heads=4))
        out = model(input_ids, loops=8)                                  # logits after 8 loops
        tokens = model.generate(input_ids, loops=2, max_new_tokens=20)   # cached, 2 loops per token
        model.save_pretrained("ckpt/"); LoopedForCausalLM.from_pretrained("ckpt/")
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LoopedConfig) -> None:
        super().__init__(config)
        self.model = LoopedModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a DynamicCache: this model keeps a LoopedCache

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: LoopedCache | None = None,
        past_key_values: LoopedCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        loops: int | Sequence[int] | torch.Tensor | None = None,
        exit_threshold: float | None = None,
        output_loop_states: bool = False,
        output_loop_logits: bool = False,
        backprop_loops: int | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        min_loops: int | None = None,
        **kwargs: Any,
    ) -> LoopedCausalLMOutput:
        """``loops``: one budget, or one per row ([batch] sequence or LongTensor);
        ``exit_threshold`` / ``min_loops``: the exit gate (see :meth:`LoopedModel.forward`)."""
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, LoopedCache):
            raise TypeError(f"LoopedForCausalLM keeps a LoopedCache, got {type(cache).__name__}")
        use_cache = bool(use_cache) if use_cache is not None else False
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, loops=loops, exit_threshold=exit_threshold,
            output_loop_states=output_loop_states or output_loop_logits, backprop_loops=backprop_loops,
            min_loops=min_loops,
        )
        hidden = out["hidden"]
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(hidden[:, keep]).float()
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels)
        loop_logits = None
        if output_loop_logits:
            loop_logits = tuple(self.lm_head(h).float()
                                for h in self.model.head_states(out["loop_states"], attention_mask, position_ids))
        kept = out["cache"] if use_cache else None
        return LoopedCausalLMOutput(
            loss=loss, logits=logits, cache=kept, exit_steps=out["exit_steps"],
            loop_states=out["loop_states"] if output_loop_states else None, loop_logits=loop_logits,
            gate_probs=out["gate_probs"], core_tokens=out["core_tokens"], past_key_values=kept,
        )

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Works with generate() in transformers 4.x (``past_key_values``) and 5.x (``cache``)."""
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        budgets = self.model.row_budgets(kwargs.get("loops"), input_ids.shape[0])
        loops: int | tuple[int, ...] = budgets[0] if len(set(budgets)) == 1 else budgets
        if cache is None and kwargs.get("use_cache", True) is not False:
            cache = LoopedCache(self.config, loops)
        attention_mask = kwargs.get("attention_mask")
        seen = cache.seen if cache is not None else 0
        new_ids = input_ids[:, seen:]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, seen:]
        return {
            "input_ids": new_ids,
            "attention_mask": attention_mask,
            "position_ids": positions,
            "cache": cache,
            "use_cache": cache is not None,
            "loops": loops,
            "exit_threshold": kwargs.get("exit_threshold"),
            "min_loops": kwargs.get("min_loops"),
        }

    def _reorder_cache(self, cache: LoopedCache, beam_idx: torch.LongTensor) -> LoopedCache:
        cache.reorder_cache(beam_idx)
        return cache


def causal_lm_loss(logits: torch.Tensor, labels: torch.LongTensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy (labels = input ids; -100 is ignored)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction=reduction)
    return loss if reduction != "none" else loss.view(labels.shape[0], -1)
