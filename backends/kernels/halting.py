"""The exit gate fused with the per-token halting update, and the compaction of the rows
still looping.

After a loop, for every token that ran it (row ``r`` of the new states ``h``, sitting at
``index[r]`` of the batch's flat token axis), the reference (``LoopedModel._loops``) does::

    lam = sigmoid(exit_gate(norm(h)))          # norm: the final norm, unless the model has a loop norm
    cdf, survive = cdf + lam * survive, survive * (1 - lam)
    done = budget <= loop + 1  or  (loop + 1 >= min_loops and cdf >= threshold)
    state[index] = h;  depth[index] += 1         # a stopped token keeps its state (frozen)

as a dozen small torch ops. :func:`halt_step` is one kernel for all of it; :func:`compact`
then keeps, in order, the tokens not done: the next loop's active rows.

Example::

    done = halt_step(h, gate.weight, gate.bias, cdf, survive, budget, loop, min_loops, 0.9,
                     index=index, norm_weight=final_norm.weight, eps=1e-6, state=s, depth=depth)
    index = compact(done, index)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import add, kernel, row_warps


@kernel(do_not_specialize=["loop", "floor_value"])  # a new loop index must not compile a new kernel
def _halt_kernel(Hs, GW, GB, NW, CDF, SURV, BUD, FLOOR, THR, IDX, STATE, DEPTH, DONE,
                 stride_h, stride_s, D, eps, loop, floor_value, threshold_value,
                 HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INDEX: tl.constexpr,
                 PER_FLOOR: tl.constexpr, PER_THRESHOLD: tl.constexpr, FREEZE: tl.constexpr, COUNT: tl.constexpr,
                 BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < D
    if HAS_INDEX:
        at = tl.load(IDX + r).to(tl.int64)
    else:
        at = r
    h_raw = tl.load(Hs + r * stride_h + cols, mask=m, other=0.0)
    x = h_raw.to(tl.float32)
    if HAS_NORM:  # the gate reads norm(state) (models without a loop norm)
        inv = tl.rsqrt(tl.reduce(x * x, 0, add) / D + eps)
        nw = tl.load(NW + cols, mask=m, other=0.0).to(tl.float32)
        x = (nw * (x * inv).to(Hs.dtype.element_ty).to(tl.float32)).to(Hs.dtype.element_ty).to(tl.float32)
    gw = tl.load(GW + cols, mask=m, other=0.0).to(tl.float32)
    logit = tl.reduce(x * gw, 0, add)
    if HAS_BIAS:
        logit = logit + tl.load(GB).to(tl.float32)
    logit = logit.to(Hs.dtype.element_ty).to(tl.float32)  # the gate's linear layer rounds to the model dtype
    lam = 1.0 / (1.0 + tl.exp(-logit))
    survive = tl.load(SURV + at)
    cdf = tl.load(CDF + at) + lam * survive
    tl.store(CDF + at, cdf)
    tl.store(SURV + at, survive * (1.0 - lam))
    if PER_FLOOR:
        floor = tl.load(FLOOR + at)
    else:
        floor = floor_value
    if PER_THRESHOLD:
        threshold = tl.load(THR + at)
    else:
        threshold = threshold_value
    budget = tl.load(BUD + at)
    done = (budget <= loop + 1) | ((loop + 1 >= floor) & (cdf >= threshold))
    tl.store(DONE + r, done.to(tl.int8))
    if FREEZE:  # the new state into the batch's states (a stopped token keeps it)
        tl.store(STATE + at * stride_s + cols, h_raw, mask=m)
    if COUNT:  # one more loop of depth
        tl.store(DEPTH + at, tl.load(DEPTH + at) + 1)


def _flat(t: torch.Tensor, name: str) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError(f"halt_step: {name} must be contiguous (it is updated in place)")
    return t.view(-1)


def halt_step_ref(
    h: torch.Tensor,
    gate_weight: torch.Tensor,
    gate_bias: torch.Tensor | None,
    cdf: torch.Tensor,
    survive: torch.Tensor,
    budget: torch.Tensor,
    loop: int,
    min_loops: int | torch.Tensor,
    threshold: float | torch.Tensor,
    *,
    index: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    state: torch.Tensor | None = None,
    depth: torch.Tensor | None = None,
) -> torch.Tensor:
    """The plain-torch halting update (same arguments and in-place effects as :func:`halt_step`)."""
    from .norms import rms_norm_ref

    flat_cdf, flat_survive, flat_budget = cdf.view(-1), survive.view(-1), budget.view(-1)
    at = index if index is not None else torch.arange(h.shape[0], device=h.device)
    x = rms_norm_ref(h, norm_weight, eps) if norm_weight is not None else h
    lam = torch.sigmoid(torch.nn.functional.linear(x, gate_weight.view(1, -1), gate_bias).squeeze(-1).float())
    c = flat_cdf[at] + lam * flat_survive[at]
    flat_survive[at] = flat_survive[at] * (1 - lam)
    flat_cdf[at] = c
    floor = min_loops.view(-1)[at] if isinstance(min_loops, torch.Tensor) else min_loops
    thr = threshold.view(-1)[at] if isinstance(threshold, torch.Tensor) else threshold
    done = (flat_budget[at] <= loop + 1) | ((loop + 1 >= floor) & (c >= thr))
    if state is not None:
        state.view(-1, h.shape[-1])[at] = h
    if depth is not None:
        depth.view(-1)[at] += 1
    return done


def halt_step(
    h: torch.Tensor,
    gate_weight: torch.Tensor,
    gate_bias: torch.Tensor | None,
    cdf: torch.Tensor,
    survive: torch.Tensor,
    budget: torch.Tensor,
    loop: int,
    min_loops: int | torch.Tensor,
    threshold: float | torch.Tensor,
    *,
    index: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    state: torch.Tensor | None = None,
    depth: torch.Tensor | None = None,
) -> torch.Tensor:
    """One loop's halting update for the tokens that ran it, in one kernel.

    ``h`` [n, d]: their new states; ``index`` [n]: where they sit on the batch's flat token
    axis (None: token ``r`` is row ``r``). Per token of the batch (flat, contiguous, updated
    in place): ``cdf`` / ``survive`` (float32), ``budget`` (int), and optionally ``min_loops``
    / ``threshold`` (else one value for all), ``state`` [N, d] (``h`` is written into it:
    the freeze) and ``depth`` (incremented). ``norm_weight``: the gate reads ``norm(h)`` with it.
    Returns ``done`` [n] (bool): tokens that stop after this loop.
    """
    n, d = h.shape
    done = torch.empty(n, dtype=torch.int8, device=h.device)
    if n == 0:
        return done.bool()
    if h.stride(-1) != 1:
        h = h.contiguous()
    per_floor, per_threshold = isinstance(min_loops, torch.Tensor), isinstance(threshold, torch.Tensor)
    dummy = cdf
    _halt_kernel[(n,)](
        h, gate_weight.reshape(-1), gate_bias if gate_bias is not None else dummy,
        norm_weight if norm_weight is not None else dummy, _flat(cdf, "cdf"), _flat(survive, "survive"),
        _flat(budget, "budget"), _flat(min_loops, "min_loops") if per_floor else dummy,
        _flat(threshold, "threshold") if per_threshold else dummy, index if index is not None else dummy,
        _flat(state, "state") if state is not None else dummy, _flat(depth, "depth") if depth is not None else dummy,
        done, h.stride(0), d, d, eps, loop,
        0 if per_floor else int(min_loops), 0.0 if per_threshold else float(threshold),
        HAS_NORM=norm_weight is not None, HAS_BIAS=gate_bias is not None, HAS_INDEX=index is not None,
        PER_FLOOR=per_floor, PER_THRESHOLD=per_threshold, FREEZE=state is not None, COUNT=depth is not None,
        BLOCK=triton.next_power_of_2(d), num_warps=row_warps(triton.next_power_of_2(d)),
    )
    return done.view(torch.bool)


@kernel(do_not_specialize=["n"])
def _compact_kernel(DONE, IDX, OUT, COUNT, n, HAS_INDEX: tl.constexpr, BLOCK: tl.constexpr):
    # One program walks the rows in order: a prefix sum per block, carried across blocks, so
    # the kept rows keep their order (atomics would not).
    kept = 0
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < n
        keep = (tl.load(DONE + offs, mask=m, other=1) == 0).to(tl.int32)
        pos = kept + tl.associative_scan(keep, 0, add) - 1
        if HAS_INDEX:
            value = tl.load(IDX + offs, mask=m, other=0)
        else:
            value = offs.to(tl.int64)
        tl.store(OUT + pos, value, mask=m & (keep == 1))
        kept += tl.reduce(keep, 0, add)
    tl.store(COUNT, kept)


def compact_ref(done: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """``index[~done]`` (``nonzero(~done)`` without an index)."""
    keep = ~done
    return index[keep] if index is not None else keep.nonzero().squeeze(1)


def compact(done: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """The entries of ``index`` (positions ``0..n-1`` without one) whose ``done`` is False, in
    order: the next loop's active tokens. Reads one count back to the host, as ``nonzero`` does."""
    n = done.shape[0]
    out = torch.empty(n, dtype=torch.long, device=done.device)
    count = torch.zeros(1, dtype=torch.int32, device=done.device)
    if n:
        _compact_kernel[(1,)](done.view(torch.int8), index if index is not None else out, out, count, n,
                              HAS_INDEX=index is not None, BLOCK=1024)  # one block size: one compilation
    return out[: int(count.item())]


__all__ = ["compact", "compact_ref", "halt_step", "halt_step_ref"]
