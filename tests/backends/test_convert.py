"""Checkpoint converters: Ouro, Huginn and retrofit (Llama/Qwen2) -> LoopedForCausalLM.

Ouro and Huginn checkpoints are tiny random state dicts written with the upstream key names,
shapes and config.json fields (``modeling_ouro.py``; ``raven_modeling_minimal.py`` /
``raven_config_minimal.py``). The converted models are compared with reference forwards
written here in plain torch straight from the upstream equations (no code shared with our
modeling file). Retrofit is compared with the transformers source model itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from loopagent.backends.looped import LoopedForCausalLM  # noqa: E402
from loopagent.backends.looped.convert import (  # noqa: E402
    ConversionError,
    _rope_settings,
    convert,
    convert_huginn,
    convert_ouro,
    parse_core,
    retrofit,
)

VOCAB, D, HEADS, INTER = 67, 32, 4, 48
EPS = 1e-6


def ids(b: int = 2, t: int = 11, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Eager attention on [b, h, t, hd] (keys/values already repeated for GQA)."""
    t = q.shape[2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def write_checkpoint(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def rand(gen: torch.Generator, *shape: int, std: float = 0.2) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std


def norm_weight(gen: torch.Generator) -> torch.Tensor:
    return 1.0 + rand(gen, D, std=0.3)


# -- Ouro --------------------------------------------------------------------------------------

OURO_LAYERS, OURO_KV, OURO_HD = 3, 2, 8


def ouro_config(**overrides) -> dict:
    return {
        "architectures": ["OuroForCausalLM"], "model_type": "ouro", "vocab_size": VOCAB, "hidden_size": D,
        "intermediate_size": INTER, "num_hidden_layers": OURO_LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": OURO_KV, "head_dim": OURO_HD, "hidden_act": "silu", "max_position_embeddings": 128,
        "rms_norm_eps": EPS, "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
        "total_ut_steps": 4, "early_exit_threshold": 1.0, "use_sliding_window": False, "sliding_window": None,
        "layer_types": ["full_attention"] * OURO_LAYERS, "attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 0,
        **overrides,
    }


def ouro_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": rand(g, VOCAB, D, std=1.0)}
    for i in range(OURO_LAYERS):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "input_layernorm_2", "post_attention_layernorm", "post_attention_layernorm_2"):
            sd[p + n + ".weight"] = norm_weight(g)
        sd[p + "self_attn.q_proj.weight"] = rand(g, HEADS * OURO_HD, D)
        sd[p + "self_attn.k_proj.weight"] = rand(g, OURO_KV * OURO_HD, D)
        sd[p + "self_attn.v_proj.weight"] = rand(g, OURO_KV * OURO_HD, D)
        sd[p + "self_attn.o_proj.weight"] = rand(g, D, HEADS * OURO_HD)
        sd[p + "mlp.gate_proj.weight"] = rand(g, INTER, D)
        sd[p + "mlp.up_proj.weight"] = rand(g, INTER, D)
        sd[p + "mlp.down_proj.weight"] = rand(g, D, INTER)
    sd["model.norm.weight"] = norm_weight(g)
    sd["model.early_exit_gate.weight"] = rand(g, 1, D, std=0.5)
    sd["model.early_exit_gate.bias"] = rand(g, 1, std=0.5)
    sd["lm_head.weight"] = rand(g, VOCAB, D)
    return sd


def ouro_reference(sd: dict, cfg: dict, tokens: torch.Tensor, steps: int):
    """OuroModel.forward + OuroForCausalLM head (modeling_ouro.py), eager attention.
    Returns (final logits, per-step logits, per-step exit probabilities)."""
    b, t = tokens.shape
    h, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.arange(t).float()[:, None] * inv
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

    def rotate_half(x):
        return torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1)

    x = sd["model.embed_tokens.weight"][tokens]
    step_logits, gates = [], []
    for _ in range(steps):
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            residual = x
            a = rms(x, sd[p + "input_layernorm.weight"])
            q = (a @ sd[p + "self_attn.q_proj.weight"].T).view(b, t, h, hd).transpose(1, 2)
            k = (a @ sd[p + "self_attn.k_proj.weight"].T).view(b, t, kv, hd).transpose(1, 2)
            v = (a @ sd[p + "self_attn.v_proj.weight"].T).view(b, t, kv, hd).transpose(1, 2)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
            a = causal_attention(q, k, v).transpose(1, 2).reshape(b, t, h * hd) @ sd[p + "self_attn.o_proj.weight"].T
            x = residual + rms(a, sd[p + "input_layernorm_2.weight"])
            residual = x
            m = rms(x, sd[p + "post_attention_layernorm.weight"])
            m = ((F.silu(m @ sd[p + "mlp.gate_proj.weight"].T) * (m @ sd[p + "mlp.up_proj.weight"].T))
                 @ sd[p + "mlp.down_proj.weight"].T)
            x = residual + rms(m, sd[p + "post_attention_layernorm_2.weight"])
        x = rms(x, sd["model.norm.weight"])  # after every step, fed into the next
        gates.append(
            torch.sigmoid(x @ sd["model.early_exit_gate.weight"].T + sd["model.early_exit_gate.bias"]).squeeze(-1))
        step_logits.append(x @ sd["lm_head.weight"].T)
    return step_logits[-1], step_logits, gates


