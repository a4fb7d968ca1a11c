"""The looped model through the kernels equals the plain-torch model (Triton's interpreter on CPU).

Every config the kernels touch: each injection, sandwich norms, a loop norm, LoRA, grouped
queries, the exit gate with mixed budgets and left padding, cached decoding. Logits agree to
float32 rounding; exit depths and the counted core work are the same.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="Triton is not installed (pip install -e '.[kernels]')")

from loopagent.backends import kernels  # noqa: E402
from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM  # noqa: E402

BASE = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=48, num_prelude_layers=1,
            num_core_layers=2, num_coda_layers=1, max_loops=6, default_loops=3)
CONFIGS = {
    "additive": {},
    "stable+loop_norm": dict(injection="stable", loop_norm=True),
    "concat+sandwich": dict(injection="concat", sandwich_norm=True),
    "none+gqa+lora": dict(injection="none", num_key_value_heads=2, lora_rank=2),
    "gate": dict(exit_gate=True),
    "gate+loop_norm": dict(exit_gate=True, loop_norm=True, injection="stable"),
}


def _model(name: str) -> LoopedForCausalLM:
    torch.manual_seed(0)
    model = LoopedForCausalLM(LoopedConfig(**BASE, **CONFIGS[name])).eval()
    with torch.no_grad():  # a gate that stops tokens at different depths
        if model.model.exit_gate is not None:
            model.model.exit_gate.weight.normal_(0, 2.0)
            model.model.exit_gate.bias.fill_(-0.5)
    return model


def _both(fn):  # noqa: ANN001, ANN202
    with torch.no_grad():
        with kernels.mode("off"):
            plain = fn()
        with kernels.mode("on"):
            fused = fn()
    return plain, fused


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_matches_plain_torch(name: str) -> None:
    model = _model(name)
    ids = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    gate = dict(exit_threshold=0.6, min_loops=1) if model.config.exit_gate else {}
    plain, fused = _both(lambda: model(ids, attention_mask=mask, loops=[2, 5, 4], **gate))
    torch.testing.assert_close(fused.logits, plain.logits, atol=2e-5, rtol=2e-5)
    assert torch.equal(fused.exit_steps, plain.exit_steps)
    assert torch.equal(fused.core_tokens, plain.core_tokens)
    if gate:  # the gate really stopped some tokens early
        assert bool((plain.exit_steps < torch.tensor([2, 5, 4])[:, None])[mask.bool()].any())


def test_the_fused_path_runs_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {}
    for op in ("rms_norm", "add_rms_norm", "inject_rms_norm", "silu_mul", "halt_step"):
        real = getattr(kernels, op)

        def counted(*args, _op=op, _real=real, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls[_op] = calls.get(_op, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(kernels, op, counted)
    model = _model("gate")
    ids = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), kernels.mode("off"):
        model(ids, loops=[2, 4], exit_threshold=0.6)
    assert calls == {}
    with torch.no_grad(), kernels.mode("on"):
        model(ids, loops=[2, 4], exit_threshold=0.6)
    assert set(calls) == {"rms_norm", "add_rms_norm", "inject_rms_norm", "silu_mul", "halt_step"}
    # one halting update per loop that ran (4 loops: the deepest budget), two adds per layer and loop
    assert calls["halt_step"] <= 4 and calls["add_rms_norm"] >= 2 * 2 * 2


@pytest.mark.parametrize("name", ["additive", "gate", "concat+sandwich"])
def test_cached_decoding_matches_plain_torch(name: str) -> None:
    model = _model(name)
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(2))
    gate = dict(exit_threshold=0.7) if model.config.exit_gate else {}

    def decode() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = model(ids, loops=[3, 6], use_cache=True, **gate)
        tokens, steps = [], [out.exit_steps]
        for _ in range(4):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt)
            out = model(nxt, cache=out.cache, loops=[3, 6], use_cache=True, **gate)
            steps.append(out.exit_steps)
        return torch.cat(tokens, 1), steps

    (plain_tokens, plain_steps), (fused_tokens, fused_steps) = _both(decode)
    assert torch.equal(fused_tokens, plain_tokens)
    assert all(torch.equal(a, b) for a, b in zip(fused_steps, plain_steps))


def test_uses_kernels_follows_the_switch_and_autograd() -> None:
    model = _model("additive")
    with kernels.mode("on"):
        assert model.model.uses_kernels(torch.device("cpu")) is False  # autograd records here
        with torch.no_grad():
            assert model.model.uses_kernels(torch.device("cpu")) is True
    with torch.no_grad(), kernels.mode("auto"):
        assert model.model.uses_kernels(torch.device("cpu")) is False  # auto: CUDA only
    huginn = LoopedForCausalLM(LoopedConfig(**BASE, sandwich_norm=True, sandwich_style="residual"))
    with torch.no_grad(), kernels.mode("on"):
        assert huginn.model.uses_kernels(torch.device("cpu")) is False  # norms on the residual stream


def test_training_is_unaffected_by_the_switch() -> None:
    """With autograd on, the kernels stay off even in mode "on": gradients flow as before."""
    model = _model("gate")
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(3))
    with kernels.mode("on"):
        loss = model(ids, labels=ids, loops=3).loss
    loss.backward()
    assert model.model.core[0].mlp.up_proj.weight.grad is not None
