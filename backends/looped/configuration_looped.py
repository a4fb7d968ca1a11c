"""Configuration of looped (recurrent-depth) transformers."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

INJECTIONS = ("none", "additive", "concat", "stable")
KV_CACHES = ("per_loop", "shared")
INITIAL_STATES = ("embed", "zeros", "random")
SANDWICH_STYLES = ("output", "residual")
ROPE_FREQ_SCALINGS = ("linear", "llama3")


class LoopedConfig(PretrainedConfig):
    r"""Configuration of :class:`LoopedForCausalLM`: prelude -> core block x loops -> coda.

    Args:
        num_prelude_layers / num_core_layers / num_coda_layers: the three stacks; the
            core stack is run ``loops`` times per token.
        default_loops: loop budget when a call does not choose one.
        max_loops: the largest loop budget the model accepts (looped models degrade far
            past what they were trained on).
        injection: how the prelude output ``e`` enters every loop: ``"none"`` (only the
            first state), ``"additive"`` (``s + e``), ``"concat"`` (Huginn's adapter
            ``W [s; e]``) or ``"stable"`` (Parcae: ``exp(-softplus(dt) exp(A_log)) * s +
            softplus(dt) * B norm(e)``, a contraction, so states stay bounded as loops grow).
        kv_cache: ``"per_loop"`` keeps keys/values for every (loop, core layer), built for
            the batch's largest budget; ``"shared"`` keeps one per core layer (each position
            is seen at its final loop; positions are processed one at a time, which is
            slower but exact). A token that stopped at depth ``d`` (its row's budget, or the
            gate) computes nothing more: at every loop ``l >= d`` later tokens read its
            keys/values of loop ``d - 1`` (its last computed loop; ``shared`` stores those);
            a masked position (padding) computes no loop and holds zeros.
        exit_gate: an Ouro-style gate after each loop; a token stops once the
            cumulative exit probability reaches ``exit_threshold`` (and it ran at least
            ``min_loops``, a forward argument): ``lam = sigmoid(gate(state))``,
            ``cdf += lam * survive``, ``survive *= 1 - lam``, checked after every loop but
            the last of its budget. Stopped tokens skip the core block.
        lora_rank: if > 0, per-loop LoRA deltas on ``lora_targets`` of the core block
            (relaxed recursion: each loop may differ slightly).
        sandwich_norm: also normalize the attention and MLP outputs (Huginn, Ouro).
        loop_norm: apply an RMSNorm to the state at the end of every loop (Ouro).
        final_norm: apply the final RMSNorm before the coda output head.
        qkv_bias / attention_bias / mlp_bias: biases (Qwen2 has q/k/v biases).

    Options added for exact checkpoint conversion (``backends/looped/convert.py``); each
    default keeps the behaviour above:

        sandwich_style: where ``sandwich_norm`` normalizes. ``"output"`` (default, Ouro):
            ``x + norm(attn(...))``; ``"residual"`` (Huginn): ``norm(x + attn(...))``, i.e.
            the residual stream itself is normalized after the attention and after the MLP.
        initial_state: the first loop state ``s_0``: ``"embed"`` (default: the prelude
            output ``e``), ``"zeros"`` (Huginn with ``init_scale=0``: deterministic) or
            ``"random"`` (Huginn's default: a normal truncated at 3 standard deviations,
            ``initial_state_std``, drawn anew for every forward).
        initial_state_std: standard deviation of the ``"random"`` initial state.
        embedding_scale: multiply the input embeddings (also ``inputs_embeds`` passed in)
            by this factor before the prelude (Huginn: ``sqrt(hidden_size)``); default 1.0.
        norm_before_coda: also apply the final norm (same weights) to the state after the
            last loop, before the coda (Huginn applies its ``ln_f`` twice); needs
            ``final_norm``.
        rope_freq_scaling: RoPE frequency scaling as in a Llama config's ``rope_scaling``:
            ``None`` (default), ``{"rope_type": "linear", "factor": f}`` or
            ``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
            "original_max_position_embeddings"}`` (Llama 3.1+).

    Example::

        config = LoopedConfig(vocab_size=256, hidden_size=64, num_attention_heads=4,
                              num_core_layers=2, default_loops=4, max_loops=16, injection="stable")
    """

    model_type = "looped"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 256,
        hidden_size: int = 128,
        intermediate_size: int | None = None,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        num_prelude_layers: int = 1,
        num_core_layers: int = 1,
        num_coda_layers: int = 1,
        default_loops: int = 4,
        max_loops: int = 16,
        injection: str = "additive",
        kv_cache: str = "per_loop",
        exit_gate: bool = False,
        exit_threshold: float = 0.9,
        lora_rank: int = 0,
        lora_targets: tuple[str, ...] | list[str] = ("q_proj", "v_proj"),
        sandwich_norm: bool = False,
        loop_norm: bool = False,
        final_norm: bool = True,
        qkv_bias: bool = False,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        sandwich_style: str = "output",
        initial_state: str = "embed",
        initial_state_std: float = 1.0,
        embedding_scale: float = 1.0,
        norm_before_coda: bool = False,
        rope_freq_scaling: dict[str, Any] | None = None,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 4096,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.num_prelude_layers = num_prelude_layers
        self.num_core_layers = num_core_layers
        self.num_coda_layers = num_coda_layers
        self.default_loops = default_loops
        self.max_loops = max_loops
        self.injection = injection
        self.kv_cache = kv_cache
        self.exit_gate = exit_gate
        self.exit_threshold = exit_threshold
        self.lora_rank = lora_rank
        self.lora_targets = list(lora_targets)
        self.sandwich_norm = sandwich_norm
        self.loop_norm = loop_norm
        self.final_norm = final_norm
        self.qkv_bias = qkv_bias
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.sandwich_style = sandwich_style
        self.initial_state = initial_state
        self.initial_state_std = initial_state_std
        self.embedding_scale = embedding_scale
        self.norm_before_coda = norm_before_coda
        self.rope_freq_scaling = dict(rope_freq_scaling) if rope_freq_scaling else None
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self._validate()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def num_hidden_layers(self) -> int:
        """Distinct layers (what generic tooling counts); the unrolled depth is larger."""
        return self.num_prelude_layers + self.num_core_layers + self.num_coda_layers

    def _validate(self) -> None:
        if self.injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, got {self.injection!r}")
        if self.kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache must be one of {KV_CACHES}, got {self.kv_cache!r}")
        if self.num_core_layers < 1:
            raise ValueError(f"num_core_layers must be >= 1, got {self.num_core_layers}")
        if not 1 <= self.default_loops <= self.max_loops:
            raise ValueError(
                f"need 1 <= default_loops <= max_loops, got default_loops={self.default_loops}, "
                f"max_loops={self.max_loops}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if not 0.0 <= self.exit_threshold <= 1.0:
            raise ValueError(f"exit_threshold must be in [0, 1], got {self.exit_threshold}")
        if self.sandwich_style not in SANDWICH_STYLES:
            raise ValueError(f"sandwich_style must be one of {SANDWICH_STYLES}, got {self.sandwich_style!r}")
        if self.initial_state not in INITIAL_STATES:
            raise ValueError(f"initial_state must be one of {INITIAL_STATES}, got {self.initial_state!r}")
        if self.initial_state == "random" and not self.initial_state_std > 0:
            raise ValueError(f"initial_state_std must be > 0 for a random initial state, got {self.initial_state_std}")
        if self.norm_before_coda and not self.final_norm:
            raise ValueError("norm_before_coda reuses the final norm: it needs final_norm=True")
        if self.rope_freq_scaling is not None:
            kind = self.rope_freq_scaling.get("rope_type", self.rope_freq_scaling.get("type"))
            if kind not in ROPE_FREQ_SCALINGS:
                raise ValueError(f"rope_freq_scaling['rope_type'] must be one of {ROPE_FREQ_SCALINGS}, got {kind!r}")
            needed = {
                "linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
            }[kind]
            missing = [k for k in needed if k not in self.rope_freq_scaling]
            if missing:
                raise ValueError(f"rope_freq_scaling of type {kind!r} needs {missing}")
        unknown = set(self.lora_targets) - {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        if unknown:
            raise ValueError(f"unknown lora_targets {sorted(unknown)}; choose from q/k/v/o_proj, gate/up/down_proj")