@pytest.fixture(scope="module")
def ouro_ckpt(tmp_path_factory) -> tuple[Path, dict, dict]:
    cfg, sd = ouro_config(), ouro_state()
    return write_checkpoint(tmp_path_factory.mktemp("ouro") / "src", cfg, sd), cfg, sd


@pytest.fixture(scope="module")
def ouro_model(ouro_ckpt, tmp_path_factory) -> LoopedForCausalLM:
    dst = tmp_path_factory.mktemp("ouro_out") / "looped"
    convert_ouro(ouro_ckpt[0], dst)
    return LoopedForCausalLM.from_pretrained(dst).eval()  # check what was saved, not the in-memory model


@pytest.mark.parametrize("loops", [1, 2, 4])
def test_ouro_matches_reference(ouro_ckpt, ouro_model, loops):
    _, cfg, sd = ouro_ckpt
    tokens = ids()
    ref, ref_steps, ref_gates = ouro_reference(sd, cfg, tokens, loops)
    with torch.no_grad():
        out = ouro_model(tokens, loops=loops, output_loop_logits=True)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(out.loop_logits, ref_steps, strict=True):  # per-step logits (Ouro's exit heads)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.gate_probs, torch.stack(ref_gates), atol=1e-6, rtol=1e-5)


def test_ouro_config(ouro_model):
    c = ouro_model.config
    assert (c.num_prelude_layers, c.num_core_layers, c.num_coda_layers) == (0, OURO_LAYERS, 0)
    assert (c.default_loops, c.max_loops) == (4, 8)
    assert c.exit_gate and c.loop_norm and not c.final_norm and c.sandwich_norm and c.kv_cache == "per_loop"
    assert c.num_key_value_heads == OURO_KV and c.exit_threshold == 1.0 and c.converted_from == "ouro"


def test_ouro_cached_generation_matches_uncached(ouro_model):
    tokens = ids(b=1, t=6)
    with torch.no_grad():
        full = ouro_model(tokens, loops=3).logits
        first = ouro_model(tokens[:, :4], loops=3, use_cache=True)
        rest = ouro_model(tokens[:, 4:], loops=3, cache=first.cache, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, atol=1e-5, rtol=1e-5)


