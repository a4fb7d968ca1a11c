"""``LoopedForCausalLM`` as a vLLM model class (see the package docstring for the design).

The module tree mirrors the transformers reference (``backends/looped/modeling_looped.py``)
so checkpoints load by name; q/k/v and gate/up are fused into vLLM's tensor-parallel
linear layers, attention and the KV cache are vLLM's ``Attention`` layers: one per
prelude layer, one per coda layer and one per (loop, core layer), like vLLM's own
looped models. Norms and loop injection are the reference's modules, and the math both
share (rotary embeddings, initial state, LoRA deltas) is ``backends/looped/functional.py``,
so a float32 engine reproduces the reference's greedy tokens.

``forward`` takes the per-token loop options from the model-runner hook in ``hooks.py``
(``loop_budgets``, a [num_tokens] tensor; ``loop_max``, their maximum; ``loop_uniform``,
whether they are all equal; ``loop_levels``, the distinct budgets; the last three computed
on the host; with the exit gate, ``exit_thresholds`` and ``exit_min_loops`` per token).
The semantics are the transformers reference's, token for token: for each token, for
``loop in range(L)`` (``L`` its request's budget), an active token runs the core block
(then ``loop_norm``); with the gate on and ``loop < L - 1``, ``lam = sigmoid(exit_gate(s))``
(of ``norm(s)`` without a loop norm), ``cdf += lam * survive``, ``survive *= 1 - lam``, and
the token stops at depth ``loop + 1`` once ``loop + 1 >= min_loops`` and ``cdf >= threshold``.
A stopped token (budget reached or gate) keeps its state, so its coda sees its state at its
depth, and it runs no projection or MLP any more: a loop computes only the still-active rows
(gathered). **KV rule** (Ouro's "reuse last", also the reference's): a token that stopped at
depth ``d`` has, in every deeper (loop, core layer) cache, its keys/values of loop ``d - 1``;
they are kept per core layer for every token of the batch and written into each loop's cache
for the stopped rows. With vLLM's CPU attention, a loop attends for the still-looping rows
only (``_Subset``: the step's attention metadata sliced to them, a request whose tokens the
gate stopped in part attended row by row); other backends run the attention call over the
whole batch, stopped rows with zero queries. Once no token of the batch is
active, the remaining loops up to the batch's largest budget only write those caches (later
tokens of the same request may loop deeper and read them). The model records each token's
depth (``loop_depths``) for a gated batch; the hook turns it into per-request counts.

On CUDA (``kernels.enabled``) the loop step runs through the Triton kernels as in the
reference (``functional.fused_layer_tail``, ``LoopInjection.forward_fused``), the gate's
update is ``kernels.halt_step`` and the still-looping rows come from ``kernels.compact``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader

from .. import kernels
from ..looped.configuration_looped import LoopedConfig
from ..looped.functional import apply_rope, fused_layer_tail, initial_state, lora_delta, rope_cos_sin, rope_inv_freq
from ..looped.modeling_looped import LoopedRMSNorm, LoopInjection
from . import hooks

# (indices of the tokens still looping, tokens in the batch, the requests attended when not all)
_Rows = tuple[torch.Tensor, int, "_Subset | None"]


class _Kept:
    """The latest keys/values of every token of the batch, per core layer: what a stopped
    token's row holds in the caches of the loops it no longer runs (the KV rule)."""

    def __init__(self, layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers


# (kept keys/values of the batch, core layer index)
_KV = tuple[_Kept, int]


def _write_cache(attn: Attention, k: torch.Tensor, v: torch.Tensor) -> None:
    """Write keys/values into ``attn``'s cache without attending (no query is read)."""
    if not attn.attn_backend.forward_includes_kv_cache_update and attn.kv_sharing_target_layer_name is None:
        from vllm.model_executor.layers.attention.attention import unified_kv_cache_update

        unified_kv_cache_update(k.view(-1, attn.num_kv_heads, attn.head_size),
                                v.view(-1, attn.num_kv_heads, attn.head_size_v), attn.layer_name)
    else:  # a backend that writes the cache inside its attention call
        attn(k.new_zeros(k.shape[0], attn.num_heads * attn.head_size), k, v)

class _Subset:
    """What a loop attends for when not every request of the batch has a looping token, or not
    every token of such a request loops (CPU attention backend; elsewhere ``None`` is used, and
    the attention call spans the whole batch with zero queries for stopped rows).

    Each looping row is one query: ``tokens`` (ascending, the batch's rows) are attended for
    and nothing else. While every token of a request loops (budgets are per request), its rows
    stay one query run of its request (``qlens``); once the gate stops some of a request's
    tokens, each looping row of it is a query run of length one over its request's keys up to
    its own position (``back``: how many of the request's positions of this step come after
    it), so the attention work follows the rows still looping. ``reqs``: the request (block
    table row) of each query run. The sliced attention metadata is built once per metadata
    object (one per KV-cache group) and reused by every layer."""

    def __init__(self, reqs: torch.Tensor, qlens: torch.Tensor, tokens: torch.Tensor,
                 back: torch.Tensor | None) -> None:
        self.reqs, self.qlens, self.tokens, self.back = reqs, qlens, tokens, back
        self._metadata: dict[int, tuple[Any, Any]] = {}

    def metadata(self, attn: Attention, md: Any, dtype: torch.dtype) -> Any:
        cached = self._metadata.get(id(md))
        if cached is not None and cached[0] is md:
            return cached[1]
        import dataclasses

        from vllm import _custom_ops as ops
        from vllm import envs

        impl = attn.impl
        runs = int(self.reqs.numel())
        qsl = torch.zeros(runs + 1, dtype=md.query_start_loc.dtype, device=md.query_start_loc.device)
        torch.cumsum(self.qlens, 0, out=qsl[1:])
        seq_lens = md.seq_lens.index_select(0, self.reqs)
        if self.back is not None:
            seq_lens = seq_lens - self.back.to(seq_lens.dtype)
        scheduler_metadata = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=runs, num_heads=impl.num_heads, num_kv_heads=impl.num_kv_heads,
            head_dim=impl.head_size, seq_lens=seq_lens, dtype=dtype, query_start_loc=qsl, causal=md.causal,
            sliding_window_size=impl.sliding_window, isa=attn.isa, enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV,
            dynamic_causal=None, kv_cache_dtype=impl.kv_cache_dtype)
        sliced = dataclasses.replace(
            md, num_actual_tokens=int(self.tokens.numel()), max_query_len=int(self.qlens.max()), query_start_loc=qsl,
            max_seq_len=int(seq_lens.max()), seq_lens=seq_lens, block_table=md.block_table.index_select(0, self.reqs),
            slot_mapping=md.slot_mapping.index_select(0, self.tokens), scheduler_metadata=scheduler_metadata)
        self._metadata[id(md)] = (md, sliced)
        return sliced

    def attend(self, attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of the looping rows (queries ``q``, one per row of ``tokens``) over ``attn``'s
        cache, which already holds this call's keys/values of every token (``k``/``v``: the whole
        batch's)."""
        from vllm.model_executor.layers.attention.attention import get_attention_context

        md, _, kv_cache, _ = get_attention_context(attn.layer_name)
        n, heads, hd = self.tokens.numel(), attn.num_heads, attn.head_size
        out = q.new_empty(n, heads * attn.head_size_v)
        # The decoder path of the CPU backend reads keys/values from the cache only (written
        # above): these views stand for the arguments it takes, no rows are gathered for them.
        attn.impl.forward(attn, q.view(n, heads, hd), k[:n].view(n, attn.num_kv_heads, hd),
                          v[:n].view(n, attn.num_kv_heads, attn.head_size_v), kv_cache,
                          self.metadata(attn, md, q.dtype), output=out.view(n, heads, attn.head_size_v))
        return out


def _subset(attn: Attention, alive: torch.Tensor) -> tuple[_Subset | None, torch.Tensor]:
    """What to attend for the tokens ``alive`` (see ``_Subset``), or None when every token is
    alive or the backend is not vLLM's CPU attention; and ``alive`` without padding tokens (past
    the last request's, never read) when a subset is used."""
    if attn.attn_backend.get_name() != "CPU_ATTN":  # CUDA etc.: the whole-batch call (not implemented there)
        return None, alive
    try:
        from vllm.model_executor.layers.attention.attention import get_attention_context
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl, CPUAttentionMetadata
    except ImportError:  # pragma: no cover - a vLLM build without the CPU backend
        return None, alive
    if not isinstance(attn.impl, CPUAttentionBackendImpl) or attn.query_quant is not None:
        return None, alive
    md = get_attention_context(attn.layer_name)[0]
    if (not isinstance(md, CPUAttentionMetadata) or md.dynamic_causal is not None or md.encoder_cache is not None
            or md.use_sdpa_prefill):
        return None, alive
    qsl = md.query_start_loc
    num_reqs = qsl.numel() - 1
    n_real = int(qsl[-1])
    qlens = qsl.diff()
    req_of_token = torch.repeat_interleave(torch.arange(num_reqs, device=alive.device), qlens, output_size=n_real)
    counts = torch.zeros(num_reqs, dtype=torch.long, device=alive.device)
    counts.index_add_(0, req_of_token, alive[:n_real].long())
    whole = counts == qlens  # every token of the request loops
    if bool(whole.all()):
        return None, alive
    alive = alive.clone()
    alive[n_real:] = False
    if bool((whole | (counts == 0)).all()):  # whole requests or none: one query run per request
        reqs = whole.nonzero().squeeze(1)
        return _Subset(reqs, qlens.index_select(0, reqs), alive.nonzero().squeeze(1), None), alive
    tokens = alive.nonzero().squeeze(1)
    reqs = req_of_token.index_select(0, tokens)
    back = qsl[1:].index_select(0, reqs) - 1 - tokens  # the request's positions after the row's
    return _Subset(reqs, torch.ones_like(reqs), tokens, back), alive


# q/k/v and gate/up are stored separately in checkpoints and fused here.
_STACKED = (("qkv_proj", "q_proj", "q"), ("qkv_proj", "k_proj", "k"), ("qkv_proj", "v_proj", "v"),
            ("gate_up_proj", "gate_proj", 0), ("gate_up_proj", "up_proj", 1))


def check_config(config: Any, tp_size: int = 1, pp_size: int = 1) -> None:
    """Raise a clear error for what the vLLM path does not serve."""
    if getattr(config, "kv_cache", "per_loop") != "per_loop":
        raise ValueError(
            "loopagent's vLLM model serves kv_cache='per_loop' checkpoints only; kv_cache='shared' processes "
            "positions one at a time (use the hf: backend for it)"
        )
    if getattr(config, "lora_rank", 0) and tp_size > 1:
        raise ValueError("per-loop LoRA (lora_rank > 0) is served with tensor_parallel_size=1 only")
    if pp_size > 1:
        raise ValueError(
            "pipeline parallelism is not supported for looped models (the core block loops within one stage); "
            "use tensor parallelism (--tensor-parallel-size) and several endpoints (served:URL1,URL2)"
        )


class _LoRA(nn.Module):
    """Per-loop low-rank deltas of one projection (names match ``LoopLinear``)."""

    def __init__(self, in_features: int, out_features: int, rank: int, max_loops: int) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.zeros(max_loops, rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(max_loops, out_features, rank))

    def forward(self, x: torch.Tensor, loop: int) -> torch.Tensor:
        return lora_delta(x, self.lora_A[loop], self.lora_B[loop])


def _loras(config: LoopedConfig, core: bool, shapes: dict[str, tuple[int, int]]) -> nn.ModuleDict:
    if not core or not config.lora_rank:
        return nn.ModuleDict()
    return nn.ModuleDict({name: _LoRA(i, o, config.lora_rank, config.max_loops)
                          for name, (i, o) in shapes.items() if name in config.lora_targets})


def _plus_lora(lora: nn.ModuleDict, name: str, y: torch.Tensor, x: torch.Tensor, loop: int | None) -> torch.Tensor:
    """``y`` plus projection ``name``'s per-loop delta of input ``x``, where it has one (core layers)."""
    return y + lora[name](x, loop) if loop is not None and name in lora else y


class _Rope(nn.Module):
    """Rotary embeddings exactly as the reference computes them (neox layout)."""

    def __init__(self, config: LoopedConfig) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(config.head_dim, config.rope_theta, config.rope_freq_scaling, torch.device("cpu"))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(positions, self.inv_freq, dtype)  # [t, 1, head_dim]


class VLoopedAttention(nn.Module):
    def __init__(self, config: LoopedConfig, core: bool, prefix: str) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        d, hd = config.hidden_size, config.head_dim
        self.head_dim = hd
        self.num_heads = config.num_attention_heads // tp
        self.num_kv_heads = max(1, config.num_key_value_heads // tp)
        self.q_size, self.kv_size = self.num_heads * hd, self.num_kv_heads * hd
        qkv_bias = config.qkv_bias or config.attention_bias
        self.qkv_proj = QKVParallelLinear(d, hd, config.num_attention_heads, config.num_key_value_heads,
                                          bias=qkv_bias, prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(config.num_attention_heads * hd, d, bias=config.attention_bias,
                                        prefix=f"{prefix}.o_proj")
        nq, nkv = config.num_attention_heads * hd, config.num_key_value_heads * hd
        self.lora = _loras(config, core, {"q_proj": (d, nq), "k_proj": (d, nkv), "v_proj": (d, nkv), "o_proj": (nq, d)})

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn: Attention, loop: int | None,
                rows: _Rows | None = None, kv: _KV | None = None) -> torch.Tensor:
        qkv, _ = self.qkv_proj(x)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k, v = (_plus_lora(self.lora, name, y, x, loop) for name, y in (("q_proj", q), ("k_proj", k), ("v_proj", v)))
        t = x.shape[0]
        cos, sin = rope
        q = q.reshape(t, self.num_heads, self.head_dim)
        k = k.reshape(t, self.num_kv_heads, self.head_dim)
        q = apply_rope(q, cos, sin).reshape(t, self.q_size)
        k = apply_rope(k, cos, sin).reshape(t, self.kv_size)
        v = v.contiguous()
        if rows is None:
            if kv is not None:
                kv[0].k[kv[1]], kv[0].v[kv[1]] = k, v
            out = attn(q, k, v)
        else:
            # Only the active rows were computed. Every token's keys/values go into this loop's
            # cache: stopped rows write their kept ones (the KV rule), read by the later tokens
            # of their request that loop deeper. (Rows past their budget write them too, into
            # caches their request never reads.) With a subset (CPU attention), attention runs
            # for the requests with an active token only; otherwise vLLM's attention call covers
            # the whole batch, stopped rows with zero queries (their outputs are dropped).
            index, total, subset = rows
            assert kv is not None, "compacted rows need the kept keys/values"
            kept, layer = kv
            # in place: the kept tensors were written into the caches of the loops before
            k = kept.k[layer].index_copy_(0, index, k)  # type: ignore[union-attr]
            v = kept.v[layer].index_copy_(0, index, v)  # type: ignore[union-attr]
            if subset is not None:
                _write_cache(attn, k, v)
                out = subset.attend(attn, q, k, v)
            else:
                q = q.new_zeros(total, self.q_size).index_copy_(0, index, q)
                out = attn(q, k, v).index_select(0, index)
        y, _ = self.o_proj(out)
        return _plus_lora(self.lora, "o_proj", y, out, loop)


class VLoopedMLP(nn.Module):
    def __init__(self, config: LoopedConfig, core: bool, prefix: str) -> None:
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(d, [f, f], bias=config.mlp_bias, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(f, d, bias=config.mlp_bias, prefix=f"{prefix}.down_proj")
        self.lora = _loras(config, core, {"gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)})

    def forward(self, x: torch.Tensor, loop: int | None, fused: bool = False) -> torch.Tensor:
        gate_up, _ = self.gate_up_proj(x)
        gate, up = gate_up.chunk(2, dim=-1)
        gate, up = _plus_lora(self.lora, "gate_proj", gate, x, loop), _plus_lora(self.lora, "up_proj", up, x, loop)
        h = kernels.silu_mul(gate, up) if fused else F.silu(gate) * up
        y, _ = self.down_proj(h)
        return _plus_lora(self.lora, "down_proj", y, h, loop)


class VLoopedDecoderLayer(nn.Module):
    """Pre-norm attention + SwiGLU MLP, sandwich norms as in the reference."""

    def __init__(self, config: LoopedConfig, core: bool, prefix: str) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = LoopedRMSNorm(config.hidden_size, eps)
        self.self_attn = VLoopedAttention(config, core, f"{prefix}.self_attn")
        self.post_attention_layernorm = LoopedRMSNorm(config.hidden_size, eps)
        self.mlp = VLoopedMLP(config, core, f"{prefix}.mlp")
        self.sandwich = config.sandwich_norm
        self.residual_sandwich = config.sandwich_norm and config.sandwich_style == "residual"
        if self.sandwich:
            self.attn_out_norm = LoopedRMSNorm(config.hidden_size, eps)
            self.mlp_out_norm = LoopedRMSNorm(config.hidden_size, eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn: Attention,
                loop: int | None = None, rows: _Rows | None = None, kv: _KV | None = None) -> torch.Tensor:
        a = self.self_attn(self.input_layernorm(x), rope, attn, loop, rows, kv)
        if self.residual_sandwich:
            x = self.attn_out_norm(x + a)
            return self.mlp_out_norm(x + self.mlp(self.post_attention_layernorm(x), loop))
        x = x + (self.attn_out_norm(a) if self.sandwich else a)
        m = self.mlp(self.post_attention_layernorm(x), loop)
        return x + (self.mlp_out_norm(m) if self.sandwich else m)

    def forward_stack(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn: Attention,
                      fused: bool) -> torch.Tensor:
        """A prelude or coda layer: :meth:`forward`, or through the kernels when ``fused``."""
        if not fused:
            return self(x, rope, attn)
        norm = self.input_layernorm
        return self.forward_fused(x, kernels.rms_norm(x, norm.weight, norm.eps), rope, attn, None, None, None, None)[0]

    def forward_fused(self, x: torch.Tensor, normed: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                      attn: Attention, loop: int | None, rows: _Rows | None, kv: _KV | None,
                      next_norm: LoopedRMSNorm | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` through the kernels (as the reference's ``forward_fused``): ``normed`` is
        this layer's input norm of ``x``; returns the output and ``next_norm`` of it."""
        return fused_layer_tail(self, x, self.self_attn(normed, rope, attn, loop, rows, kv), loop, next_norm)


class VLoopedModel(nn.Module):
    """Embeddings, prelude, looped core, coda, final norm (weights named as in the reference)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: LoopedConfig = vllm_config.model_config.hf_config
        check_config(config, get_tensor_model_parallel_world_size(), get_pp_group().world_size)
        self.config = config
        cache_config, quant_config = vllm_config.cache_config, vllm_config.quant_config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   prefix=f"{prefix}.embed_tokens")
        self.prelude = nn.ModuleList(VLoopedDecoderLayer(config, False, f"{prefix}.prelude.{i}")
                                     for i in range(config.num_prelude_layers))
        self.core = nn.ModuleList(VLoopedDecoderLayer(config, True, f"{prefix}.core.{i}")
                                  for i in range(config.num_core_layers))
        self.coda = nn.ModuleList(VLoopedDecoderLayer(config, False, f"{prefix}.coda.{i}")
                                  for i in range(config.num_coda_layers))
        self.injection = LoopInjection(config)
        self.loop_norm = LoopedRMSNorm(config.hidden_size, config.rms_norm_eps) if config.loop_norm else None
        # Evaluated for requests that turn it on (exit_threshold / min_loops).
        self.exit_gate = nn.Linear(config.hidden_size, 1) if config.exit_gate else None
        self.norm = LoopedRMSNorm(config.hidden_size, config.rms_norm_eps) if config.final_norm else nn.Identity()
        self.rope = _Rope(config)

        # One vLLM attention layer (and so one KV cache) per prelude layer, per
        # (loop, core layer) and per coda layer. vLLM binds caches by the single integer
        # in each layer's name, so the names use one running index over the unrolled depth.
        tp = get_tensor_model_parallel_world_size()
        heads, kv_heads = config.num_attention_heads // tp, max(1, config.num_key_value_heads // tp)
        scale = config.head_dim**-0.5
        counter = iter(range(10**9))

        def attention() -> Attention:
            return Attention(heads, config.head_dim, scale, num_kv_heads=kv_heads, cache_config=cache_config,
                             quant_config=quant_config, prefix=f"{prefix}.unrolled.{next(counter)}.attn")

        self.prelude_attn = nn.ModuleList(attention() for _ in self.prelude)
        self.core_attn = nn.ModuleList(nn.ModuleList(attention() for _ in self.core) for _ in range(config.max_loops))
        self.coda_attn = nn.ModuleList(attention() for _ in self.coda)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        loop_budgets: torch.Tensor | None = None,
        loop_max: int | None = None,
        loop_uniform: bool | None = None,
        loop_levels: frozenset[int] | None = None,
        exit_thresholds: torch.Tensor | None = None,
        exit_min_loops: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self.loop_depths: torch.Tensor | None = None
        x = self.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.embedding_scale != 1.0:
            x = x * self.config.embedding_scale
        rope = self.rope(positions, x.dtype)
        # the Triton kernels on CUDA (``kernels.enabled``), not with norms on the residual stream
        residual = self.config.sandwich_norm and self.config.sandwich_style == "residual"
        fused = kernels.enabled(x.device) and not residual
        for module, attn in zip(self.prelude, self.prelude_attn):
            x = module.forward_stack(x, rope, attn, fused)
        e = x
        s = initial_state(e, self.config.initial_state, self.config.initial_state_std)
        invariant = self.injection.loop_invariant(e) if fused else None
        total = s.shape[0]
        if loop_budgets is None:  # a profiling / warm-up run (checked by LoopedForCausalLM): the deepest case
            loops, keep = self.config.max_loops, None
            loop_budgets = torch.full((total,), loops, dtype=torch.long, device=s.device)
        else:
            loops = int(loop_max) if loop_max is not None else int(loop_budgets.max())
            uniform = loop_uniform if loop_uniform is not None else bool(loop_budgets.eq(loops).all())
            keep = None if uniform else loop_budgets
        gate = (_GateState(self, loop_budgets, exit_thresholds, exit_min_loops, fused)
                if exit_thresholds is not None else None)
        kept = _Kept(len(self.core)) if keep is not None or gate is not None else None
        rows: _Rows | None = None
        for loop in range(loops):
            # Without the gate, the still-looping rows change only after a loop that is some
            # row's budget (known on the host); with it, after any loop.
            if gate is not None or (keep is not None and (loop == 0 or loop_levels is None or loop in loop_levels)):
                alive = loop_budgets > loop
                if gate is not None:
                    alive &= ~gate.stopped
                subset, alive = _subset(self.core_attn[loop][0], alive)
                active = kernels.compact(~alive) if fused else alive.nonzero().squeeze(1)
                if active.numel() == 0:  # every token stopped: write the kept keys/values (KV rule)
                    assert kept is not None
                    for i, attn in enumerate(self.core_attn[loop]):
                        _write_cache(attn, kept.k[i], kept.v[i])  # type: ignore[arg-type]
                    continue
                rows = None if active.numel() == total else (active, total, subset)
            if rows is None:
                h, inv, r = s, invariant, rope
            else:
                h = s.index_select(0, rows[0])
                r = (rope[0].index_select(0, rows[0]), rope[1].index_select(0, rows[0]))
                if fused and invariant is not None and invariant[1] is not None:
                    inv = (invariant[0], invariant[1].index_select(0, rows[0]))
                else:
                    inv = invariant
            if fused:
                h, normed = self.injection.forward_fused(h, inv, self.core[0].input_layernorm)
            else:
                h = self.injection(h, e if rows is None else e.index_select(0, rows[0]))
            for i, (module, attn) in enumerate(zip(self.core, self.core_attn[loop])):
                layer_kv = (kept, i) if kept is not None else None
                if fused:
                    nxt = self.core[i + 1].input_layernorm if i + 1 < len(self.core) else self.loop_norm
                    h, normed = module.forward_fused(h, normed, r, attn, loop, rows, layer_kv, nxt)
                else:
                    h = module(h, r, attn, loop, rows, layer_kv)
            if self.loop_norm is not None:
                h = normed if fused else self.loop_norm(h)
            # A stopped token keeps its state: its coda sees the state at its depth.
            # (in place past loop 0, where s is some loop's output; loop 0 runs every row)
            s = h if rows is None else s.index_copy_(0, rows[0], h) if loop else s.index_copy(0, rows[0], h)
            if gate is not None:
                gate.step(loop, h, rows[0] if rows is not None else None)
        if gate is not None:
            self.loop_depths = gate.depths
        h = self.norm(s) if self.config.norm_before_coda else s
        for module, attn in zip(self.coda, self.coda_attn):
            h = module.forward_stack(h, rope, attn, fused)
        return self.norm(h)



class _GateState:
    """Per-token exit-gate state of one forward (the reference's ``cdf`` / ``survive``)."""

    def __init__(self, model: VLoopedModel, budgets: torch.Tensor, thresholds: torch.Tensor,
                 min_loops: torch.Tensor | None, fused: bool = False) -> None:
        if model.exit_gate is None:
            raise ValueError("exit_thresholds need a checkpoint with an exit gate (config.exit_gate=True)")
        self.model = model
        self.fused = fused
        self.budgets = budgets
        self.thresholds = thresholds
        self.min_loops = min_loops if min_loops is not None else torch.ones_like(budgets)
        self.on = thresholds <= 1.0  # rows without the gate carry hooks.NO_GATE
        n = budgets.shape[0]
        self.cdf = torch.zeros(n, dtype=torch.float32, device=budgets.device)
        self.survive = torch.ones(n, dtype=torch.float32, device=budgets.device)
        self.stopped = torch.zeros(n, dtype=torch.bool, device=budgets.device)
        self.depths = torch.zeros(n, dtype=torch.long, device=budgets.device)

    def step(self, loop: int, s: torch.Tensor, index: torch.Tensor | None) -> None:
        """After ``loop``: ``s`` is the new state of the rows ``index`` (all rows if None)."""
        model = self.model
        if self.fused:
            self._step_fused(loop, s, index)
            return
        normed = s if model.loop_norm is not None else model.norm(s)
        lam = torch.sigmoid(model.exit_gate(normed).squeeze(-1).float())  # type: ignore[misc]

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if index is None else t.index_select(0, index)

        update = pick(self.on) & (loop < pick(self.budgets) - 1)
        cdf, survive = pick(self.cdf), pick(self.survive)
        cdf = torch.where(update, cdf + lam * survive, cdf)
        survive = torch.where(update, survive * (1 - lam), survive)
        stop = update & (loop + 1 >= pick(self.min_loops)) & (cdf >= pick(self.thresholds))
        if index is None:
            self.cdf, self.survive, self.stopped = cdf, survive, self.stopped | stop
            self.depths = self.depths + 1
        else:
            self.cdf = self.cdf.index_copy(0, index, cdf)
            self.survive = self.survive.index_copy(0, index, survive)
            self.stopped = self.stopped.index_copy(0, index, stop)  # the rows computed were not stopped
            self.depths = self.depths.index_add(0, index, torch.ones_like(index))

    def _step_fused(self, loop: int, s: torch.Tensor, index: torch.Tensor | None) -> None:
        """:meth:`step` in one kernel (``kernels.halt_step``). Rows without the gate carry the
        threshold ``hooks.NO_GATE`` (2.0, above any cdf) and so stop only at their budget; a row
        done by its budget is marked stopped too, which changes nothing (it would not run again)."""
        model = self.model
        norm = model.norm.weight if model.loop_norm is None and isinstance(model.norm, LoopedRMSNorm) else None
        done = kernels.halt_step(s, model.exit_gate.weight, model.exit_gate.bias, self.cdf, self.survive,  # type: ignore[union-attr]
                                 self.budgets.contiguous(), loop, self.min_loops.contiguous(),
                                 self.thresholds.contiguous(), index=index, norm_weight=norm,
                                 eps=model.config.rms_norm_eps, depth=self.depths)
        if index is None:
            self.stopped = self.stopped | done
        else:
            self.stopped = self.stopped.index_copy(0, index, done)


class LoopedForCausalLM(nn.Module):
    """vLLM model class for ``architectures: ["LoopedForCausalLM"]`` checkpoints."""

    #: read by the model-runner hook: this model takes per-token loop budgets.
    loopagent_loop_budgets = True

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        hooks.require_installed()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = VLoopedModel(vllm_config=vllm_config, prefix=f"{prefix}.model" if prefix else "model")
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        loop_budgets: torch.Tensor | None = None,
        loop_max: int | None = None,
        loop_uniform: bool | None = None,
        loop_levels: frozenset[int] | None = None,
        exit_thresholds: torch.Tensor | None = None,
        exit_min_loops: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "LoopedForCausalLM runs a data-dependent number of loops per batch and cannot be captured in a "
                "CUDA graph; start the engine with enforce_eager=True (--enforce-eager)"
            )
        if loop_budgets is None and not hooks.in_dummy_run():
            # Running max_loops here would serve every request at the deepest budget while
            # its usage reports the requested loops.
            raise hooks.BudgetHookError(
                "LoopedForCausalLM got no per-request loop budgets outside vLLM's dummy/profiling run: loopagent's "
                "model-runner hook (GPUModelRunner._model_forward) did not apply. Is this the tested vLLM "
                f"({hooks.TESTED_VLLM}.*), and does the engine use vLLM's V1 GPU/CPU model runner?"
            )
        return self.model(input_ids, positions, inputs_embeds, loop_budgets, loop_max, loop_uniform, loop_levels,
                          exit_thresholds, exit_min_loops)

    @property
    def loop_depths(self) -> torch.Tensor | None:
        """Each token's depth (loops run) in the last forward of a gated batch, else None."""
        return getattr(self.model, "loop_depths", None)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        for name, tensor in weights:
            if self.config.tie_word_embeddings and name == "lm_head.weight":
                continue
            name = _rename_lora(name)
            for fused, part, shard in _STACKED:
                if f".{part}." in name and ".lora." not in name:
                    target = name.replace(f".{part}.", f".{fused}.")
                    if target not in params:
                        raise ValueError(
                            f"checkpoint weight {name!r} has no place in LoopedForCausalLM (config mismatch?)"
                        )
                    param = params[target]
                    param.weight_loader(param, tensor, shard)
                    loaded.add(target)
                    break
            else:
                if name not in params:
                    raise ValueError(f"checkpoint weight {name!r} has no place in LoopedForCausalLM (config mismatch?)")
                param = params[name]
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
                loaded.add(name)
        if self.config.tie_word_embeddings:
            loaded.add("lm_head.weight")
        # vLLM attention layers' own parameters (KV-cache scales) keep their defaults.
        for module_name, module in self.named_modules():
            if isinstance(module, Attention):
                loaded |= {f"{module_name}.{n}" for n, _ in module.named_parameters()}
        missing = sorted(n for n in params if n not in loaded)
        if missing:
            raise ValueError(f"the checkpoint lacks weights of LoopedForCausalLM: {missing[:8]}")
        return loaded


def _rename_lora(name: str) -> str:
    """``...q_proj.lora_A`` (reference) -> ``...lora.q_proj.lora_A`` (here)."""
    if name.endswith((".lora_A", ".lora_B")):
        head, proj, leaf = name.rsplit(".", 2)
        return f"{head}.lora.{proj}.{leaf}"
    return name
