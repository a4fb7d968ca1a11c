"""vLLM serving of looped models: the plugin model, per-request loop budgets, the
vllm: backend, `loopagent serve`, and served: replicas behind litellm's Router.

Tests marked ``vllm`` need vLLM (the ``vllm-cpu`` extra) and are skipped without it;
they run the engine in-process on CPU (float32, eager, 1 GiB of KV cache).
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from loopagent import RLM, InvalidLoopsError, ModelSpecError, model  # noqa: E402
from loopagent.backends.looped import LoopedConfig, LoopedForCausalLM  # noqa: E402
from loopagent.backends.looped.tokenizer import byte_tokenizer  # noqa: E402
from loopagent.backends.scripted import ScriptedBackend  # noqa: E402
from loopagent.backends.vllm import hooks  # noqa: E402
from loopagent.backends.vllm.backend import VLLMBackend  # noqa: E402
from loopagent.backends.vllm.serve import LoopsMiddleware, serve_argv  # noqa: E402
from loopagent.trajectory import read_trajectory  # noqa: E402

HAS_VLLM = importlib.util.find_spec("vllm") is not None

# head_dim 64: vLLM's CPU attention supports 32, 64, 80, ... (not 16)
BASE = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256,
            num_prelude_layers=1, num_core_layers=2, num_coda_layers=1, default_loops=2, max_loops=8,
            injection="stable", initializer_range=0.2)
# every option the vLLM model implements, in one checkpoint; initializer 0.1, not 0.2: at 0.2 its loops
# are chaotic (float32 alone moves 4-loop log-probs by 0.2 against float64), so greedy tokens flip on ties
RICH = dict(BASE, initializer_range=0.1, injection="concat", sandwich_norm=True, sandwich_style="residual",
            loop_norm=True, norm_before_coda=True, embedding_scale=2.0, qkv_bias=True, attention_bias=True,
            mlp_bias=True,
            lora_rank=4, lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            tie_word_embeddings=True, exit_gate=True, initial_state="zeros",
            rope_freq_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 64})
# the layout of converted Ouro checkpoints: no injection, output sandwich norms, loop norm, no final norm
OURO = dict(BASE, injection="none", sandwich_norm=True, sandwich_style="output", loop_norm=True, final_norm=False,
            exit_gate=True, qkv_bias=True)
CONFIGS = {"base": BASE, "rich": RICH, "ouro": OURO}
# the exit gate on norm(s) (no loop norm); weights set by _save so tokens exit at varied depths
GATED = dict(BASE, exit_gate=True, exit_threshold=0.6)


def _save(path: Path, options: dict) -> Path:
    tok = byte_tokenizer()
    torch.manual_seed(0)
    config = LoopedConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **options)
    ref = LoopedForCausalLM(config)
    with torch.no_grad():
        if config.lora_rank:  # LoRA B starts at zero: make the per-loop deltas matter
            for name, p in ref.named_parameters():
                if name.endswith("lora_B"):
                    p.normal_(std=0.2)
        if options is GATED:  # conditional exit probabilities spread over (0, 1): varied exit depths
            ref.model.exit_gate.weight.normal_(std=0.15)
            ref.model.exit_gate.bias.fill_(-0.8)
    _check_conditioned(ref, tok)
    ref.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _check_conditioned(ref: LoopedForCausalLM, tok) -> None:
    """Token-for-token comparisons mean something only if float32 rounding cannot flip a greedy
    token: the float32 reference must agree with float64 far below the logit margins."""
    x = torch.tensor([tok("the quick brown fox jumps", add_special_tokens=False)["input_ids"]])
    wide = copy.deepcopy(ref).double()
    with torch.no_grad():
        for loops in (1, 2, 4):
            drift = (torch.log_softmax(ref(x, loops=loops).logits.double(), -1)
                     - torch.log_softmax(wide(x, loops=loops).logits, -1)).abs().max().item()
            assert drift < 1e-3, f"test checkpoint ill-conditioned at {loops} loops (float32 drift {drift:.1e})"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    every = {**CONFIGS, "gated": GATED}
    return {name: _save(tmp_path_factory.mktemp(name), options) for name, options in every.items()}


@pytest.fixture(scope="module")
def engines(ckpts):
    """One in-process engine per checkpoint, started on first use, closed at the end."""
    started: dict[str, VLLMBackend] = {}

    def get(name: str) -> VLLMBackend:
        if name not in started:
            for other in list(started):  # one engine at a time keeps memory small
                started.pop(other).close()
            started[name] = VLLMBackend(ckpts[name], dtype="float32", max_new_tokens=8, max_model_len=1024)
        return started[name]

    yield get
    for backend in started.values():
        backend.close()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _reference_tokens(path: Path, prompt_ids: list[int], loops: int, n: int) -> list[int]:
    ref = LoopedForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt_ids]), loops=loops, max_new_tokens=n, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


# -- without vLLM --------------------------------------------------------------------------------


def test_spec_builds_a_vllm_backend_without_starting_an_engine(ckpts, tmp_path):
    backend = model(f"vllm:{ckpts['base']}", loops=3)
    assert isinstance(backend, VLLMBackend) and not backend.loaded
    assert backend.looped and backend.default_loops == 3 and backend.max_loops == 8
    assert backend.name == f"vllm:{ckpts['base']}"
    with pytest.raises(InvalidLoopsError):
        model(f"vllm:{ckpts['base']}", loops=9)
    with pytest.raises(ModelSpecError, match="not a checkpoint directory"):
        model(f"vllm:{tmp_path}")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "config.json").write_text(json.dumps({"model_type": "looped", "kv_cache": "shared", "max_loops": 4,
                                                    "default_loops": 2}))
    with pytest.raises(ModelSpecError, match="per_loop"):
        model(f"vllm:{shared}")


def test_window_and_per_call_temperature_without_an_engine(ckpts):
    plain = VLLMBackend(ckpts["base"])
    positions = plain.checkpoint_config["max_position_embeddings"]
    assert plain.context_window == positions and plain.default_temperature == 0.0
    assert VLLMBackend(ckpts["base"], max_model_len=512).context_window == min(512, positions)
    greedy = plain._params(4, 8)
    assert greedy.temperature == 0.0 and greedy.seed is None and greedy.max_tokens == 8
    sampled = plain._params(4, 8, None, 0.7)
    assert sampled.temperature == 0.7 and sampled.seed == plain.seed and sampled.extra_args == {"loops": 4}
    assert not plain.loaded


def test_budget_resolution_and_cache_salt():
    assert hooks.resolve_loops(None, 2, 8) == 2
    assert hooks.resolve_loops({"loops": 8}, 2, 8) == 8
    for bad in (0, -1, 9, 2.5, "3", True):
        with pytest.raises(ValueError, match="loops"):
            hooks.resolve_loops({"loops": bad}, 2, 8)
    assert hooks.salted(None, 4) == "loopagent-loops=4"
    assert hooks.salted("user", 4) == "user|loopagent-loops=4"


class _Config:
    default_loops, max_loops, exit_gate, exit_threshold = 2, 8, True, 0.7


def test_gate_options_resolution_and_salt():
    gated, plain = _Config(), type("Plain", (_Config,), {"exit_gate": False})()
    assert hooks.resolve_request(None, gated) == hooks.RequestLoops(2)
    assert hooks.resolve_request({"max_loops": 5}, gated) == hooks.RequestLoops(5)
    assert hooks.resolve_request({"loops": 5, "max_loops": 5}, gated).loops == 5
    assert hooks.resolve_request({"loops": 6, "exit_threshold": 0.5, "min_loops": 3}, gated) == hooks.RequestLoops(
        6, 0.5, 3)
    # min_loops alone: the checkpoint's threshold; a threshold alone: min_loops 1
    assert hooks.resolve_request({"loops": 4, "min_loops": 2}, gated) == hooks.RequestLoops(4, 0.7, 2)
    assert hooks.resolve_request({"exit_threshold": 0.0}, gated) == hooks.RequestLoops(2, 0.0, 1)
    bad = [({"loops": 4, "max_loops": 5}, "differ"), ({"max_loops": 9}, "max_loops=9 exceeds"),
           ({"exit_threshold": 1.5}, "exit_threshold must be"), ({"exit_threshold": "0.5"}, "exit_threshold must be"),
           ({"loops": 3, "min_loops": 4}, "min_loops=4 exceeds"), ({"min_loops": 0}, "min_loops must be")]
    for args, words in bad:
        with pytest.raises(ValueError, match=words):
            hooks.resolve_request(args, gated)
    with pytest.raises(ValueError, match="no exit gate"):
        hooks.resolve_request({"exit_threshold": 0.5}, plain)
    assert hooks.resolve_request({"loops": 3}, plain) == hooks.RequestLoops(3)
    assert hooks.salted(None, 4, 0.5, 2) == "loopagent-loops=4,exit=0.5,min=2"
    assert hooks.salted("user", 4, 0.5, 2) != hooks.salted("user", 4, 0.6, 2) != hooks.salted("user", 4)


def test_untested_vllm_versions_are_refused_unless_overridden(monkeypatch):
    hooks.check_version("0.32.0")
    hooks.check_version("0.32.1+cpu")
    monkeypatch.delenv(hooks.OVERRIDE_ENV, raising=False)
    for version in ("0.31.2", "0.33.0", "1.0.0"):
        with pytest.raises(hooks.UntestedVLLMError, match=rf"tested with vLLM 0\.32\.\* but vLLM {version} is "
                                                          rf"installed.*{hooks.OVERRIDE_ENV}=1"):
            hooks.check_version(version)
    monkeypatch.setenv(hooks.OVERRIDE_ENV, "1")
    with pytest.warns(RuntimeWarning, match="installing them anyway"):
        hooks.check_version("0.33.0")
    # the plugin entry point: an untested vLLM is refused when a looped model is built, not for every model
    import vllm

    monkeypatch.delenv(hooks.OVERRIDE_ENV)
    monkeypatch.setattr(vllm, "__version__", "0.31.0")
    monkeypatch.setattr(hooks, "_INSTALLED", False)
    monkeypatch.setattr(hooks, "_NOT_INSTALLED", None)
    hooks.install_or_defer()
    assert not hooks._INSTALLED
    with pytest.raises(hooks.UntestedVLLMError, match="vLLM 0.31.0 is installed"):
        hooks.require_installed()
    with pytest.raises(hooks.UntestedVLLMError):
        hooks.install()


def test_loop_counts_of_a_batch():
    import numpy as np

    rows = [hooks.RequestLoops(3), hooks.RequestLoops(4, 0.5, 1), hooks.RequestLoops(2)]
    batch = hooks.LoopBatch(["a", "b", "c"], rows, np.array([2, 3, 1]), 8, 2)
    kwargs = batch.kwargs("cpu")
    assert kwargs["loop_budgets"].tolist() == [3, 3, 4, 4, 4, 2, 4, 4]  # padding: the batch maximum
    assert kwargs["exit_thresholds"].tolist() == [2.0, 2.0, 0.5, 0.5, 0.5, 2.0, 2.0, 2.0]
    assert kwargs["loop_max"] == 4 and not kwargs["loop_uniform"]
    counts = batch.counts(torch.tensor([3, 3, 1, 4, 1, 2, 4, 4]))
    assert [counts[r][:3] for r in "abc"] == [[2, 6, None], [3, 6, [2, 0, 0, 1]], [1, 2, None]]
    total = hooks._add(hooks._add(None, counts["b"]), counts["b"])
    out = hooks._as_output(total)
    assert out == {"tokens": 6, "computed_loop_tokens": 12, "exit_histogram": [4, 0, 0, 2], "loops": 4,
                   "exit_threshold": 0.5, "min_loops": 1}
    stats = hooks.loop_counts(out)
    assert stats.exit_histogram == {1: 4, 4: 2} and stats.executed_mean == 2.0
    with pytest.raises(hooks.BudgetHookError, match="depths"):
        batch.counts(None)
    assert hooks.request_loop_stats(object()) is None  # a request the engine reported nothing for


def _asgi(middleware_app, body: dict | bytes, path: str = "/v1/chat/completions"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent, seen = [], {}

    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message):
        sent.append(message)

    async def run():
        await middleware_app({"type": "http", "method": "POST", "path": path,
                              "headers": [(b"content-length", str(len(raw)).encode())]},
                             receive, send)

    asyncio.run(run())
    return sent, seen


def test_middleware_moves_loops_into_extra_args_and_rejects_bad_ones():
    seen: dict = {}

    async def app(scope, receive, send):
        message = await receive()
        seen["body"] = json.loads(message["body"])
        seen["length"] = dict(scope["headers"])[b"content-length"]

    mw = LoopsMiddleware(app)
    _asgi(mw, {"model": "m", "messages": [], "loops": 3, "vllm_xargs": {"x": 1}})
    assert seen["body"]["vllm_xargs"] == {"x": 1, "loops": 3} and "loops" not in seen["body"]
    assert int(seen["length"]) == len(json.dumps(seen["body"]).encode())
    seen.clear()
    _asgi(mw, {"model": "m", "prompt": "hi"}, path="/v1/completions")
    assert seen["body"] == {"model": "m", "prompt": "hi"}
    for bad in (0, -2, "2", 1.5, True):
        seen.clear()
        sent, _ = _asgi(mw, {"model": "m", "messages": [], "loops": bad})
        assert not seen and sent[0]["status"] == 400
        assert "loops must be a positive integer" in json.loads(sent[1]["body"])["error"]["message"]
    seen.clear()
    _asgi(mw, {"model": "m", "messages": [], "max_loops": 4, "exit_threshold": 0.5, "min_loops": 2})
    assert seen["body"]["vllm_xargs"] == {"max_loops": 4, "exit_threshold": 0.5, "min_loops": 2}
    for body, param in (({"loops": 2, "max_loops": 3}, "max_loops"), ({"exit_threshold": 2}, "exit_threshold"),
                        ({"loops": 2, "min_loops": 3}, "min_loops"), ({"min_loops": "1"}, "min_loops")):
        seen.clear()
        sent, _ = _asgi(mw, {"model": "m", "messages": [], **body})
        assert not seen and sent[0]["status"] == 400 and json.loads(sent[1]["body"])["error"]["param"] == param


def test_middleware_adds_the_engine_loop_figures_to_usage():
    stats = {"tokens": 8, "computed_loop_tokens": 20, "exit_histogram": [0, 6, 0, 2], "loops": 4,
             "exit_threshold": 0.5, "min_loops": 2}
    reply = {"choices": [{"index": 0}], "usage": {"prompt_tokens": 5, "completion_tokens": 4},
             "kv_transfer_params": {hooks.STATS_KEY: stats}}

    def app_replying(payload, content_type=b"application/json", status=200):
        async def app(scope, receive, send):
            await receive()
            raw = json.dumps(payload).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", content_type), (b"content-length", str(len(raw)).encode())]})
            await send({"type": "http.response.body", "body": raw[:10], "more_body": True})
            await send({"type": "http.response.body", "body": raw[10:]})
        return app

    sent, _ = _asgi(LoopsMiddleware(app_replying(reply)), {"model": "m", "messages": [], "loops": 4})
    data = json.loads(sent[1]["body"])
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "loop_tokens": 20, "loops_executed_mean": 2.5,
                             "loops_requested": 4, "loop_exit_histogram": {"2": 6, "4": 2}, "loop_exit_threshold": 0.5,
                             "loop_min_loops": 2}
    assert data["kv_transfer_params"] is None  # only the plugin's entry was there
    assert int(dict(sent[0]["headers"])[b"content-length"]) == len(sent[1]["body"])
    # a KV connector's own params stay; a stream passes through untouched
    sent, _ = _asgi(LoopsMiddleware(app_replying({**reply, "kv_transfer_params": {"x": 1, hooks.STATS_KEY: stats}})),
                    {"model": "m", "messages": []})
    assert json.loads(sent[1]["body"])["kv_transfer_params"] == {"x": 1}
    sent, _ = _asgi(LoopsMiddleware(app_replying(reply, b"text/event-stream")), {"model": "m", "messages": []})
    assert len(sent) == 3 and hooks.STATS_KEY in (sent[1]["body"] + sent[2]["body"]).decode()


def test_serve_command_line(ckpts, tmp_path):
    argv = serve_argv(ckpts["base"], "127.0.0.1", 9000, ["--tensor-parallel-size", "2"])
    assert argv[:3] == ["vllm", "serve", str(ckpts["base"])]
    assert "--enforce-eager" in argv and "loopagent.backends.vllm.serve.LoopsMiddleware" in argv
    assert argv[-2:] == ["--tensor-parallel-size", "2"] and "--chat-template" not in argv  # the tokenizer has one


def test_served_replicas_are_balanced_by_the_router(server):
    other = type(server)(model_id="tiny-looped")
    try:
        server.responder = lambda body: "a"
        other.responder = lambda body: "b"
        backend = model(f"served:{server.base_url},{other.base_url}", loops=3)
        assert backend.name == f"served:{server.base_url},{other.base_url}"
        backend.check()
        outs = backend.batch([user(f"q{i}") for i in range(24)])
        assert {o.text for o in outs} == {"a", "b"}
        assert len(server.completions()) + len(other.completions()) == 24
        assert all(r["loops"] == 3 for r in server.completions() + other.completions())
        assert outs[0].loops.requested == 3
    finally:
        other.close()


# -- the engine --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(reversed(CONFIGS)))  # "base" last: the tests after it share its engine
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_greedy_tokens_match_the_transformers_reference(engines, ckpts, name):
    from vllm import SamplingParams

    backend = engines(name)
    tok = backend.tokenizer
    prompts = ["hello world", "the quick brown fox jumps", "a"]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    want = {}
    for loops in (1, 2, 4):
        params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, extra_args={"loops": loops})
        outs = backend.generate(ids, params)
        for i, (prompt_ids, out) in enumerate(zip(ids, outs)):
            want[i, loops] = _reference_tokens(ckpts[name], prompt_ids, loops, 10)
            assert list(out.outputs[0].token_ids) == want[i, loops], (name, loops)
    # one batch, three budgets: the deeper loops run on the still-looping rows only
    for budgets in ((1, 2, 4), (4, 1, 2)):
        params = [SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, extra_args={"loops": n})
                  for n in budgets]
        outs = backend.generate(ids, params)
        assert ([list(o.outputs[0].token_ids) for o in outs]
                == [want[i, n] for i, n in enumerate(budgets)]), (name, budgets)


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_backend_matches_the_hf_backend(engines, ckpts):
    backend = engines("base")
    hf = model(f"hf:{ckpts['base']}", max_new_tokens=8)
    prompts = [user("hello"), user("x=1;y=x;?y"), user("what is this")]
    for loops in (1, 3):
        got, want = backend.batch(prompts, loops=loops), hf.batch(prompts, loops=loops)
        for g, w in zip(got, want):
            assert ((g.text, g.usage.prompt_tokens, g.usage.completion_tokens)
                    == (w.text, w.usage.prompt_tokens, w.usage.completion_tokens))
            assert g.loops.requested == loops and g.loops.executed_mean == loops
            # counted by the engine: every token fed (prompt not served from the prefix cache,
            # generated tokens but the last) ran `loops` loops
            fed = g.usage.prompt_tokens + g.usage.completion_tokens
            assert g.loops.counted and g.usage.loop_tokens == g.loops.computed_loop_tokens
            assert g.usage.loop_tokens % loops == 0 and 0 < g.usage.loop_tokens <= loops * fed


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_a_request_finished_on_a_stop_string_is_counted(engines):
    """The front end ends such a request itself (and aborts it in the engine): its output still
    carries what the engine computed up to the step that wrote the stop string."""
    from vllm import SamplingParams

    backend = engines("base")
    ids = list(b"stop me")  # byte tokens; shorter than a KV block, so nothing comes from the prefix cache
    free = backend.generate([ids], SamplingParams(max_tokens=8, temperature=0, extra_args={"loops": 3}))[0]
    text = free.outputs[0].text
    assert len(free.outputs[0].token_ids) == 8
    # a stop string the model writes past its start: a character not seen earlier in its text
    stop = next(c for i, c in enumerate(text) if i and c != "\ufffd" and c not in text[:i])
    params = SamplingParams(max_tokens=8, temperature=0, stop=[stop], extra_args={"loops": 3})
    out = backend.generate([ids], params)[0]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop
    counts = hooks.request_loop_stats(out)
    assert counts is not None and counts.loops == 3
    written = len(out.outputs[0].token_ids)
    assert written < 8 and out.outputs[0].text == text[: text.index(stop)]
    # the prompt, then every generated token fed back but the last: each ran 3 loops
    assert counts.tokens == len(ids) + written - 1
    assert counts.computed_loop_tokens == 3 * counts.tokens


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_mixed_budget_batch_gives_each_request_its_own_budget(engines):
    backend = engines("base")
    prompts = [user(f"request number {i} " + "pad " * i) for i in range(8)]
    budgets = [1, 2, 3, 4, 5, 6, 7, 8]
    mixed = backend.batch(prompts, loops=budgets)
    alone = [backend.complete(p, loops=n) for p, n in zip(prompts, budgets)]
    assert [m.text for m in mixed] == [a.text for a in alone]
    assert [m.loops.requested for m in mixed] == budgets
    # the budget matters: the same prompt at every budget does not give one answer
    same = backend.batch([prompts[0]] * 8, loops=budgets)
    assert len({s.text for s in same}) > 1
    assert [s.text for s in same] == [backend.complete(prompts[0], loops=n).text for n in budgets]


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_concurrent_calls_join_one_running_batch(engines):
    backend = engines("base")
    prompts = [user(f"call {i}") for i in range(12)]
    budgets = [1 + i % 8 for i in range(12)]

    async def calls():
        return await asyncio.gather(*(backend.acomplete(p, loops=n) for p, n in zip(prompts, budgets)))

    together = asyncio.run(calls())
    assert [t.text for t in together] == [b.text for b in backend.batch(prompts, loops=budgets)]


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_prefix_cache_is_kept_apart_per_budget(engines, ckpts):
    from vllm import SamplingParams

    backend = engines("base")
    tok = backend.tokenizer
    prefix = tok("a long shared prefix " * 12, add_special_tokens=False)["input_ids"]  # several 16-token blocks

    def run(loops):
        params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, extra_args={"loops": loops})
        return backend.generate([prefix], params)[0]

    shallow, deep, deep_again = run(2), run(8), run(8)
    assert deep.num_cached_tokens == 0  # not served from the 2-loop request's blocks
    assert deep_again.num_cached_tokens > 0  # the same budget shares them
    want = _reference_tokens(ckpts["base"], prefix, 8, 6)
    assert list(deep.outputs[0].token_ids) == want and list(deep_again.outputs[0].token_ids) == want
    assert list(shallow.outputs[0].token_ids) == _reference_tokens(ckpts["base"], prefix, 2, 6)


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_bad_budgets_are_rejected_and_others_are_unaffected(engines):
    from vllm import SamplingParams

    backend = engines("base")
    for bad in (0, -1, 9, 2.5, True, "4"):
        with pytest.raises(InvalidLoopsError):
            backend.complete(user("hi"), loops=bad)
    # at the engine: one bad request among good ones in flight
    tok = backend.tokenizer
    ids = tok("hello", add_special_tokens=False)["input_ids"]
    engine = backend._loaded().loop
    good = [engine.submit(ids, SamplingParams(max_tokens=4, temperature=0, extra_args={"loops": n})) for n in (1, 8)]
    bad = engine.submit(ids, SamplingParams(max_tokens=4, temperature=0, extra_args={"loops": 9}))
    with pytest.raises(ValueError, match="exceeds this model's max_loops=8"):
        bad.result(timeout=60)
    assert all(len(f.result(timeout=60).outputs[0].token_ids) == 4 for f in good)
    with pytest.raises(ValueError, match="positive integer"):
        backend.generate([ids], SamplingParams(max_tokens=2, extra_args={"loops": 0}))


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_gate_options_need_a_gated_checkpoint_and_a_forward_needs_budgets(engines):
    backend = engines("base")  # no exit gate
    with pytest.raises(InvalidLoopsError, match="no exit gate"):
        backend.complete(user("hi"), exit_threshold=0.5)
    ids = backend.tokenizer("hello", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match="no exit gate"):
        backend.generate([ids], _gate_params(2, 0.5, n=2))
    # the model called outside the runner hook and outside a dummy run: an error, not max_loops
    runner = backend.llm.llm_engine.model_executor.driver_worker.worker.model_runner
    assert not hooks.in_dummy_run()
    with pytest.raises(hooks.BudgetHookError, match="hook .* did not apply"):
        runner.get_model()(torch.tensor(ids), torch.arange(len(ids)))
    assert len(backend.complete(user("still serving"), loops=2).text) > 0


# -- the exit gate -----------------------------------------------------------------------------------


def _gate_params(loops: int, threshold: float | None = None, min_loops: int | None = None, n: int = 10):
    from vllm import SamplingParams

    extra = {"loops": loops}
    extra.update({k: v for k, v in (("exit_threshold", threshold), ("min_loops", min_loops)) if v is not None})
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, extra_args=extra)


def _gated_reference_tokens(path: Path, prompt_ids: list[int], loops: int, threshold: float, min_loops: int,
                            n: int) -> list[int]:
    ref = LoopedForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt_ids]), loops=loops, exit_threshold=threshold, min_loops=min_loops,
                           max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


GATE_PROMPTS = ["hello world", "the quick brown fox jumps", "a"]


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_gate_edge_thresholds_equal_fixed_budgets(engines, ckpts):
    """Threshold 0 stops every token at min_loops, threshold 1 at its budget (the gate's
    probabilities stay below 1 here): the tokens of those fixed budgets, counted as such."""
    backend = engines("gated")
    tok = backend.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in GATE_PROMPTS]
    for threshold, min_loops, depth in ((0.0, 1, 1), (0.0, 3, 3), (1.0, 1, 6)):
        outs = backend.generate(ids, _gate_params(6, threshold, min_loops))
        for prompt_ids, out in zip(ids, outs):
            assert list(out.outputs[0].token_ids) == _reference_tokens(ckpts["gated"], prompt_ids, depth, 10)
            stats = hooks.request_loop_stats(out)
            fed = len(prompt_ids) + 9
            assert (stats.tokens, stats.computed_loop_tokens, stats.exit_histogram) == (fed, fed * depth, {depth: fed})


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_gate_matches_the_transformers_reference(engines, ckpts):
    """Mid thresholds: tokens exit at varied depths; vLLM's tokens equal the reference's,
    token for token (same gate semantics, same KV rule for stopped tokens). Needs the
    reference with ``min_loops`` and the "reuse last" KV rule (backends/looped, wt-hf)."""
    backend = engines("gated")
    tok = backend.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in GATE_PROMPTS]
    depths: set[int] = set()
    for threshold, min_loops in ((0.3, 2), (0.6, 1), (0.9, 2)):
        outs = backend.generate(ids, _gate_params(6, threshold, min_loops))
        for prompt_ids, out in zip(ids, outs):
            want = _gated_reference_tokens(ckpts["gated"], prompt_ids, 6, threshold, min_loops, 10)
            assert list(out.outputs[0].token_ids) == want, (threshold, min_loops)
            depths |= set(hooks.request_loop_stats(out).exit_histogram)
    assert len(depths) >= 4  # the gate really stops tokens at varied depths


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_gated_and_plain_requests_share_a_batch(engines):
    """Each request of a batch mixing gate options and budgets gets what it gets alone;
    the counts are what ran: budget x tokens without the gate, the depths' sum with it."""
    backend = engines("gated")
    tok = backend.tokenizer
    prompts = [tok(f"request {i} " + "pad " * (3 * i), add_special_tokens=False)["input_ids"] for i in range(5)]
    params = [_gate_params(6, 0.6), _gate_params(3), _gate_params(8, 0.9, 2), _gate_params(8), _gate_params(5, 0.3)]
    together = backend.generate(prompts, params)
    alone = [backend.generate([p], q)[0] for p, q in zip(prompts, params)]
    assert [list(o.outputs[0].token_ids) for o in together] == [list(o.outputs[0].token_ids) for o in alone]
    for prompt_ids, q, out in zip(prompts, params, together):
        stats, loops = hooks.request_loop_stats(out), q.extra_args["loops"]
        assert stats.tokens == len(prompt_ids) + 9 and stats.loops == loops
        if "exit_threshold" in q.extra_args:
            assert sum(stats.exit_histogram.values()) == stats.tokens
            assert stats.computed_loop_tokens == sum(d * n for d, n in stats.exit_histogram.items())
            assert stats.computed_loop_tokens < loops * stats.tokens  # the gate saved loops
        else:
            assert stats.exit_histogram is None and stats.computed_loop_tokens == loops * stats.tokens


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed (kernels extra)")
def test_kernels_path_matches_the_reference_and_counts(engines, ckpts, monkeypatch):
    """The vLLM model class through the Triton kernels (interpreted on CPU here; on CUDA they
    are the default): the reference's tokens for a batch of mixed budgets and gate options,
    and the same counted depths as the plain-torch path."""
    from loopagent.backends import kernels

    calls: dict[str, int] = {}
    for op in ("halt_step", "compact", "add_rms_norm", "inject_rms_norm", "silu_mul"):
        real = getattr(kernels, op)

        def counted(*args, _op=op, _real=real, **kwargs):
            calls[_op] = calls.get(_op, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(kernels, op, counted)
    backend = engines("gated")
    tok = backend.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in GATE_PROMPTS]
    params = [_gate_params(6, 0.6, 1, n=6), _gate_params(3, n=6), _gate_params(5, 0.3, 2, n=6)]
    plain = backend.generate(ids, params)
    assert calls == {}
    with kernels.mode("on"):
        fused = backend.generate(ids, params)
    assert set(calls) == {"halt_step", "compact", "add_rms_norm", "inject_rms_norm", "silu_mul"}
    assert [list(o.outputs[0].token_ids) for o in fused] == [list(o.outputs[0].token_ids) for o in plain]
    assert list(fused[0].outputs[0].token_ids) == _gated_reference_tokens(ckpts["gated"], ids[0], 6, 0.6, 1, 6)
    for a, b in zip(fused, plain):
        fa, fb = hooks.request_loop_stats(a), hooks.request_loop_stats(b)
        assert (fa.computed_loop_tokens, fa.exit_histogram) == (fb.computed_loop_tokens, fb.exit_histogram)


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_attention_runs_for_the_still_looping_requests_only(engines, monkeypatch):
    """CPU attention: once a request has no looping token, the deeper loops attend for the other
    requests only (sliced metadata), also with requests partly stopped by the gate; tokens are
    those of each request alone."""
    from loopagent.backends.vllm import model as vmodel

    calls = {"exact": 0, "partial": 0, "attended": [], "batch": []}
    attend = vmodel._Subset.attend

    def spy(self, attn, q, k, v):
        calls["exact" if self.back is None else "partial"] += 1
        calls["attended"].append(self.tokens.numel())
        calls["batch"].append(k.shape[0])
        return attend(self, attn, q, k, v)

    monkeypatch.setattr(vmodel._Subset, "attend", spy)
    backend = engines("gated")
    tok = backend.tokenizer
    prompts = [tok(f"request {i} " + "pad " * (3 * i), add_special_tokens=False)["input_ids"] for i in range(5)]
    for params in ([_gate_params(n) for n in (1, 3, 8, 2, 5)],
                   [_gate_params(6, 0.6), _gate_params(3), _gate_params(8, 0.9, 2), _gate_params(2),
                    _gate_params(5, 0.3)]):
        together = backend.generate(prompts, params)
        alone = [backend.generate([p], q)[0] for p, q in zip(prompts, params)]
        assert [list(o.outputs[0].token_ids) for o in together] == [list(o.outputs[0].token_ids) for o in alone]
    assert calls["exact"] > 0 and calls["partial"] > 0
    assert all(a < b for a, b in zip(calls["attended"], calls["batch"]))


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
def test_backend_reports_counted_loops_and_rejects_bad_gate_options(engines, ckpts):
    from vllm import SamplingParams

    backend = engines("gated")
    prompts = [user("hello"), user("x=1;y=x;?y")]
    fixed = backend.batch(prompts, loops=6)
    gated = backend.batch(prompts, loops=6, exit_threshold=0.6, min_loops=2)
    for f, g in zip(fixed, gated):
        assert f.loops.counted and f.loops.executed_mean == 6 and f.loops.exit_histogram is None
        stats = g.loops
        assert stats.counted and (stats.requested, stats.exit_threshold, stats.min_loops) == (6, 0.6, 2)
        assert g.usage.loop_tokens == stats.computed_loop_tokens == sum(d * n for d, n in stats.exit_histogram.items())
        assert min(stats.exit_histogram) >= 2 and 2 <= stats.executed_mean < 6
        assert g.usage.loop_tokens < f.usage.loop_tokens
    # min_loops alone: the checkpoint's exit_threshold (0.6) applies
    alone = backend.batch(prompts, loops=6, min_loops=2)
    assert [a.text for a in alone] == [g.text for g in gated] and alone[0].loops.exit_threshold == 0.6
    for kwargs, words in (({"exit_threshold": 1.5}, "exit_threshold"), ({"min_loops": 7}, "min_loops=7")):
        with pytest.raises(InvalidLoopsError, match=words):
            backend.complete(user("hi"), loops=6, **kwargs)
    # at the engine: bad gate options fail alone, the requests in flight go on
    ids = backend.tokenizer("hello", add_special_tokens=False)["input_ids"]
    engine = backend._loaded().loop
    good = [engine.submit(ids, _gate_params(n, 0.5, n=4)) for n in (2, 8)]
    bad = [engine.submit(ids, _gate_params(4, 0.5, 5, n=4)), engine.submit(ids, _gate_params(4, -0.1, n=4)),
           engine.submit(ids, SamplingParams(max_tokens=4, extra_args={"loops": 4, "max_loops": 3}))]
    for future, words in zip(bad, ("min_loops=5 exceeds", "exit_threshold must be", "differ")):
        with pytest.raises(ValueError, match=words):
            future.result(timeout=60)
    assert all(len(f.result(timeout=60).outputs[0].token_ids) == 4 for f in good)


