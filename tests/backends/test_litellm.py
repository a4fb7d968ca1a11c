"""LiteLLMBackend against a local OpenAI-compatible server (no keys, no internet).

The ``server`` fixture (conftest.py, openai_server.py) runs a small
OpenAI-compatible server on 127.0.0.1 that records request bodies and replies
with scripted texts.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from loopagent import RLM, model
from loopagent.backends.litellm import LiteLLMBackend
from loopagent.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    InvalidLoopsError,
    MissingAPIKeyError,
)
from loopagent.trajectory import read_trajectory

LATENCY_S = 0.05


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Fail any connection or DNS look-up that is not to 127.0.0.1; returns the attempts."""
    attempts: list[Any] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        if not (isinstance(address, tuple) and address[0] in ("127.0.0.1", "localhost")):
            attempts.append(address)
            raise OSError(f"test: no network ({address!r})")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost"):
            attempts.append(host)
            raise OSError(f"test: no network ({host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


# -- served models -----------------------------------------------------------------------


def test_served_resolves_model_name_from_models_list(server, no_network) -> None:
    backend = model(f"served:{server.base_url}")
    assert isinstance(backend, LiteLLMBackend)
    assert backend.name == f"served:{server.base_url}"
    backend.check()
    assert server.model_list_requests == 1
    assert backend.model == "openai/tiny-looped"

    server.queue("four")
    completion = backend.complete(user("two plus two?"))
    assert completion.text == "four"
    assert server.completions()[-1]["model"] == "tiny-looped"
    assert server.model_list_requests == 1  # resolved once
    assert no_network == []


def test_served_resolves_lazily_on_first_call(server) -> None:
    backend = model(f"served:{server.base_url}/")  # trailing slash tolerated
    server.queue("hi")
    assert backend.complete(user("hello")).text == "hi"
    assert server.model_list_requests == 1
    assert server.completions()[0]["model"] == "tiny-looped"


def test_served_model_named_in_spec_skips_the_list(server) -> None:
    backend = model(f"served:{server.base_url}#other-model")
    server.queue("hi")
    backend.complete(user("hello"))
    assert server.model_list_requests == 0
    assert server.completions()[0]["model"] == "other-model"


def test_served_complete_returns_text_usage_loops_and_wall_time(server) -> None:
    backend = model(f"served:{server.base_url}", loops=4)
    assert backend.looped and backend.default_loops == 4
    server.latency_s = LATENCY_S
    server.queue("the answer is forty two")

    completion = backend.complete(user("what is six times seven"), max_tokens=16)

    body = server.completions()[-1]
    assert body["loops"] == 4
    assert body["max_tokens"] == 16
    assert body["messages"] == user("what is six times seven")
    assert completion.text == "the answer is forty two"
    assert completion.model == backend.name
    assert completion.finish_reason == "stop"
    # Token counts are the server's (whitespace words here), not local estimates.
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 5
    assert completion.usage.tokens_estimated is False
    assert completion.usage.usd is None  # a served model has no price
    assert completion.loops is not None
    assert completion.loops.requested == 4
    assert completion.loops.executed_mean == pytest.approx(3.0)  # the server reports 0.75 x loops
    assert completion.usage.loop_tokens == 30  # (5 + 5) tokens x 3.0 loops executed
    assert LATENCY_S <= completion.usage.wall_s < 5


def test_per_call_loops_override_the_default(server) -> None:
    backend = model(f"served:{server.base_url}", loops=4)
    backend.complete(user("a"), loops=2)
    backend.complete(user("b"))
    backend.complete(user("c"), loops=7)
    assert [b["loops"] for b in server.completions()] == [2, 4, 7]


def test_counted_loop_figures_of_the_server_are_used_and_gate_options_sent(server) -> None:
    backend = model(f"served:{server.base_url}", loops=6)
    server.loop_usage = lambda body, tokens: {"loop_tokens": 17, "loops_executed_mean": 2.125, "loops_requested": 6,
                                              "loop_exit_histogram": {"2": 7, "3": 1}, "loop_exit_threshold": 0.5,
                                              "loop_min_loops": 2}
    server.queue("one two three")
    completion = backend.complete(user("a b c d e"), exit_threshold=0.5, min_loops=2)
    body = server.completions()[-1]
    assert (body["loops"], body["exit_threshold"], body["min_loops"]) == (6, 0.5, 2)
    stats = completion.loops
    assert stats is not None and stats.counted and stats.computed_loop_tokens == 17
    assert completion.usage.loop_tokens == 17  # the server's count, not tokens x loops
    assert stats.executed_mean == 2.125 and stats.exit_histogram == {2: 7, 3: 1}
    assert (stats.requested, stats.exit_threshold, stats.min_loops) == (6, 0.5, 2)
    # not counted by the server: the estimate, flagged as such
    server.loop_usage = None
    server.executed_mean = lambda loops: None
    server.queue("one two")
    estimate = backend.complete(user("x y z"), loops=3)
    assert not estimate.loops.counted and estimate.loops.computed_loop_tokens is None
    assert estimate.usage.loop_tokens == (3 + 2) * 3 and "exit_threshold" not in server.completions()[-1]


def test_bad_gate_options_are_rejected_before_the_request(server) -> None:
    backend = model(f"served:{server.base_url}", loops=4)
    for kwargs, words in (({"exit_threshold": 1.5}, "exit_threshold"), ({"min_loops": 5}, "min_loops=5"),
                          ({"min_loops": 0}, "min_loops")):
        with pytest.raises(InvalidLoopsError, match=words):
            backend.complete(user("hi"), **kwargs)
    with pytest.raises(InvalidLoopsError, match="looped served model"):
        model(f"served:{server.base_url}").complete(user("hi"), exit_threshold=0.5)
    assert server.completions() == []


def test_executed_loops_default_to_requested_when_server_does_not_report(server) -> None:
    backend = model(f"served:{server.base_url}", loops=3)
    server.executed_mean = lambda loops: None
    server.queue("one two")
    completion = backend.complete(user("x y z"))
    assert completion.loops is not None
    assert completion.loops.requested == 3
    assert completion.loops.executed_mean == 3.0
    assert completion.usage.loop_tokens == (3 + 2) * 3


def test_non_looped_served_sends_no_loops_and_rejects_a_budget(server) -> None:
    backend = model(f"served:{server.base_url}")
    assert not backend.looped
    completion = backend.complete(user("hi"), max_tokens=5)
    assert completion.loops is None
    assert completion.usage.loop_tokens is None
    body = server.completions()[-1]
    assert "loops" not in body
    assert body["max_tokens"] == 5

    with pytest.raises(InvalidLoopsError, match="not a looped model"):
        backend.complete(user("hi"), loops=3)
    assert len(server.completions()) == 1  # nothing was sent


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_looped_served_rejects_bad_budgets_before_sending(server, bad) -> None:
    backend = model(f"served:{server.base_url}", loops=4)
    with pytest.raises(InvalidLoopsError):
        backend.complete(user("hi"), loops=bad)
    assert server.completions() == []


def test_max_loops_is_enforced(server) -> None:
    backend = model(f"served:{server.base_url}", loops=2, max_loops=4)
    with pytest.raises(InvalidLoopsError, match="exceeds the maximum of 4"):
        backend.complete(user("hi"), loops=5)
    backend.complete(user("hi"), loops=4)
    assert server.completions()[-1]["loops"] == 4


def test_extra_completion_kwargs_reach_the_server(server) -> None:
    backend = model(f"served:{server.base_url}", loops=4, temperature=0.0)
    backend.complete(user("hi"), extra_body={"exit_threshold": 0.9})
    body = server.completions()[-1]
    assert body["temperature"] == 0.0
    assert body["exit_threshold"] == 0.9
    assert body["loops"] == 4  # the loop budget merges into a caller's extra_body


def test_per_call_max_tokens_and_temperature_reach_the_server(server) -> None:
    backend = model(f"served:{server.base_url}", temperature=0.0)
    assert backend.default_temperature == 0.0
    backend.complete(user("hi"), max_tokens=12, temperature=0.7)
    body = server.completions()[-1]
    assert body["max_tokens"] == 12 and body["temperature"] == 0.7
    sent = len(server.completions())
    for bad in ({"temperature": -1}, {"temperature": "hot"}, {"max_tokens": 0}):
        with pytest.raises(ConfigError):
            backend.complete(user("hi"), **bad)
    assert len(server.completions()) == sent  # refused before the request


def test_context_window_of_a_served_model_comes_from_its_model_list(server) -> None:
    server.max_model_len = 4096
    backend = model(f"served:{server.base_url}")
    backend.check()
    assert backend.context_window == 4096
    given = model(f"served:{server.base_url}", context_window=1000)
    given.check()
    assert given.context_window == 1000  # what the user says wins
    server.max_model_len = None
    unlisted = model(f"served:{server.base_url}")
    unlisted.check()
    assert unlisted.context_window is None  # unknown: sub-calls to it are not guarded


def test_context_window_of_an_api_model_comes_from_litellm_offline(no_network) -> None:
    assert model("litellm:openai/gpt-4o-mini").context_window == 128_000
    assert model("litellm:openai/no-such-model-anywhere").context_window is None
    assert model("litellm:openai/gpt-4o-mini", context_window=5000).context_window == 5000
    assert model("litellm:openai/gpt-4o-mini").default_temperature is None  # the provider's default: sampling
    assert no_network == []


# -- batches -----------------------------------------------------------------------------


def _echo(body: dict[str, Any]) -> str:
    return "echo " + body["messages"][-1]["content"]


def test_batch_runs_concurrently_and_keeps_order(server) -> None:
    backend = model(f"served:{server.base_url}", num_retries=0)
    backend.complete(user("warm up"))  # litellm's first call sets up clients; not what is timed
    server.responder = _echo
    # Later prompts answer sooner, so replies come back out of order.
    server.latency_s = lambda body: LATENCY_S * (1 + 0.5 * (int(body["messages"][-1]["content"][1:]) < 8))
    conversations = [user(f"q{i}") for i in range(16)]

    completions = backend.batch(conversations)

    assert [c.text for c in completions] == [f"echo q{i}" for i in range(16)]
    # Concurrency is read off the server (requests in flight at once), not off a wall clock,
    # which a loaded CI machine stretches.
    assert server.max_in_flight >= 8
    assert all(c.usage.wall_s >= LATENCY_S for c in completions)


def test_abatch_sends_per_conversation_loops_and_keeps_order(server) -> None:
    backend = model(f"served:{server.base_url}", loops=4, num_retries=0)
    backend.complete(user("warm up"))
    server.responder = _echo
    server.latency_s = LATENCY_S
    conversations = [user(f"q{i}") for i in range(16)]
    budgets = [1 + i % 5 for i in range(16)]

    async def main() -> list[Any]:
        return await backend.abatch(conversations, loops=budgets, max_tokens=8)

    completions = asyncio.run(main())

    assert server.max_in_flight >= 8  # concurrent, counted by the server (no wall-clock bound)
    assert [c.text for c in completions] == [f"echo q{i}" for i in range(16)]
    assert [c.loops.requested for c in completions] == budgets
    sent = {b["messages"][-1]["content"]: b for b in server.completions()[1:]}
    assert {k: b["loops"] for k, b in sent.items()} == {f"q{i}": budgets[i] for i in range(16)}
    assert all(b["max_tokens"] == 8 for b in sent.values())


def test_batch_with_a_concurrency_bound(server) -> None:
    backend = model(f"served:{server.base_url}", num_retries=0)
    backend.complete(user("warm up"))
    server.latency_s = 0.02
    backend.batch([user(f"q{i}") for i in range(8)], concurrency=2)
    assert server.max_in_flight == 2


# -- errors ------------------------------------------------------------------------------


def test_unreachable_server_check_names_the_url(free_port) -> None:
    url = f"http://127.0.0.1:{free_port}/v1"
    backend = model(f"served:{url}")
    with pytest.raises(BackendUnavailableError) as info:
        backend.check()
    message = str(info.value)
    assert url in message
    assert "loopagent serve" in message  # says what to do


def test_unreachable_server_on_a_call_is_a_loopagent_error(free_port) -> None:
    url = f"http://127.0.0.1:{free_port}/v1"
    backend = model(f"served:{url}#tiny-looped", loops=2, num_retries=0)  # named: no /models look-up
    start = time.perf_counter()
    with pytest.raises(BackendUnavailableError) as info:
        backend.complete(user("hi"))
    assert time.perf_counter() - start < 10
    assert backend.name in str(info.value)


def test_server_error_400_becomes_backend_error_with_the_servers_message(server) -> None:
    import litellm

    backend = model(f"served:{server.base_url}", num_retries=0)
    # A caller's raw extra_body slips an invalid budget past validation; the server refuses it.
    with pytest.raises(BackendError) as info:
        backend.complete(user("hi"), extra_body={"loops": 0})
    assert "loops must be a positive integer, got 0" in str(info.value)
    assert backend.name in str(info.value)
    assert not isinstance(info.value, litellm.exceptions.OpenAIError)
    assert type(info.value).__module__ == "loopagent.errors"
    assert len(server.completions()) == 1  # no retries


def test_scripted_server_error_on_a_looped_call(server) -> None:
    backend = model(f"served:{server.base_url}", loops=4, num_retries=0)
    server.queue(server.ScriptedError(400, "this model's maximum context length is 8 tokens"))
    with pytest.raises(BackendError, match="maximum context length is 8 tokens"):
        backend.complete(user("hi"))
    server.queue("fine again")
    assert backend.complete(user("hi")).text == "fine again"


def test_server_error_in_a_batch_raises_loopagent_error(server) -> None:
    backend = model(f"served:{server.base_url}", num_retries=0)
    server.responder = lambda body: (server.ScriptedError(400, "bad prompt")
                                     if body["messages"][-1]["content"] == "q3" else "ok")
    with pytest.raises(BackendError, match="bad prompt"):
        backend.batch([user(f"q{i}") for i in range(6)])


# -- API providers (no network) ----------------------------------------------------------


def test_api_model_without_key_fails_check_naming_the_variable(monkeypatch, no_network) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = model("litellm:openai/gpt-4o")
    assert backend.name == "litellm:openai/gpt-4o"
    assert not backend.looped
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
        backend.check()
    assert no_network == []


def test_api_model_with_key_passes_check_offline(monkeypatch, no_network) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    backend = model("litellm:openai/gpt-4o")
    backend.check()
    assert no_network == []


def test_api_model_with_explicit_key_passes_check(monkeypatch, no_network) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    model("litellm:openai/gpt-4o", api_key="sk-test-not-a-real-key").check()
    assert no_network == []


def test_api_model_rejects_loops(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    backend = model("litellm:openai/gpt-4o")
    with pytest.raises(InvalidLoopsError):
        backend.complete(user("hi"), loops=2)


# -- end to end: an RLM over a served model ----------------------------------------------

ROOT_SCRIPT = [
    '```repl\nanswer = llm_query("What is the capital of France?", loops=2)\nprint("child said:", answer)\n```',
    "```repl\nFINAL(answer)\n```",
]


def test_rlm_run_over_a_served_model(server, tmp_path) -> None:
    root_replies = list(ROOT_SCRIPT)

    def respond(body: dict[str, Any]) -> str:
        if body["messages"][0]["role"] == "system":  # the root model's conversation
            return root_replies.pop(0)
        return "Paris" if "France" in body["messages"][-1]["content"] else "I do not know"

    server.responder = respond
    backend = model(f"served:{server.base_url}", loops=4, num_retries=0)
    rlm = RLM(root=backend, log_dir=tmp_path, max_iterations=5)

    result = rlm.run("What is the capital of France?", context="France is a country in Europe.")

    assert result.answer == "Paris"
    assert result.finished and result.reason == "final"
    assert result.iterations == 2

    bodies = server.completions()
    root_bodies = [b for b in bodies if b["messages"][0]["role"] == "system"]
    child_bodies = [b for b in bodies if b["messages"][0]["role"] != "system"]
    assert len(root_bodies) == 2 and len(child_bodies) == 1
    assert [b["loops"] for b in root_bodies] == [4, 4]  # the model's default loop budget
    assert child_bodies[0]["loops"] == 2  # loops= from the REPL code
    assert child_bodies[0]["messages"] == user("What is the capital of France?")
    assert "child said: Paris" in root_bodies[1]["messages"][-1]["content"]  # REPL output went back

    count = server.count_tokens
    by_depth = result.usage.by_depth
    assert by_depth[0].calls == 2
    assert by_depth[1].calls == 1
    assert by_depth[0].prompt_tokens == sum(count(m["content"]) for b in root_bodies for m in b["messages"])
    assert by_depth[0].completion_tokens == sum(count(r) for r in ROOT_SCRIPT)
    assert by_depth[1].prompt_tokens == count("What is the capital of France?")
    assert by_depth[1].completion_tokens == 1
    assert by_depth[1].loop_tokens == round((count("What is the capital of France?") + 1) * 1.5)
    assert result.usage.total.calls == 3
    assert result.usage.by_model[backend.name].calls == 3
    assert not result.usage.total.tokens_estimated

    assert result.trajectory is not None and result.trajectory.parent == tmp_path
    events = read_trajectory(result.trajectory)
    types = [e.type for e in events]
    for kind in ("run_start", "root_turn", "repl_exec", "sub_call", "final", "run_end"):
        assert kind in types
    turns = [e for e in events if e.type == "root_turn"]
    assert [t.loops_chosen for t in turns] == [4, 4]
    assert [t.loops_executed for t in turns] == [3.0, 3.0]
    assert turns[0].model == backend.name
    (sub,) = [e for e in events if e.type == "sub_call"]
    assert sub.kind == "llm_query"
    assert sub.response == "Paris"
    assert sub.loops_requested == 2 and sub.loops_chosen == 2
    assert sub.loops_executed == 1.5
    assert sub.error is None
    execs = [e for e in events if e.type == "repl_exec"]
    assert execs[0].host_calls == 1 and execs[0].error is None
    assert "child said: Paris" in execs[0].stdout


def test_rlm_child_error_reaches_the_repl_not_the_caller(server, tmp_path) -> None:
    root_replies = [
        '```repl\ntry:\n    llm_query("fail please")\nexcept Exception as e:\n    print("caught:", e)\n```',
        'FINAL(recovered)',
    ]

    def respond(body: dict[str, Any]) -> Any:
        if body["messages"][0]["role"] == "system":
            return root_replies.pop(0)
        return server.ScriptedError(400, "the child refuses")

    server.responder = respond
    backend = model(f"served:{server.base_url}", num_retries=0)
    result = RLM(root=backend, log_dir=tmp_path, max_iterations=4).run("Go.")

    assert result.answer == "recovered" and result.reason == "final"
    root_bodies = [b for b in server.completions() if b["messages"][0]["role"] == "system"]
    assert "the child refuses" in root_bodies[1]["messages"][-1]["content"]
    (sub,) = [e for e in read_trajectory(result.trajectory) if e.type == "sub_call"]
    assert "the child refuses" in (sub.error or "")


# HTTP 5xx, timeouts and connection failures during a call are BackendUnavailableError,
# a BackendError: a run ends with model_error, one failed child does not fail a batch.


def test_server_5xx_is_a_loopagent_error(server) -> None:
    backend = model(f"served:{server.base_url}", num_retries=0)
    server.queue(server.ScriptedError(503, "overloaded, try later", "server_error"))
    with pytest.raises(BackendUnavailableError, match="overloaded, try later"):
        backend.complete(user("hi"))


def test_server_5xx_is_a_backend_error(server) -> None:
    backend = model(f"served:{server.base_url}", num_retries=0)
    server.queue(server.ScriptedError(503, "overloaded, try later", "server_error"))
    with pytest.raises(BackendError):
        backend.complete(user("hi"))


def test_rlm_root_5xx_ends_the_run_with_model_error(server, tmp_path) -> None:
    root_replies: list[Any] = ['```repl\nprint("hi")\n```', server.ScriptedError(503, "overloaded", "server_error")]
    server.responder = lambda body: root_replies.pop(0)
    result = RLM(root=model(f"served:{server.base_url}", num_retries=0), log_dir=tmp_path, max_iterations=3).run("Go.")
    assert result.reason == "model_error" and "overloaded" in result.detail
    assert read_trajectory(result.trajectory)[-1].type == "run_end"


def test_rlm_llm_batch_keeps_the_other_replies_when_one_child_gets_a_5xx(server, tmp_path) -> None:
    root_replies = ['```repl\nreplies = llm_batch(["a", "b"])\nprint(replies)\n```', "FINAL(done)"]

    def respond(body: dict[str, Any]) -> Any:
        if body["messages"][0]["role"] == "system":
            return root_replies.pop(0)
        if body["messages"][-1]["content"] == "a":
            return server.ScriptedError(500, "child crashed", "server_error")
        return "fine"

    server.responder = respond
    result = RLM(root=model(f"served:{server.base_url}", num_retries=0), log_dir=tmp_path, max_iterations=3).run("Go.")
    assert result.reason == "final"
    execs = [e for e in read_trajectory(result.trajectory) if e.type == "repl_exec"]
    assert execs[0].error is None and "fine" in execs[0].stdout and "child crashed" in execs[0].stdout
