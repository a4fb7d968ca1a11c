"""The static decode step of ``GraphDecoder`` equals the model's eager cached decoding.

On CPU the static step runs eagerly (``capture=False``, the very code a CUDA graph
captures); the CUDA test captures and replays it. Logits agree to float32 rounding (the
static step attends over the whole buffer, masked), greedy tokens exactly; the work
reported per row is what ran.
"""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from loopagent.backends import kernels  # noqa: E402
from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM  # noqa: E402
from loopagent.backends.looped.graphs import GraphDecoder  # noqa: E402
from loopagent.errors import ConfigError, InvalidLoopsError  # noqa: E402

BASE = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=48, num_core_layers=2,
            max_loops=6)
CONFIGS = {
    "additive": {},
    "stable": dict(injection="stable"),
    "concat": dict(injection="concat"),
    "loop_norm": dict(injection="stable", loop_norm=True),
    "lora": dict(lora_rank=2, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")),
    "gqa": dict(num_key_value_heads=2),
    "shared_kv": dict(kv_cache="shared"),
    "sandwich_residual": dict(sandwich_norm=True, sandwich_style="residual", norm_before_coda=True),
    "gated_model_gate_off": dict(exit_gate=True),
}
LOOPS = 3


def make_model(name: str = "additive", device: str = "cpu") -> LoopedForCausalLM:
    torch.manual_seed(0)
    model = LoopedForCausalLM(LoopedConfig(**BASE, **CONFIGS[name])).eval()
    with torch.no_grad():  # LoRA deltas that matter (B starts at zero)
        for p in model.parameters():
            if p.dim() == 3:
                p.normal_(0, 0.3)
    return model.to(device)


def batch(kind: str, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    if kind == "single":
        ids = torch.randint(0, 64, (1, 5), generator=gen)
        return ids.to(device), torch.ones_like(ids).to(device)
    ids = torch.randint(0, 64, (3, 6), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    mask[2, :1] = 0
    return ids.to(device), mask.to(device)


def eager_logits(model, ids, mask, steps: int, loops: int = LOOPS) -> list[torch.Tensor]:
    """Last-position logits of the prefill and of ``steps`` greedy cached decode steps (every row fed)."""
    with torch.no_grad():
        out = model(ids, attention_mask=mask, loops=loops, use_cache=True)
        logits, cache = [out.logits[:, -1]], out.cache
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = model(logits[-1].argmax(-1)[:, None], attention_mask=mask, cache=cache, loops=loops,
                        use_cache=True)
            logits.append(out.logits[:, -1])
    return logits


def static_logits(decoder: GraphDecoder, ids, mask, steps: int) -> list[torch.Tensor]:
    logits = [decoder.prefill(ids, mask)]
    for _ in range(steps):
        logits.append(decoder.step(logits[-1].argmax(-1)))
    return logits


def assert_same(static: list[torch.Tensor], eager: list[torch.Tensor], atol: float = 1e-5) -> None:
    for got, want in zip(static, eager, strict=True):
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-5)
        assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("kind", ["single", "padded"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_static_step_equals_eager_cached_decoding(name: str, kind: str) -> None:
    model = make_model(name)
    ids, mask = batch(kind)
    decoder = GraphDecoder(model, loops=LOOPS, max_len=16, capture=False)
    with kernels.mode("off"):
        assert_same(static_logits(decoder, ids, mask, 4), eager_logits(model, ids, mask, 4))


def hf_style_greedy(model, ids, mask, max_new: int, eos: int) -> tuple[list[list[int]], list[bool]]:
    """The hf backend's eager loop: finished rows are fed masked."""
    rows = ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, loops=LOOPS, use_cache=True)
        for step in range(max_new):
            nxt = out.logits[:, -1].argmax(-1)
            for row in range(rows):
                if not done[row]:
                    if int(nxt[row]) == eos:
                        done[row] = True
                    else:
                        tokens[row].append(int(nxt[row]))
            if bool(done.all()) or step == max_new - 1:
                break
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
            out = model(nxt[:, None], attention_mask=mask, cache=out.cache, loops=LOOPS, use_cache=True)
    return tokens, done.tolist()


class CoreRows:
    """Token rows every core layer saw (forward hooks), divided by the number of core layers."""

    def __init__(self, model) -> None:
        self.rows = 0
        self.model = model
        self.handles = [layer.register_forward_hook(self._count) for layer in model.model.core]

    def _count(self, module, args, output) -> None:
        self.rows += args[0].numel() // args[0].shape[-1]

    def close(self) -> int:
        for h in self.handles:
            h.remove()
        return self.rows // len(self.model.model.core)


def test_generate_matches_the_eager_loop_and_counts_what_ran() -> None:
    model = make_model("loop_norm")
    ids, mask = batch("padded")
    reference, _ = hf_style_greedy(model, ids, mask, max_new=8, eos=-1)
    eos = reference[1][2]  # row 1 stops early, the others run on (unless they emit it too)
    want, want_done = hf_style_greedy(model, ids, mask, max_new=8, eos=eos)
    decoder = GraphDecoder(model, loops=LOOPS, max_len=16, capture=False)
    counter = CoreRows(model)
    with kernels.mode("off"):
        out = decoder.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=eos)
    seen = counter.close()
    assert [out.row_tokens(r) for r in range(3)] == want
    assert out.finished.tolist() == want_done and want_done[1]
    assert out.steps == out.tokens.shape[1] - 1
    # a row's work is its prompt (padding ran nothing) and LOOPS per step that fed one of its
    # tokens, as eager decoding computes; row 1 finished early: its later steps are idle work
    prompt = mask.sum(1) * LOOPS
    assert out.row_steps[1] < out.steps and out.row_steps.max() == out.steps
    assert out.core_tokens.tolist() == (prompt + out.row_steps * LOOPS).tolist()
    # the bucket of 4 has one padded row: it and finished rows are waste, reported apart; the hooks saw it all
    assert decoder.bucket_for(3) == 4
    assert out.idle_core_tokens == (4 * out.steps - int(out.row_steps.sum())) * LOOPS
    assert seen == int(out.core_tokens.sum()) + out.idle_core_tokens


def test_batches_are_padded_into_buckets() -> None:
    model = make_model("gqa")
    decoder = GraphDecoder(model, loops=2, max_len=12, buckets=(8, 2, 4), capture=False)
    assert decoder.buckets == (2, 4, 8)
    assert [decoder.bucket_for(b) for b in (1, 2, 3, 5, 8)] == [2, 2, 4, 8, 8]
    ids = torch.randint(0, 64, (5, 4), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with kernels.mode("off"):
        assert_same(static_logits(decoder, ids, mask, 3), eager_logits(model, ids, mask, 3, loops=2))
        assert decoder.idle_core_tokens == 3 * 3 * 2  # 3 padded rows x 3 steps x 2 loops
        # a smaller batch afterwards gets its own bucket; the first bucket's state is left as it was
        ids1, mask1 = batch("single")
        assert_same(static_logits(decoder, ids1, mask1, 2), eager_logits(model, ids1, mask1, 2, loops=2))
    assert sorted(decoder._buckets) == [2, 8]


def test_bad_input_gives_specific_errors() -> None:
    model = make_model("gated_model_gate_off")
    with pytest.raises(ConfigError, match="no exit gate"):
        GraphDecoder(model, loops=3, exit_threshold=0.5)
    with pytest.raises(ConfigError, match="no exit gate"):
        GraphDecoder(model, loops=3, min_loops=2)
    with pytest.raises(InvalidLoopsError, match="one loop budget.*mixed budgets eagerly"):
        GraphDecoder(model, loops=[2, 4])
    assert GraphDecoder(model, loops=[4, 4], capture=False).loops == 4
    assert GraphDecoder(model, capture=False).loops == model.config.default_loops
    with pytest.raises(InvalidLoopsError):
        GraphDecoder(model, loops=7)  # max_loops=6
    with pytest.raises(ConfigError, match="buckets"):
        GraphDecoder(model, loops=2, buckets=())
    with pytest.raises(ConfigError, match="max_len"):
        GraphDecoder(model, loops=2, max_len=1)
    with pytest.raises(ConfigError, match="CUDA device"):
        GraphDecoder(model, loops=2, capture=True)
    decoder = GraphDecoder(model, loops=2, max_len=10, buckets=(1, 2), capture=False)
    ids = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"6 tokens \+ max_new_tokens=5 exceeds max_len=10"):
        decoder.generate(ids, max_new_tokens=5)
    with pytest.raises(ConfigError, match="bigger than the largest bucket"):
        decoder.generate(torch.zeros(3, 2, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(ConfigError, match="needs a prefill"):
        decoder.step(torch.zeros(2, dtype=torch.long))
    logits = decoder.prefill(torch.zeros(2, 8, dtype=torch.long))
    decoder.step(logits.argmax(-1))
    with pytest.raises(ConfigError, match="one token per row"):
        decoder.step(torch.zeros(3, dtype=torch.long))
    decoder.step(logits.argmax(-1))
    with pytest.raises(ConfigError, match="reached max_len=10"):
        decoder.step(logits.argmax(-1))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_static_step_through_the_kernels_equals_plain_torch() -> None:
    model = make_model("loop_norm")
    ids, mask = batch("padded")
    ids, mask = ids[:2, :4], mask[:2, :4]
    decoder = GraphDecoder(model, loops=2, max_len=8, buckets=(2,), capture=False)
    with torch.no_grad(), kernels.mode("on"):
        assert model.model.uses_kernels(torch.device("cpu"))  # Triton's interpreter on the CPU
        fused = static_logits(decoder, ids, mask, 2)
    with kernels.mode("off"):
        plain = static_logits(decoder, ids, mask, 2)
    assert_same(fused, plain, atol=2e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (torch.cuda.CUDAGraph)")
def test_captured_graph_replays_equal_eager_on_cuda() -> None:
    model = make_model("lora", device="cuda")
    ids, mask = batch("padded", device="cuda")
    graphed = GraphDecoder(model, loops=LOOPS, max_len=16, buckets=(1, 4))
    assert graphed.capture
    got = static_logits(graphed, ids, mask, 5)
    assert graphed._buckets[4].graph is not None  # captured once, replayed every step
    assert_same(got, eager_logits(model, ids, mask, 5), atol=1e-4)
    eager_static = GraphDecoder(model, loops=LOOPS, max_len=16, buckets=(1, 4), capture=False)
    assert_same(got, static_logits(eager_static, ids, mask, 5), atol=1e-5)
    # a second decode in the same bucket replays the same graph on the new prompt
    graph = graphed._buckets[4].graph
    ids2, mask2 = ids[1:], mask[1:]
    out = graphed.generate(ids2, attention_mask=mask2, max_new_tokens=4)
    assert graphed._buckets[4].graph is graph
    want = torch.stack([x.argmax(-1) for x in eager_logits(model, ids2, mask2, 3)], 1)
    assert torch.equal(out.tokens, want)


# -- the hf backend -------------------------------------------------------------------------


def test_hf_backend_uses_graphs_only_for_greedy_uniform_ungated_cuda_decoding(ckpt) -> None:
    from loopagent.backends.hf import HFLoopedBackend
    from loopagent.backends.local import Gate

    cuda = HFLoopedBackend(ckpt, loops=2, device="cuda")  # nothing is loaded: only the decision is checked
    assert cuda._graph_loops([2, 2], None, 8, 0.0) == 2
    assert cuda._graph_loops([2, 4], None, 8, 0.0) is None  # mixed budgets
    assert cuda._graph_loops([2, 2], Gate(0.5), 8, 0.0) is None  # the exit gate
    assert cuda._graph_loops([2], None, 0, 0.0) is None
    with kernels.mode("off"):  # LOOPAGENT_KERNELS=off: the one switch turns graphs off too
        assert cuda._graph_loops([2], None, 8, 0.0) is None
    assert cuda._graph_loops([2], None, 8, 0.7) is None  # sampling (the call's temperature)
    assert HFLoopedBackend(ckpt, loops=2)._graph_loops([2], None, 8, 0.0) is None  # the CPU keeps today's path


def test_hf_backend_graph_decode_equals_its_eager_decode(ckpt) -> None:
    """The CUDA branch of the backend, run on CPU (the graph decoder's static step runs eagerly there)."""
    from loopagent.backends.hf import HFLoopedBackend

    backend = HFLoopedBackend(ckpt, loops=2, batch_size=3)
    tok = backend.tokenizer
    enc = tok(["x=1;", "hello there", "a"], return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        eager = backend._decode_eager(ids, mask, [2, 2, 2], 6, None, 0.0)
        graphed = backend._decode_graphed(ids, mask, 2, 6)
    assert graphed[0] == eager[0] and graphed[1].tolist() == eager[1].tolist()
    decoder = backend._loaded().decoders[2, (1, 2, 3)]
    assert decoder.max_len == 256 and decoder.buckets == (1, 2, 3) and not decoder.capture
    steps = len(graphed[3][0]) - int(mask[0].sum())
    assert graphed[2].tolist() == ((mask.sum(1) + steps) * 2).tolist()
    assert graphed[2].tolist() == eager[2].tolist()  # a row's work is what eager decoding computes for it
    assert all(float(d.float().mean()) == 2.0 for d in graphed[3])
    # a longer call grows the cached decoder (a power of two), a shorter one reuses it
    with torch.no_grad():
        backend._decode_graphed(ids, mask, 2, 300)
    assert backend._loaded().decoders[2, (1, 2, 3)].max_len == 512
