"""Loop compute is counted where it happens: forward hooks on the core layers count the
token rows they see, and the model's ``core_tokens`` and the hf backend's ``loop_tokens``
must be exactly that figure (stopped, padded and finished tokens compute nothing)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from loopagent import model as make_backend  # noqa: E402
from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM  # noqa: E402
from loopagent.backends.looped.tokenizer import byte_tokenizer  # noqa: E402

CORE_LAYERS = 2


class CoreCounter:
    """Token rows seen by every core layer (rows of the input tensor, summed over calls)."""

    def __init__(self, model: LoopedForCausalLM) -> None:
        self.rows = 0
        self.handles = [layer.register_forward_hook(self._count) for layer in model.model.core]

    def _count(self, module, args, output) -> None:
        x = args[0]
        self.rows += x.numel() // x.shape[-1]

    @property
    def loop_tokens(self) -> int:
        assert self.rows % CORE_LAYERS == 0
        return self.rows // CORE_LAYERS

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def gated_model(vocab: int = 61, **overrides) -> LoopedForCausalLM:
    torch.manual_seed(0)
    config = LoopedConfig(vocab_size=vocab, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=64, num_core_layers=CORE_LAYERS, default_loops=4, max_loops=16,
                          exit_gate=True, **overrides)
    model = LoopedForCausalLM(config).eval()
    with torch.no_grad():
        model.model.exit_gate.weight.normal_(0, 2.0)  # exit probabilities that vary by token
    return model


def counted(model, *args, **kwargs):
    counter = CoreCounter(model)
    try:
        with torch.no_grad():
            out = model(*args, **kwargs)
    finally:
        counter.close()
    assert counter.loop_tokens == int(out.core_tokens.sum()) == int(out.exit_steps.sum())
    return counter.loop_tokens, out


X = torch.randint(0, 61, (3, 10), generator=torch.Generator().manual_seed(1))


def test_uniform_budget_counts_every_token_every_loop():
    work, out = counted(gated_model(), X, loops=4)
    assert work == 3 * 10 * 4 and out.core_tokens.tolist() == [40, 40, 40]


def test_mixed_budgets_in_one_batch_count_each_rows_budget():
    work, out = counted(gated_model(), X, loops=[1, 3, 6])
    assert work == 10 * (1 + 3 + 6) and out.core_tokens.tolist() == [10, 30, 60]


def test_threshold_zero_runs_one_loop_per_token_not_sixteen():
    model = gated_model()
    full, _ = counted(model, X, loops=16)
    work, out = counted(model, X, loops=16, exit_threshold=0.0)
    assert torch.all(out.exit_steps == 1) and work == 3 * 10
    assert work * 16 == full  # the saving is real: 1/L of the core's work


def test_a_middle_threshold_counts_the_depths_reached():
    model = gated_model()
    work, out = counted(model, X, loops=8, exit_threshold=0.6)
    assert 3 * 10 < work < 3 * 10 * 8 and len(out.exit_steps.unique()) > 2
    cached_work, cached = counted(model, X, loops=8, exit_threshold=0.6, min_loops=2, use_cache=True)
    assert torch.all(cached.exit_steps >= 2) and cached_work >= work


def test_padding_computes_nothing_in_the_core():
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, :4] = 0
    mask[2, :7] = 0
    work, out = counted(gated_model(), X, attention_mask=mask, loops=[2, 5, 3])
    assert torch.all(out.exit_steps[~mask.bool()] == 0)
    assert work == 6 * 2 + 10 * 5 + 3 * 3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("counted")
    tok = byte_tokenizer()
    gated_model(vocab=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("gate", [{}, {"exit_threshold": 0.6}, {"exit_threshold": 0.0, "min_loops": 2}])
def test_hf_backend_reports_the_counted_work_of_a_batch(ckpt, gate):
    backend = make_backend(f"hf:{ckpt}", max_new_tokens=6)
    model, eos = backend.model, backend.tokenizer.eos_token_id
    pick, steps = backend._pick, []

    def pick_with_early_stops(logits, generator, temperature):
        # rows 0 and 2 finish early (eos at steps 1 and 3): they are then fed masked
        nxt = pick(logits, generator, temperature).clone()
        step = len(steps)
        steps.append(step)
        if step == 1:
            nxt[0] = eos
        if step == 3:
            nxt[2] = eos
        return nxt

    backend._pick = pick_with_early_stops
    calls = []
    hook = model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["loops"]),
                                       with_kwargs=True)
    counter = CoreCounter(model)
    try:
        prompts = [[{"role": "user", "content": text}] for text in ("a", "a longer prompt", "b c", "dd")]
        outs = backend.batch(prompts, loops=[2, 8, 3, 5], **gate)
    finally:
        counter.close()
        hook.remove()
    assert [o.finish_reason for o in outs] == ["stop", "length", "stop", "length"]
    assert len(calls) == 6 and all(c == [2, 8, 3, 5] for c in calls)  # one batch: prefill + 5 decode steps
    assert counter.loop_tokens == sum(o.usage.loop_tokens for o in outs)
    for o, budget in zip(outs, [2, 8, 3, 5]):
        fed = o.usage.prompt_tokens + o.usage.completion_tokens - (o.finish_reason == "length")
        assert o.loops.counted and o.loops.computed_loop_tokens == o.usage.loop_tokens
        assert o.loops.requested == budget
        assert o.usage.loop_tokens == pytest.approx(o.loops.executed_mean * fed)
        if gate:
            assert sum(o.loops.exit_histogram.values()) == fed
            assert o.usage.loop_tokens == sum(d * n for d, n in o.loops.exit_histogram.items())
        else:
            assert o.usage.loop_tokens == budget * fed and o.loops.exit_histogram is None
