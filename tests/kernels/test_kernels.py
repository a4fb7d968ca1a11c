"""Every Triton kernel of ``loopagent.backends.kernels`` against its plain-torch reference.

On a machine without CUDA the kernels run in Triton's interpreter (correctness, not speed):
random shapes, float32 to float32 rounding, bfloat16 to a couple of bfloat16 ulps (the
interpreter truncates float32 -> bfloat16 casts where CUDA rounds).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="Triton is not installed (pip install -e '.[kernels]')")

from loopagent.backends import kernels as K  # noqa: E402
from loopagent.errors import ConfigError  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(atol=2e-6, rtol=2e-6), torch.bfloat16: dict(atol=0.07, rtol=0.03)}
SHAPES = [(1, 8), (3, 48), (7, 100), (16, 256)]  # (rows, width): widths not a power of two too


def _rand(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x, w = _rand(*shape, dtype=dtype, seed=1) * 3, _rand(shape[1], dtype=dtype, seed=2)
    _close(K.rms_norm(x, w, 1e-6), K.rms_norm_ref(x, w, 1e-6), dtype)


def test_rms_norm_keeps_leading_shape_and_promotes_like_the_reference() -> None:
    x = _rand(2, 3, 40, dtype=torch.bfloat16, seed=3)
    w = _rand(40, dtype=torch.float32, seed=4)  # float32 weights on bfloat16 activations give float32
    got, want = K.rms_norm(x, w, 1e-5), K.rms_norm_ref(x, w, 1e-5)
    assert got.shape == (2, 3, 40) and got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, **TOL[torch.bfloat16])  # normalized in bfloat16 first


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sandwich", [False, True])
def test_add_rms_norm(shape: tuple[int, int], dtype: torch.dtype, sandwich: bool) -> None:
    x, d = _rand(*shape, dtype=dtype, seed=5), _rand(*shape, dtype=dtype, seed=6)
    w, dw = _rand(shape[1], dtype=dtype, seed=7), _rand(shape[1], dtype=dtype, seed=8) if sandwich else None
    for got, want in zip(K.add_rms_norm(x, d, w, 1e-6, dw), K.add_rms_norm_ref(x, d, w, 1e-6, dw)):
        _close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("decay", [False, True])
def test_inject_rms_norm(shape: tuple[int, int], dtype: torch.dtype, decay: bool) -> None:
    s, c = _rand(*shape, dtype=dtype, seed=9), _rand(*shape, dtype=dtype, seed=10)
    w = _rand(shape[1], dtype=dtype, seed=11)
    a = torch.rand(shape[1], generator=torch.Generator().manual_seed(12)).to(dtype).to(DEVICE) if decay else None
    for got, want in zip(K.inject_rms_norm(s, c, w, 1e-6, a), K.inject_rms_norm_ref(s, c, w, 1e-6, a)):
        _close(got, want, dtype)


def test_fused_norms_read_strided_rows() -> None:
    """Rows of a wider buffer (a slice of the width) are read through their stride."""
    wide = _rand(5, 96, dtype=torch.float32, seed=13)
    x, d, w = wide[:, :48], wide[:, 48:], _rand(48, dtype=torch.float32, seed=14)
    for got, want in zip(K.add_rms_norm(x, d, w, 1e-6), K.add_rms_norm_ref(x, d, w, 1e-6)):
        _close(got, want, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 8), (4, 300), (3, 2100)])  # 2100: more than one column block
def test_silu_mul(shape: tuple[int, int], dtype: torch.dtype) -> None:
    g, u = _rand(*shape, dtype=dtype, seed=15) * 4, _rand(*shape, dtype=dtype, seed=16)
    _close(K.silu_mul(g, u), K.silu_mul_ref(g, u), dtype)


def test_silu_mul_on_the_halves_of_a_fused_projection() -> None:
    gate_up = _rand(6, 2 * 80, dtype=torch.float32, seed=17)
    gate, up = gate_up.chunk(2, dim=-1)
    _close(K.silu_mul(gate, up), K.silu_mul_ref(gate, up), torch.float32)


def _halting_case(seed: int, n_total: int, d: int, dtype: torch.dtype, per_token: bool, indexed: bool,
                  normed: bool, bias: bool) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    n = n_total // 2 if indexed else n_total
    index = torch.randperm(n_total, generator=g)[:n].sort().values.to(DEVICE) if indexed else None
    args = dict(
        h=torch.randn(n, d, generator=g).to(dtype).to(DEVICE),
        gate_weight=(torch.randn(d, generator=g) / d**0.5).to(dtype).to(DEVICE),
        gate_bias=torch.randn((), generator=g).to(dtype).to(DEVICE) if bias else None,
        budget=torch.randint(1, 6, (n_total,), generator=g).to(DEVICE),
        loop=int(torch.randint(0, 4, (), generator=g)),
        min_loops=torch.randint(1, 4, (n_total,), generator=g).to(DEVICE) if per_token else 2,
        threshold=torch.rand(n_total, generator=g).to(DEVICE) if per_token else 0.5,
    )
    mutable = dict(
        cdf=(torch.rand(n_total, generator=g) * 0.6).to(DEVICE),
        survive=torch.rand(n_total, generator=g).to(DEVICE),
        state=torch.randn(n_total, d, generator=g).to(dtype).to(DEVICE),
        depth=torch.randint(0, 3, (n_total,), generator=g).to(DEVICE),
    )
    options = dict(index=index, norm_weight=torch.randn(d, generator=g).to(dtype).to(DEVICE) if normed else None,
                   eps=1e-6)
    return {**args, **options}, mutable


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("normed", [False, True])
def test_halt_step_matches_reference(dtype: torch.dtype, indexed: bool, per_token: bool, normed: bool) -> None:
    for seed in range(3):
        fixed, mutable = _halting_case(seed, 40, 24, dtype, per_token, indexed, normed, bias=seed != 1)
        ours = {k: v.clone() for k, v in mutable.items()}
        theirs = {k: v.clone() for k, v in mutable.items()}
        done = K.halt_step(**fixed, **ours)
        want = K.halt_step_ref(**fixed, **theirs)
        assert done.dtype == torch.bool and done.shape == want.shape
        # bfloat16: the gate's logit is rounded to bfloat16 (as the reference's linear layer does)
        tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=2e-2)
        torch.testing.assert_close(ours["cdf"], theirs["cdf"], **tol)
        torch.testing.assert_close(ours["survive"], theirs["survive"], **tol)
        assert torch.equal(ours["state"], theirs["state"])  # the freeze copies the rows bit for bit
        assert torch.equal(ours["depth"], theirs["depth"])
        # a decision may differ only where the cumulative probability sits at the threshold
        thr = fixed["threshold"]
        at = fixed["index"] if indexed else torch.arange(done.shape[0], device=DEVICE)
        cdf_at = theirs["cdf"][at]
        thr_at = thr[at] if isinstance(thr, torch.Tensor) else torch.full_like(cdf_at, thr)
        differs = done != want
        assert bool(((cdf_at - thr_at).abs()[differs] < 2e-2).all()), (done, want)


def test_halt_step_stops_by_budget_and_by_gate() -> None:
    """Hand-checked: a certain gate (logit +30) stops every token past min_loops; none stop before."""
    d = 8
    h = torch.ones(4, d, device=DEVICE)
    w = torch.full((d,), 30.0 / d, device=DEVICE)
    cdf, survive = torch.zeros(4, device=DEVICE), torch.ones(4, device=DEVICE)
    budget = torch.tensor([1, 4, 4, 4], device=DEVICE)
    done = K.halt_step(h, w, None, cdf, survive, budget, 0, torch.tensor([1, 1, 2, 1], device=DEVICE), 0.9)
    assert done.tolist() == [True, True, False, True]  # row 0: its budget; row 2: min_loops 2 not reached
    torch.testing.assert_close(cdf, torch.ones(4, device=DEVICE))
    assert bool((survive < 1e-12).all())


def test_halt_step_counts_depth_without_freezing() -> None:
    fixed, mutable = _halting_case(0, 6, 8, torch.float32, False, False, False, True)
    depth = mutable["depth"].clone()
    K.halt_step(**fixed, cdf=mutable["cdf"], survive=mutable["survive"], depth=depth)
    assert torch.equal(depth, mutable["depth"] + 1)


@pytest.mark.parametrize("n", [0, 1, 7, 1024, 2500])  # 2500: the prefix sum carried over blocks
@pytest.mark.parametrize("indexed", [False, True])
def test_compact_keeps_order(n: int, indexed: bool) -> None:
    g = torch.Generator().manual_seed(n)
    done = (torch.rand(n, generator=g) < 0.4).to(DEVICE)
    index = (torch.randperm(3 * n + 1, generator=g)[:n].sort().values).to(DEVICE) if indexed else None
    got = K.compact(done, index)
    assert got.dtype == torch.long
    assert torch.equal(got, K.compact_ref(done, index))


def test_compact_all_done_and_none_done() -> None:
    assert K.compact(torch.ones(5, dtype=torch.bool, device=DEVICE)).numel() == 0
    assert K.compact(torch.zeros(5, dtype=torch.bool, device=DEVICE)).tolist() == [0, 1, 2, 3, 4]


def test_shape_mismatch_is_a_clear_error() -> None:
    x = _rand(2, 8, dtype=torch.float32, seed=0)
    with pytest.raises(ValueError, match="differ in shape"):
        K.add_rms_norm(x, x[:, :4], x[0], 1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        K.silu_mul(x, x[:1])


# -- the switch ---------------------------------------------------------------------------------


def test_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOPAGENT_KERNELS", raising=False)
    with torch.no_grad():
        assert K.current_mode() == "auto"
        assert K.enabled("cpu") is False  # auto: CUDA only
        assert K.enabled("cuda") is True
        with K.mode("on"):
            assert K.enabled("cpu") is True
            with K.mode("off"):
                assert K.enabled("cuda") is False
            assert K.enabled("cpu") is True
        monkeypatch.setenv("LOOPAGENT_KERNELS", "0")
        assert K.current_mode() == "off" and K.enabled("cuda") is False
        monkeypatch.setenv("LOOPAGENT_KERNELS", "on")
        assert K.enabled("cpu") is True
    # autograd records: the kernels have no backward, so never
    with torch.enable_grad(), K.mode("on"):
        assert K.enabled("cuda") is False


def test_bad_mode_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOPAGENT_KERNELS", "fast")
    with pytest.raises(ConfigError, match="LOOPAGENT_KERNELS='fast'.*auto, off, on"):
        K.current_mode()
    with pytest.raises(ConfigError, match="kernel mode 'sometimes'"):
        with K.mode("sometimes"):
            pass
