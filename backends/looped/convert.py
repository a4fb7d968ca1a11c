"""Checkpoint converters: Ouro, Huginn and plain Llama/Qwen2 ("retrofit") -> LoopedForCausalLM.

    convert_ouro(src, dst)                       # ByteDance Ouro-1.4B / 2.6B (HF layout)
    convert_huginn(src, dst)                     # tomg-group-umd/huginn-0125 (raven_modeling_minimal)
    retrofit(src, dst, core=(4, 12), loops=1)    # Llama / Qwen2 / Mistral: layers [4, 12) become the core

``src`` is a local checkpoint folder (``config.json`` plus ``model.safetensors``, a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``). The result is an exactly
equivalent :class:`LoopedForCausalLM` (same logits up to float rounding), written with
``save_pretrained`` (safetensors) when ``dst`` is given, together with the tokenizer files.

Layouts (upstream names -> ours):

* **Ouro** (``modeling_ouro.py``; vLLM ``ouro.py``): every decoder layer is looped, so the
  layers become the core block (no prelude/coda). Per layer ``x += norm2(attn(norm1(x)));
  x += norm4(mlp(norm3(x)))`` (``input_layernorm``, ``input_layernorm_2``,
  ``post_attention_layernorm``, ``post_attention_layernorm_2`` -> ``input_layernorm``,
  ``attn_out_norm``, ``post_attention_layernorm``, ``mlp_out_norm``); after every recurrent
  step ``model.norm`` is applied and fed into the next step (-> ``loop_norm``, no final
  norm); ``model.early_exit_gate`` reads that normed state (-> ``exit_gate``); per-step KV
  cache (-> ``kv_cache="per_loop"``). ``total_ut_steps`` -> ``default_loops``.
* **Huginn** (``raven_modeling_minimal.py``): ``transformer.wte`` (embeddings scaled by
  ``sqrt(n_embd)``) -> ``prelude`` -> ``adapter(cat[s, e])`` + ``core_block`` per step ->
  ``ln_f`` -> ``coda`` -> ``ln_f``. Blocks normalize the residual stream:
  ``x = norm_2(x + attn(norm_1(x))); x = norm_4(x + mlp(norm_3(x)))``. The fused
  ``attn.Wqkv`` is split into q/k/v, ``attn.qk_bias`` becomes q/k biases, ``mlp.fc`` is split
  into gate/up halves. Huginn's RoPE rotates interleaved pairs ``(2i, 2i+1)``; ours rotates
  ``(i, i + d/2)``, so the q/k rows of every head are permuted (``[0, 2, 4, ..., 1, 3, ...]``),
  which leaves every attention score unchanged. The initial state is ``"zeros"`` (Huginn's
  deterministic ``init_scale=0``) or ``"random"`` (its default: a truncated normal with
  std ``sqrt(2/5)`` after the embedding scale). ``mean_recurrence`` -> ``default_loops``.
* **Retrofit** (transformers ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` /
  ``MistralForCausalLM``): layers ``[start, end)`` become the core block, earlier ones the
  prelude, later ones the coda; injection ``"none"``, so one loop reproduces the source model.
  Qwen2's q/k/v biases -> ``qkv_bias``; Llama's ``attention_bias``/``mlp_bias`` carry over;
  ``linear`` and ``llama3`` RoPE scaling -> ``rope_freq_scaling``.

Anything else (an unknown layout, missing or misshapen tensors, options our model lacks)
raises :class:`ConversionError` with what was expected and what was found.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from loopagent.errors import LoopagentError
from loopagent.validation import check_loops, is_int

from .configuration_looped import LoopedConfig
from .modeling_looped import LoopedForCausalLM

__all__ = ["ConversionError", "KINDS", "convert", "convert_huginn", "convert_ouro", "describe", "load_checkpoint",
           "parse_core", "retrofit"]

KINDS = ("ouro", "huginn", "retrofit")
RETROFIT_TYPES = ("llama", "qwen2", "mistral")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)


class ConversionError(LoopagentError, ValueError):
    """A checkpoint cannot be converted: unknown layout, missing/misshapen tensors, bad options."""


# -- reading checkpoints ------------------------------------------------------------------------


def load_checkpoint(src: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config.json as a dict, state dict)`` of a local checkpoint folder."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"{src}: not a checkpoint folder (expected a directory with config.json and weights)")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{src}: no config.json (expected a Hugging Face checkpoint folder)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{config_path}: expected a JSON object, found {type(config).__name__}")
    return config, _load_tensors(src)


def _load_tensors(src: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    def load_bin(path: Path) -> dict[str, torch.Tensor]:
        return torch.load(path, map_location="cpu", weights_only=True)

    for index_name, loader in (("model.safetensors.index.json", load_file), ("pytorch_model.bin.index.json", load_bin)):
        index = src / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            if not shards:
                raise ConversionError(f"{index}: empty weight_map")
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (src / shard).is_file():
                    raise ConversionError(f"{index} names shard {shard!r}, which is not in {src}")
                tensors.update(loader(src / shard))
            return tensors
    for name, loader in (("model.safetensors", load_file), ("pytorch_model.bin", load_bin)):
        if (src / name).is_file():
            return loader(src / name)
    found = sorted(p.name for p in src.iterdir())[:12]
    raise ConversionError(
        f"{src}: no weights (expected model.safetensors, model.safetensors.index.json or pytorch_model.bin); "
        f"found {found}"
    )


def _describe(config: dict[str, Any]) -> str:
    return f"model_type {config.get('model_type')!r} (architectures {config.get('architectures')})"


def _keys_like(tensors: dict[str, torch.Tensor], n: int = 4) -> str:
    keys = sorted(tensors)
    return (", ".join(repr(k) for k in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
            if keys else "none")


def _need(config: dict[str, Any], layout: str, *names: str) -> None:
    missing = [n for n in names if config.get(n) is None]
    if missing:
        raise ConversionError(f"config.json of this {layout} checkpoint lacks {missing}; found {_describe(config)}")


def _check_tensors(
    tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], layout: str,
    ignore: Callable[[str], bool] = lambda k: False,
) -> None:
    """All expected tensors present with the expected shapes, nothing unexpected left over."""
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ConversionError(
            f"not a {layout} checkpoint: {len(missing)} expected tensor(s) missing, e.g. {missing[0]!r}"
            f"{' and ' + repr(missing[1]) if len(missing) > 1 else ''}; found keys like {_keys_like(tensors)}"
        )
    for key, shape in expected.items():
        found = tuple(tensors[key].shape)
        if found != tuple(shape):
            raise ConversionError(f"tensor {key!r}: expected shape {tuple(shape)} (from config.json), found {found}")
    extra = sorted(k for k in tensors if k not in expected and not ignore(k))
    if extra:
        raise ConversionError(
            f"{len(extra)} tensor(s) that a {layout} checkpoint does not have (unsupported variant?), e.g. {extra[0]!r}"
        )


def _rope_settings(config: dict[str, Any], layout: str) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, rope_freq_scaling)`` from a transformers 4.x (rope_theta + rope_scaling)
    or 5.x (rope_parameters) config."""
    params = config.get("rope_parameters") or {}
    if isinstance(params, dict) and params and not ("rope_type" in params or "rope_theta" in params):
        raise ConversionError(f"{layout}: per-layer rope_parameters are not supported ({sorted(params)})")
    theta = config.get("rope_theta") or params.get("rope_theta") or 10000.0
    scaling = config.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        raise ConversionError(f"{layout}: partial rotary embeddings are not supported")
    if not scaling:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return float(theta), None
    if kind == "linear":
        return float(theta), {"rope_type": "linear", "factor": float(scaling["factor"])}
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in keys if k not in scaling]
        if missing:
            raise ConversionError(f"{layout}: llama3 rope scaling lacks {missing}")
        return float(theta), {"rope_type": "llama3", **{k: scaling[k] for k in keys}}
    raise ConversionError(f"{layout}: RoPE scaling {kind!r} is not supported (supported: default, linear, llama3)")