def test_ouro_tied_embeddings_and_options(tmp_path):
    cfg, sd = ouro_config(tie_word_embeddings=True, total_ut_steps=2), ouro_state(seed=3)
    del sd["lm_head.weight"]
    src = write_checkpoint(tmp_path / "src", cfg, sd)
    model = convert_ouro(src, loops=3, max_loops=5)
    assert (model.config.default_loops, model.config.max_loops) == (3, 5)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tokens = ids(seed=4)
    ref, _, _ = ouro_reference({**sd, "lm_head.weight": sd["model.embed_tokens.weight"]}, cfg, tokens, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, ref, atol=1e-5, rtol=1e-5)


# -- Huginn ------------------------------------------------------------------------------------

HUG_PRE, HUG_CORE, HUG_CODA = 2, 4, 2
HUG_HD = D // HEADS


def assert_huginn_close(
    ours: torch.Tensor, sd: dict, cfg: dict, tokens: torch.Tensor, steps: int, state: torch.Tensor | None = None
) -> None:
    """Our fp32 logits are as close to the exact (float64) upstream result as the upstream
    equations evaluated in fp32 are. Huginn normalizes the residual stream six times per layer
    and its random tiny blocks are far from contractive, so fp32 rounding alone reaches ~1e-4
    here; with float64 norms on both sides the gap is ~3e-7 (checked while writing this)."""
    exact = huginn_reference({k: v.double() for k, v in sd.items()}, cfg, tokens, steps,
                             None if state is None else state.double())
    fp32_error = (huginn_reference(sd, cfg, tokens, steps, state).double() - exact).abs().max().item()
    torch.testing.assert_close(ours.double(), exact, atol=1e-5 + 2 * fp32_error, rtol=0)


def huginn_config(**overrides) -> dict:
    """raven_config_minimal.RavenConfig fields, tiny."""
    return {
        "architectures": ["RavenForCausalLM"], "model_type": "huginn_raven", "n_embd": D, "n_heads": HEADS,
        "n_layers": HUG_PRE + HUG_CORE + HUG_CODA, "block_size": 128, "vocab_size": VOCAB, "padding_multiple": 64,
        "tie_embeddings": True, "intermediate_size": INTER, "bias": False, "architecture_class_name": "RecurrentGPT",
        "block_class_name": "SandwichBlock", "norm_class_name": "RMSNorm_llama", "norm_eps": EPS,
        "mlp_class_name": "GatedMLP", "nonlin_name": "SiLU", "init_strategy": "takase", "init_orthogonal": False,
        "state_init": "like-init", "injection_type": "linear", "n_layers_in_recurrent_block": HUG_CORE,
        "mean_recurrence": 4, "sampling_scheme": "poisson-lognormal-filling", "mean_backprop_depth": 2,
        "n_layers_in_prelude": HUG_PRE, "n_layers_in_coda": HUG_CODA, "qk_bias": True,
        "activation_checkpoint_impl": "per-iteration", "rope_base": 50000, "torch_dtype": "float32",
        **overrides,
    }


def huginn_state(seed: int = 0, tied: bool = True, qk_bias: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"transformer.wte.weight": rand(g, VOCAB, D, std=math.sqrt(2 / (5 * D)))}
    for stack, n in (("prelude", HUG_PRE), ("core_block", HUG_CORE), ("coda", HUG_CODA)):
        for i in range(n):
            p = f"transformer.{stack}.{i}."
            for k in range(1, 5):
                sd[p + f"norm_{k}.weight"] = norm_weight(g)
            sd[p + "attn.Wqkv.weight"] = rand(g, 3 * D, D)
            if qk_bias:
                sd[p + "attn.qk_bias"] = rand(g, 2, 1, HEADS, HUG_HD, std=0.3)
            sd[p + "attn.proj.weight"] = rand(g, D, D)
            sd[p + "mlp.fc.weight"] = rand(g, 2 * INTER, D)
            sd[p + "mlp.proj.weight"] = rand(g, D, INTER)
    sd["transformer.adapter.weight"] = rand(g, D, 2 * D)
    sd["transformer.ln_f.weight"] = norm_weight(g)
    if not tied:
        sd["lm_head.weight"] = rand(g, VOCAB, D)
    # RavenForCausalLM registers its rotary table as a persistent buffer: it is in the checkpoint
    inv = 1.0 / (50000 ** (torch.arange(0, HUG_HD, 2).float() / HUG_HD))
    freqs = torch.outer(torch.arange(128).float(), inv)
    sd["freqs_cis"] = torch.stack([freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]], dim=4)
    return sd


