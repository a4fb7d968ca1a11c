"""Triton kernels for the hot parts of a loop step, each next to its plain-torch reference.

A looped model runs one small block many times per token, so per-loop overheads (kernel
launches, separate norm / injection / gate / residual passes) dominate decode at small
batch. These kernels fuse them:

- ``norms``: RMSNorm; the residual add fused with the next norm (optionally normalizing the
  added branch first: sandwich norms); the loop's input injection ``a * s + c`` fused with
  the core block's pre-norm.
- ``swiglu``: ``silu(gate) * up`` in one pass.
- ``halting``: the exit gate fused with the per-token halting update (cumulative exit
  probability, the stop decision, the state freeze and the exit-depth count), and the
  order-preserving compaction of the rows still looping.

Every op is inference-only (no autograd) and takes rows ``[n, d]`` (leading dims flattened).

**When they run.** :func:`enabled` says whether a model should use them for tensors on a
device: by default only on CUDA, and only when Triton is installed and no gradient is being
recorded. ``LOOPAGENT_KERNELS`` (read at every call) or :func:`mode` choose:
``auto`` (the default), ``off`` (plain torch everywhere: the one switch to turn them off),
``on`` (on every device: on the CPU Triton's interpreter runs them, which is how the tests
check them; slow, for correctness only).

Example::

    from loopagent.backends import kernels

    with kernels.mode("off"):
        logits = model(input_ids).logits      # plain torch
    h, normed = kernels.add_rms_norm(x, attn_out, norm.weight, eps=1e-6)
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import torch

from loopagent.errors import ConfigError

MODES = ("auto", "off", "on")
_override: list[str] = []


@functools.cache
def available() -> bool:
    """Whether a Triton the kernels work with is installed (3.4 or later: they build their
    compiled and interpreted forms through ``triton.knobs``)."""
    if importlib.util.find_spec("triton") is None:
        return False
    import triton

    return hasattr(getattr(getattr(triton, "knobs", None), "runtime", None), "scope")


def current_mode() -> str:
    """The mode in force: the innermost :func:`mode`, else ``LOOPAGENT_KERNELS``, else ``auto``."""
    if _override:
        return _override[-1]
    value = os.environ.get("LOOPAGENT_KERNELS", "auto").strip().lower() or "auto"
    value = {"0": "off", "false": "off", "no": "off", "1": "on", "true": "on", "yes": "on"}.get(value, value)
    if value not in MODES:
        raise ConfigError(f"LOOPAGENT_KERNELS={value!r} is not a kernel mode; use one of {', '.join(MODES)}")
    return value


@contextlib.contextmanager
def mode(value: str) -> Iterator[None]:
    """Use the kernels (``on``), never (``off``) or where they pay (``auto``) inside the block."""
    if value not in MODES:
        raise ConfigError(f"kernel mode {value!r} is unknown; use one of {', '.join(MODES)}")
    _override.append(value)
    try:
        yield
    finally:
        _override.pop()


def enabled(device: torch.device | str) -> bool:
    """Whether a model should run its loop step through the kernels for tensors on ``device``.

    Never while autograd records (the kernels have no backward), never without Triton; in
    ``auto`` mode only on CUDA.
    """
    chosen = current_mode()
    if chosen == "off" or torch.is_grad_enabled() or not available():
        return False
    return chosen == "on" or torch.device(device).type == "cuda"


_OPS = {
    "compact": "halting", "compact_ref": "halting", "halt_step": "halting", "halt_step_ref": "halting",
    "add_rms_norm": "norms", "add_rms_norm_ref": "norms", "inject_rms_norm": "norms",
    "inject_rms_norm_ref": "norms", "rms_norm": "norms", "rms_norm_ref": "norms",
    "silu_mul": "swiglu", "silu_mul_ref": "swiglu",
}


def __getattr__(name: str) -> Any:
    # The ops import Triton: loaded on first use, so that this package (the switch) imports
    # on machines without it.
    module = _OPS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return value


__all__ = ["MODES", "available", "current_mode", "enabled", "mode", *sorted(_OPS)]
