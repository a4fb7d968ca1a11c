"""The looped architecture's tensor math, shared by both implementations of the model.

The transformers reference (``modeling_looped.py``) and the vLLM model class
(``backends/vllm/model.py``) lay their tensors out differently ([batch, heads, seq, dim]
vs [tokens, heads, dim]) but must compute the same numbers to the bit: tests compare
vLLM's greedy tokens with the reference's. So the pieces of math they share live here,
once, as plain functions of tensors.

Example::

    inv_freq = rope_inv_freq(64, 10000.0)                                   # [32]
    cos, sin = rope_cos_sin(torch.arange(8)[None], inv_freq, torch.float32)  # [1, 1, 8, 64] each
    q = apply_rope(q, cos, sin)                                             # q: [1, heads, 8, 64]
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels


def rope_inv_freq(
    dim: int, theta: float, scaling: dict[str, Any] | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """Rotary inverse frequencies ([dim / 2], float32), optionally scaled
    (``LoopedConfig.rope_freq_scaling``: ``linear`` or ``llama3``)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    # llama3 (Llama 3.1+): long wavelengths scaled by 1/factor, short kept, a smooth ramp between
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of the rotary angles (neox layout: the half-angles repeated).

    ``positions`` [b, t] gives [b, 1, t, dim] (the reference's layout), [t] gives
    [t, 1, dim] (vLLM's): the head axis is inserted after the first one.
    """
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last axis (the rotation of rotary embeddings)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Queries or keys rotated by their positions' angles (``cos``/``sin`` of :func:`rope_cos_sin`)."""
    return x * cos + rotate_half(x) * sin


def lora_delta(x: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor) -> torch.Tensor:
    """One loop's low-rank delta of a projection: ``x @ A.T @ B.T`` (A: [rank, in], B: [out, rank])."""
    return F.linear(F.linear(x, lora_A), lora_B)


def initial_state(e: torch.Tensor, mode: str, std: float) -> torch.Tensor:
    """The first loop state ``s_0`` from the prelude output ``e`` (``LoopedConfig.initial_state``:
    ``"embed"`` is ``e`` itself, ``"zeros"``, or ``"random"``: truncated normal with ``std``)."""
    if mode == "zeros":
        return torch.zeros_like(e)
    if mode == "random":
        return nn.init.trunc_normal_(torch.empty_like(e), mean=0.0, std=std, a=-3 * std, b=3 * std)
    return e


def fused_layer_tail(
    layer: nn.Module, x: torch.Tensor, attn: torch.Tensor, loop: int | None, next_norm: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A decoder layer after its attention, through the kernels: ``x + attn`` fused with the
    post-attention norm, the SwiGLU MLP, and ``x + mlp`` fused with ``next_norm`` (the next
    layer's input norm, or the loop norm; its output is returned, None without one).

    ``layer`` is either implementation's decoder layer (same attribute names: ``sandwich``,
    ``attn_out_norm``, ``post_attention_layernorm``, ``mlp``, ``mlp_out_norm``; its MLP takes
    ``fused=True``); output sandwich norms are fused into the adds. Not for
    ``sandwich_style="residual"``.
    """
    post = layer.post_attention_layernorm
    branch = layer.attn_out_norm.weight if layer.sandwich else None
    x, normed = kernels.add_rms_norm(x, attn, post.weight, post.eps, branch)
    mlp = layer.mlp(normed, loop, fused=True)
    if next_norm is None:
        return x + (layer.mlp_out_norm(mlp) if layer.sandwich else mlp), None
    branch = layer.mlp_out_norm.weight if layer.sandwich else None
    return kernels.add_rms_norm(x, mlp, next_norm.weight, next_norm.eps, branch)


__all__ = ["apply_rope", "fused_layer_tail", "initial_state", "lora_delta", "rope_cos_sin", "rope_inv_freq",
           "rotate_half"]
