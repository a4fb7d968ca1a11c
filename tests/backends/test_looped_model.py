"""LoopedForCausalLM: the reference looped transformer."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

from loopagent.backends.looped import LoopedCache, LoopedConfig, LoopedForCausalLM  # noqa: E402


def tiny(**overrides) -> LoopedForCausalLM:
    torch.manual_seed(0)
    config = LoopedConfig(**{
        "vocab_size": 61, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 64, "default_loops": 2, "max_loops": 64, **overrides,
    })
    return LoopedForCausalLM(config).eval()


def ids(b=2, t=9, seed=1, vocab=61):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def greedy_uncached(model, prompt, n, **kw):
    seq = prompt
    for _ in range(n):
        nxt = model(seq, **kw).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    return seq


# -- equivalences --------------------------------------------------------------------------------


def test_one_loop_without_injection_is_an_ordinary_transformer():
    model = tiny(injection="none", num_prelude_layers=1, num_core_layers=2, num_coda_layers=1, rope_theta=500.0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=61, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        num_hidden_layers=4, rms_norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=False,
    )).eval()
    ours = model.model
    layers = [*ours.prelude, *ours.core, *ours.coda]
    state = {"model.embed_tokens.weight": ours.embed_tokens.weight, "model.norm.weight": ours.norm.weight,
             "lm_head.weight": model.lm_head.weight}
    for i, layer in enumerate(layers):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[f"model.layers.{i}.self_attn.{name}.weight"] = getattr(layer.self_attn, name).weight
        for name in ("gate_proj", "up_proj", "down_proj"):
            state[f"model.layers.{i}.mlp.{name}.weight"] = getattr(layer.mlp, name).weight
        state[f"model.layers.{i}.input_layernorm.weight"] = layer.input_layernorm.weight
        state[f"model.layers.{i}.post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
    missing, unexpected = llama.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    x = ids()
    with torch.no_grad():
        assert torch.allclose(model(x, loops=1).logits, llama(x).logits, atol=1e-5)
        # two loops are the same network with the core stack repeated
        assert not torch.allclose(model(x, loops=2).logits, llama(x).logits, atol=1e-3)


@pytest.mark.parametrize("kv_cache", ["per_loop", "shared"])
@pytest.mark.parametrize("loops", [1, 2, 4])
def test_cached_generation_equals_uncached(kv_cache, loops):
    model = tiny(kv_cache=kv_cache, injection="concat" if kv_cache == "shared" else "additive")
    prompt = ids(t=6)
    with torch.no_grad():
        cached = model.generate(prompt, loops=loops, max_new_tokens=8, do_sample=False)
        reference = greedy_uncached(model, prompt, 8, loops=loops)
        assert torch.equal(cached, reference)
        # chunked prefill + one-token steps give the same logits as one forward
        full = model(reference, loops=loops).logits
        first = model(reference[:, :4], loops=loops, use_cache=True)
        second = model(reference[:, 4:], cache=first.cache, use_cache=True, loops=loops)
        assert torch.allclose(torch.cat([first.logits, second.logits], 1), full, atol=1e-5)


def test_left_padded_batch_matches_single_sequences():
    model = tiny()
    a, b = ids(b=1, t=7, seed=3), ids(b=1, t=4, seed=4)
    pad = torch.zeros(1, 3, dtype=torch.long)
    batch = torch.cat([a, torch.cat([pad, b], 1)])
    mask = torch.cat([torch.ones(1, 7), torch.cat([torch.zeros(1, 3), torch.ones(1, 4)], 1)]).long()
    with torch.no_grad():
        out = model.generate(batch, attention_mask=mask, loops=3, max_new_tokens=5, do_sample=False)
        alone_a = model.generate(a, loops=3, max_new_tokens=5, do_sample=False)
        alone_b = model.generate(b, loops=3, max_new_tokens=5, do_sample=False)
    assert torch.equal(out[0], alone_a[0])
    assert torch.equal(out[1, 3:], alone_b[0])


def _decode(model, cache, tok, steps, **kw):
    out_tokens = []
    for _ in range(steps):
        out = model(tok, cache=cache, use_cache=True, **kw)
        cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
        out_tokens.append(tok)
    return torch.cat(out_tokens, 1)


def test_decoding_extends_the_cache_in_place_and_forks_stay_independent():
    model = gated()
    x = ids(b=3, t=6, seed=5)
    kw = dict(loops=[2, 5, 3], exit_threshold=0.6)
    with torch.no_grad():
        reference = greedy_uncached(model, x, 5, **kw)[:, 6:]
        out = model(x, use_cache=True, **kw)
        cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
        stores = {key: e.store for key, e in cache.entries.items()}
        allocated = cache.allocated_nbytes()
        # a fork (a shallow copy of the entries, as bench/looped.py's clone_cache) decodes first...
        fork = copy.copy(cache)
        fork.entries = dict(cache.entries)
        assert torch.equal(_decode(model, fork, tok, 4, **kw), reference[:, 1:])
        # ...into the spare room of the same buffers: one token is not a copy of the whole cache
        assert all(fork.entries[key].store is store for key, store in stores.items())
        assert fork.allocated_nbytes() == allocated
        # then the original, from the same state: it copies before writing where the fork wrote
        before = {key: tuple(t.clone() for t in cache.get(key)) for key in cache.entries}
        assert torch.equal(_decode(model, cache, tok, 4, **kw), reference[:, 1:])
        assert all(cache.entries[key].store is not store for key, store in stores.items())
        # and neither changed what the other holds
        assert all(torch.equal(a, b) for key, kv in before.items()
                   for a, b in zip(kv, (t[:, :, :6] for t in fork.get(key))))


def test_each_loops_entries_hold_only_the_rows_that_reach_that_loop():
    model = tiny(num_core_layers=2)
    budgets = [1, 4, 2]
    with torch.no_grad():
        cache = model(ids(b=3, t=5), loops=budgets, use_cache=True).cache
        cache = model(ids(b=3, t=1, seed=9), loops=budgets, cache=cache, use_cache=True).cache
    for loop in range(4):
        rows = [r for r, n in enumerate(budgets) if n > loop]
        held = cache.rows_at(loop)
        assert (list(range(3)) if held is None else held.tolist()) == rows
        for i in range(2):
            k, v = cache.get(("core", loop, i))
            assert k.shape == v.shape == (len(rows), 2, 6, 8)
    # memory follows each row's own loops: 1 + 4 + 2 row-loops of 2 core layers, plus prelude/coda
    c = model.config
    per_row_layer = 2 * c.num_key_value_heads * 6 * c.head_dim * 4
    layers = c.num_prelude_layers + c.num_coda_layers
    assert cache.nbytes() == per_row_layer * (3 * layers + sum(budgets) * 2)


def test_cache_writes_keep_gradients_intact():
    model = tiny().train()
    x = ids(t=8)
    first = model(x[:, :5], loops=[1, 3], use_cache=True)
    stores = {key: e.store for key, e in first.cache.entries.items()}
    second = model(x[:, 5:], loops=[1, 3], cache=first.cache, use_cache=True)
    # recording gradients, entries grow into new tensors: attention backends that save their
    # keys/values for backward (flash attention on CUDA) would see them overwritten otherwise
    assert all(second.cache.entries[key].store is not store for key, store in stores.items())
    (first.logits.sum() + second.logits.sum()).backward()
    assert model.model.core[0].self_attn.k_proj.weight.grad.abs().sum() > 0


def _fed(model):
    """The (input length, cache position) of every forward generate() makes."""
    fed = []
    model.register_forward_pre_hook(
        lambda m, args, kw: fed.append((kw["input_ids"].shape[1], kw["cache"].seen if kw["cache"] else None)),
        with_kwargs=True)
    return fed


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_feeds_one_token_per_step_through_the_cache(beams):
    model = tiny()
    fed = _fed(model)
    with torch.no_grad():
        model.generate(ids(b=2, t=5), loops=2, num_beams=beams, max_new_tokens=4, do_sample=False)
    assert fed == [(5, 0), (1, 5), (1, 6), (1, 7)]


def test_beam_search_with_mixed_budgets_reorders_the_cache():
    model = tiny()
    x = ids(b=2, t=5)
    loops = torch.tensor([1, 3])  # a tensor: generate() expands it with the beams
    fed = _fed(model)
    with torch.no_grad():
        cached = model.generate(x, loops=loops, num_beams=3, max_new_tokens=6, do_sample=False)
        assert [n for n, _ in fed] == [5] + [1] * 5
        uncached = model.generate(x, loops=loops, num_beams=3, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_kv_memory_grows_with_loops_per_loop_and_not_shared():
    sizes = {}
    for mode in ("per_loop", "shared"):
        model = tiny(kv_cache=mode)
        with torch.no_grad():
            sizes[mode] = [model(ids(t=5), loops=n, use_cache=True).cache.nbytes() for n in (1, 2, 4)]
    per_loop, shared = sizes["per_loop"], sizes["shared"]
    assert per_loop[1] > per_loop[0] and per_loop[2] - per_loop[1] == 2 * (per_loop[1] - per_loop[0])
    assert shared[0] == shared[1] == shared[2] == per_loop[0]


# -- exit gate ------------------------------------------------------------------------------------


def test_exit_gate_thresholds_follow_the_definition():
    model = tiny(exit_gate=True)
    x = ids()
    with torch.no_grad():
        gated0 = model(x, loops=6, exit_threshold=0.0)
        one = model(x, loops=1)
        assert torch.all(gated0.exit_steps == 1)  # cumulative exit probability >= 0 after the first loop
        assert torch.allclose(gated0.logits, one.logits, atol=1e-6)
        gated1 = model(x, loops=6, exit_threshold=1.0)
        plain = model(x, loops=6)
        assert torch.all(gated1.exit_steps == 6)  # never reaches 1 before the last loop
        assert torch.allclose(gated1.logits, plain.logits, atol=1e-6)
        # in between, tokens stop at different loops and the states of stopped tokens are frozen
        with torch.no_grad():
            model.model.exit_gate.bias.fill_(0.0)
            model.model.exit_gate.weight.normal_(0, 2.0)
        mid = model(x, loops=6, exit_threshold=0.5)
        assert 1 <= mid.exit_steps.min() and mid.exit_steps.max() <= 6
        assert len(mid.exit_steps.unique()) > 1


def test_exit_gate_cached_equals_uncached():
    model = tiny(exit_gate=True)
    with torch.no_grad():
        model.model.exit_gate.weight.normal_(0, 2.0)
        prompt = ids(t=5)
        cached = model.generate(prompt, loops=5, max_new_tokens=6, do_sample=False, exit_threshold=0.6)
        reference = greedy_uncached(model, prompt, 6, loops=5, exit_threshold=0.6)
    assert torch.equal(cached, reference)


def test_exit_threshold_needs_a_gate():
    with pytest.raises(ValueError, match="exit gate"):
        tiny()(ids(), exit_threshold=0.5)


# -- injection stability ---------------------------------------------------------------------------


def test_stable_injection_keeps_states_bounded_where_additive_grows():
    norms = {}
    for mode in ("stable", "additive"):
        model = tiny(injection=mode, num_core_layers=1)
        with torch.no_grad():
            states = model(ids(), loops=64, output_loop_states=True).loop_states
        norms[mode] = [s.norm(dim=-1).mean().item() for s in states]
    stable, additive = norms["stable"], norms["additive"]
    assert max(stable) < 3 * stable[7]          # settles: L=64 no bigger than ~L=8
    assert stable[63] / stable[31] < 1.05       # converged, not creeping up
    assert additive[63] > 4 * additive[7]       # keeps growing with every loop
    assert additive[63] > 5 * stable[63]


# -- per-loop LoRA -----------------------------------------------------------------------------------


def test_per_loop_lora_starts_as_plain_recursion_and_can_differ_per_loop():
    plain = tiny()
    lora = tiny(lora_rank=4, lora_targets=["q_proj", "v_proj", "down_proj"])
    missing, _ = lora.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all("lora_" in k for k in missing)
    x = ids()
    with torch.no_grad():
        assert torch.allclose(lora(x, loops=3).logits, plain(x, loops=3).logits, atol=1e-6)  # B = 0 at init
        lora.model.core[0].self_attn.q_proj.lora_B[1].normal_(0, 0.5)  # only loop 2 changes
        assert torch.allclose(lora(x, loops=1).logits, plain(x, loops=1).logits, atol=1e-6)
        assert not torch.allclose(lora(x, loops=2).logits, plain(x, loops=2).logits, atol=1e-4)


# -- save / load ----------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    model = tiny(exit_gate=True, lora_rank=2, injection="stable", kv_cache="shared")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(again, LoopedForCausalLM)
    assert again.config.injection == "stable" and again.config.kv_cache == "shared" and again.config.lora_rank == 2
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x, loops=3).logits, again(x, loops=3).logits)


# -- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loops, message", [(0, "positive integer"), (-2, "positive integer"), (65, "max_loops=64"),
                                            (2.5, "positive integer")])
def test_bad_loop_budgets(loops, message):
    with pytest.raises(ValueError, match=message):
        tiny()(ids(), loops=loops)


def test_cache_of_another_budget_is_refused():
    model = tiny()
    cache = model(ids(), loops=2, use_cache=True).cache
    assert isinstance(cache, LoopedCache)
    with pytest.raises(ValueError, match="built for loops=2"):
        model(ids(t=1), cache=cache, use_cache=True, loops=3)


@pytest.mark.parametrize("overrides, message", [
    ({"injection": "multiply"}, "injection must be one of"),
    ({"kv_cache": "paged"}, "kv_cache must be one of"),
    ({"default_loops": 9, "max_loops": 4}, "default_loops <= max_loops"),
    ({"num_attention_heads": 4, "num_key_value_heads": 3}, "multiple of"),
    ({"lora_targets": ["qkv"]}, "unknown lora_targets"),
])
def test_bad_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        LoopedConfig(hidden_size=32, **overrides)


# -- adaptive depth: per-row budgets, the gate's KV rule, cached == uncached -------------------------


def gated(kv_cache="per_loop", **overrides) -> LoopedForCausalLM:
    model = tiny(exit_gate=True, kv_cache=kv_cache, **overrides)
    with torch.no_grad():
        model.model.exit_gate.weight.normal_(0, 2.0)  # exit probabilities that vary by token
    return model


def padded_batch():
    x = ids(b=3, t=8, seed=2)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :1] = 0
    return x, mask


@pytest.mark.parametrize("kv_cache", ["per_loop", "shared"])
def test_gate_with_mixed_budgets_and_padding_cached_equals_uncached(kv_cache):
    model = gated(kv_cache)
    x, mask = padded_batch()
    kw = dict(loops=[5, 2, 7], exit_threshold=0.6)
    with torch.no_grad():
        full = model(x, attention_mask=mask, **kw)
        steps = full.exit_steps
        assert torch.all(steps[~mask.bool()] == 0) and torch.all(steps[mask.bool()] >= 1)
        assert torch.all(steps <= torch.tensor([5, 2, 7])[:, None]) and len(steps.unique()) > 2
        assert torch.equal(full.core_tokens, steps.sum(1))
        # chunked prefill + one-token steps read exactly the keys/values the uncached forward used
        out = model(x[:, :5], attention_mask=mask[:, :5], use_cache=True, **kw)
        logits, cache, exits = [out.logits], out.cache, [out.exit_steps]
        for i in range(5, 8):
            out = model(x[:, i : i + 1], attention_mask=mask[:, : i + 1], cache=cache, use_cache=True, **kw)
            logits.append(out.logits)
            exits.append(out.exit_steps)
        real = mask.bool()
        assert torch.allclose(torch.cat(logits, 1)[real], full.logits[real], atol=1e-5)
        assert torch.equal(torch.cat(exits, 1), steps)
        # each row computes what it computes alone, with its own budget
        for row, budget in enumerate(kw["loops"]):
            alone = model(x[row : row + 1, real[row]], loops=budget, exit_threshold=0.6)
            assert torch.allclose(alone.logits[0], full.logits[row, real[row]], atol=1e-5)
            assert torch.equal(alone.exit_steps[0], steps[row, real[row]])


def test_gated_greedy_decoding_of_a_padded_mixed_batch_equals_uncached():
    model = gated()
    x, mask = padded_batch()
    kw = dict(loops=[6, 3, 8], exit_threshold=0.5, min_loops=2)
    with torch.no_grad():
        cached = model.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False, **kw)
        seq, m = x, mask
        for _ in range(6):
            nxt = model(seq, attention_mask=m, **kw).logits[:, -1].argmax(-1, keepdim=True)
            seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    assert torch.equal(cached, seq)


def test_attention_over_runs_of_rows_equals_the_gathered_rows(monkeypatch):
    """On CPU the active rows attend in place, run by run; the gather (CUDA's way) gives the same."""
    from loopagent.backends.looped import modeling_looped

    model = gated()
    x, mask = padded_batch()
    kw = dict(loops=[5, 2, 7], exit_threshold=0.6)
    runs = []
    real = modeling_looped._Active.attend_from

    def spy(self, local):
        real(self, local)
        runs.append(self.runs)

    with torch.no_grad():
        monkeypatch.setattr(modeling_looped._Active, "attend_from", spy)
        by_runs = model.generate(x, attention_mask=mask, max_new_tokens=5, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, **kw)
        assert any(r is not None and len(r) > 1 for r in runs), "some loop must attend in several runs"

        def gather_only(self, local):
            real(self, local)
            self.runs = None

        monkeypatch.setattr(modeling_looped._Active, "attend_from", gather_only)
        gathered = model.generate(x, attention_mask=mask, max_new_tokens=5, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True, **kw)
    assert torch.equal(by_runs.sequences, gathered.sequences)
    for a, b in zip(by_runs.logits, gathered.logits):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_stopped_token_keeps_the_keys_of_its_last_computed_loop():
    model = gated(num_core_layers=2)
    x, mask = padded_batch()
    with torch.no_grad():
        out = model(x, attention_mask=mask, loops=6, exit_threshold=0.6, use_cache=True)
    steps, cache = out.exit_steps, out.cache
    assert set(steps[mask.bool()].tolist()) - {6}, "some tokens must stop early"
    for i in range(2):
        for loop in range(6):
            k, v = cache.get(("core", loop, i))  # [b, kv_heads, t, head_dim]
            for row, pos in zip(*torch.nonzero(steps <= loop, as_tuple=True)):
                d = int(steps[row, pos])
                if d == 0:  # a masked position computed nothing
                    assert not k[row, :, pos].any() and not v[row, :, pos].any()
                else:
                    k_last, v_last = cache.get(("core", d - 1, i))
                    assert torch.equal(k[row, :, pos], k_last[row, :, pos])
                    assert torch.equal(v[row, :, pos], v_last[row, :, pos])


def test_min_loops_is_a_floor_for_the_gate():
    model = gated()
    x = ids()
    with torch.no_grad():
        out = model(x, loops=6, exit_threshold=0.0, min_loops=3)
        assert torch.all(out.exit_steps == 3) and torch.equal(out.core_tokens, torch.tensor([27, 27]))
        assert torch.allclose(out.logits, model(x, loops=3).logits, atol=1e-6)
        # given alone, min_loops gates with the checkpoint's exit_threshold
        alone = model(x, loops=6, min_loops=2)
        assert torch.equal(alone.exit_steps, model(x, loops=6, min_loops=2,
                                                   exit_threshold=model.config.exit_threshold).exit_steps)
    with pytest.raises(ValueError, match="min_loops=7 exceeds"):
        model(x, loops=6, exit_threshold=0.5, min_loops=7)


def test_per_row_budgets_are_checked_and_bind_the_cache():
    model = tiny()
    x = ids(b=2)
    with torch.no_grad():
        out = model(x, loops=torch.tensor([1, 3]), use_cache=True)
        assert out.exit_steps[:, 0].tolist() == [1, 3] and out.core_tokens.tolist() == [9, 27]
        assert out.cache.loops == 3 and out.cache.budgets == (1, 3)
        assert torch.allclose(out.logits[1], model(x[1:], loops=3).logits[0], atol=1e-5)
        with pytest.raises(ValueError, match=r"built for loops=\[1, 3\]; start a new one for loops=3"):
            model(ids(b=2, t=1), cache=out.cache, use_cache=True, loops=3)
        model(ids(b=2, t=1), cache=out.cache, use_cache=True, loops=[1, 3])
    with pytest.raises(ValueError, match="3 loop budgets for a batch of 2"):
        model(x, loops=[1, 2, 3])
    with pytest.raises(ValueError, match="max_loops=64"):
        model(x, loops=[1, 65])
    with pytest.raises(ValueError, match="positive integer"):
        model(x, loops=[0, 2])


def test_gated_training_forward_backpropagates_through_the_gathered_tokens():
    model = gated().train()
    x, mask = padded_batch()
    out = model(x, attention_mask=mask, labels=x, loops=4, exit_threshold=0.5, output_loop_states=True,
                backprop_loops=2)
    assert len(out.loop_states) == 4 and out.gate_probs.shape == (4, 3, 8)
    out.loss.backward()
    assert model.model.core[0].mlp.up_proj.weight.grad.abs().sum() > 0
