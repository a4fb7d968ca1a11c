"""SwiGLU's gating, ``silu(gate) * up``, in one pass (torch runs two kernels and keeps the
intermediate).

Example::

    h = silu_mul(gate_proj(x), up_proj(x))      # or the two halves of a fused gate_up
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import kernel


@kernel
def _silu_mul_kernel(G, U, Out, stride_g, stride_u, stride_o, F, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < F
    g = tl.load(G + row * stride_g + cols, mask=m, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=m, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(Out.dtype.element_ty).to(tl.float32)  # torch rounds silu's output
    tl.store(Out + row * stride_o + cols, (act * u).to(Out.dtype.element_ty), mask=m)


def silu_mul_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``F.silu(gate) * up``."""
    return torch.nn.functional.silu(gate) * up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for rows of any leading shape; ``gate`` and ``up`` may be strided
    views (the halves of one ``gate_up`` projection)."""
    if gate.shape != up.shape:
        raise ValueError(f"silu_mul: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ in shape")
    f = gate.shape[-1]
    g, u = gate.reshape(-1, f), up.reshape(-1, f)
    g = g if g.stride(-1) == 1 else g.contiguous()
    u = u if u.stride(-1) == 1 else u.contiguous()
    out = torch.empty(g.shape, dtype=torch.promote_types(gate.dtype, up.dtype), device=gate.device)
    block = min(1024, triton.next_power_of_2(f))
    if g.shape[0]:
        _silu_mul_kernel[(g.shape[0], triton.cdiv(f, block))](g, u, out, g.stride(0), u.stride(0), out.stride(0), f,
                                                              BLOCK=block)
    return out.view(*gate.shape[:-1], f)


__all__ = ["silu_mul", "silu_mul_ref"]
