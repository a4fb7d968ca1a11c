"""Every kernel compiles for a CUDA GPU (sm_90, H100/H200 class), ahead of time, on this machine.

The interpreter (test_kernels.py) checks what the kernels compute; it does not check that
Triton's compiler accepts them (types of loop-carried values, pointer arithmetic, constexpr
branches). Triton compiles to PTX and runs ptxas (shipped in its wheel) without a GPU, so
each kernel is compiled here for every dtype and flag combination the Python wrappers launch.
"""

from __future__ import annotations

import importlib.util
import itertools
import warnings

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="Triton is not installed (pip install -e '.[kernels]')")


def _compile(kernel, signature: dict[str, str], constexprs: dict[str, object]) -> str:  # noqa: ANN001
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Triton 3.9's notice about its FP-fusion default
        compiled = triton.compile(ASTSource(fn=kernel._form(False), signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32))
    return compiled.asm["ptx"]


@pytest.fixture(scope="module", autouse=True)
def _needs_ptxas() -> None:
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton build ships no ptxas (CUDA backend): cannot compile ahead of time")


DTYPES = ["fp32", "bf16"]


@pytest.mark.parametrize("dt", DTYPES)
def test_norm_kernels_compile(dt: str) -> None:
    from loopagent.backends.kernels import norms

    p = f"*{dt}"
    ptx = _compile(norms._rms_norm_kernel, {"X": p, "W": p, "Y": p, "stride_x": "i32", "stride_y": "i32", "D": "i32",
                                            "eps": "fp32"}, {"BLOCK": 1024})
    assert ".entry _rms_norm_kernel" in ptx
    rows = {"stride_x": "i32", "stride_d": "i32", "stride_h": "i32", "stride_y": "i32", "D": "i32", "eps": "fp32"}
    for has_dw in (False, True):
        _compile(norms._add_rms_norm_kernel, {"X": p, "Dl": p, "W": p, "DW": p, "H": p, "Y": p, **rows},
                 {"HAS_DW": has_dw, "BLOCK": 1024})
    rows = {"stride_s": "i32", "stride_c": "i32", "stride_h": "i32", "stride_y": "i32", "D": "i32", "eps": "fp32"}
    for has_a in (False, True):
        _compile(norms._inject_rms_norm_kernel, {"S": p, "C": p, "A": p, "W": p, "H": p, "Y": p, **rows},
                 {"HAS_A": has_a, "BLOCK": 1024})


@pytest.mark.parametrize("dt", DTYPES)
def test_swiglu_kernel_compiles(dt: str) -> None:
    from loopagent.backends.kernels import swiglu

    p = f"*{dt}"
    _compile(swiglu._silu_mul_kernel, {"G": p, "U": p, "Out": p, "stride_g": "i32", "stride_u": "i32",
                                       "stride_o": "i32", "F": "i32"}, {"BLOCK": 1024})


@pytest.mark.parametrize("dt", DTYPES)
def test_halting_kernel_compiles_for_every_flag_combination(dt: str) -> None:
    from loopagent.backends.kernels import halting

    p = f"*{dt}"
    signature = {"Hs": p, "GW": p, "GB": p, "NW": p, "CDF": "*fp32", "SURV": "*fp32", "BUD": "*i64", "FLOOR": "*i64",
                 "THR": "*fp32", "IDX": "*i64", "STATE": p, "DEPTH": "*i64", "DONE": "*i8", "stride_h": "i32",
                 "stride_s": "i32", "D": "i32", "eps": "fp32", "loop": "i32", "floor_value": "i32",
                 "threshold_value": "fp32"}
    names = ["HAS_NORM", "HAS_BIAS", "HAS_INDEX", "PER_FLOOR", "PER_THRESHOLD", "FREEZE", "COUNT"]
    # every flag on and off at least once, in 8 combinations (all 128 would take minutes)
    combos = [dict(zip(names, bits)) for bits in itertools.product((False, True), repeat=len(names))][::17]
    combos.append(dict.fromkeys(names, True))
    for flags in combos:
        _compile(halting._halt_kernel, signature, {**flags, "BLOCK": 1024})


def test_compact_kernel_compiles() -> None:
    from loopagent.backends.kernels import halting

    for has_index in (False, True):
        ptx = _compile(halting._compact_kernel, {"DONE": "*i8", "IDX": "*i64", "OUT": "*i64", "COUNT": "*i32",
                                                 "n": "i32"}, {"HAS_INDEX": has_index, "BLOCK": 1024})
        assert ".entry _compact_kernel" in ptx
