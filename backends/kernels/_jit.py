"""Triton kernels that run where their tensors are: compiled on CUDA, interpreted on CPU.

``triton.jit`` decides at decoration time whether a kernel is compiled or interpreted
(``TRITON_INTERPRET``), so one process could not test on CPU and run on GPU with the same
kernels. :func:`kernel` keeps the Python function and builds each form on first use: a
launch whose first tensor is on the CPU runs Triton's interpreter (correctness only, slow),
anything else the compiled kernel.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


class _Kernel:
    def __init__(self, fn: Callable[..., Any], jit_options: dict[str, Any]) -> None:
        self.fn = fn
        self.jit_options = jit_options
        self._forms: dict[bool, Any] = {}
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def _form(self, interpret: bool) -> Any:
        form = self._forms.get(interpret)
        if form is None:
            import triton

            with triton.knobs.runtime.scope():
                triton.knobs.runtime.interpret = interpret
                form = self._forms[interpret] = triton.jit(self.fn, **self.jit_options)
        return form

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        def launch(*args: Any, **kwargs: Any) -> Any:
            first = next(a for a in args if hasattr(a, "device"))
            # TRITON_INTERPRET=1 (debugging) interprets on every device, as Triton itself would
            interpret = first.device.type == "cpu" or os.environ.get("TRITON_INTERPRET", "0") == "1"
            if interpret or first.device.type != "cuda":
                return self._form(interpret)[grid](*args, **kwargs)
            import torch

            # Triton launches on the current device's stream: make it the tensors' device
            with torch.cuda.device(first.device):
                return self._form(False)[grid](*args, **kwargs)

        return launch


def row_warps(block: int) -> int:
    """Warps for a kernel that reduces one row of ``block`` elements per program (as Triton's
    layer-norm tutorial sizes them: wider rows get more warps, so they do not spill)."""
    return min(max(block // 256, 1), 8)


def kernel(fn: Callable[..., Any] | None = None, **jit_options: Any) -> Any:
    """Decorate a Triton kernel body (instead of ``triton.jit``, whose options it takes, e.g.
    ``@kernel(do_not_specialize=["n"])``); launch it as ``k[grid](...)``.

    Kernels must be self-contained: a ``triton.jit`` helper they called would be fixed to one
    form at import time.
    """
    if fn is None:
        return lambda f: _Kernel(f, jit_options)
    return _Kernel(fn, jit_options)


def _sum_combine(a, b):  # noqa: ANN001, ANN202 (Triton reads annotations as types)
    return a + b


def _make_combine() -> Any:
    import triton

    return triton.jit(_sum_combine)


#: The combine function of sums and prefix sums: ``tl.reduce(x, 0, add)``,
#: ``tl.associative_scan(x, 0, add)``. ``tl.sum`` / ``tl.cumsum`` are themselves ``triton.jit``
#: functions fixed at import to one form; a combine function passed in works in both (the
#: interpreter calls its Python body).
add = _make_combine()
