"""The hf: backend: looped checkpoints generated with torch in-process."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from loopagent import RLM, InvalidLoopsError, ModelSpecError, model  # noqa: E402
from loopagent.backends.looped import LoopedConfig  # noqa: E402
from loopagent.backends.scripted import ScriptedBackend  # noqa: E402


def user(text):
    return [{"role": "user", "content": text}]


def test_complete_reports_tokens_and_loops(ckpt):
    backend = model(f"hf:{ckpt}", loops=2, max_new_tokens=6)
    assert backend.looped and backend.default_loops == 2 and backend.max_loops == 8
    out = backend.complete(user("hello"))
    text = backend.tokenizer.apply_chat_template(user("hello"), add_generation_prompt=True, tokenize=False)
    prompt = len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert out.usage.prompt_tokens == prompt
    assert 1 <= out.usage.completion_tokens <= 6
    assert out.loops.requested == 2 and out.loops.executed_mean == 2.0
    assert out.usage.loop_tokens == out.loops.computed_loop_tokens == 2 * processed(out) and out.loops.counted
    assert backend.complete(user("hello"), loops=5).loops.requested == 5


def test_mixed_budget_batch_matches_single_calls_and_keeps_order(ckpt):
    backend = model(f"hf:{ckpt}", max_new_tokens=5)
    prompts = [user("a"), user("longer prompt here"), user("b c"), user("a")]
    budgets = [1, 4, 2, 4]
    batched = backend.batch(prompts, loops=budgets)
    for prompt, n, out in zip(prompts, budgets, batched):
        alone = backend.complete(prompt, loops=n)
        assert out.text == alone.text and out.loops.requested == n
    assert batched[0].text == backend.complete(user("a"), loops=1).text


def processed(out):
    """Tokens a call ran through the model: the prompt and every reply token fed back (the
    last one is not fed when the reply was cut at max_new_tokens: nothing reads its logits)."""
    return out.usage.prompt_tokens + out.usage.completion_tokens - (out.finish_reason == "length")


def test_adaptive_exit_reports_a_histogram(ckpt):
    backend = model(f"hf:{ckpt}", max_new_tokens=4)
    out = backend.complete(user("x"), loops=8, exit_threshold=0.0)
    # every token exits after its first loop, and then computes nothing more: one loop-token each
    assert out.loops.executed_mean == 1.0 and out.loops.exit_histogram == {1: processed(out)}
    assert out.usage.loop_tokens == out.loops.computed_loop_tokens == processed(out) and out.loops.counted
    assert out.loops.exit_threshold == 0.0 and out.loops.requested == 8 and out.loops.min_loops is None
    floored = backend.complete(user("x"), loops=8, exit_threshold=0.0, min_loops=3)
    assert floored.loops.exit_histogram == {3: processed(floored)} and floored.loops.min_loops == 3
    assert floored.usage.loop_tokens == 3 * processed(floored)


def test_min_loops_alone_uses_the_checkpoint_threshold(ckpt):
    backend = model(f"hf:{ckpt}", max_new_tokens=3)
    out = backend.complete(user("x"), loops=6, min_loops=2)
    assert out.loops.exit_threshold == backend.model.config.exit_threshold and out.loops.min_loops == 2
    assert min(out.loops.exit_histogram) >= 2 and sum(out.loops.exit_histogram.values()) == processed(out)
    assert out.usage.loop_tokens == sum(k * v for k, v in out.loops.exit_histogram.items())


def test_bad_input(ckpt, tmp_path):
    with pytest.raises(InvalidLoopsError):
        model(f"hf:{ckpt}", loops=9)
    backend = model(f"hf:{ckpt}")
    with pytest.raises(InvalidLoopsError):
        backend.complete(user("x"), loops=0)
    with pytest.raises(ModelSpecError, match="no config.json"):
        model(f"hf:{tmp_path / 'missing'}")
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                                 intermediate_size=32)).save_pretrained(tmp_path / "llama")
    with pytest.raises(ModelSpecError, match="loopagent convert"):
        model(f"hf:{tmp_path / 'llama'}")


def test_model_of_a_backend_is_a_copy_that_shares_the_model(ckpt):
    backend = model(f"hf:{ckpt}", max_new_tokens=2)
    deep = model(backend, loops=6)
    assert deep is not backend and deep.default_loops == 6 and backend.default_loops == 3
    assert not backend.loaded and deep.complete(user("x")).loops.requested == 6
    assert backend.loaded and backend.model is deep.model  # loaded once, for both
    assert backend.complete(user("x")).loops.requested == 3
    with pytest.raises(InvalidLoopsError, match="exceeds the maximum of 8"):
        model(backend, loops=9)
    with pytest.raises(InvalidLoopsError, match="not a looped model"):
        model(ScriptedBackend(["a"]), loops=2)
    scripted = ScriptedBackend(["a"], looped=True, default_loops=1, max_loops=4)
    assert model(scripted, loops=3).default_loops == 3 and scripted.default_loops == 1


def test_bad_budget_types_are_loop_errors(ckpt):
    backend = model(f"hf:{ckpt}", max_new_tokens=2)
    for bad in (2.5, "4", True):
        with pytest.raises(InvalidLoopsError, match="positive integer"):
            backend.batch([user("x")], loops=bad)
    with pytest.raises(InvalidLoopsError, match="2 loop budgets for 1 conversations"):
        backend.batch([user("x")], loops=[1, 2])


def test_rlm_with_a_looped_child(ckpt, tmp_path):
    root = ScriptedBackend([
        "```repl\nr = llm_batch(['one', 'two'])\nx = llm_query('three', loops=6)\nFINAL(str(len(r)))\n```",
    ])
    child = model(f"hf:{ckpt}", loops=2, max_new_tokens=3)
    result = RLM(root, child, log_dir=tmp_path).run("q", context="c")
    assert result.answer == "2"
    depth1 = result.usage.by_depth[1]
    assert depth1.calls == 3 and depth1.loop_tokens > 0
    from loopagent.trajectory import read_trajectory

    calls = [e for e in read_trajectory(result.trajectory) if e.type == "sub_call"]
    assert sorted(c.loops_chosen for c in calls) == [2, 2, 6]
    assert all(c.loops_executed == c.loops_chosen for c in calls)


def test_per_call_max_tokens_and_temperature_reach_decoding(ckpt):
    backend = model(f"hf:{ckpt}", max_new_tokens=6)
    assert backend.default_temperature == 0.0 and backend.default_max_tokens == 6
    assert backend.context_window == LoopedConfig().max_position_embeddings
    seen = []
    pick = backend._pick
    backend._pick = lambda logits, generator, temperature: seen.append(temperature) or pick(logits, generator,
                                                                                          temperature)
    out = backend.complete(user("hello"), max_tokens=2, temperature=1.5)
    assert out.usage.completion_tokens <= 2 and set(seen) == {1.5}
    seen.clear()
    backend.complete(user("hello"))
    assert set(seen) == {0.0}
    with pytest.raises(ValueError, match="does not take top_k"):
        backend.complete(user("hello"), top_k=3)