def huginn_reference(
    sd: dict, cfg: dict, tokens: torch.Tensor, steps: int, state: torch.Tensor | None = None
) -> torch.Tensor:
    """RavenForCausalLM.forward (raven_modeling_minimal.py) with input_states = zeros (or ``state``)."""
    b, t = tokens.shape
    d, h = cfg["n_embd"], cfg["n_heads"]
    hd = d // h
    inv = 1.0 / (cfg["rope_base"] ** (torch.arange(0, hd, 2).float() / hd))
    freqs = torch.outer(torch.arange(t).float(), inv)  # [t, hd/2]
    cos, sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    def rope(x):  # apply_rotary_emb_complex_like: interleaved pairs (2i, 2i+1) on [b, t, h, hd]
        pairs = x.unflatten(-1, (-1, 2))
        re, im = pairs[..., 0], pairs[..., 1]
        return torch.stack([re * cos - im * sin, im * cos + re * sin], -1).flatten(3)

    def block(x, p):  # SandwichBlock
        a = rms(x, sd[p + "norm_1.weight"])
        q, k, v = (a @ sd[p + "attn.Wqkv.weight"].T).split([d, d, d], dim=2)
        q, k, v = q.view(b, t, h, hd), k.view(b, t, h, hd), v.view(b, t, h, hd)
        if cfg["qk_bias"]:
            q_bias, k_bias = sd[p + "attn.qk_bias"].split(1, dim=0)
            q, k = q + q_bias, k + k_bias
        q, k = rope(q), rope(k)
        y = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        y = y.transpose(1, 2).reshape(b, t, d) @ sd[p + "attn.proj.weight"].T
        x = rms(y + x, sd[p + "norm_2.weight"])
        g, u = (rms(x, sd[p + "norm_3.weight"]) @ sd[p + "mlp.fc.weight"].T).chunk(2, dim=-1)
        return rms((F.silu(g) * u) @ sd[p + "mlp.proj.weight"].T + x, sd[p + "norm_4.weight"])

    e = sd["transformer.wte.weight"][tokens] * math.sqrt(d)  # emb_scale
    for i in range(cfg["n_layers_in_prelude"]):
        e = block(e, f"transformer.prelude.{i}.")
    x = torch.zeros_like(e) if state is None else state
    for _ in range(steps):
        x = torch.cat([x, e], dim=-1) @ sd["transformer.adapter.weight"].T
        for i in range(cfg["n_layers_in_recurrent_block"]):
            x = block(x, f"transformer.core_block.{i}.")
    x = rms(x, sd["transformer.ln_f.weight"])  # iterate_forward returns ln_f(x)
    for i in range(cfg["n_layers_in_coda"]):
        x = block(x, f"transformer.coda.{i}.")
    x = rms(x, sd["transformer.ln_f.weight"])
    head = sd["lm_head.weight"] if "lm_head.weight" in sd else sd["transformer.wte.weight"]
    return x @ head.T


@pytest.fixture(scope="module")
def huginn_ckpt(tmp_path_factory) -> tuple[Path, dict, dict]:
    cfg, sd = huginn_config(), huginn_state()
    return write_checkpoint(tmp_path_factory.mktemp("huginn") / "src", cfg, sd), cfg, sd


@pytest.fixture(scope="module")
def huginn_model(huginn_ckpt, tmp_path_factory) -> LoopedForCausalLM:
    dst = tmp_path_factory.mktemp("huginn_out") / "looped"
    convert_huginn(huginn_ckpt[0], dst)
    return LoopedForCausalLM.from_pretrained(dst).eval()