# -- the server --------------------------------------------------------------------------------------


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310 - 127.0.0.1
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(ckpts, tmp_path_factory):
    """`loopagent serve` on 127.0.0.1 (a subprocess), stopped after the module."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cli = Path(sys.executable).with_name("loopagent")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "loopagent.cli"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*command, "serve", str(ckpts["base"]), "--port", str(port), "--dtype", "float32",
                                 "--max-model-len", "1024"], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 150
        while True:
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2):  # noqa: S310 - 127.0.0.1
                    break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"loopagent serve did not come up:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
@pytest.mark.timeout(300)
def test_serve_end_to_end_with_an_rlm(served, engines, tmp_path):
    local = engines("base")
    # budgets reach the served model: the same text as the in-process engine (the server's
    # streaming detokenizer holds back a trailing incomplete UTF-8 byte sequence)
    child = model(f"served:{served}", loops=2, max_tokens=8, temperature=0)

    def same(a: str, b: str) -> bool:
        return a.rstrip("\ufffd") == b.rstrip("\ufffd")

    for loops in (1, 4):
        got, want = child.complete(user("hello"), loops=loops), local.complete(user("hello"), loops=loops)
        assert same(got.text, want.text)
        # counted by the served engine (its own process) and carried in the response's usage
        assert got.loops.counted and got.loops.executed_mean == loops and got.usage.loop_tokens % loops == 0
        assert 0 < got.usage.loop_tokens <= loops * (got.usage.prompt_tokens + got.usage.completion_tokens)
    status, body = _post(f"{served}/chat/completions",
                         {"model": str(local.path), "messages": user("hi"), "max_tokens": 3, "max_loops": 3})
    assert status == 200 and body["usage"]["loops_requested"] == 3 and body["usage"]["loops_executed_mean"] == 3.0
    assert body["usage"]["loop_tokens"] > 0 and body.get("kv_transfer_params") is None
    # finished by the front end on a stop string: the figures still reach the response
    _, free = _post(f"{served}/completions", {"model": str(local.path), "prompt": "stop me", "max_tokens": 8,
                                             "loops": 2, "temperature": 0})
    text = free["choices"][0]["text"]
    stop = next(c for i, c in enumerate(text) if i and c != "\ufffd" and c not in text[:i])
    status, stopped = _post(f"{served}/completions", {"model": str(local.path), "prompt": "stop me", "max_tokens": 8,
                                                      "loops": 2, "temperature": 0, "stop": [stop]})
    assert status == 200 and stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["text"] == text[: text.index(stop)]
    # counted: the 7 prompt tokens and the fed-back ones up to the stop, 2 loops each (not the budget's estimate)
    assert stopped["usage"]["loops_executed_mean"] == 2.0 and stopped["usage"]["loop_tokens"] % 2 == 0
    assert 2 * 7 < stopped["usage"]["loop_tokens"] <= free["usage"]["loop_tokens"]
    # streamed: the final usage chunk carries them
    request = urllib.request.Request(f"{served}/chat/completions", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": str(local.path), "messages": user("hi"),
                                                      "max_tokens": 3, "loops": 3, "stream": True,
                                                      "stream_options": {"include_usage": True}}).encode())
    with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310 - 127.0.0.1
        events = [line[len("data: "):] for line in resp.read().decode().splitlines() if line.startswith("data: {")]
    final = json.loads(events[-1])
    # (the prompt may now come partly from the prefix cache: fewer tokens computed)
    assert final["choices"] == [] and 0 < final["usage"]["loop_tokens"] <= body["usage"]["loop_tokens"]
    assert final["usage"]["loops_executed_mean"] == 3.0 and final["usage"]["loop_tokens"] % 3 == 0
    # a streamed /v1/completions too
    request = urllib.request.Request(f"{served}/completions", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": str(local.path), "prompt": "hello there",
                                                      "max_tokens": 3, "loops": 2, "stream": True,
                                                      "stream_options": {"include_usage": True}}).encode())
    with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310 - 127.0.0.1
        events = [line[len("data: "):] for line in resp.read().decode().splitlines() if line.startswith("data: {")]
    final = json.loads(events[-1])
    assert final["choices"] == [] and final["usage"]["loops_requested"] == 2
    assert final["usage"]["loops_executed_mean"] == 2.0 and final["usage"]["loop_tokens"] % 2 == 0
    assert 0 < final["usage"]["loop_tokens"] <= 2 * (final["usage"]["prompt_tokens"] + 3)
    # bad budgets: HTTP 400 with a clear message; the server keeps serving
    for bad, words in ((0, "positive integer"), (99, "max_loops=8"), ("2", "positive integer")):
        status, body = _post(f"{served}/chat/completions",
                             {"model": str(local.path), "messages": user("hi"), "max_tokens": 2, "loops": bad})
        assert status == 400 and words in body["error"]["message"]
    status, body = _post(f"{served}/chat/completions", {"model": str(local.path), "messages": user("hi"),
                                                        "max_tokens": 2, "loops": 2, "exit_threshold": 0.5})
    assert status == 400 and "no exit gate" in body["error"]["message"]
    # an RLM: scripted root, looped child behind the server
    repl = lambda code: f"```repl\n{textwrap.dedent(code).strip()}\n```"  # noqa: E731
    root = ScriptedBackend([
        repl("parts = llm_batch(['part ' + c for c in context.split()], loops=1)\nprint(len(parts))"),
        repl("FINAL(llm_query('combine', loops=4))"),
    ])
    result = RLM(root, child, log_dir=tmp_path).run("what?", context="alpha beta gamma")
    assert result.finished and result.reason == "final"
    assert same(result.answer, local.complete(user("combine"), loops=4).text)
    calls = [e for e in read_trajectory(result.trajectory) if e.type == "sub_call"]
    assert [c.loops_chosen for c in calls] == [1, 1, 1, 4]
    assert result.usage.by_depth[1].calls == 4 and result.usage.total.loop_tokens > 0
    # the same server listed twice: the Router spreads calls, answers unchanged
    pair = model(f"served:{served},{served.replace('127.0.0.1', 'localhost')}", loops=4, max_tokens=8, temperature=0)
    assert {pair.complete(user("combine")).text for _ in range(4)} == {result.answer}


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
@pytest.mark.timeout(300)
def test_serving_benchmark_smoke(tmp_path):
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "serving.json"
    proc = subprocess.run([sys.executable, str(root / "bench" / "serving.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=280, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["same_texts"] is True
    for key in ("hf_64", "vllm_64", "hf_mixed", "vllm_mixed", "hf_uniform8", "vllm_uniform8"):
        assert data["results"][key]["tokens_per_s"] > 0 and data["results"][key]["loop_tokens_per_s"] > 0
    assert data["speedup"] > 0 and data["mixed_over_uniform"] > 0
    assert "serving benchmark" in proc.stdout


_TP_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    path, prompts = sys.argv[1], json.loads(sys.argv[2])
    llm = LLM(path, dtype="float32", enforce_eager=True, max_model_len=512, tensor_parallel_size=2,
              distributed_executor_backend="mp")
    budgets = [1, 3]
    params = [SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, extra_args={"loops": n}) for n in budgets]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]), flush=True)
    print("COUNTS " + json.dumps([o.kv_transfer_params["loopagent_loops"] for o in outs]), flush=True)
"""


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (vllm-cpu extra)")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tensor parallelism on CPU needs 2 cores")
@pytest.mark.timeout(300)
def test_tensor_parallel_matches_the_reference(ckpts, tmp_path):
    """Two CPU workers (vLLM's gloo tensor parallelism), one core each; the single KV head
    is replicated, the two query heads split."""
    tok = byte_tokenizer()
    prompts = [tok("hello world")["input_ids"], tok("the quick brown fox")["input_ids"]]
    script = tmp_path / "tp.py"
    script.write_text(_TP_SCRIPT)
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    proc = subprocess.run([sys.executable, str(script), str(ckpts["base"]), json.dumps(prompts)], capture_output=True,
                          text=True, timeout=280, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    assert got == [_reference_tokens(ckpts["base"], p, n, 8) for p, n in zip(prompts, (1, 3))]
    # the counts cross from the workers (multiprocess executor) to the engine's outputs
    counts = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("COUNTS "))[len("COUNTS "):])
    assert [c["computed_loop_tokens"] for c in counts] == [(len(p) + 7) * n for p, n in zip(prompts, (1, 3))]
