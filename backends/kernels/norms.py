"""RMSNorm kernels: the norm alone, the residual add fused with the next norm, and the loop's
input injection fused with the core block's pre-norm.

The norm is the reference's ``LoopedRMSNorm``: ``w * (x / rms(x)).to(x.dtype)``, the mean
of squares in float32. Each kernel keeps the reference's rounding points (a cast back to the
input dtype wherever torch would round), so float32 results agree to float32 rounding and
bfloat16 ones to a bfloat16 ulp.

Example::

    h, normed = add_rms_norm(x, attn_out, post_norm.weight, eps=1e-6)   # x + attn_out, norm of it
    h, normed = inject_rms_norm(s, e, core_norm.weight, eps=1e-6)       # additive injection
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import add, kernel, row_warps


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as [n, d] rows with unit stride on the last axis (a view when possible)."""
    x = x.reshape(-1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def _block(d: int) -> int:
    return triton.next_power_of_2(d)


def _norm_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    return torch.promote_types(weight.dtype, x.dtype)  # what ``weight * x.to(dtype)`` gives


# -- the norm ---------------------------------------------------------------------------------


@kernel
def _rms_norm_kernel(X, W, Y, stride_x, stride_y, D, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < D
    x = tl.load(X + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    inv = tl.rsqrt(tl.reduce(x * x, 0, add) / D + eps)
    n = (x * inv).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (w * n).to(Y.dtype.element_ty), mask=m)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LoopedRMSNorm``: ``weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)``."""
    n = x.float()
    n = n * torch.rsqrt(n.pow(2).mean(-1, keepdim=True) + eps)
    return weight * n.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the last axis of ``x`` (any leading shape), in one pass."""
    rows = _rows(x)
    out = torch.empty(rows.shape, dtype=_norm_dtype(x, weight), device=x.device)
    d = rows.shape[1]
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](rows, weight, out, rows.stride(0), out.stride(0), d, eps, BLOCK=_block(d),
                                 num_warps=row_warps(_block(d)))
    return out.view(*x.shape[:-1], d)


# -- residual add + the next norm ---------------------------------------------------------------


@kernel
def _add_rms_norm_kernel(X, Dl, W, DW, H, Y, stride_x, stride_d, stride_h, stride_y, D, eps,
                         HAS_DW: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < D
    x = tl.load(X + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    d = tl.load(Dl + row * stride_d + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_DW:  # the added branch is normalized first (sandwich norm)
        dinv = tl.rsqrt(tl.reduce(d * d, 0, add) / D + eps)
        dn = (d * dinv).to(Dl.dtype.element_ty).to(tl.float32)
        dw = tl.load(DW + cols, mask=m, other=0.0).to(tl.float32)
        d = (dw * dn).to(Dl.dtype.element_ty).to(tl.float32)
    h = (x + d).to(H.dtype.element_ty)
    tl.store(H + row * stride_h + cols, h, mask=m)
    hf = h.to(tl.float32)
    inv = tl.rsqrt(tl.reduce(hf * hf, 0, add) / D + eps)
    n = (hf * inv).to(H.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (w * n).to(Y.dtype.element_ty), mask=m)


def add_rms_norm_ref(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float, delta_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + delta`` (``x + norm(delta)`` with ``delta_weight``) and ``norm(h)``."""
    if delta_weight is not None:
        delta = rms_norm_ref(delta, delta_weight, eps)
    h = x + delta
    return h, rms_norm_ref(h, weight, eps)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float, delta_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add fused with the next norm: ``(x + delta, norm(x + delta))`` in one pass;
    with ``delta_weight`` the branch is normalized before it is added (sandwich norm)."""
    if x.shape != delta.shape:
        raise ValueError(f"add_rms_norm: x {tuple(x.shape)} and delta {tuple(delta.shape)} differ in shape")
    xr, dr = _rows(x), _rows(delta)
    n, d = xr.shape
    h = torch.empty((n, d), dtype=x.dtype, device=x.device)
    y = torch.empty((n, d), dtype=_norm_dtype(x, weight), device=x.device)
    if n:
        _add_rms_norm_kernel[(n,)](xr, dr, weight, delta_weight if delta_weight is not None else weight, h, y,
                                   xr.stride(0), dr.stride(0), h.stride(0), y.stride(0), d, eps,
                                   HAS_DW=delta_weight is not None, BLOCK=_block(d), num_warps=row_warps(_block(d)))
    shape = (*x.shape[:-1], d)
    return h.view(shape), y.view(shape)


# -- loop input injection + the core block's pre-norm ----------------------------------------------


@kernel
def _inject_rms_norm_kernel(S, C, A, W, H, Y, stride_s, stride_c, stride_h, stride_y, D, eps,
                            HAS_A: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < D
    s = tl.load(S + row * stride_s + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_A:  # a per-channel decay of the state (Parcae's stable injection)
        a = tl.load(A + cols, mask=m, other=0.0).to(tl.float32)
        s = (a * s).to(H.dtype.element_ty).to(tl.float32)
    c = tl.load(C + row * stride_c + cols, mask=m, other=0.0).to(tl.float32)
    h = (s + c).to(H.dtype.element_ty)
    tl.store(H + row * stride_h + cols, h, mask=m)
    hf = h.to(tl.float32)
    inv = tl.rsqrt(tl.reduce(hf * hf, 0, add) / D + eps)
    n = (hf * inv).to(H.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (w * n).to(Y.dtype.element_ty), mask=m)


def inject_rms_norm_ref(
    s: torch.Tensor, c: torch.Tensor, weight: torch.Tensor, eps: float, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = scale * s + c`` (``s + c`` without ``scale``) and ``norm(h)``."""
    h = (scale * s if scale is not None else s) + c
    return h, rms_norm_ref(h, weight, eps)


def inject_rms_norm(
    s: torch.Tensor, c: torch.Tensor, weight: torch.Tensor, eps: float, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A loop's input injection fused with the pre-norm of the first core layer.

    ``c`` is the loop-invariant part, computed once per forward: ``e`` for additive
    injection, ``softplus(dt) * B(norm(e))`` for stable injection (then ``scale`` is the
    decay ``exp(-softplus(dt) * exp(A_log))``), the adapter's ``e`` half for concat (then
    ``s`` is the adapter's ``s`` half already applied). Returns ``(h, norm(h))``.
    """
    if s.shape != c.shape:
        raise ValueError(f"inject_rms_norm: s {tuple(s.shape)} and c {tuple(c.shape)} differ in shape")
    sr, cr = _rows(s), _rows(c)
    n, d = sr.shape
    h = torch.empty((n, d), dtype=s.dtype, device=s.device)
    y = torch.empty((n, d), dtype=_norm_dtype(s, weight), device=s.device)
    if n:
        _inject_rms_norm_kernel[(n,)](sr, cr, scale if scale is not None else weight, weight, h, y,
                                      sr.stride(0), cr.stride(0), h.stride(0), y.stride(0), d, eps,
                                      HAS_A=scale is not None, BLOCK=_block(d), num_warps=row_warps(_block(d)))
    shape = (*s.shape[:-1], d)
    return h.view(shape), y.view(shape)


__all__ = ["add_rms_norm", "add_rms_norm_ref", "inject_rms_norm", "inject_rms_norm_ref", "rms_norm", "rms_norm_ref"]