@pytest.mark.parametrize("loops", [1, 2, 4])
def test_huginn_matches_reference(huginn_ckpt, huginn_model, loops):
    _, cfg, sd = huginn_ckpt
    tokens = ids()
    with torch.no_grad():
        ours = huginn_model(tokens, loops=loops).logits
    assert_huginn_close(ours, sd, cfg, tokens, loops)


def test_huginn_config(huginn_model):
    c = huginn_model.config
    assert (c.num_prelude_layers, c.num_core_layers, c.num_coda_layers) == (HUG_PRE, HUG_CORE, HUG_CODA)
    assert c.injection == "concat" and c.initial_state == "zeros" and c.sandwich_style == "residual"
    assert c.norm_before_coda and c.final_norm and not c.loop_norm and c.qkv_bias and c.tie_word_embeddings
    assert c.embedding_scale == pytest.approx(math.sqrt(D)) and (c.default_loops, c.max_loops) == (4, 8)
    assert c.rope_theta == 50000


def test_huginn_cached_generation_matches_uncached(huginn_model):
    tokens = ids(b=1, t=7, seed=5)
    with torch.no_grad():
        full = huginn_model(tokens, loops=2).logits
        first = huginn_model(tokens[:, :5], loops=2, use_cache=True)
        rest = huginn_model(tokens[:, 5:], loops=2, cache=first.cache, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full, atol=1e-5, rtol=1e-5)


def test_huginn_untied_without_qk_bias(tmp_path):
    cfg, sd = huginn_config(tie_embeddings=False, qk_bias=False), huginn_state(seed=7, tied=False, qk_bias=False)
    model = convert_huginn(write_checkpoint(tmp_path / "src", cfg, sd), loops=3)
    assert not model.config.qkv_bias and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    tokens = ids(seed=8)
    with torch.no_grad():
        assert_huginn_close(model(tokens).logits, sd, cfg, tokens, 3)


def test_huginn_random_initial_state(huginn_ckpt, tmp_path):
    """``initial_state="random"``: Huginn's sampling (truncated normal, std sqrt(2/5) after the
    embedding scale), drawn anew per forward; the same draw gives the reference's logits."""
    src, cfg, sd = huginn_ckpt
    model = convert_huginn(src, initial_state="random")
    std = model.config.initial_state_std
    assert std == pytest.approx(math.sqrt(2 / 5))
    tokens = ids(b=1, t=5)
    with torch.no_grad():
        torch.manual_seed(11)
        a = model(tokens, loops=2).logits
        torch.manual_seed(11)
        state = torch.nn.init.trunc_normal_(torch.empty(1, 5, D), std=std, a=-3 * std, b=3 * std)
        assert_huginn_close(a, sd, cfg, tokens, 2, state=state)
        assert not torch.allclose(a, model(tokens, loops=2).logits)
    with pytest.raises(ConversionError, match="initial_state"):
        convert_huginn(src, initial_state="ones")


# -- retrofit ----------------------------------------------------------------------------------

RETRO_LAYERS = 4


def save_hf(folder: Path, kind: str, **overrides) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=D, intermediate_size=INTER, num_hidden_layers=RETRO_LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, **overrides))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, **overrides))
    with torch.no_grad():  # non-trivial norms and biases, sharp attention: a wrong mapping or RoPE shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(10.0)
    model.save_pretrained(folder)
    return folder, model.eval()


RETRO_CASES = {
    "llama": ("llama", {}),
    "llama-bias-rope3": ("llama", {"attention_bias": True, "mlp_bias": True, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 5000.0, "factor": 4.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}),
    "qwen2": ("qwen2", {}),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
}