def _token_ids(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


def _loops(
    loops: int | None, max_loops: int | None, default: int, default_max: Callable[[int], int]
) -> tuple[int, int]:
    loops = check_loops(default if loops is None else loops, error=ConversionError)
    max_loops = default_max(loops) if max_loops is None else max_loops
    if not is_int(max_loops) or max_loops < loops:
        raise ConversionError(f"max_loops must be an integer >= loops ({loops}), got {max_loops!r}")
    return loops, int(max_loops)


# -- building the looped model -----------------------------------------------------------------


def _build(
    config: LoopedConfig, state: dict[str, torch.Tensor], dtype: torch.dtype | str | None, sources: dict[str, str]
) -> LoopedForCausalLM:
    """A LoopedForCausalLM whose parameters are exactly ``state`` (no random init)."""
    if isinstance(dtype, str):
        if dtype == "auto":
            dtype = None
        else:
            resolved = getattr(torch, dtype, None)
            if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
                raise ConversionError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
            dtype = resolved
    if dtype is None:
        dtype = state["model.embed_tokens.weight"].dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        model = LoopedForCausalLM(config)
    wanted = model.state_dict()
    tied = config.tie_word_embeddings
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = sorted(set(wanted) - set(state))
    extra = sorted(set(state) - set(wanted))
    if missing or extra:  # a converter bug, not bad input
        raise RuntimeError(f"converter produced a wrong state dict: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(wanted[key].shape):
            origin = sources.get(key, key)
            raise ConversionError(
                f"tensor {origin!r} (-> {key}): expected shape {tuple(wanted[key].shape)} (from config.json), "
                f"found {tuple(value.shape)}"
            )
    model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True, assign=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.config.dtype = dtype  # recorded by save_pretrained
    return model.eval()


def _save(model: LoopedForCausalLM, src: Path, dst: str | Path | None) -> None:
    if dst is None:
        return
    dst = Path(dst)
    if dst.resolve() == src.resolve():
        raise ConversionError(f"destination {dst} is the source checkpoint; choose another folder")
    model.save_pretrained(dst)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


# -- Ouro --------------------------------------------------------------------------------------


def convert_ouro(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    loops: int | None = None,
    max_loops: int | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoopedForCausalLM:
    """ByteDance Ouro (``OuroForCausalLM``) -> LoopedForCausalLM: all layers are the core block.

    ``loops`` defaults to ``total_ut_steps`` (4), ``max_loops`` to twice the trained steps.
    """
    src = Path(src)
    cfg, tensors = load_checkpoint(src)
    layout = "Ouro"
    if cfg.get("model_type") != "ouro" and "OuroForCausalLM" not in (cfg.get("architectures") or []):
        raise ConversionError(
            f"expected an Ouro checkpoint (config.json model_type 'ouro', OuroForCausalLM); found {_describe(cfg)}"
        )
    _need(cfg, layout, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"Ouro: hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
    if cfg.get("use_sliding_window") and "sliding_attention" in (cfg.get("layer_types") or ["sliding_attention"]):
        raise ConversionError("Ouro: sliding-window attention layers are not supported")
    d, n_layers, heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or d // heads
    inter, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    tied = bool(cfg.get("tie_word_embeddings", False))
    theta, scaling = _rope_settings(cfg, layout)
    steps = int(cfg.get("total_ut_steps") or 4)
    loops, max_loops = _loops(loops, max_loops, steps, lambda n: max(n, 2 * steps))

    expected: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        for norm in ("input_layernorm", "input_layernorm_2", "post_attention_layernorm", "post_attention_layernorm_2"):
            expected[p + norm + ".weight"] = (d,)
        expected[p + "self_attn.q_proj.weight"] = (heads * hd, d)
        expected[p + "self_attn.k_proj.weight"] = (kv * hd, d)
        expected[p + "self_attn.v_proj.weight"] = (kv * hd, d)
        expected[p + "self_attn.o_proj.weight"] = (d, heads * hd)
        expected[p + "mlp.gate_proj.weight"] = (inter, d)
        expected[p + "mlp.up_proj.weight"] = (inter, d)
        expected[p + "mlp.down_proj.weight"] = (d, inter)
    expected["model.norm.weight"] = (d,)
    expected["model.early_exit_gate.weight"] = (1, d)
    expected["model.early_exit_gate.bias"] = (1,)
    if not tied:
        expected["lm_head.weight"] = (vocab, d)
    _check_tensors(tensors, expected, layout,
                   ignore=lambda k: k.endswith("rotary_emb.inv_freq") or (tied and k == "lm_head.weight"))

    rename = {
        "input_layernorm": "input_layernorm", "input_layernorm_2": "attn_out_norm",
        "post_attention_layernorm": "post_attention_layernorm", "post_attention_layernorm_2": "mlp_out_norm",
    }
    state: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}

    def put(target: str, source: str) -> None:
        state[target], sources[target] = tensors[source], source

    put("model.embed_tokens.weight", "model.embed_tokens.weight")
    for i in range(n_layers):
        p, q = f"model.layers.{i}.", f"model.core.{i}."
        for theirs, ours in rename.items():
            put(q + ours + ".weight", p + theirs + ".weight")
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            put(q + name + ".weight", p + name + ".weight")
    put("model.loop_norm.weight", "model.norm.weight")
    put("model.exit_gate.weight", "model.early_exit_gate.weight")
    put("model.exit_gate.bias", "model.early_exit_gate.bias")
    if not tied:
        put("lm_head.weight", "lm_head.weight")

    threshold = cfg.get("early_exit_threshold")
    config = LoopedConfig(
        vocab_size=vocab, hidden_size=d, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=hd, num_prelude_layers=0, num_core_layers=n_layers, num_coda_layers=0, default_loops=loops,
        max_loops=max_loops, injection="none", kv_cache="per_loop", exit_gate=True,
        exit_threshold=float(threshold) if threshold is not None and 0.0 <= float(threshold) <= 1.0 else 1.0,
        sandwich_norm=True, sandwich_style="output", loop_norm=True, final_norm=False,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_freq_scaling=scaling,
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096), tie_word_embeddings=tied,
        converted_from="ouro", **_token_ids(cfg),
    )
    model = _build(config, state, dtype, sources)
    _save(model, src, dst)
    return model


# -- Huginn ------------------------------------------------------------------------------------


def _interleaved_to_half(weight: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Permute the rows of every head from interleaved RoPE pairs (2i, 2i+1) to halves (i, i+d/2)."""
    perm = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    shaped = weight.reshape(heads, head_dim, *weight.shape[1:])
    return shaped[:, perm].reshape(weight.shape)


def convert_huginn(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    loops: int | None = None,
    max_loops: int | None = None,
    initial_state: str = "zeros",
    dtype: torch.dtype | str | None = None,
) -> LoopedForCausalLM:
    """Huginn (``RavenForCausalLM``, huginn-0125) -> LoopedForCausalLM with a concat adapter.

    ``initial_state``: ``"zeros"`` (default, deterministic; Huginn with ``init_scale=0``) or
    ``"random"`` (Huginn's default sampling of the first state). ``loops`` defaults to
    ``mean_recurrence`` (32), ``max_loops`` to twice that.
    """
    src = Path(src)
    cfg, tensors = load_checkpoint(src)
    layout = "Huginn"
    if cfg.get("model_type") != "huginn_raven" and "RavenForCausalLM" not in (cfg.get("architectures") or []):
        raise ConversionError(
            f"expected a Huginn checkpoint (config.json model_type 'huginn_raven', RavenForCausalLM); "
            f"found {_describe(cfg)}"
        )
    if initial_state not in ("zeros", "random"):
        raise ConversionError(f"initial_state must be 'zeros' or 'random' for Huginn, got {initial_state!r}")
    _need(cfg, layout, "n_embd", "n_heads", "intermediate_size", "vocab_size")
    for key, want in (("injection_type", "linear"), ("block_class_name", "SandwichBlock"),
                      ("mlp_class_name", "GatedMLP"), ("nonlin_name", "SiLU")):
        if cfg.get(key, want) != want:
            raise ConversionError(f"Huginn: {key}={cfg[key]!r} is not supported (only {want!r})")
    if "rmsnorm" not in str(cfg.get("norm_class_name", "RMSNorm_llama")).lower():
        raise ConversionError(f"Huginn: norm_class_name={cfg['norm_class_name']!r} is not supported (only RMSNorm)")
    if cfg.get("bias"):
        raise ConversionError("Huginn: bias=True (a biased adapter) is not supported")
    if float(cfg.get("test_time_noise", 0) or 0) > 0:
        raise ConversionError("Huginn: test_time_noise > 0 is not supported")
    d, heads, inter = cfg["n_embd"], cfg["n_heads"], cfg["intermediate_size"]
    vocab = cfg.get("padded_vocab_size") or cfg["vocab_size"]
    if d % heads:
        raise ConversionError(f"Huginn: n_embd={d} is not a multiple of n_heads={heads}")
    hd = d // heads
    n_pre, n_core, n_coda = (int(cfg.get(k, v)) for k, v in (
        ("n_layers_in_prelude", 2), ("n_layers_in_recurrent_block", 4), ("n_layers_in_coda", 2)))
    if cfg.get("n_layers") is not None and cfg["n_layers"] != n_pre + n_core + n_coda:
        raise ConversionError(
            f"Huginn: n_layers={cfg['n_layers']} but prelude+core+coda = {n_pre}+{n_core}+{n_coda} = "
            f"{n_pre + n_core + n_coda}"
        )
    qk_bias = bool(cfg.get("qk_bias", True))
    tied = bool(cfg.get("tie_embeddings", cfg.get("tie_word_embeddings", True)))
    steps = int(cfg.get("mean_recurrence") or 32)
    loops, max_loops = _loops(loops, max_loops, steps, lambda n: max(n, 2 * steps))

    stacks = {"prelude": ("prelude", n_pre), "core_block": ("core", n_core), "coda": ("coda", n_coda)}
    expected: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (vocab, d)}
    for theirs, (_, n) in stacks.items():
        for i in range(n):
            p = f"transformer.{theirs}.{i}."
            for k in range(1, 5):
                expected[p + f"norm_{k}.weight"] = (d,)
            expected[p + "attn.Wqkv.weight"] = (3 * d, d)
            if qk_bias:
                expected[p + "attn.qk_bias"] = (2, 1, heads, hd)
            expected[p + "attn.proj.weight"] = (d, d)
            expected[p + "mlp.fc.weight"] = (2 * inter, d)
            expected[p + "mlp.proj.weight"] = (d, inter)
    expected["transformer.adapter.weight"] = (d, 2 * d)
    expected["transformer.ln_f.weight"] = (d,)
    if not tied:
        expected["lm_head.weight"] = (vocab, d)
    _check_tensors(tensors, expected, layout, ignore=lambda k: k == "freqs_cis" or (tied and k == "lm_head.weight"))

    state: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}

    def put(target: str, value: torch.Tensor, source: str) -> None:
        state[target], sources[target] = value, source

    put("model.embed_tokens.weight", tensors["transformer.wte.weight"], "transformer.wte.weight")
    norms = {1: "input_layernorm", 2: "attn_out_norm", 3: "post_attention_layernorm", 4: "mlp_out_norm"}
    for theirs, (ours, n) in stacks.items():
        for i in range(n):
            p, q = f"transformer.{theirs}.{i}.", f"model.{ours}.{i}."
            for k, name in norms.items():
                put(q + name + ".weight", tensors[p + f"norm_{k}.weight"], p + f"norm_{k}.weight")
            wq, wk, wv = tensors[p + "attn.Wqkv.weight"].split([d, d, d], dim=0)
            put(q + "self_attn.q_proj.weight", _interleaved_to_half(wq, heads, hd), p + "attn.Wqkv.weight")
            put(q + "self_attn.k_proj.weight", _interleaved_to_half(wk, heads, hd), p + "attn.Wqkv.weight")
            put(q + "self_attn.v_proj.weight", wv, p + "attn.Wqkv.weight")
            if qk_bias:
                bq, bk = tensors[p + "attn.qk_bias"].reshape(2, heads * hd)
                put(q + "self_attn.q_proj.bias", _interleaved_to_half(bq, heads, hd), p + "attn.qk_bias")
                put(q + "self_attn.k_proj.bias", _interleaved_to_half(bk, heads, hd), p + "attn.qk_bias")
                put(q + "self_attn.v_proj.bias", torch.zeros_like(bq), p + "attn.qk_bias")
            put(q + "self_attn.o_proj.weight", tensors[p + "attn.proj.weight"], p + "attn.proj.weight")
            gate, up = tensors[p + "mlp.fc.weight"].chunk(2, dim=0)
            put(q + "mlp.gate_proj.weight", gate, p + "mlp.fc.weight")
            put(q + "mlp.up_proj.weight", up, p + "mlp.fc.weight")
            put(q + "mlp.down_proj.weight", tensors[p + "mlp.proj.weight"], p + "mlp.proj.weight")
    put("model.injection.adapter.weight", tensors["transformer.adapter.weight"], "transformer.adapter.weight")
    put("model.norm.weight", tensors["transformer.ln_f.weight"], "transformer.ln_f.weight")
    if not tied:
        put("lm_head.weight", tensors["lm_head.weight"], "lm_head.weight")

    embed_scale = math.sqrt(d)
    config = LoopedConfig(
        vocab_size=vocab, hidden_size=d, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=heads,
        head_dim=hd, num_prelude_layers=n_pre, num_core_layers=n_core, num_coda_layers=n_coda,
        default_loops=loops, max_loops=max_loops, injection="concat", kv_cache="per_loop", exit_gate=False,
        sandwich_norm=True, sandwich_style="residual", loop_norm=False, final_norm=True, norm_before_coda=True,
        qkv_bias=qk_bias, embedding_scale=embed_scale,
        # Huginn: trunc_normal(std=sqrt(2/(5 d))) times the embedding scale sqrt(d)
        initial_state=initial_state, initial_state_std=math.sqrt(2 / (5 * d)) * embed_scale,
        rms_norm_eps=float(cfg.get("norm_eps", 1e-6)), rope_theta=float(cfg.get("rope_base", 50_000)),
        max_position_embeddings=int(cfg.get("block_size") or 4096), tie_word_embeddings=tied,
        converted_from="huginn", **_token_ids(cfg),
    )
    model = _build(config, state, dtype, sources)
    _save(model, src, dst)
    return model


# -- retrofit ----------------------------------------------------------------------------------


def parse_core(text: str | tuple[int, int] | None, num_layers: int) -> tuple[int, int]:
    """``"START:END"`` (Python slice rules: negatives count from the end, an empty side is
    the start/end) -> ``(start, end)`` with ``0 <= start < end <= num_layers``. ``None``:
    the middle half, ``[n//4, n - n//4)``."""
    if text is None:
        start, end = num_layers // 4, num_layers - num_layers // 4
        return (start, end) if start < end else (0, num_layers)
    if isinstance(text, tuple):
        raw = text
    else:
        parts = str(text).split(":")
        if len(parts) != 2:
            raise ConversionError(f"--core must look like START:END (e.g. 4:12), got {text!r}")
        try:
            raw = tuple(int(p) if p.strip() else default for p, default in zip(parts, (0, num_layers)))  # type: ignore[assignment]
        except ValueError:
            raise ConversionError(f"--core must be two integers START:END (e.g. 4:12), got {text!r}") from None
    start, end = (v + num_layers if v < 0 else v for v in raw)
    if not 0 <= start < end <= num_layers:
        raise ConversionError(
            f"--core {text if isinstance(text, str) else f'{raw[0]}:{raw[1]}'} "
            f"is outside the model's {num_layers} layers "
            f"(need 0 <= START < END <= {num_layers}; layers START..END-1 become the looped core)"
        )
    return start, end


def retrofit(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    core: str | tuple[int, int] | None = None,
    loops: int | None = None,
    max_loops: int | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoopedForCausalLM:
    """A plain Llama / Qwen2 / Mistral checkpoint -> a looped model whose core block is the
    layers ``core=(start, end)`` (``"START:END"``; default the middle half). Injection
    ``"none"``; ``loops`` defaults to 1 (then the logits equal the source model's),
    ``max_loops`` to ``max(loops, 8)``."""
    src = Path(src)
    cfg, tensors = load_checkpoint(src)
    kind = cfg.get("model_type")
    if kind not in RETROFIT_TYPES:
        raise ConversionError(
            f"retrofit expects a Llama/Qwen2/Mistral checkpoint "
            f"(config.json model_type one of {list(RETROFIT_TYPES)}); found {_describe(cfg)}"
        )
    layout = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[kind]
    _need(cfg, layout, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{layout}: hidden_act {cfg['hidden_act']!r} is not supported (only silu)")
    window = cfg.get("sliding_window")
    if (kind == "qwen2" and cfg.get("use_sliding_window")) or (
        kind == "mistral" and window is not None and window < int(cfg.get("max_position_embeddings") or 0)
    ):
        raise ConversionError(f"{layout}: sliding-window attention is not supported")
    d, n_layers, heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or d // heads
    inter, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    tied = bool(cfg.get("tie_word_embeddings", False))
    theta, scaling = _rope_settings(cfg, layout)
    start, end = parse_core(core, n_layers)
    loops, max_loops = _loops(loops, max_loops, 1, lambda n: max(n, 8))
    qkv_bias = kind == "qwen2" or bool(cfg.get("attention_bias"))
    o_bias = kind != "qwen2" and bool(cfg.get("attention_bias"))
    mlp_bias = kind == "llama" and bool(cfg.get("mlp_bias"))

    expected: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, d)}
    shapes = {"self_attn.q_proj": (heads * hd, d), "self_attn.k_proj": (kv * hd, d), "self_attn.v_proj": (kv * hd, d),
              "self_attn.o_proj": (d, heads * hd),
              "mlp.gate_proj": (inter, d), "mlp.up_proj": (inter, d), "mlp.down_proj": (d, inter)}
    biased = {"self_attn.q_proj": qkv_bias, "self_attn.k_proj": qkv_bias, "self_attn.v_proj": qkv_bias,
              "self_attn.o_proj": o_bias,
              "mlp.gate_proj": mlp_bias, "mlp.up_proj": mlp_bias, "mlp.down_proj": mlp_bias}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        expected[p + "input_layernorm.weight"] = (d,)
        expected[p + "post_attention_layernorm.weight"] = (d,)
        for name, shape in shapes.items():
            expected[p + name + ".weight"] = shape
            if biased[name]:
                expected[p + name + ".bias"] = (shape[0],)
    expected["model.norm.weight"] = (d,)
    if not tied:
        expected["lm_head.weight"] = (vocab, d)
    _check_tensors(tensors, expected, layout,
                   ignore=lambda k: k.endswith("rotary_emb.inv_freq") or (tied and k == "lm_head.weight"))

    state: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for key, value in tensors.items():
        if key not in expected:
            continue
        target = key
        if key.startswith("model.layers."):
            i_text, rest = key[len("model.layers."):].split(".", 1)
            i = int(i_text)
            stack, j = ("prelude", i) if i < start else ("core", i - start) if i < end else ("coda", i - end)
            target = f"model.{stack}.{j}.{rest}"
        state[target], sources[target] = value, key

    config = LoopedConfig(
        vocab_size=vocab, hidden_size=d, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=hd, num_prelude_layers=start, num_core_layers=end - start, num_coda_layers=n_layers - end,
        default_loops=loops, max_loops=max_loops, injection="none", kv_cache="per_loop",
        qkv_bias=qkv_bias, attention_bias=o_bias, mlp_bias=mlp_bias,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_freq_scaling=scaling,
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096), tie_word_embeddings=tied,
        converted_from=f"retrofit:{kind}", retrofit_core=[start, end], **_token_ids(cfg),
    )
    model = _build(config, state, dtype, sources)
    _save(model, src, dst)
    return model


# -- one entry point ---------------------------------------------------------------------------


def convert(
    kind: str, src: str | Path, dst: str | Path | None = None, *, core: str | tuple[int, int] | None = None,
    **options: Any,
) -> LoopedForCausalLM:
    """Dispatch on ``kind`` (``ouro``, ``huginn`` or ``retrofit``); ``core`` only for retrofit."""
    if kind not in KINDS:
        raise ConversionError(f"unknown conversion {kind!r}; choose one of {list(KINDS)}")
    if core is not None and kind != "retrofit":
        raise ConversionError(f"--core applies to retrofit only: {kind} checkpoints have a fixed prelude/core/coda")
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "ouro":
        return convert_ouro(src, dst, **options)
    if kind == "huginn":
        return convert_huginn(src, dst, **options)
    return retrofit(src, dst, core=core, **options)


def describe(model: LoopedForCausalLM) -> dict[str, Any]:
    """A short summary of a converted model (for the CLI)."""
    c = model.config
    return {
        "converted_from": getattr(c, "converted_from", None),
        "layers": f"{c.num_prelude_layers} prelude + {c.num_core_layers} core + {c.num_coda_layers} coda",
        "loops": f"{c.default_loops} (max {c.max_loops})",
        "injection": c.injection,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