@pytest.mark.parametrize("case", sorted(RETRO_CASES))
def test_retrofit_reproduces_source_at_one_loop(case, tmp_path):
    kind, overrides = RETRO_CASES[case]
    src, hf = save_hf(tmp_path / "src", kind, **overrides)
    retrofit(src, tmp_path / "dst", core="1:3")
    model = LoopedForCausalLM.from_pretrained(tmp_path / "dst").eval()
    c = model.config
    assert (c.num_prelude_layers, c.num_core_layers, c.num_coda_layers) == (1, 2, 1)
    assert c.injection == "none" and (c.default_loops, c.max_loops) == (1, 8)
    assert c.qkv_bias == (kind == "qwen2" or bool(overrides.get("attention_bias")))
    assert c.tie_word_embeddings == bool(overrides.get("tie_word_embeddings"))
    tokens = ids(t=19)
    with torch.no_grad():
        expected = hf(tokens).logits
        looped1 = model(tokens).logits
        looped2 = model(tokens, loops=2).logits
    torch.testing.assert_close(looped1, expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(looped2).all() and (looped2 - expected).abs().max() > 1e-3


def test_retrofit_default_core_and_legacy_rope_keys(tmp_path):
    assert parse_core(None, 4) == (1, 3) and parse_core(None, 24) == (6, 18) and parse_core(None, 1) == (0, 1)
    assert parse_core("2:-1", 6) == (2, 5) and parse_core(":3", 6) == (0, 3) and parse_core("4:", 6) == (4, 6)
    legacy = {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    assert _rope_settings(legacy, "Llama") == (500000.0, {"rope_type": "linear", "factor": 2.0})
    assert _rope_settings({"rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}, "Llama") == (7.0, None)
    with pytest.raises(ConversionError, match="yarn"):
        _rope_settings({"rope_theta": 1.0, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "Qwen2")


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_convert(tmp_path):
    from typer.testing import CliRunner

    from loopagent.cli import app

    src, hf = save_hf(tmp_path / "src", "qwen2")
    (src / "tokenizer_config.json").write_text("{}")
    runner = CliRunner()
    dst = tmp_path / "looped"
    result = runner.invoke(app, ["convert", "retrofit", str(src), str(dst), "--core", "1:4", "--loops", "2",
                                 "--max-loops", "6"])
    assert result.exit_code == 0, result.output
    assert "1 prelude + 3 core + 0 coda" in result.output
    assert (dst / "model.safetensors").is_file() and (dst / "tokenizer_config.json").is_file()
    model = LoopedForCausalLM.from_pretrained(dst).eval()
    assert (model.config.default_loops, model.config.max_loops) == (2, 6)
    tokens = ids()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, loops=1).logits, hf(tokens).logits, atol=1e-5, rtol=1e-5)

    again = runner.invoke(app, ["convert", "retrofit", str(src), str(dst)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(app, ["convert", "retrofit", str(src), str(tmp_path / "x"), "--core", "2:9"])
    assert bad.exit_code == 2 and "outside the model's 4 layers" in bad.output
    wrong = runner.invoke(app, ["convert", "ouro", str(src), str(tmp_path / "y")])
    assert wrong.exit_code == 2 and "expected an Ouro checkpoint" in wrong.output and "qwen2" in wrong.output


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_layout_is_named(tmp_path):
    bert = write_checkpoint(
        tmp_path / "bert",
        {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": D, "num_hidden_layers": 2},
        {"bert.embeddings.word_embeddings.weight": torch.zeros(VOCAB, D),
         "bert.encoder.layer.0.attention.self.query.weight": torch.zeros(D, D)},
    )
    with pytest.raises(ConversionError,
                       match=r"retrofit expects a Llama/Qwen2/Mistral checkpoint.*'bert'.*BertForMaskedLM"):
        retrofit(bert, tmp_path / "out")
    with pytest.raises(ConversionError, match=r"expected a Huginn checkpoint.*'bert'"):
        convert_huginn(bert)
    with pytest.raises(ConversionError, match=r"expected an Ouro checkpoint.*'bert'"):
        convert_ouro(bert)
    # a Llama config over BERT tensors: the layout, the missing tensor and what was found
    llama_cfg = {"model_type": "llama", "hidden_size": D, "num_hidden_layers": 2, "num_attention_heads": HEADS,
                 "intermediate_size": INTER, "vocab_size": VOCAB}
    (bert / "config.json").write_text(json.dumps(llama_cfg))
    with pytest.raises(ConversionError,
                       match=r"not a Llama checkpoint.*missing.*'model.embed_tokens.weight'.*found keys like 'bert\."):
        retrofit(bert)


def test_missing_extra_and_misshapen_tensors(tmp_path):
    cfg, sd = ouro_config(), ouro_state()
    missing = {k: v for k, v in sd.items() if k != "model.layers.1.input_layernorm_2.weight"}
    with pytest.raises(ConversionError, match=r"not a Ouro checkpoint: 1 expected tensor\(s\) missing, "
                                              r"e.g. 'model.layers.1.input_layernorm_2.weight'"):
        convert_ouro(write_checkpoint(tmp_path / "missing", cfg, missing))
    wrong = {**sd, "model.layers.2.self_attn.k_proj.weight": torch.zeros(HEADS * OURO_HD, D)}
    with pytest.raises(ConversionError,
                       match=r"'model.layers.2.self_attn.k_proj.weight': expected shape \(16, 32\) .*found \(32, 32\)"):
        convert_ouro(write_checkpoint(tmp_path / "shape", cfg, wrong))
    extra = {**sd, "model.layers.0.self_attn.q_norm.weight": torch.ones(OURO_HD)}
    with pytest.raises(ConversionError, match=r"does not have.*q_norm"):
        convert_ouro(write_checkpoint(tmp_path / "extra", cfg, extra))
    hcfg, hsd = huginn_config(), huginn_state()
    hsd["transformer.core_block.3.attn.Wqkv.weight"] = torch.zeros(3 * D, D + 1)
    with pytest.raises(ConversionError, match=r"'transformer.core_block.3.attn.Wqkv.weight': expected shape \(96, 32\)"
                                              r".*found \(96, 33\)"):
        convert_huginn(write_checkpoint(tmp_path / "hshape", hcfg, hsd))
    with pytest.raises(ConversionError, match=r"n_layers=9 but prelude\+core\+coda"):
        convert_huginn(write_checkpoint(tmp_path / "hlayers", huginn_config(n_layers=9), huginn_state()))


def test_bad_core_ranges_and_options(tmp_path):
    for text in ("0:5", "3:3", "3:1", "-9:2"):
        with pytest.raises(ConversionError, match=r"outside the model's 4 layers"):
            parse_core(text, 4)
    for text in ("1-3", "a:b", "1:2:3"):
        with pytest.raises(ConversionError, match="START:END"):
            parse_core(text, 4)
    src, _ = save_hf(tmp_path / "src", "llama")
    with pytest.raises(ConversionError, match=r"--core 2:7 is outside the model's 4 layers"):
        retrofit(src, core="2:7")
    with pytest.raises(ConversionError, match="loops must be a positive integer"):
        retrofit(src, loops=0)
    with pytest.raises(ConversionError, match="max_loops must be an integer >= loops"):
        retrofit(src, loops=4, max_loops=2)
    with pytest.raises(ConversionError, match="--core applies to retrofit only"):
        convert("ouro", src, core="1:2")
    with pytest.raises(ConversionError, match="unknown conversion"):
        convert("gpt2", src)
    with pytest.raises(ConversionError, match="is the source checkpoint"):
        retrofit(src, src)
    with pytest.raises(ConversionError, match="no config.json"):
        retrofit(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConversionError, match="no weights"):
        retrofit(tmp_path / "empty")


def test_dtype_option(ouro_ckpt):
    model = convert_ouro(ouro_ckpt[0], dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ConversionError, match="dtype"):
        convert_ouro(ouro_ckpt[0], dtype="int8")
